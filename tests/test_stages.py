"""Tests for the training stages: the losses by hand, and each stage script end to end on a tiny world.

    python -m pytest -q tests/test_stages.py

Losses are checked against numbers worked out by hand in the comments. The scripts run as
subprocesses (`python script.py ...`, as a user runs them) on a world of ~35 pages and a ~40k-parameter
base model, built once per session (tests/conftest.py); GRPO runs with one substitution, a reward the
tiny model can earn (stage_runs.GRPO_ACT_REWARD). Subprocesses get OMP_NUM_THREADS=1: on a busy 2-core
machine an OpenMP barrier per tiny matmul makes two threads ~100x slower than one. What happens when a
run goes wrong (a crash mid-save, a kill, a NaN, a dead search server) is tests/test_faults.py.
"""
import itertools
import math
import os
import re
from types import SimpleNamespace

import pytest
import torch

import checkpoints
import common
import env
from bench import grpo_signal
from grpo import group_advantages, policy_loss, validate
from model import Qwen2, Qwen2Config
from pretrain import pack
from sft_coa import encode_trajectory, masked_nll
from sft_contrastive import contrastive_loss, mean_logprob
from stage_runs import (GRPO_ACT_REWARD, ROOT, assert_complete_checkpoint, assert_loss_down, check_grpo_run, main_of,
                        metrics, run_script, run_scripts, tiny_setup, weights)
from tokenizer import chat_prompt


# ============================================================================= 1. losses by hand

def test_contrastive_loss_by_hand():
    # L = -log sigmoid(Pc - Pr) + lam * (-Pc) = log(1 + exp(-(Pc - Pr))) - lam * Pc
    # pair 1: Pc = -1, Pr = -2: log(1 + e^-1) + 0.2 = 0.3132617 + 0.2
    # pair 2: Pc = -3, Pr = -1: log(1 + e^2)  + 0.6 = 2.1269280 + 0.6
    p_c = torch.tensor([-1.0, -3.0], requires_grad=True)
    p_r = torch.tensor([-2.0, -1.0], requires_grad=True)
    loss = contrastive_loss(p_c, p_r, 0.2)
    torch.testing.assert_close(loss, torch.tensor([0.3132617 + 0.2, 2.1269280 + 0.6]), rtol=0, atol=1e-6)
    # dL/dPc = -(1 - sigmoid(d)) - lam, dL/dPr = 1 - sigmoid(d), d = Pc - Pr: raise chosen, lower rejected
    loss.sum().backward()
    s = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(2))
    torch.testing.assert_close(p_c.grad, torch.tensor([-(1 - s[0]) - 0.2, -(1 - s[1]) - 0.2]))
    torch.testing.assert_close(p_r.grad, torch.tensor([1 - s[0], 1 - s[1]]))
    # lam = 0: the pure logistic margin loss; equal log-probs give log 2
    assert contrastive_loss(torch.tensor(-5.0), torch.tensor(-5.0), 0.0).item() == pytest.approx(math.log(2))


def test_mean_logprob_by_hand():
    # row 0 scores tokens 0 and 2: (-1 + -3) / 2 = -2; row 1 scores token 1 only: -4; row 2 scores nothing: 0
    # (the unscored entries hold junk: P(x) is the mean over the continuation only)
    lp = torch.tensor([[-1.0, -7.0, -3.0], [-9.0, -4.0, -9.0], [-2.0, -2.0, -2.0]])
    m = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(mean_logprob(lp, m), torch.tensor([-2.0, -4.0, 0.0]))


def test_masked_nll_by_hand():
    # -(sum of scored lp) = -(-1 - 3 - 4) = 8; the unscored entries (-7, -9, -9, -100) change nothing
    lp = torch.tensor([[-1.0, -7.0, -3.0], [-9.0, -4.0, -100.0]], requires_grad=True)
    m = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    loss = masked_nll(lp, m)
    assert loss.item() == pytest.approx(8.0)
    loss.backward()
    torch.testing.assert_close(lp.grad, -m.float())  # no gradient at all through the unscored tokens


def test_sequence_logprobs_against_log_softmax():
    """The helper every loss is built on: log p(ids[t] | ids[<t]) of the scored targets, exactly 0 elsewhere."""
    cfg = Qwen2Config(vocab_size=37, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    net = Qwen2(cfg).init_weights(seed=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 37, (3, 7), generator=g)
    mask = torch.randint(0, 2, (3, 7), generator=g)
    lp, m = common.sequence_logprobs(net, ids, mask, "cpu")
    ref = torch.log_softmax(net(ids).float(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # (3, 6)
    assert torch.equal(m, mask[:, 1:].bool())
    torch.testing.assert_close(lp, torch.where(m, ref, torch.zeros_like(ref)), rtol=1e-5, atol=1e-5)


def test_length_batches_partition_budget_and_same_gradient():
    """Length-sorted micro-batches: every index exactly once, each padded micro-batch within the budget (a
    single row may exceed it), rows grouped by length; and accumulating the masked NLL over them gives the
    gradient of one padded batch."""
    lengths = [5, 40, 7, 33, 12, 40, 3, 18]
    mbs = common.length_batches(lengths, 64)
    assert sorted(i for mb in mbs for i in mb) == list(range(len(lengths)))
    assert all(len(mb) == 1 or len(mb) * max(lengths[i] for i in mb) <= 64 for mb in mbs)
    assert [lengths[i] for mb in mbs for i in mb] == sorted(lengths)
    assert len(mbs) > 1 and common.length_batches(lengths, 10_000) == [sorted(range(8), key=lambda i: lengths[i])]

    cfg = Qwen2Config(vocab_size=37, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 37, (n,), generator=g).tolist() for n in lengths]
    masks = [torch.randint(0, 2, (n,), generator=g).tolist() for n in lengths]
    n_tok = sum(sum(m[1:]) for m in masks)
    grads = []
    for groups in ([list(range(8))], mbs):
        net = Qwen2(cfg).init_weights(seed=0)
        for mb in groups:
            lp, m = common.sequence_logprobs(net, common.pad([seqs[i] for i in mb]), common.pad([masks[i] for i in mb]),
                                             "cpu")
            (masked_nll(lp, m) / n_tok).backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def token_spans(tok, ids):
    """(start, end) character span of each token in the decoded text, from decodes of growing prefixes."""
    ends = [len(tok.decode(ids[:i + 1])) for i in range(len(ids))]
    return list(zip([0] + ends[:-1], ends))


HAND_ROW = {"question": "What is Reget Nadit's employer?", "segments": [
    {"text": "I need Reget Nadit's employer. I will search for it. <begin_search> Reget Nadit's employer "
             "</end_search>", "tool": False},
    {"text": "\n\n<search_result> result 1: \"Reget Nadit\" Reget Nadit's birth year is 1850. Reget Nadit's employer "
             "is Neta Poras. </search_result>\n\n", "tool": True},
    {"text": "The search result says that Reget Nadit's employer is Neta Poras.\nSo the answer is \\boxed{Neta "
             "Poras}.\n</think>\n\nThe answer is \\boxed{Neta Poras}", "tool": False}]}


@pytest.mark.parametrize("mask_obs", [True, False])
def test_encode_trajectory_masks_exactly_the_tool_tokens(tok, world, mask_obs):
    """Decode the ids back to text, find each token's character span, and derive the expected mask from
    where the prompt and the tool segments lie in that text: 0 over the prompt (and the tool's text when
    mask_obs), 1 everywhere else, including the closing end-of-sentence."""
    stage2 = common.read_jsonl(os.path.join(world, "stage2.jsonl"))
    rows = [HAND_ROW] + [r for r in stage2 if r["kind"] == "tool"][:5] + [r for r in stage2 if r["kind"] == "cot"][:1]
    assert any(s["tool"] for r in rows[1:] for s in r["segments"]) and any(r["kind"] == "cot" for r in rows[1:])
    for row in rows:
        ids, mask = encode_trajectory(tok, row, mask_obs, max_len=10_000)
        prompt = chat_prompt(row["question"], env.INSTRUCTION)
        text = prompt + "".join(s["text"] for s in row["segments"]) + tok.decode([tok.eos_id])
        assert tok.decode(ids) == text and len(mask) == len(ids)
        bounds, pos = [(0, len(prompt), False)], len(prompt)  # (start, end, trained?)
        for s in row["segments"]:
            bounds.append((pos, pos + len(s["text"]), not (s["tool"] and mask_obs)))
            pos += len(s["text"])
        bounds.append((pos, len(text), True))  # end of sentence
        expected = []
        for a, b in token_spans(tok, ids):
            owner = [t for s, e, t in bounds if s <= a and b <= e and a < e]
            assert len(owner) == 1, f"token {text[a:b]!r} straddles a segment boundary"
            expected.append(int(owner[0]))
        assert mask == expected
        assert mask[-1] == 1 and ids[-1] == tok.eos_id
        n_tool = sum(len(tok.encode(s["text"])) for s in row["segments"] if s["tool"])
        n_prompt = len(common.encode_prompt(tok, row["question"]))
        assert mask.count(0) == n_prompt + (n_tool if mask_obs else 0)
    # truncation keeps ids and mask aligned
    ids, mask = encode_trajectory(tok, HAND_ROW, mask_obs, max_len=50)
    assert len(ids) == len(mask) == 50 and mask == encode_trajectory(tok, HAND_ROW, mask_obs, 10_000)[1][:50]


def test_group_advantages_by_hand():
    # group 1 [1, 0, 0, 0]: mean 0.25, unbiased std sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5 -> 1.5, -0.5, -0.5, -0.5
    # group 2 [1, 1, 1, 1]: all equal -> 0 (not 0/0 = NaN)
    # group 3 [0, 1, 0, 1]: mean 0.5, std sqrt(1/3) -> +-0.5 * sqrt(3)
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1])
    h = 0.5 * math.sqrt(3)
    expected = torch.tensor([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0, -h, h, -h, h])
    torch.testing.assert_close(group_advantages(r, 4), expected, rtol=0, atol=1e-5)
    for rewards in ([0.0, 0.0], [1.0, 1.0, 1.0], [0.0] * 5):
        a = group_advantages(torch.tensor(rewards), len(rewards))
        assert torch.equal(a, torch.zeros(len(rewards))), a
    # groups are independent: G = 2 over [1, 0 | 0, 0]: mean 0.5, unbiased std sqrt(0.5) -> +-0.5 / sqrt(0.5)
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 0, 0, 0]), 2),
                               torch.tensor([math.sqrt(0.5), -math.sqrt(0.5), 0, 0]), rtol=0, atol=1e-5)


def test_policy_loss_ratio_one_by_hand():
    # lp == old == ref: ratio 1, KL 0, per-token loss -A; scored tokens 0 and 1 of row 0 (A = 2) and
    # token 0 of row 1 (A = -1): sum = -2 - 2 + 1 = -3, over n_tok = 3 -> -1
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]], requires_grad=True)
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([2.0, -1.0])
    loss, kl, pg = policy_loss(lp, lp.detach(), lp.detach(), adv, m, 3, clip=0.2, kl_coef=0.5)
    assert loss.item() == pytest.approx(-1.0) and kl == 0.0 and pg == pytest.approx(-3.0)
    loss.backward()
    # d/dlp of -ratio * A at ratio 1 is -A, divided by n_tok; unscored tokens get nothing
    torch.testing.assert_close(lp.grad, torch.tensor([[-2 / 3, -2 / 3, 0.0], [1 / 3, 0.0, 0.0]]))


def test_policy_loss_per_sequence_by_hand():
    # the GRPO paper's aggregation: row 0 has 2 scored tokens (A = 2), row 1 has 1 (A = -1); at ratio 1 the
    # per-token loss is -A, so row means are -2 and +1, and over 2 sequences the loss is (-2 + 1) / 2 = -0.5
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]], requires_grad=True)
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    loss, kl, pg = policy_loss(lp, lp.detach(), lp.detach(), torch.tensor([2.0, -1.0]), m, 2, clip=0.2, kl_coef=0.5,
                               per_sequence=True)
    assert loss.item() == pytest.approx(-0.5) and pg == pytest.approx(-3.0)  # pg is the token sum, for logging
    loss.backward()  # each token's weight is 1 / (its row's token count * sequences)
    torch.testing.assert_close(lp.grad, torch.tensor([[-2 / 4, -2 / 4, 0.0], [1 / 2, 0.0, 0.0]]))
    # a group of two, A = +1 (1 token) and -1 (3 tokens): per sequence each row pulls with the same total
    # weight (1/2 each way); token-mean lets the longer, wrong row push 3x harder (-1/4 vs +3/4)
    m = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    for per_sequence, norm, rows in ((True, 2, [-0.5, 0.5]), (False, 4, [-0.25, 0.75])):
        lp = torch.zeros(2, 3, requires_grad=True)
        policy_loss(lp, lp.detach(), lp.detach(), torch.tensor([1.0, -1.0]), m, norm, 0.2, 0.0, per_sequence)[0].backward()
        assert lp.grad.sum(1).tolist() == pytest.approx(rows)


def test_policy_loss_clipping_by_hand():
    # tokens with ratio 2 and 0.5 (eps 0.2 -> clip range [0.8, 1.2]):
    #   ratio 2,   A = +1: min(2, 1.2)    = 1.2  -> pg -1.2, clipped: no gradient
    #   ratio 2,   A = -1: min(-2, -1.2)  = -2   -> pg  2.0, unclipped: d/dlp = -A * ratio = 2
    #   ratio 0.5, A = +1: min(0.5, 0.8)  = 0.5  -> pg -0.5, unclipped: d/dlp = -0.5
    #   ratio 0.5, A = -1: min(-0.5, -0.8) = -0.8 -> pg  0.8, clipped: no gradient
    old = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    lp = (old + torch.tensor([[math.log(2), math.log(0.5)], [math.log(2), math.log(0.5)]])).requires_grad_()
    adv = torch.tensor([1.0, -1.0])
    m = torch.ones(2, 2, dtype=torch.bool)
    loss, kl, pg = policy_loss(lp, old, lp.detach(), adv, m, 1, clip=0.2, kl_coef=0.0)
    assert pg == pytest.approx(-1.2 - 0.5 + 2.0 + 0.8, abs=1e-5)
    assert loss.item() == pytest.approx(pg, abs=1e-5)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, -0.5], [2.0, 0.0]]), rtol=0, atol=1e-5)


def test_policy_loss_k3_kl_by_hand():
    # k3 = exp(ref - lp) - (ref - lp) - 1: 0 where ref == lp, e^-1 + 1 - 1 = 0.3678794 for ref - lp = -1,
    # e^0.5 - 0.5 - 1 = 0.1487213 for ref - lp = 0.5; with A = 0 and ratio 1, loss = kl_coef * mean k3
    lp = torch.tensor([[-1.0, -2.0, -1.0]])
    ref = torch.tensor([[-1.0, -3.0, -0.5]])
    m = torch.ones(1, 3, dtype=torch.bool)
    loss, kl, pg = policy_loss(lp, lp, ref, torch.zeros(1), m, 3, clip=0.2, kl_coef=0.1)
    assert kl == pytest.approx(0.3678794 + 0.1487213, abs=1e-6) and pg == 0.0
    assert loss.item() == pytest.approx(0.1 * (0.3678794 + 0.1487213) / 3, abs=1e-7)
    assert policy_loss(lp, lp, lp, torch.zeros(1), m, 3, 0.2, 0.1)[1] == 0.0  # ref == policy -> KL 0
    assert policy_loss(lp, lp, lp + 0.01, torch.zeros(1), m, 3, 0.2, 0.1)[1] > 0.0


def test_policy_loss_ignores_masked_tokens():
    """Whatever sits at unscored positions (observations, prompt, padding) changes neither loss nor gradient."""
    g = torch.Generator().manual_seed(0)
    lp, old, ref = (-torch.rand(3, 6, generator=g) for _ in range(3))
    m = torch.rand(3, 6, generator=g) > 0.4
    adv = torch.tensor([1.0, -0.5, 2.0])
    junk = lambda x: torch.where(m, x, x - 7 * torch.rand(3, 6, generator=g))  # noqa: E731
    a = lp.clone().requires_grad_()
    b = junk(lp).requires_grad_()
    la = policy_loss(a, old, ref, adv, m, 5, 0.2, 0.3)
    lb = policy_loss(b, junk(old), junk(ref), adv, m, 5, 0.2, 0.3)
    assert la[0].item() == pytest.approx(lb[0].item(), abs=1e-6)
    assert la[1] == pytest.approx(lb[1], abs=1e-6) and la[2] == pytest.approx(lb[2], abs=1e-6)
    la[0].backward()
    lb[0].backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert (a.grad[~m] == 0).all() and (a.grad[m] != 0).any()


def test_lr_schedule_by_hand():
    """common.lr_at: linear warm-up to the peak, then cosine to 10% of it over the whole run (decay 1, every
    stage but pretrain.py), or holding the peak until the last `decay` share of the steps."""
    import argparse
    cosine = argparse.Namespace(lr=1.0, warmup=10, steps=110)
    assert common.lr_at(0, cosine) == pytest.approx(0.1) and common.lr_at(9, cosine) == pytest.approx(1.0)
    assert common.lr_at(60, cosine) == pytest.approx(0.55) and common.lr_at(110, cosine) == pytest.approx(0.1)
    wsd = argparse.Namespace(lr=1.0, warmup=10, steps=110, decay=0.2)  # decays over steps 88-110
    assert [common.lr_at(s, wsd) for s in (10, 50, 88)] == [1.0, 1.0, 1.0]
    assert common.lr_at(99, wsd) == pytest.approx(0.55) and common.lr_at(110, wsd) == pytest.approx(0.1)
    assert all(common.lr_at(s, argparse.Namespace(**vars(cosine), decay=1.0)) == common.lr_at(s, cosine)
               for s in range(111))


def test_pack_keeps_texts_whole_by_hand():
    # texts of 5, 3, 4, 2, 7 and 10 tokens in windows of 8, first fit in decreasing length: the 10 is cut
    # into 8 + 2; pieces 8, 7, 5, 4, 3, 2, 2 -> [8] [7] [5 3] [4 2 2]
    # (then each window's texts in a seeded random order, so a short text also starts windows)
    texts = [([t] * n, [1] * n) for t, n in zip(range(1, 7), (5, 3, 4, 2, 7, 10))]
    texts[1] = (texts[1][0], [1, 0, 1])  # a text's own mask goes with it (the tool's text in a trace)
    windows, masks = pack(texts, 8, pad_id=0)
    runs = [[(t, sum(1 for _ in g)) for t, g in itertools.groupby(w)] for w in windows.tolist()]
    assert runs[:2] == [[(6, 8)], [(5, 7), (0, 1)]]
    assert sorted(runs[2]) == [(1, 5), (2, 3)] and sorted(runs[3]) == [(3, 4), (4, 2), (6, 2)]
    assert masks.sum(1).tolist() == [8, 7, 7, 8] and masks[1].tolist() == [1] * 7 + [0]
    assert [m for w, m in zip(windows[2].tolist(), masks[2].tolist()) if w == 2] == [1, 0, 1]
    firsts = {w[0] for seed in range(20) for w in pack(texts, 8, pad_id=0, seed=seed)[0].tolist()[2:]}
    assert firsts == {1, 2, 3, 4, 6}  # every text of a shared window starts it under some seed


# ============================================================================= 2. the scripts end to end

def test_pretrain_loss_goes_down(base):
    rows = metrics(base)
    assert [r["step"] for r in rows] == list(range(30))
    assert_loss_down(rows)
    assert_complete_checkpoint(checkpoints.latest_checkpoint(base), 30)


def test_sft_contrastive_loss_and_margin(sft1):
    rows = metrics(sft1)
    assert len(rows) == 20
    assert_loss_down(rows)
    margin = [r["logp_chosen"] - r["logp_rejected"] for r in rows]
    assert margin[-1] > margin[0] and rows[-1]["acc"] >= rows[0]["acc"]
    assert_complete_checkpoint(checkpoints.latest_checkpoint(sft1), 20)


def test_sft_contrastive_micro_batches_give_the_same_step(tmp, world, base):
    """One pair per forward (--micro-tokens 2) and every pair in one forward: the same losses and weights,
    so the micro-batches keep each pair's chosen and rejected rows together and weight every pair alike."""
    runs = {mt: str(tmp / f"sft1_micro{mt}") for mt in (2, 100_000)}
    run_scripts(*[("sft_contrastive.py", "--data", world, "--init", base, "--out", out, "--steps", 4, "--batch-size", 8,
                   "--lr", 1e-2, "--warmup", 0, "--max-len", 768, "--micro-tokens", mt) for mt, out in runs.items()])
    one, many = metrics(runs[100_000]), metrics(runs[2])
    for r1, r2 in zip(one, many, strict=True):
        # step 0 from the same weights: only summation order differs; after it, Adam's division by the
        # root of tiny second moments turns rounding into visible differences (the weights check below)
        rel = 1e-4 if r1["step"] == 0 else 2e-3
        for k in ("loss", "logp_chosen", "logp_rejected", "acc", "grad_norm"):
            assert r2[k] == pytest.approx(r1[k], rel=rel, abs=1e-6), (r1["step"], k)
    a, b = (weights(checkpoints.latest_checkpoint(runs[mt])) for mt in (2, 100_000))
    # a coordinate whose gradient is ~0 can take Adam's step either way on rounding alone, so a few may
    # differ by ~lr; pairs split or weighted wrongly would move nearly every coordinate
    for k in a:
        off = ~torch.isclose(a[k], b[k], rtol=1e-3, atol=1e-4)
        assert off.float().mean() <= 0.01, (k, int(off.sum()), a[k].numel())


def test_sft_coa_stage2_and_stage3(sft2, sft3):
    (out2, log2), (out3, log3) = sft2, sft3
    for out, n in ((out2, 40), (out3, 20)):
        rows = metrics(out)
        assert len(rows) == n
        assert_loss_down(rows)
        assert_complete_checkpoint(checkpoints.latest_checkpoint(out), n)
    # same data, same truncation: stage 3 also scores the observations, so strictly more tokens
    pat = r"\[data\] stage (\d), stage2\.jsonl: .* (\d+) tokens, (\d+) scored"
    (s2, tok2, sc2), (s3, tok3, sc3) = re.search(pat, log2).groups(), re.search(pat, log3).groups()
    assert (s2, s3) == ("2", "3") and tok2 == tok3 and int(sc2) < int(sc3) < int(tok3)


def test_sft_coa_trains_the_workflow_model_from_its_file(tmp, world, base):
    """--file workflow.jsonl: the workflow baseline's model, from the base, on stage 2's questions."""
    out = str(tmp / "workflow")
    p = run_script("sft_coa.py", "--mask-obs", "--data", world, "--init", base, "--file", "workflow.jsonl",
                   "--out", out, "--steps", 15, "--batch-size", 24, "--lr", 1e-2, "--warmup", 0, "--max-len", 256)
    assert "[data] stage 2, workflow.jsonl: 24 workflow trajectories" in p.stdout  # 20 tool + 4 CoT questions
    rows = metrics(out)
    assert len(rows) == 15
    assert_loss_down(rows)
    assert_complete_checkpoint(checkpoints.latest_checkpoint(out), 15)


def test_grpo_sim_then_real(grpo_run):
    """--sim-ratio 1 over 6 steps: 3 simulated, then 3 real, against a live retrieval server that counts
    what it receives (the run: grpo_run in tests/conftest.py). What must hold exactly is checked (modes, call
    counts, checkpoints); whether a few noisy steps raise the reward is not (it depends on the CPU's float sums):
    the direction of the update is checked on a designed case in test_grpo_update_widens_the_rewarded_gap."""
    rows = check_grpo_run(grpo_run.out, grpo_run.spy, grpo_run.init, 3, 6)
    assert len(grpo_run.spy.queries) > 0  # the real steps did call the tool
    assert any(r["grad_norm"] > 0 for r in rows)


def test_grpo_update_widens_the_rewarded_gap(tok):
    """The sign of GRPO's update on a designed case. One group of two completions, rewards 1 and 0 (advantages
    +a and -a); at ratio 1 the loss's gradient is -a (g1 - g2) / n, so one small SGD step changes the gap
    lp1 - lp2 by lr * a / n * |g1 - g2|^2 >= 0 to first order: the rewarded completion gains log-prob
    relative to the other, on any CPU."""
    net, _, _ = tiny_setup(tok)
    prompt = tok.encode("What is the capital of Zovo?")
    good, bad = tok.encode(" Lumen Tarsi."), tok.encode(" I remember Kelvo.")
    ids = common.pad([prompt + good, prompt + bad])
    mask = common.pad([[0] * len(prompt) + [1] * len(good), [0] * len(prompt) + [1] * len(bad)])
    adv = group_advantages(torch.tensor([1.0, 0.0]), 2)
    assert adv[0] > 0 > adv[1]

    def seq_lp():
        lp, m = common.sequence_logprobs(net, ids, mask, "cpu")
        return lp, m, (lp * m).sum(1) / m.sum(1)

    lp, m, before = seq_lp()
    loss, _, _ = policy_loss(lp, lp.detach(), lp.detach(), adv, m, int(m.sum()), clip=0.2, kl_coef=0.0)
    loss.backward()
    with torch.no_grad():
        for p in net.parameters():
            p -= 1e-3 * p.grad
        _, _, after = seq_lp()
    gap_before, gap_after = (before[0] - before[1]).item(), (after[0] - after[1]).item()
    assert gap_after > gap_before, (before.tolist(), after.tolist())
    # the same step with the rewards swapped narrows it: the assertion above is about the sign of the update
    net2, _, _ = tiny_setup(tok)
    lp, m = common.sequence_logprobs(net2, ids, mask, "cpu")
    policy_loss(lp, lp.detach(), lp.detach(), -adv, m, int(m.sum()), clip=0.2, kl_coef=0.0)[0].backward()
    with torch.no_grad():
        for p in net2.parameters():
            p -= 1e-3 * p.grad
        lp, m = common.sequence_logprobs(net2, ids, mask, "cpu")
        swapped = (lp * m).sum(1) / m.sum(1)
    assert (swapped[0] - swapped[1]).item() < gap_before


def test_grpo_signal_bench_reports_every_weight_group(tmp, world, sft3, monkeypatch):
    """bench/grpo_signal.py (which decides --trainable's default) reports, for every group of weights, a
    cosine in [-1, 1], a significance fraction and a norm share; the shares add up to 1. With the EM
    reward the tiny test model scores 0 everywhere, and the script says there is nothing to measure (an
    exit with that message: its main() in this process, stage_runs.main_of)."""
    args = ["--ckpt", sft3[0], "--data", world, "--batches", 3, "--batch-size", 2, "--group-size", 4,
            "--max-new-tokens", 32]
    with pytest.raises(SystemExit, match="no gradient to measure"):
        main_of(grpo_signal, monkeypatch, *args)
    act = tmp / "signal_act_reward.py"  # the reward for acting of the GRPO tests: groups do differ
    act.write_text(GRPO_ACT_REWARD.format(root=ROOT, script="bench/grpo_signal.py"))
    p = run_script(act, *args)
    rows = re.findall(r"^(\S+)\s+[\d,]+\s+([+-]\d\.\d{4})\s+(\d\.\d{3})\s+(\d\.\d{3})$", p.stdout, re.M)
    run = common.Run(SimpleNamespace(device="cpu", dtype=None, seed=0, threads=None))
    model, _ = common.load_model(checkpoints.latest_checkpoint(sft3[0]), run)
    assert {r[0] for r in rows} == {re.sub(r"layers\.\d+\.", "layers.*.", n) for n, _ in model.named_parameters()}
    assert all(-1 <= float(c) <= 1 and 0 <= float(sig) <= 1 for _, c, sig, _ in rows)
    assert sum(float(share) for *_, share in rows) == pytest.approx(1, abs=0.01)


def test_validation_repeats_exactly_for_one_policy(world, sft3):
    """val_reward draws its samples with the same seed every time: the same policy scores the same, so two
    validations differ by what training changed, not by the dice. Every search call is counted."""
    run = common.Run(SimpleNamespace(device="cpu", dtype=None, seed=0, threads=None))
    model, tok = common.load_model(checkpoints.latest_checkpoint(sft3[0]), run)
    rows = common.read_jsonl(os.path.join(world, "dev.jsonl"))[:6]
    calls, bm25 = [], env.make_search_tool(os.path.join(world, "corpus.jsonl"))
    tool = SimpleNamespace(search=lambda queries, topk: calls.extend(queries) or bm25.search(queries, topk))
    args = SimpleNamespace(val_samples=3, temperature=1.0, seed=0, max_new_tokens=48, max_actions=3, topk=2,
                           top_p=1.0, obs_max_tokens=512)
    first, second = validate(model, tok, rows, tool, args, run), validate(model, tok, rows, tool, args, run)
    assert first == second and 0 <= first["val_reward"] <= 1 and 0 <= first["val_greedy"] <= 1
    assert first["val_search_calls"] + second["val_search_calls"] == len(calls)
