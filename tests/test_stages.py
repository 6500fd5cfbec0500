"""Tests for the training stages: the losses by hand, each stage script end to end on a tiny world,
crash safety of checkpoints, exact resume, the non-finite stop, and FSDP2 under torchrun.

    python -m pytest -q tests/test_stages.py          # ~1.5 min on 2 busy CPU cores

Losses are checked against numbers worked out by hand in the comments. The scripts run as
subprocesses (`python script.py ...`, as a user runs them) on a world of ~35 pages and a ~40k-parameter
base model, built once per session; GRPO runs with one substitution, a reward the tiny model can earn
(GRPO_ACT_REWARD). Subprocesses get OMP_NUM_THREADS=1: on a busy 2-core machine an OpenMP barrier per
tiny matmul makes two threads ~100x slower than one.
"""
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch

import common
import env
import model as model_mod
from data.build import build
from grpo import group_advantages, loss_sequences, policy_loss, validate
from model import Qwen2, Qwen2Config
from pretrain import in_phase, pack
from sample import Rollout
from sft_coa import encode_trajectory, masked_nll
from sft_contrastive import contrastive_loss, mean_logprob
from tokenizer import Tokenizer, chat_prompt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "AUTOCOA_KERNELS": "torch"}
TINY = ["--hidden", "32", "--intermediate", "64", "--layers", "2", "--heads", "2", "--kv-heads", "1",
        "--seq-len", "64", "--vocab-size", "400"]


# ----------------------------------------------------------------------------- helpers

def descendants(pid):
    """Every process below `pid` (children, their children, ...), from /proc."""
    children = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def run_script(*args, check=True, timeout=300):
    """`python <args>` from the repo root; on failure the assertion shows the output's tail. A run past
    `timeout` (a hang) is killed with every process it started (torchrun's workers too) and fails."""
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [proc.pid] + descendants(proc.pid):  # torchrun starts each worker in a session of its own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, args))}: no result after {timeout} s (hung?)\n{out[-2000:]}\n{err[-2000:]}")
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        assert p.returncode == 0, f"{' '.join(map(str, args))} -> {p.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    return p


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def last_per_step(rows):
    """step -> row, the last one logged for each step (a resumed run logs the re-run steps again)."""
    return {r["step"]: r for r in rows}


def assert_loss_down(rows, key="loss", factor=0.85):
    losses = [r[key] for r in rows]
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < factor * losses[0], f"{key} did not go down: {losses}"
    assert sum(losses[-3:]) < sum(losses[:3]), f"{key} did not go down: {losses}"


def weights(path):
    return Qwen2.from_pretrained(path).state_dict()


def assert_complete_checkpoint(path, step):
    """Every file of a checkpoint is there, the weights load strictly and are finite, and the trainer
    state is the one of `step`."""
    assert re.fullmatch(rf"step_{step:06d}(_1)?", os.path.basename(path)), path  # _1: common.save_checkpoint
    for f in ("config.json", "model.safetensors", "tokenizer.json", "trainer_state.pt", "args.json"):
        assert os.path.isfile(os.path.join(path, f)), f"{path} lacks {f}"
    state = torch.load(os.path.join(path, "trainer_state.pt"), map_location="cpu", weights_only=False)
    assert state["step"] == step
    w = weights(path)
    assert all(t.isfinite().all() for t in w.values())
    Tokenizer.from_pretrained(path)
    return w, state


def latest_step(out):
    path = common.latest_checkpoint(out)
    assert path is not None, f"{out}: no valid 'latest'"
    return path, int(os.path.basename(path).split("_")[1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- session fixtures

@pytest.fixture(scope="session")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("stages")


@pytest.fixture(scope="session")
def world(tmp):
    out = str(tmp / "world")
    build(out, seed=0, sizes={"person": 12, "org": 6, "city": 6, "country": 3, "book": 4}, n_distractors=4,
          n_test=10, n_dev=10, n_rl=10, n_tool=20, n_cot=4, n_pairs=16, n_traces=20, n_reading=10)
    return out


@pytest.fixture(scope="session")
def base(tmp, world):
    out = str(tmp / "base")
    run_script("pretrain.py", "--data", world, "--out", out, *TINY, "--steps", 30, "--fresh-steps", 0,
               "--batch-size", 8, "--lr", 1e-2, "--warmup", 0, "--save-every", 100)
    return out


@pytest.fixture(scope="session")
def sft1(tmp, world, base):
    out = str(tmp / "sft1")
    # the whole set (16 pairs) every step, so the logged loss is one objective going down, not batch noise
    run_script("sft_contrastive.py", "--data", world, "--init", base, "--out", out, "--steps", 20,
               "--batch-size", 16, "--lr", 1e-2, "--warmup", 0, "--max-len", 1024)  # a prefix holds observations
    return out


@pytest.fixture(scope="session")
def sft2(tmp, world, sft1):
    out = str(tmp / "sft2")
    p = run_script("sft_coa.py", "--mask-obs", "--data", world, "--init", sft1, "--out", out, "--steps", 40,
                   "--batch-size", 24, "--lr", 1e-2, "--warmup", 5, "--max-len", 256)
    return out, p.stdout


@pytest.fixture(scope="session")
def sft3(tmp, world, sft2):
    out = str(tmp / "sft3")
    p = run_script("sft_coa.py", "--data", world, "--init", sft2[0], "--out", out, "--steps", 20,
                   "--batch-size", 24, "--lr", 5e-3, "--warmup", 0, "--max-len", 256)
    return out, p.stdout


@pytest.fixture(scope="session")
def tok(base):
    return Tokenizer.from_pretrained(common.latest_checkpoint(base))


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


HAND_ROW = {"question": "What is the employer of Reget Nadit?", "segments": [
    {"text": "I need the employer of Reget Nadit. I will search for it. <begin_search> Reget Nadit employer "
             "</end_search>", "tool": False},
    {"text": "\n\n<search_result> result 1: \"Reget Nadit\" Reget Nadit is a person. The employer of Reget Nadit "
             "is Neta Poras. </search_result>\n\n", "tool": True},
    {"text": "The search result says that the employer of Reget Nadit is Neta Poras.\nSo the answer is Neta "
             "Poras.\n</think>\n\nThe answer is \\boxed{Neta Poras}", "tool": False}]}


@pytest.mark.parametrize("mask_obs", [True, False])
def test_encode_trajectory_masks_exactly_the_tool_tokens(tok, world, mask_obs):
    """Decode the ids back to text, find each token's character span, and derive the expected mask from
    where the prompt and the tool segments lie in that text: 0 over the prompt (and the tool's text when
    mask_obs), 1 everywhere else, including the closing end-of-sentence."""
    rows = [HAND_ROW] + [r for r in common.read_jsonl(os.path.join(world, "stage2.jsonl"))][:6]
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


def test_in_phase_by_hand():
    rows = [{"text": "a", "phase": 1}, {"text": "b", "phase": 2}, {"text": "c"}]
    assert [[r["text"] for r in rows if in_phase(r, p)] for p in (1, 2)] == [["a", "c"], ["b", "c"]]


def test_pack_keeps_texts_whole_by_hand():
    # texts of 5, 3, 4, 2, 7 and 10 tokens in windows of 8, first fit in decreasing length: the 10 is cut
    # into 8 + 2; pieces 8, 7, 5, 4, 3, 2, 2 -> [8] [7] [5 3] [4 2 2]
    # (then each window's texts in a seeded random order, so a short text also starts windows)
    texts = [[t] * n for t, n in zip(range(1, 7), (5, 3, 4, 2, 7, 10))]
    windows, masks = pack(texts, 8, pad_id=0)
    runs = [[(t, sum(1 for _ in g)) for t, g in itertools.groupby(w)] for w in windows.tolist()]
    assert runs[:2] == [[(6, 8)], [(5, 7), (0, 1)]]
    assert sorted(runs[2]) == [(1, 5), (2, 3)] and sorted(runs[3]) == [(3, 4), (4, 2), (6, 2)]
    assert masks.sum(1).tolist() == [8, 7, 8, 8] and masks[1].tolist() == [1] * 7 + [0]
    firsts = {w[0] for seed in range(20) for w in pack(texts, 8, pad_id=0, seed=seed)[0].tolist()[2:]}
    assert firsts == {1, 2, 3, 4, 6}  # every text of a shared window starts it under some seed


# ============================================================================= 2. the scripts end to end

def test_pretrain_loss_goes_down(base):
    rows = metrics(base)
    assert [r["step"] for r in rows] == list(range(30))
    assert_loss_down(rows)
    assert_complete_checkpoint(common.latest_checkpoint(base), 30)


def test_sft_contrastive_loss_and_margin(sft1):
    rows = metrics(sft1)
    assert len(rows) == 20
    assert_loss_down(rows)
    margin = [r["logp_chosen"] - r["logp_rejected"] for r in rows]
    assert margin[-1] > margin[0] and rows[-1]["acc"] >= rows[0]["acc"]
    assert_complete_checkpoint(common.latest_checkpoint(sft1), 20)


def test_sft_contrastive_micro_batches_give_the_same_step(tmp, world, base):
    """One pair per forward (--micro-tokens 2) and every pair in one forward: the same losses and weights,
    so the micro-batches keep each pair's chosen and rejected rows together and weight every pair alike."""
    runs = {}
    for mt in (2, 100_000):
        runs[mt] = out = str(tmp / f"sft1_micro{mt}")
        run_script("sft_contrastive.py", "--data", world, "--init", base, "--out", out, "--steps", 4,
                   "--batch-size", 8, "--lr", 1e-2, "--warmup", 0, "--max-len", 512, "--micro-tokens", mt)
    one, many = metrics(runs[100_000]), metrics(runs[2])
    for r1, r2 in zip(one, many, strict=True):
        # step 0 from the same weights: only summation order differs; after it, Adam's division by the
        # root of tiny second moments turns rounding into visible differences (the weights check below)
        rel = 1e-4 if r1["step"] == 0 else 2e-3
        for k in ("loss", "logp_chosen", "logp_rejected", "acc", "grad_norm"):
            assert r2[k] == pytest.approx(r1[k], rel=rel, abs=1e-6), (r1["step"], k)
    a, b = (weights(common.latest_checkpoint(runs[mt])) for mt in (2, 100_000))
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
        assert_complete_checkpoint(common.latest_checkpoint(out), n)
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
    assert_complete_checkpoint(common.latest_checkpoint(out), 15)


class CountingSearch:
    """The world's BM25 behind a Search-R1 server, counting every query it is sent."""

    def __init__(self, corpus):
        self.inner = env.BM25Search.from_jsonl(corpus)
        self.queries = []

    def __len__(self):
        return len(self.inner)

    def search(self, queries, topk=3):
        self.queries += queries
        return self.inner.search(queries, topk)


@pytest.fixture
def search_server(world):
    spy = CountingSearch(os.path.join(world, "corpus.jsonl"))
    srv = env.RetrievalServer(spy)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.url, spy
    srv.shutdown()
    srv.server_close()


# A ~40k-parameter model never answers a question right, so the EM reward would be 0 for every rollout
# and GRPO would have nothing to learn from. The scripts run unchanged except for the reward, which here
# pays for opening a search (the "decide to act" behaviour, and one the tiny model shows sometimes).
GRPO_ACT_REWARD = """import os, runpy, sys
sys.path.insert(0, {root!r})
import env
env.reward = lambda completion, golds, tags=env.TAGS: float(tags.search_open in completion)
sys.argv[0] = os.path.join({root!r}, {script!r})
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="session")
def grpo_act(tmp):
    path = tmp / "grpo_act_reward.py"
    path.write_text(GRPO_ACT_REWARD.format(root=ROOT, script="grpo.py"))
    return str(path)


def check_grpo_run(out, spy, init, n_sim, n_steps):
    """Modes in order, no real call while simulating (though the model acted), every real call logged
    (against the server's own count) and saved with the checkpoints."""
    rows = metrics(out)
    val = [r for r in rows if "val_reward" in r]  # the objective on fixed dev prompts, before and after training
    rows = [r for r in rows if "mode" in r]
    assert [r["step"] for r in val] == [0, n_steps]
    assert all(0 <= r[k] <= 1 for r in val for k in ("val_reward", "val_greedy"))
    assert [r["mode"] for r in rows] == ["sim"] * n_sim + ["real"] * (n_steps - n_sim)
    assert all(math.isfinite(r[k]) for r in rows for k in ("kl", "pg", "grad_norm", "reward"))
    assert [r["real_search_calls"] for r in rows[:n_sim]] == [0] * n_sim
    assert sum(r["actions"] for r in rows[:n_sim]) > 0  # it did act while simulating: the 0 above means something
    # every real call counted: training calls in real_search_calls, validation calls apart, and apart from
    # those the start-up check of each rank (env.RemoteSearch.check), which is no call of the run
    calls = [q for q in spy.queries if q != "start-up check"]
    assert rows[-1]["real_search_calls"] + sum(r["val_search_calls"] for r in val) == len(calls)
    _, sim_state = assert_complete_checkpoint(os.path.join(out, f"step_{n_sim:06d}"), n_sim)  # end of RL-1
    assert sim_state["extra"]["real_search_calls"] == 0
    _, state = assert_complete_checkpoint(common.latest_checkpoint(out), n_steps)
    assert state["extra"] == {"real_search_calls": rows[-1]["real_search_calls"], "failed_search_calls": 0,
                              "reference": os.path.abspath(init)}
    return rows


def test_grpo_sim_then_real(tmp, world, sft3, grpo_act, search_server):
    """--sim-ratio 1 over 6 steps: 3 simulated, then 3 real, against a live retrieval server that counts
    what it receives. What must hold exactly is checked (modes, call counts, checkpoints); whether a few
    noisy steps raise the reward is not (it depends on the CPU's float sums): the direction of the update
    is checked on a designed case in test_grpo_update_widens_the_rewarded_gap."""
    url, spy = search_server
    out = str(tmp / "rl")
    init = common.latest_checkpoint(sft3[0])
    run_script(grpo_act, "--sim-ratio", 1, "--data", world, "--init", init, "--out", out, "--steps", 6,
               "--batch-size", 4, "--group-size", 4, "--max-new-tokens", 48, "--temperature", 1.0, "--lr", 3e-3,
               "--save-every", 3, "--search", url, "--trainable", ".")  # every weight
    rows = check_grpo_run(out, spy, init, 3, 6)
    assert len(spy.queries) > 0  # the real steps did call the tool
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


def test_grpo_signal_bench_reports_every_weight_group(tmp, world, sft3):
    """bench/grpo_signal.py (which decides --trainable's default) reports, for every group of weights, a
    cosine in [-1, 1], a significance fraction and a norm share; the shares add up to 1. With the EM
    reward the tiny test model scores 0 everywhere, and the script says there is nothing to measure."""
    args = ["--ckpt", sft3[0], "--data", world, "--batches", 3, "--batch-size", 2, "--group-size", 4,
            "--max-new-tokens", 32]
    p = run_script("bench/grpo_signal.py", *args, check=False)
    assert p.returncode != 0 and "no gradient to measure" in p.stderr, p.stderr[-2000:]
    act = tmp / "signal_act_reward.py"  # the reward for acting of the GRPO tests: groups do differ
    act.write_text(GRPO_ACT_REWARD.format(root=ROOT, script="bench/grpo_signal.py"))
    p = run_script(act, *args)
    rows = re.findall(r"^(\S+)\s+[\d,]+\s+([+-]\d\.\d{4})\s+(\d\.\d{3})\s+(\d\.\d{3})$", p.stdout, re.M)
    run = common.Run(SimpleNamespace(device="cpu", dtype=None, seed=0, threads=None))
    model, _ = common.load_model(common.latest_checkpoint(sft3[0]), run)
    assert {r[0] for r in rows} == {re.sub(r"layers\.\d+\.", "layers.*.", n) for n, _ in model.named_parameters()}
    assert all(-1 <= float(c) <= 1 and 0 <= float(sig) <= 1 for _, c, sig, _ in rows)
    assert sum(float(share) for *_, share in rows) == pytest.approx(1, abs=0.01)


def test_validation_repeats_exactly_for_one_policy(world, sft3):
    """val_reward draws its samples with the same seed every time: the same policy scores the same, so two
    validations differ by what training changed, not by the dice. Every search call is counted."""
    run = common.Run(SimpleNamespace(device="cpu", dtype=None, seed=0, threads=None))
    model, tok = common.load_model(common.latest_checkpoint(sft3[0]), run)
    rows = common.read_jsonl(os.path.join(world, "dev.jsonl"))[:6]
    calls, bm25 = [], env.make_search_tool(os.path.join(world, "corpus.jsonl"))
    tool = SimpleNamespace(search=lambda queries, topk: calls.extend(queries) or bm25.search(queries, topk))
    args = SimpleNamespace(val_samples=3, temperature=1.0, seed=0, max_new_tokens=48, max_actions=3, topk=2,
                           top_p=1.0, obs_max_tokens=512)
    first, second = validate(model, tok, rows, tool, args, run), validate(model, tok, rows, tool, args, run)
    assert first == second and 0 <= first["val_reward"] <= 1 and 0 <= first["val_greedy"] <= 1
    assert first["val_search_calls"] + second["val_search_calls"] == len(calls)


# ============================================================================= 3. a crash mid-save

def tiny_setup(tok):
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, eos_token_id=tok.eos_id)
    net = Qwen2(cfg).init_weights(seed=0)
    args = SimpleNamespace(lr=1e-2, weight_decay=0.0, warmup=0, steps=10, grad_clip=1.0, out=None)
    opt = common.make_optimizer(net, args)
    return net, opt, args


def train_one_step(net, opt, args, step):
    ids = torch.randint(0, net.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(step))
    lp, m = common.sequence_logprobs(net, ids, torch.ones_like(ids), "cpu")
    (-lp.sum() / m.sum()).backward()
    common.clip_and_step(net, opt, step, args)


class Crash(Exception):
    pass


def crash_after(fn):
    """fn, but raising Crash after it ran (a death right after that write)."""
    def wrapped(*a, **k):
        fn(*a, **k)
        raise Crash(fn.__name__)
    return wrapped


def crash_before(*a, **k):
    raise Crash("before")


def crash_writing(name, save):
    """torch.save, but dying when it writes the file `name` (torch.distributed.checkpoint also calls it)."""
    def wrapped(obj, f, *a, **k):
        if isinstance(f, str) and os.path.basename(f) == name:
            raise Crash(f"writing {name}")
        return save(obj, f, *a, **k)
    return wrapped


def crash_removing(name, rmtree):
    """shutil.rmtree, but dying when it is asked to remove the directory `name` (and only then)."""
    def wrapped(path, *a, **k):
        if os.path.basename(path) == name:
            raise Crash(f"removing {name}")
        rmtree(path, *a, **k)
    return wrapped


CRASH_POINTS = {  # (object, attribute, replacement): where the save dies
    "model file written": lambda: (model_mod, "save_file", crash_after(model_mod.save_file)),
    "train state (DCP)": lambda: (torch.distributed.checkpoint, "save", crash_before),
    "trainer state": lambda: (torch, "save", crash_writing("trainer_state.pt", torch.save)),
    "step dir rename": lambda: (common, "replace_dir", crash_before),
    "latest switch": lambda: (os, "replace", crash_before),
    "old checkpoint cleanup": lambda: (shutil, "rmtree", crash_removing("step_000001", shutil.rmtree)),
}


@pytest.mark.parametrize("where", list(CRASH_POINTS))
def test_crash_mid_save_keeps_last_checkpoint(tmp_path, tok, monkeypatch, where):
    out = str(tmp_path)
    run = SimpleNamespace(master=True, distributed=False)
    net, opt, args = tiny_setup(tok)
    args.out = out
    train_one_step(net, opt, args, 0)
    common.save_checkpoint(run, out, 1, net, tok, opt, args)
    train_one_step(net, opt, args, 1)
    train_one_step(net, opt, args, 2)
    common.save_checkpoint(run, out, 3, net, tok, opt, args)  # two complete checkpoints now
    good3 = {k: v.clone() for k, v in net.state_dict().items()}
    train_one_step(net, opt, args, 3)
    obj, name, fn = CRASH_POINTS[where]()
    with monkeypatch.context() as mp:
        mp.setattr(obj, name, fn)
        with pytest.raises(Crash):
            common.save_checkpoint(run, out, 4, net, tok, opt, args)
    # `latest` names a complete, loadable checkpoint: the previous one, or the new one once the switch is done
    path, step = latest_step(out)
    expect_step, expect_w = (4, net.state_dict()) if where == "old checkpoint cleanup" else (3, good3)
    w, state = assert_complete_checkpoint(path, expect_step)
    assert all(torch.equal(w[k], expect_w[k]) for k in w)
    if expect_step == 3:
        assert not os.path.exists(os.path.join(out, "step_000004")) or where == "latest switch"
    # --resume picks that checkpoint; the next save (the resumed run's) works despite the debris
    rargs = SimpleNamespace(resume=True, out=out, init=None)
    rpath, rstate = common.resume_or_init(SimpleNamespace(print=lambda *a: None), rargs, default_init=None)
    assert rpath == path and rstate["step"] == expect_step
    common.save_checkpoint(run, out, 4, net, tok, opt, args)
    path, _ = latest_step(out)
    assert_complete_checkpoint(path, 4)
    assert save_debris(out) == []
    # a save of the step `latest` already names goes to step_N_1, never replacing that directory in place
    new = "step_000004_1" if where == "old checkpoint cleanup" else "step_000004"
    assert {d for d in os.listdir(out) if d.startswith("step_")} == {"step_000003", new}


SFT_RESUME = ["--mask-obs", "--batch-size", 2, "--lr", 1e-2, "--warmup", 60, "--max-len", 256, "--steps", 60]


@pytest.fixture(scope="session")
def sft_straight(tmp, world, base):
    """sft_coa for 60 steps in one go: the reference for the killed-and-resumed run and for torchrun.
    (--warmup 60: the lr ramps the whole run, so the schedule is the same for any --steps >= 60.)"""
    out = str(tmp / "sft_straight")
    run_script("sft_coa.py", "--data", world, "--init", base, "--out", out, *SFT_RESUME)
    return out


def save_debris(out):
    """What only exists while a save is under way: temporary step directories, the pointer being written."""
    return sorted(d for d in os.listdir(out) if d.startswith(".") or d.endswith(".old"))


def test_sigkill_mid_run_then_resume(tmp, world, base, sft_straight):
    """Save every step and SIGKILL the run: first while a save is half written (seen by its temporary
    directory; tried up to 3 times, should the save finish between seeing it and the kill), then at a random
    moment. `latest` must always name a complete checkpoint, and --resume must finish the run with exactly
    the weights and losses of a run never killed."""
    out = str(tmp / "sft_killed")
    rng = random.Random(0)
    cmd = [sys.executable, "sft_coa.py", "--data", world, "--init", base, "--out", out, *map(str, SFT_RESUME),
           "--save-every", "1"]
    kills = []  # (latest step after the kill, debris left by the save it interrupted)
    while True:
        mid_save = len(kills) < 3 and not any(d for _, d in kills)
        target = (kills[-1][0] if kills else 0) + rng.randint(2, 5)
        proc = subprocess.Popen(cmd + (["--resume"] if kills else []), cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t0, armed = time.time(), None
        while proc.poll() is None and time.time() - t0 < 120:
            path = common.latest_checkpoint(out)
            if armed is None and path and int(os.path.basename(path)[5:]) >= target:
                armed = time.time() + (0 if mid_save else rng.uniform(0, 0.1))
            if armed is not None and time.time() >= armed and (not mid_save or save_debris(out)):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
        err = proc.communicate()[1]
        assert proc.returncode == -signal.SIGKILL, f"run ended before it could be killed:\n{err[-2000:]}"
        path, step = latest_step(out)
        assert step >= target
        assert_complete_checkpoint(path, step)  # never a half-written one
        kills.append((step, save_debris(out)))
        if not mid_save:
            break
    assert any(d for _, d in kills), f"no kill landed inside a save: {kills}"
    assert kills[-1][0] < 60
    p = run_script(*cmd[1:], "--resume")
    assert f"[resume] {os.path.join(out, f'step_{kills[-1][0]:06d}')}" in p.stdout
    path, step = latest_step(out)
    assert step == 60
    assert save_debris(out) == []  # the killed saves' temporary directories were cleaned up
    a, b = weights(path), weights(common.latest_checkpoint(sft_straight))
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight, resumed = last_per_step(metrics(sft_straight)), last_per_step(metrics(out))
    assert sorted(resumed) == list(range(60))
    for s in range(60):
        assert resumed[s]["loss"] == pytest.approx(straight[s]["loss"], rel=1e-6, abs=1e-9), s


# ============================================================================= 4. resume == uninterrupted

def test_resume_matches_uninterrupted_pretrain(tmp, world):
    """pretrain from scratch (tokenizer and init included), 8 steps of each phase: straight vs stopped 4
    steps into the second phase, then --resume. --warmup 16 makes each phase's lr independent of its
    length, so the shorter run is the first part of the other."""
    common_args = ["--data", world, *TINY, "--batch-size", 4, "--lr", 1e-2, "--warmup", 16, "--save-every", 4,
                   "--steps", 8]
    full, half = str(tmp / "pre_full"), str(tmp / "pre_half")
    run_script("pretrain.py", "--out", full, "--fresh-steps", 8, *common_args)
    run_script("pretrain.py", "--out", half, "--fresh-steps", 4, *common_args)
    assert latest_step(half)[1] == 12
    run_script("pretrain.py", "--out", half, "--fresh-steps", 8, "--resume", *common_args)
    (pf, sf), (ph, sh) = latest_step(full), latest_step(half)
    assert sf == sh == 16
    a, b = weights(pf), weights(ph)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    with open(os.path.join(pf, "tokenizer.json")) as f, open(os.path.join(ph, "tokenizer.json")) as g:
        assert f.read() == g.read()
    lf, lh = metrics(full), metrics(half)
    assert [r["step"] for r in lh] == list(range(16))
    assert lf[8]["lr"] == lf[0]["lr"] < lf[7]["lr"]  # the second phase restarts its warm-up
    for rf, rh in zip(lf[12:], lh[12:]):  # the resumed steps
        assert rh["loss"] == pytest.approx(rf["loss"], rel=1e-6)
        assert rh["lr"] == rf["lr"] and rh["grad_norm"] == pytest.approx(rf["grad_norm"], rel=1e-5)
    assert lh[0]["loss"] != lh[15]["loss"]  # it trained


def test_grpo_resume_matches_uninterrupted(tmp, world, sft3, grpo_act):
    """GRPO cut after step 2 of 4 (its last checkpoint then) and resumed ends with exactly the weights and
    per-step rewards of a run never cut: the prompts, the sampler's dice, the optimizer state, the frozen
    reference and the real-call count all carry over (the cut falls where simulated steps turn real)."""
    init = common.latest_checkpoint(sft3[0])
    args = [grpo_act, "--sim-ratio", 1, "--data", world, "--init", init, "--steps", 4, "--batch-size", 4,
            "--group-size", 4, "--max-new-tokens", 48, "--save-every", 2, "--val-prompts", 0,
            "--trainable", ".", "--lr", 3e-3]
    full, cut = tmp / "rl_full", tmp / "rl_cut"
    run_script(*args, "--out", full)
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "step_000004")
    (cut / "latest").write_text("step_000002")
    p = run_script(*args, "--out", cut, "--resume")
    assert f"[resume] {cut / 'step_000002'}" in p.stdout
    a, b = weights(common.latest_checkpoint(full)), weights(common.latest_checkpoint(cut))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], weights(init)[k]) for k in a)  # it trained
    straight, resumed = last_per_step(metrics(full)), last_per_step(metrics(cut))
    assert sorted(resumed) == list(range(4))
    for s in range(4):
        for k in ("reward", "real_search_calls", "length"):
            assert resumed[s][k] == straight[s][k], (s, k)


# ============================================================================= 5. non-finite loss

def test_check_finite_and_clip_and_step_stop_on_nan(tmp_path, tok):
    out = str(tmp_path)
    with open(os.path.join(out, "latest"), "w") as f:
        f.write("step_000003\n")
    os.makedirs(os.path.join(out, "step_000003"))
    common.check_finite(1.5, 7, out)
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(FloatingPointError, match=r"at step 7.*Last good checkpoint: .*step_000003"):
            common.check_finite(bad, 7, out)
    # a NaN gradient stops the step before the optimizer touches the weights
    net, opt, args = tiny_setup(tok)
    args.out = out
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    next(net.parameters()).grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite gradient norm nan at step 5"):
        common.clip_and_step(net, opt, 5, args)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_diverging_run_stops_and_keeps_last_good_checkpoint(tmp, world, sft1):
    """Resume a copy of the stage-1 run (latest = step 20) with a huge lr: step 20 itself is computed on
    good weights, its update blows them up, and step 21's loss is non-finite. The run must exit non-zero
    naming step 21 and step_000020, write nothing after it, and leave step_000020 loadable and finite."""
    out = str(tmp / "sft1_diverge")
    shutil.copytree(sft1, out)
    before = weights(common.latest_checkpoint(out))
    p = run_script("sft_contrastive.py", "--data", world, "--out", out, "--resume", "--steps", 40,
                   "--batch-size", 16, "--lr", 1e30, "--warmup", 0, "--max-len", 512, "--save-every", 100,
                   check=False)
    assert p.returncode != 0
    good = os.path.join(out, "step_000020")
    msg = re.search(r"FloatingPointError: (.*)", p.stderr)
    assert msg, p.stderr[-2000:]
    assert re.search(r"non-finite (loss|gradient norm) \S+ at step 21;", msg.group(1)), msg.group(1)
    assert f"Last good checkpoint: {good}" in msg.group(1)
    path, step = latest_step(out)
    assert (path, step) == (good, 20)
    w, _ = assert_complete_checkpoint(path, 20)
    assert all(torch.equal(w[k], before[k]) for k in w)
    assert sorted(d for d in os.listdir(out) if d.startswith("step_")) == sorted(
        d for d in os.listdir(sft1) if d.startswith("step_"))
    assert metrics(out)[-1]["step"] == 20  # step 20 logged (finite), step 21 stopped the run


# ============================================================================= 6. FSDP2 under torchrun

def test_torchrun_fsdp2_matches_one_process(tmp, world, base, sft_straight):
    """Two gloo ranks, each block and the model fully_shard-ed, each rank a half of every batch: the same
    loss curve as one process (the losses are global means, the gradients averaged), and the same weights."""
    out = str(tmp / "sft_fsdp")
    run_script("-m", "torch.distributed.run", "--nproc_per_node", 2, "--master-port", free_port(), "sft_coa.py",
               "--data", world, "--init", base, "--out", out, *SFT_RESUME)
    one, two = metrics(sft_straight), metrics(out)
    assert len(one) == len(two) == 60
    for r1, r2 in zip(one, two):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-4), r1["step"]
        assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-3), r1["step"]
    path, step = latest_step(out)
    assert step == 60
    a, _ = assert_complete_checkpoint(path, 60)  # gathered from the shards into one full checkpoint
    b = weights(common.latest_checkpoint(sft_straight))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4) for k in a)


def test_torchrun_fsdp2_grpo(tmp, world, sft3, grpo_act, search_server):
    """GRPO on two FSDP2 ranks, each sampling its own prompts: rollouts of different lengths (a different
    number of sampler forwards per rank) must not hang, and the policy update must run (non-zero gradient)."""
    url, spy = search_server
    out = str(tmp / "rl_fsdp")
    init = common.latest_checkpoint(sft3[0])
    run_script("-m", "torch.distributed.run", "--nproc_per_node", 2, "--master-port", free_port(), grpo_act,
               "--sim-ratio", 1, "--data", world, "--init", init, "--out", out, "--steps", 4, "--batch-size", 4,
               "--group-size", 2, "--max-new-tokens", 48, "--temperature", 1.0, "--save-every", 2,
               "--search", url, "--trainable", r"^model\.norm\.weight$")  # one weight in an FSDP group of frozen ones
    rows = check_grpo_run(out, spy, init, 2, 4)
    assert any(r["grad_norm"] > 0 for r in rows)
    before, after = weights(init), weights(common.latest_checkpoint(out))
    assert not torch.equal(before["model.norm.weight"], after["model.norm.weight"])
    assert all(torch.equal(before[k], after[k]) for k in before if k != "model.norm.weight")


def test_grpo_trainable_errors(tmp, world, sft3):
    """--trainable that is not a regex, or that matches no weight, stops before any rollout and says why."""
    init = common.latest_checkpoint(sft3[0])
    for pattern, said in (("(", "not a regular expression"), ("^no_such_weight$", "matches no parameter name")):
        p = run_script("grpo.py", "--data", world, "--init", init, "--out", tmp / "rl_bad", "--trainable", pattern,
                       check=False)
        assert p.returncode == 2 and said in p.stderr, p.stderr[-2000:]


UNEVEN_FORWARDS = """import os
import sys
sys.path.insert(0, {root!r})
from types import SimpleNamespace
import torch
import common
run = common.Run(SimpleNamespace(device="cpu", dtype=None, seed=0, threads=None))
model, tok = common.load_model({ckpt!r}, run)
ids = torch.tensor([tok.encode("Reget Nadit is a person.")])
with torch.no_grad(), common.unsharded(model), torch.inference_mode():
    for _ in range(1 + 3 * run.rank):  # a sampler whose rollouts end later on rank 1
        model(ids)
lp, m = common.sequence_logprobs(model, ids, torch.ones_like(ids), run.device)  # then a training step
(-lp.sum()).backward()
torch.optim.SGD(model.parameters(), lr=1e-3).step()
with torch.no_grad():
    after = -common.sequence_logprobs(model, ids, torch.ones_like(ids), run.device)[0].sum().item()
# one write() of one short line: atomic on a pipe, so the two ranks' lines cannot interleave
os.write(1, f"rank {{run.rank}} loss {{round(-lp.sum().item(), 5)}} after {{round(after, 5)}}\\n".encode())
run.close()
"""


def test_unsharded_lets_ranks_run_different_numbers_of_forwards(tmp, base):
    """common.unsharded: inside it, FSDP2 forwards issue no collectives (rank 1 runs 4 forwards, rank 0 one,
    in inference mode, as the sampler does), and training works afterwards. Without it this hangs."""
    script = tmp / "uneven_forwards.py"
    script.write_text(UNEVEN_FORWARDS.format(root=ROOT, ckpt=common.latest_checkpoint(base)))
    p = run_script("-m", "torch.distributed.run", "--nproc_per_node", 2, "--master-port", free_port(), script,
                   timeout=120)
    found = sorted(re.findall(r"rank (\d) loss (\S+) after (\S+)", p.stdout + p.stderr))
    assert [r for r, _, _ in found] == ["0", "1"], p.stdout
    (_, before0, after0), (_, before1, after1) = found
    assert before0 == before1 and after0 == after1 and float(after0) < float(before0)  # one model, and it learned


# ============================================================================= 8. failed searches are loud

class ScriptedRetrieval(BaseHTTPRequestHandler):
    """POST /retrieve over the world's BM25, except that server.fail(n, queries) (n: the request's number,
    from 0) may name an error status to answer instead. The server logs every request as (status, queries)."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        req, srv = json.loads(self.rfile.read(int(self.headers["Content-Length"]))), self.server
        with srv.lock:
            status = srv.fail(len(srv.log), req["queries"]) or 200
            srv.log.append((status, req["queries"]))
        body = {"error": "scripted failure"} if status != 200 else {"result": [
            [{"document": {"id": h["id"], "contents": h["contents"]}, "score": h["score"]} for h in hits]
            for hits in srv.bm25.search(req["queries"], req["topk"])]}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def scripted(world):
    """scripted(fail) -> (url, log): a live retrieval server that fails the requests `fail` says."""
    servers = []

    def make(fail):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedRetrieval)
        srv.bm25, srv.fail, srv.log, srv.lock = env.BM25Search.from_jsonl(os.path.join(world, "corpus.jsonl")), \
            fail, [], threading.Lock()
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/retrieve", srv.log
    yield make
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_group_advantages_leave_out_rollouts_that_saw_a_failed_search():
    r = torch.tensor([1.0, 0.0, 0.0, 5.0, 1.0, 1.0, 0.0, 0.0])
    keep = torch.tensor([True, True, True, False, True, False, False, False])
    # group 1, kept rewards 1, 0, 0: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3); the
    # left-out 5.0 moves neither. Group 2 keeps one rollout: nothing to compare it with, so 0.
    s = (1 / 3) ** 0.5
    torch.testing.assert_close(group_advantages(r, 4, keep), torch.tensor([2 / 3 / s, -1 / 3 / s, -1 / 3 / s, 0,
                                                                           0, 0, 0, 0]), rtol=0, atol=1e-5)
    torch.testing.assert_close(group_advantages(r, 4, torch.ones(8, dtype=torch.bool)), group_advantages(r, 4))


def test_runs_refuse_to_start_on_a_dead_search_server(tmp, world, sft3, scripted):
    """A server that answers 500: eval, GRPO and the sampler's CLI each stop at their start-up check, saying
    which server and why, before any work (only the check's 3 attempts reach the server)."""
    url, log = scripted(lambda n, queries: 500)
    init = common.latest_checkpoint(sft3[0])
    said = f"search server {url} failed its start-up check: HTTPStatusError: HTTP 500"
    runs = [("eval.py", "--ckpt", init, "--data", world, "--policy", "rag", "--search", url, "--limit", 2,
             "--out", tmp / "eval_dead" / "x.jsonl"),
            ("grpo.py", "--data", world, "--init", init, "--out", tmp / "rl_dead", "--search", url),
            ("sample.py", "--ckpt", init, "--prompt", "Who is Reget Nadit?", "--search-url", url)]
    for args in runs:
        p = run_script(*args, check=False)
        assert p.returncode != 0 and said in p.stderr, (args[0], p.stderr[-2000:])
    assert len(log) == 3 * len(runs)
    assert not os.path.exists(tmp / "eval_dead" / "x.jsonl") and not os.path.exists(tmp / "rl_dead" / "metrics.jsonl")


def test_eval_stops_when_a_batch_of_searches_fails(tmp, world, sft3, scripted):
    """The check passes, then the server answers 500: the first batch's searches all fail, and eval stops
    with the count, the limit and the last error instead of scoring "Retrieval failed." as answers."""
    url, log = scripted(lambda n, queries: 500 if n > 0 else None)
    out = tmp / "eval_failing" / "x.jsonl"
    p = run_script("eval.py", "--ckpt", common.latest_checkpoint(sft3[0]), "--data", world, "--policy", "rag",
                   "--search", url, "--limit", 4, "--batch-size", 4, "--out", out, check=False)
    assert p.returncode != 0 and ("[eval rag] questions 1-4: 4 of 4 searches failed, more than --max-search-failures "
                                  "0.1; last error: HTTPStatusError: HTTP 500") in p.stderr, p.stderr[-2000:]
    assert [s for s, _ in log] == [200, 500, 500, 500] and not os.path.exists(out)  # one call, 3 attempts


def test_grpo_stops_when_a_step_of_searches_fails(tmp, world, sft3, scripted):
    url, log = scripted(lambda n, queries: 500 if n > 0 else None)
    out = tmp / "rl_failing"
    p = run_script("grpo.py", "--sim-ratio", 0, "--data", world, "--init", common.latest_checkpoint(sft3[0]),
                   "--out", out, "--steps", 3, "--batch-size", 4, "--group-size", 4, "--max-new-tokens", 48,
                   "--val-prompts", 0, "--search", url, check=False)
    # the first step in which the sampled rollouts searched at all stops the run (which step that is depends
    # on what the tiny model samples)
    found = re.search(r"\[grpo\] step (\d+): (\d+) of (\d+) searches failed, more than --max-search-failures 0\.1; "
                      r"last error: HTTPStatusError: HTTP 500", p.stderr)
    assert p.returncode != 0 and found and found[2] == found[3], p.stderr[-2000:]
    assert int(found[2]) == sum(len(q) for s, q in log if s == 500) // 3  # each failed call: 3 attempts
    assert common.latest_checkpoint(out) is None  # stopped before the update: nothing trained on the failures


def test_loss_sequences_zero_the_mask_of_rollouts_that_saw_a_failed_search():
    ok = Rollout(0, [1, 2], completion=[3, 4, 5], policy_mask=[1, 0, 1], n_tool_calls=1)
    failed = Rollout(1, [1, 2], completion=[6, 7, 8], policy_mask=[1, 0, 1], n_tool_calls=2, n_failed_calls=1)
    assert loss_sequences([ok, failed]) == [([1, 2, 3, 4, 5], [0, 0, 1, 0, 1]), ([1, 2, 6, 7, 8], [0, 0, 0, 0, 0])]


def test_grpo_leaves_rollouts_with_failed_searches_out_of_the_loss(tmp, world, sft3, grpo_act, scripted):
    """Every search after the start-up check is refused (a 422: not retried) and the limit is off: the run
    goes on, counts each refused query as failed, and leaves the rollouts that saw one out of the loss."""
    url, log = scripted(lambda n, queries: 422 if n > 0 else None)
    out, init = str(tmp / "rl_some_failing"), common.latest_checkpoint(sft3[0])
    run_script(grpo_act, "--sim-ratio", 0, "--data", world, "--init", init, "--out", out, "--steps", 3,
               "--batch-size", 4, "--group-size", 4, "--max-new-tokens", 48, "--val-prompts", 0, "--search", url,
               "--max-search-failures", 1.0, "--save-every", 3)
    rows = metrics(out)
    refused = sum(len(q) for s, q in log if s == 422)
    assert refused > 0 and rows[-1]["failed_search_calls"] == rows[-1]["real_search_calls"] == refused, log
    failed = [b["failed_search_calls"] - a for a, b in zip([0] + [r["failed_search_calls"] for r in rows], rows)]
    assert all((f > 0) == (r["excluded_rollouts"] > 0) and r["excluded_rollouts"] <= f for f, r in zip(failed, rows))
    _, state = assert_complete_checkpoint(common.latest_checkpoint(out), 3)
    assert state["extra"]["failed_search_calls"] == refused
