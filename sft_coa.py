"""SFT stages 2 and 3 (CoT+CoA, "how to act"): next-token NLL on whole tool-using trajectories.

The whole trajectory (reasoning, `<begin_search> q </end_search>`, the tool's `<search_result> ...
</search_result>`, more reasoning, `</think>`, `\\boxed{answer}`) is one assistant turn. The data mixes
tool trajectories with pure-CoT ones 5:1, as the paper's 5k + 1k (data/build.py writes that mix).

    --mask-obs   stage 2: tokens the tool wrote get no loss (the model learns to act, not to predict
                 the environment); default output runs/sft2, default init runs/sft1 (SFT-1&2)
    (no flag)    stage 3: observations are trained too, so the model learns to predict what the tool
                 returns -- its internal world model, used by simulated RL; runs/sft2 -> runs/sft3

    python sft_coa.py --mask-obs                     # stage 2 on the embedded world
    python sft_coa.py                                # stage 3
    python sft_coa.py --mask-obs --data runs/world --init runs/base --out runs/sft2_only   # SFT-2 without stage 1
    python sft_coa.py --mask-obs --data runs/world --init runs/base --file workflow.jsonl --out runs/workflow
                                 # the workflow baseline's model: the same questions, the controller's format
    python sft_coa.py --mask-obs --init DIR --data runs/hotpotqa --out runs/hotpotqa-sft2   # a real checkpoint
    torchrun --nproc_per_node 2 sft_coa.py --mask-obs                     # FSDP2

Reads DATA/stage2.jsonl (or --file), the trajectories: on the embedded world data/build.py writes it, on real
questions `python -m data.distill sample` (or `import`) does (data/README.md, "A real checkpoint, end to
end"). On real data the defaults are the paper's: lr 5e-5, batch 32, 2 epochs of the file (the paper's 6k
trajectories give its 375 steps; --steps N instead of --epochs); on the embedded world, EMBEDDED below.
"""
import argparse
import collections
import os

import checkpoints
import common


# -----------------------------------------------------------------------------
# data and loss (pure, so tests can check them by hand)

def encode_trajectory(tok, row, mask_obs, max_len):
    """A stage-2/3 trajectory as (ids, loss_mask), cut to max_len (None: whole). Each segment is tokenized
    on its own, exactly as the sampler builds a rollout (the tool's text arrives as its own token run)."""
    ids = common.encode_prompt(tok, row["question"])
    mask = [0] * len(ids)  # the prompt is given, never predicted
    for seg in row["segments"]:
        t = tok.encode(seg["text"])
        ids += t
        # The observation mask (SFT stage 2, docs/paper.md): the tool's segment -- `<search_result>` through
        # `</search_result>`, tags included, with the blank lines around them that the sampler injects too --
        # gets no loss: the model learns to act, not to predict the environment. Stage 3 (no --mask-obs)
        # trains it, so the model learns to predict what the tool returns: its internal world model.
        mask += [0 if (seg["tool"] and mask_obs) else 1] * len(t)
    ids.append(tok.eos_id)  # trained: the model must learn to stop after its answer
    mask.append(1)
    return ids[:max_len], mask[:max_len]


def masked_nll(lp, m):
    """Sum of -log p over the scored tokens only: prompt tokens, and in stage 2 the tool-written ones,
    contribute nothing (encode_trajectory above builds the mask). Divide by the global token count."""
    return -(lp * m).sum()


# The paper's settings are the defaults (lr 5e-5, batch 32, 2 epochs: its 6k trajectories give 375 steps);
# the embedded world's tiny model uses these instead (common.parse_args: on the world's data).
EMBEDDED = dict(lr=1e-3, steps=150, batch_size=16)


def main():
    # -------------------------------------------------------------------------
    # arguments
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    common.add_common_args(ap, out=None, lr=5e-5, steps=None, batch_size=32, epochs=2)
    ap.add_argument("--mask-obs", action="store_true", help="stage 2: no loss on tool-written observation tokens")
    ap.add_argument("--file", default="stage2.jsonl", help="trajectories in --data (workflow.jsonl: the "
                    "workflow baseline's model, which reads what a controller retrieved but never acts)")
    ap.add_argument("--micro-tokens", type=int, default=2048,
                    help="padded tokens per forward/backward (a step's batch is split by length to fit)")
    args = common.parse_args(ap, EMBEDDED)
    stage = 2 if args.mask_obs else 3
    if args.out is None:  # None in --help: runs/sft2 with --mask-obs, runs/sft3 without
        args.out = f"runs/sft{stage}"

    # -------------------------------------------------------------------------
    # device, dtype, distributed
    run = common.Run(args)
    checkpoints.claim_out(run, args)

    # -------------------------------------------------------------------------
    # data, checked before the model loads: a bad row stops the run in seconds, naming its line
    checkpoints.ensure(args.data, run)
    rows = common.read_jsonl(os.path.join(args.data, args.file), common.TRAJECTORY_ROWS)
    common.check_rows(rows, common.trajectory_error)  # every action closed, every observation whole
    common.settle_schedule(args, len(rows), "trajectories", run)  # --steps from --epochs on real data

    # -------------------------------------------------------------------------
    # model + tokenizer
    path, state = checkpoints.resume_or_init(run, args, default_init="runs/sft1" if stage == 2 else "runs/sft2")
    model, tok = common.load_model(path, run, args.grad_checkpointing)
    model.train()

    # -------------------------------------------------------------------------
    # data
    full = [encode_trajectory(tok, r, args.mask_obs, None) for r in rows]
    encoded = [(ids[:args.max_len], mask[:args.max_len]) for ids, mask in full]
    for i, (_, mask) in enumerate(encoded):
        if not any(mask[1:]):  # a row with no trained token left would add nothing but padding
            raise ValueError(f"{rows.where(i)}: --max-len {args.max_len} cuts away every trained token "
                             f"(the first is token {full[i][1].index(1)})")
    kinds = " + ".join(f"{n} {k}" for k, n in sorted(collections.Counter(r.get("kind", "unlabelled")
                                                                         for r in rows).items()))
    run.print(f"[data] stage {stage}, {args.file}: {kinds} trajectories, "
              f"{sum(len(i) for i, _ in encoded)} tokens, {sum(sum(m) for _, m in encoded)} scored "
              f"(mask-obs={args.mask_obs}); {sum(len(i) > args.max_len for i, _ in full)} cut to --max-len {args.max_len}")

    # -------------------------------------------------------------------------
    # loss: masked NLL, mean over the scored tokens of the global batch

    def loss_backward(batch):
        """Backward of the batch's mean NLL, in length-sorted micro-batches (less padding, same gradient)."""
        n_tok = run.all_sum(sum(sum(mask[1:]) for _, mask in batch))
        total = 0.0
        for mb in common.length_batches([len(ids) for ids, _ in batch], args.micro_tokens, run):
            lp, m = common.sequence_logprobs(model, common.pad([batch[i][0] for i in mb]),
                                             common.pad([batch[i][1] for i in mb]), run.device)
            nll = masked_nll(lp, m)
            (nll / n_tok * run.world).backward()
            total += nll.detach()  # one host sync per step, not per micro-batch
        return run.all_sum(total.item()) / n_tok

    # -------------------------------------------------------------------------
    # optimizer + schedule
    opt = common.make_optimizer(model, args)
    start = checkpoints.restore(model, opt, state) if state else 0

    # -------------------------------------------------------------------------
    # loop
    metrics = common.Metrics(run, args.out, args.steps, start, f"sft-{stage}")
    for step in range(start, args.steps):
        batch = [encoded[i] for i in run.shard(common.epoch_order(len(encoded), step, args.batch_size, args.seed))]
        logged = loss_backward(batch)
        checkpoints.check_finite(logged, step, args.out)  # before the optimizer step: the weights stay as they were
        gnorm = common.clip_and_step(model, opt, step, args)
        metrics.tick()
        if step % args.log_every == 0 or step == args.steps - 1:
            metrics.log(step, loss=logged, lr=common.lr_at(step, args), grad_norm=gnorm)
        # ---------------------------------------------------------------------
        # save
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            checkpoints.save_checkpoint(run, args.out, step + 1, model, tok, opt, args)
    metrics.close()
    run.print(f"[done] {checkpoints.latest_checkpoint(args.out)}")
    run.close()


if __name__ == "__main__":
    main()
