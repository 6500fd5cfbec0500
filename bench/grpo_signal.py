"""Which weights does one GRPO step's gradient carry signal for? Draws --batches independent GRPO batches
(different prompts and dice, the policy fixed), computes each batch's policy gradient exactly as grpo.py's
first update does, and prints, per group of parameters (the same tensor in every layer counts as one group):

    cos     mean cosine between two batches' gradients. Pure noise gives ~0 (+- about 1/sqrt(size));
            a direction the expected gradient holds shows up as a clearly positive value.
    |t|>3   fraction of coordinates whose mean over the batches is > 3 standard errors from 0. Pure noise
            gives the figure printed in the last line (a t-distribution with batches - 1 degrees of freedom).
    share   the group's part of the squared gradient norm: where the update's size goes.

It also prints how often a failed and a successful rollout holds a token the model itself gave a
probability under 0.05 when it sampled it (--rare): what the reward is mostly judging.

Where both stay at their noise level, a step moves those weights in a direction the next step does not
repeat: under Adam, a random walk of ~lr per coordinate per step. This is what decides grpo.py's
--trainable default on the embedded world (README, "What RL can learn here").

    python bench/grpo_signal.py                              # runs/sft3, 12 batches of 16 prompts x 5
    python bench/grpo_signal.py --ckpt runs/rl --batches 8   # after RL
"""
import argparse
import itertools
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import checkpoints  # noqa: E402
import common  # noqa: E402
import env  # noqa: E402
from grpo import group_advantages, policy_loss  # noqa: E402
from sample import sample  # noqa: E402


def batch_gradient(model, tok, rows, tool, args, seed):
    """One GRPO batch (rows x group size rollouts, real tool) -> (flat gradient of the token-mean
    surrogate at ratio 1, (B,) rewards, (B,) lowest probability of a policy-sampled token in each
    rollout). The KL term is left out: at the reference it has zero gradient."""
    model.eval()
    prompts = [common.encode_prompt(tok, r["question"]) for r in rows for _ in range(args.group_size)]
    with torch.no_grad():
        rolls = sample(model, tok, prompts, tool=tool, mode="real", max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, topk=args.topk, seed=seed)
    rewards = torch.tensor([env.reward(r.text, row["answers"])
                            for r, row in zip(rolls, [r for r in rows for _ in range(args.group_size)])])
    ids = common.pad([r.prompt + r.completion for r in rolls])
    mask = common.pad([[0] * len(r.prompt) + r.policy_mask for r in rolls])
    model.zero_grad(set_to_none=False)
    lp, m = common.sequence_logprobs(model, ids, mask, "cpu")
    loss, _, _ = policy_loss(lp, lp.detach(), lp.detach(), group_advantages(rewards, args.group_size), m,
                             max(int(m.sum()), 1), clip=0.2, kl_coef=0.0)
    loss.backward()
    lowest = lp.detach().masked_fill(~m, 0.0).min(1).values.exp()
    return torch.cat([p.grad.flatten() for p in model.parameters()]), rewards, lowest


def t_statistics(G):
    """(batches, n) gradients -> (n,) each coordinate's mean over the batches in units of its standard error."""
    return G.mean(0) / (G.std(0) / G.shape[0] ** 0.5 + 1e-30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="runs/sft3", help="checkpoint (or run directory: its latest checkpoint)")
    ap.add_argument("--data", default="runs/world", help="world directory (rl.jsonl, corpus.jsonl)")
    ap.add_argument("--batches", type=int, default=12, help="independent batches (>= 3)")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per batch (grpo.py's default)")
    ap.add_argument("--group-size", type=int, default=5, help="rollouts per prompt")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=768)
    ap.add_argument("--topk", type=int, default=3, help="documents per search")
    ap.add_argument("--rare", type=float, default=0.05, help="probability under which a sampled token counts as rare")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    args = ap.parse_args()
    if args.batches < 3:
        ap.error("--batches must be >= 3 (a standard error needs a spread)")
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = args.ckpt if os.path.exists(os.path.join(args.ckpt, "config.json")) else checkpoints.latest_checkpoint(args.ckpt)
    if ckpt is None:
        sys.exit(f"bench/grpo_signal.py: no checkpoint in {args.ckpt}")
    run = common.Run(argparse.Namespace(device="cpu", dtype="float32", seed=args.seed, threads=args.threads))
    model, tok = common.load_model(ckpt, run)
    rows = common.read_jsonl(os.path.join(args.data, "rl.jsonl"))
    if args.batches * args.batch_size > len(rows):
        ap.error(f"{args.batches} x {args.batch_size} prompts, but {args.data}/rl.jsonl has {len(rows)}")
    tool = env.make_search_tool(os.path.join(args.data, "corpus.jsonl"))

    # disjoint prompt sets, one shuffled pass over rl.jsonl (as grpo.py's first epoch draws them)
    order = common.epoch_order(len(rows), 0, len(rows), args.seed)
    grads, rewards, lowest, t0 = [], [], [], time.time()
    for b in range(args.batches):
        g, r, low = batch_gradient(model, tok, [rows[i] for i in order[b * args.batch_size:(b + 1) * args.batch_size]],
                                   tool, args, seed=args.seed * 1_000_003 + b)
        grads.append(g)
        rewards.append(r)
        lowest.append(low)
        print(f"\rbatch {b + 1}/{args.batches}  reward {r.mean():.3f}  {time.time() - t0:.0f} s", end="", flush=True)
    print()
    G, rewards, lowest = torch.stack(grads), torch.cat(rewards), torch.cat(lowest)  # (batches, n_params), (N,), (N,)
    if not G.any():
        sys.exit(f"bench/grpo_signal.py: in every group all rollouts scored the same (mean reward "
                 f"{rewards.mean():.3f}): every advantage is 0, so there is no gradient to measure")
    n = args.batches
    t = t_statistics(G)
    null = t_statistics(torch.randn(n, 200_000, generator=torch.Generator().manual_seed(0))).abs().gt(3)

    groups, offset = {}, 0
    for name, p in model.named_parameters():
        key = re.sub(r"layers\.\d+\.", "layers.*.", name)
        groups.setdefault(key, []).append(torch.arange(offset, offset + p.numel()))
        offset += p.numel()
    groups = {key: torch.cat(idx) for key, idx in groups.items()}  # group -> its coordinates in G
    total = G.pow(2).sum()
    print(f"{ckpt}: {n} batches of {args.batch_size} prompts x {args.group_size}, mean reward "
          f"{rewards.mean():.3f}")
    for name, sel in (("failed", rewards == 0), ("successful", rewards > 0)):
        rare = (lowest[sel] < args.rare).float().mean().item() if sel.any() else float("nan")
        print(f"{name} rollouts ({int(sel.sum())}) holding a sampled token of p < {args.rare}: {rare:.1%}")
    print()
    print(f"{'parameters':48s} {'size':>9s} {'cos':>8s} {'|t|>3':>7s} {'share':>7s}")
    for key, idx in groups.items():
        g = G[:, idx]
        unit = torch.nn.functional.normalize(g, dim=1)
        cos = [float(unit[i] @ unit[j]) for i, j in itertools.combinations(range(n), 2)]
        sig = t[idx].abs().gt(3).float().mean().item()
        print(f"{key:48s} {g.shape[1]:9,d} {sum(cos) / len(cos):+8.4f} {sig:7.3f} {g.pow(2).sum() / total:7.3f}")
    print(f"{'all':48s} {G.shape[1]:9,d} {'':8s} {t.abs().gt(3).float().mean().item():7.3f}")
    print(f"\npure noise: cos ~ 0, |t|>3 in {null.float().mean().item():.3f} of coordinates")


if __name__ == "__main__":
    main()
