"""SFT stage 1 (CoT+A, "when to act"): contrastive pairs that share a prompt and a reasoning prefix.

At a decision point the chosen continuation either searches (the needed fact is about an entity the
model never saw) or answers from memory (the fact is known); the rejected one does the opposite: a
confident recall of what it cannot know, or a needless search. On the embedded world the decision is one
word, where the memory line would state the fact: the value, or "missing" (data/trajectories.py). The loss,
as in the paper's code (docs/paper.md, SFT stage 1):

    P(x) = mean log-prob of the continuation tokens only (the prompt and prefix are not scored)
    L    = -log sigmoid(P_chosen - P_rejected) + lambda * (-P_chosen)      lambda = 0.2, no reference model

The second term keeps the chosen continuation likely; without it both log-probs can fall together
(the pair's margin grows while the model forgets how to write either), so both are logged.

Reads DATA/stage1.jsonl, the pairs: on the embedded world data/build.py writes it, on real questions
`python -m data.distill sample` does (data/README.md, "A real checkpoint, end to end").

    python sft_contrastive.py                       # embedded world: runs/world, runs/base -> runs/sft1
    python sft_contrastive.py --init DIR --data runs/hotpotqa --out runs/hotpotqa-sft1   # a real checkpoint
    torchrun --nproc_per_node 2 sft_contrastive.py  # FSDP2

On real data the defaults are the paper's: lr 5e-6, batch 16, 2 epochs of stage1.jsonl (the paper's 1.5k
pairs give its 188 steps; --steps N instead of --epochs); on the embedded world, EMBEDDED below.
"""
import argparse
import os

import torch.nn.functional as F

import checkpoints
import common


# -----------------------------------------------------------------------------
# loss (pure, so tests can check it by hand)

def contrastive_loss(p_chosen, p_rejected, lam):
    """Per pair: -log sigmoid(P_c - P_r) + lam * (-P_c), P = mean continuation log-prob (mean_logprob)."""
    return -F.logsigmoid(p_chosen - p_rejected) + lam * (-p_chosen)  # SFT stage 1's loss (docs/paper.md, paper §3.1)


def mean_logprob(lp, m):
    """(B, T) token log-probs and mask -> (B,) mean over each row's scored tokens: P(x). Masked, not just
    summed: the mean must not depend on the caller having zeroed the unscored entries."""
    return (lp * m).sum(1) / m.sum(1).clamp(min=1)


# The paper's settings are the defaults (lr 5e-6, batch 16, 2 epochs: its 1.5k pairs give 188 steps); the
# embedded world's tiny model uses these instead (common.parse_args: on the world's data): 2 epochs of its
# pairs at about a third of stage 2's learning rate, enough to teach the decision word (RESULTS.md, stage 1).
EMBEDDED = dict(lr=3e-4, steps=56)


def main():
    # -------------------------------------------------------------------------
    # arguments
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    common.add_common_args(ap, out="runs/sft1", lr=5e-6, steps=None, batch_size=16, epochs=2)
    ap.add_argument("--lam", type=float, default=0.2, help="weight of the chosen-NLL term (the paper's code: 0.2)")
    ap.add_argument("--micro-tokens", type=int, default=2048,
                    help="padded tokens per forward/backward (a step's pairs are split by length to fit)")
    args = common.parse_args(ap, EMBEDDED)

    # -------------------------------------------------------------------------
    # device, dtype, distributed
    run = common.Run(args)
    checkpoints.claim_out(run, args)

    # -------------------------------------------------------------------------
    # data, checked before the model loads: a bad row stops the run in seconds, naming its line
    checkpoints.ensure(args.data, run)
    pairs = common.read_jsonl(os.path.join(args.data, "stage1.jsonl"), common.PAIR_ROWS)
    common.check_rows(pairs, common.pair_error)  # a continuation that opens an action closes it
    common.settle_schedule(args, len(pairs), "pairs", run)  # --steps from --epochs on real data

    # -------------------------------------------------------------------------
    # model + tokenizer
    path, state = checkpoints.resume_or_init(run, args, default_init="runs/base")
    model, tok = common.load_model(path, run, args.grad_checkpointing)
    model.train()

    # -------------------------------------------------------------------------
    # data: (prompt + prefix, continuation) token runs; the continuation alone is scored
    cut = [False] * len(pairs)  # pairs that --max-len shortens

    def encode(i, row, continuation):
        context = common.encode_prompt(tok, row["question"]) + tok.encode(row["prefix"])
        cont = tok.encode(continuation)
        if len(context) >= args.max_len:  # P(x) would be a mean over no token: the pair would teach nothing
            raise ValueError(f"{pairs.where(i)}: prompt + prefix are {len(context)} tokens, so --max-len "
                             f"{args.max_len} cuts the whole continuation away")
        cut[i] |= len(context) + len(cont) > args.max_len
        return (context + cont)[:args.max_len], ([0] * len(context) + [1] * len(cont))[:args.max_len]

    encoded = [(encode(i, r, r["chosen"]), encode(i, r, r["rejected"])) for i, r in enumerate(pairs)]
    run.print(f"[data] {len(pairs)} pairs: " + ", ".join(
        f"{d} {sum(r.get('direction') == d for r in pairs)}" for d in ("search", "answer")) +
        f"; {sum(cut)} cut to --max-len {args.max_len}")

    # -------------------------------------------------------------------------
    # loss on a batch of pairs: a pair's chosen and rejected rows go through one forward together

    def loss_backward(batch):
        """Backward of the batch's mean pair loss, in micro-batches of pairs of similar length (less
        padding, same gradient: the loss is a sum over pairs, and a pair never straddles two). Returns
        the batch's logged statistics."""
        n = run.all_sum(len(batch))
        sums = dict.fromkeys(("loss", "logp_chosen", "logp_rejected", "acc"), 0.0)
        pair_len = [max(len(c[0]), len(r[0])) for c, r in batch]
        for mb in common.length_batches(pair_len, args.micro_tokens // 2, run):
            seqs = [batch[i][0] for i in mb] + [batch[i][1] for i in mb]  # chosen rows first, then rejected
            lp, m = common.sequence_logprobs(model, common.pad([s[0] for s in seqs]),
                                             common.pad([s[1] for s in seqs]), run.device)
            p_c, p_r = mean_logprob(lp, m).chunk(2)
            per_pair = contrastive_loss(p_c, p_r, args.lam)
            (per_pair.sum() / n * run.world).backward()
            for k, v in (("loss", per_pair), ("logp_chosen", p_c), ("logp_rejected", p_r),
                         ("acc", (p_c > p_r).float())):
                sums[k] += v.detach().sum()
        return {k: run.all_sum(float(v)) / n for k, v in sums.items()}

    # -------------------------------------------------------------------------
    # optimizer + schedule
    opt = common.make_optimizer(model, args)
    start = checkpoints.restore(model, opt, state) if state else 0

    # -------------------------------------------------------------------------
    # loop
    metrics = common.Metrics(run, args.out, args.steps, start, "sft-1")
    for step in range(start, args.steps):
        batch = [encoded[i] for i in run.shard(common.epoch_order(len(encoded), step, args.batch_size, args.seed))]
        stats = loss_backward(batch)
        checkpoints.check_finite(stats["loss"], step, args.out)  # before the optimizer step: the weights stay as they were
        gnorm = common.clip_and_step(model, opt, step, args)
        metrics.tick()
        if step % args.log_every == 0 or step == args.steps - 1:
            metrics.log(step, **stats, lr=common.lr_at(step, args), grad_norm=gnorm)
        # ---------------------------------------------------------------------
        # save
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            checkpoints.save_checkpoint(run, args.out, step + 1, model, tok, opt, args)
    metrics.close()
    run.print(f"[done] {checkpoints.latest_checkpoint(args.out)}")
    run.close()


if __name__ == "__main__":
    main()
