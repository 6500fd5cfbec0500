"""RL stages 1 and 2: GRPO with simulated rollouts (the model writes its own observations) then real ones.

Each step: draw prompts, sample a group of G trajectories per prompt with the KV-cached multi-turn
sampler (sample.py), score them with the binary EM reward (env.reward), and update the policy:

    A_i      = (r_i - mean(r_group)) / (std(r_group) + 1e-6)          group-normalised advantage
    ratio_t  = exp(log pi(y_t) - log pi_old(y_t))
    L_pg     = -min(ratio_t * A, clip(ratio_t, 1 - eps, 1 + eps) * A)   clipped surrogate, eps = 0.2
    L_kl     = exp(ref_t - lp_t) - (ref_t - lp_t) - 1                  k3 estimator of KL(pi || pi_ref)
    L        = mean over the batch's policy-written tokens of (L_pg + beta * L_kl), beta = 0.001 (verl's
               token-mean); --loss-agg sequence: 1/G sum_i 1/|o_i| sum_t, the GRPO objective of DeepSeekMath
               (arXiv 2402.03300, §4.1). docs/paper.md maps each term and setting to the paper.

Observation tokens get zero advantage (they are excluded from the mean), in both stages: in real
rollouts the tool wrote them, in simulated ones the model did, and neither is trained here.

--sim-ratio N stages the run as the paper does: the first N/(N+1) of --steps are simulated (RL-1: no
real tool call at all), the rest real (RL-2); the model at the end of RL-1 is also saved to OUT/rl1 (the
paper's RL-1 model). --sim-ratio 0 is all-real. The number of real search calls is logged every step and
saved with each checkpoint, and so is the number of those that failed (failed_search_calls): a rollout
that saw a failed search is left out of the loss, and a step where more than --max-search-failures of the
searches fail stops the run.

Every weight is trained (--trainable narrows it to the parameters whose names match a regex; the
reference model is frozen whole). The defaults are the paper's for a real checkpoint (lr 7e-7, 48
prompts x 5 samples, temperature 0.6), and one epoch of DATA/rl.jsonl (the paper ran 96 steps x 48
prompts = 4,608 prompts: an rl split of that size gives its count; --steps N instead of --epochs); on the
embedded world's data the tiny model runs with the settings in EMBEDDED below (common.parse_args).

Files read from --data: rl.jsonl, the training prompts (questions with their answers); dev.jsonl, the
questions on which the policy is validated (--val-prompts of them; --val-prompts 0 skips validation and
needs no dev.jsonl); corpus.jsonl, the search tool's corpus unless --search names another. On real
questions data/convert.py writes them (`--split rl`, `--split dev`; data/README.md, "A real checkpoint,
end to end").

    python grpo.py --sim-ratio 5                   # embedded world: runs/sft3 -> runs/rl
    python grpo.py --sim-ratio 0 --out runs/rl_real  # all-real baseline
    python grpo.py --search http://127.0.0.1:8000  # a Search-R1-compatible retrieval server (python env.py serve)
    python grpo.py --sim-ratio 5 --init DIR --data runs/hotpotqa --out runs/hotpotqa-rl   # a real checkpoint
    torchrun --nproc_per_node 2 grpo.py            # FSDP2 (each rank samples its share of prompts)

Simplified: no entropy bonus (the paper's code: 0.001), because the fused log-prob kernel returns only the
target's log-prob; one policy update per batch of rollouts by default (--ppo-epochs for more).
"""
import argparse
import contextlib
import json
import os
import re

import torch

import checkpoints
import common
import env
from data.world import Question, observed_answer
from sample import add_sampling_args, sample, sampling_kwargs

# -----------------------------------------------------------------------------
# loss (pure, so tests can check it by hand)

def group_advantages(rewards, G, keep=None):
    """(P*G,) rewards -> (P*G,) advantages normalised within each group of G; all-equal groups give 0.
    keep: (P*G,) bool, False for a rollout left out of training (it saw a failed retrieval, so its reward
    says nothing about the policy): its advantage is 0 and it counts in neither its group's mean nor std."""
    r = rewards.view(-1, G)
    k = (torch.ones_like(rewards) if keep is None else keep.to(rewards.dtype)).view(-1, G)
    n = k.sum(1, keepdim=True)
    mean = (r * k).sum(1, keepdim=True) / n.clamp(min=1)
    std = (((r - mean) ** 2 * k).sum(1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()  # unbiased, as torch.std
    return ((r - mean) / (std + 1e-6) * k).view(-1)


def loss_sequences(rolls):
    """(token ids, loss mask) per rollout: prompt + completion, the mask 1 on the tokens the policy wrote.
    A rollout that saw a failed search gets an all-zero mask: "Retrieval failed." is no search result, and
    what the policy wrote after it is not trained on as if it were."""
    return [(r.prompt + r.completion, [0] * (len(r.prompt) + len(r.completion)) if r.n_failed_calls
             else [0] * len(r.prompt) + r.policy_mask) for r in rolls]


def policy_loss(lp, old_lp, ref_lp, adv, m, norm, clip, kl_coef, per_sequence=False):
    """The clipped surrogate + kl_coef * k3 KL over this micro-batch's policy tokens (m), summed and divided by
    `norm`. per_sequence=False: every token counts once and norm is the policy-token count of the global
    batch (token-mean, as verl does). per_sequence=True: each sequence's tokens are first averaged, and norm
    is the number of sequences in the global batch -- the GRPO paper's 1/G sum_i 1/|o_i| sum_t. Then the
    tokens all samples of a group share (the same first words) get advantages that sum to exactly 0, instead
    of being pushed down whenever the wrong samples are the longer ones. Returns the loss and the summed KL
    and surrogate (token sums) for logging."""
    ratio = torch.exp(lp - old_lp)
    a = adv[:, None]
    pg = -torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)  # DeepSeekMath §4.1's clipped surrogate
    kl = torch.exp(ref_lp - lp) - (ref_lp - lp) - 1  # its KL estimator (k3): unbiased, always >= 0
    m = m.float()
    weight = m / m.sum(1, keepdim=True).clamp(min=1) if per_sequence else m
    return ((pg + kl_coef * kl) * weight).sum() / norm, (kl * m).sum().item(), (pg * m).sum().item()


# -----------------------------------------------------------------------------
# one step's pieces, as main's loop calls them: sampling, rewards, the step's log, validation

@contextlib.contextmanager
def sampling(model):
    """The policy as the sampler runs it: eval mode, no grad, gathered whole under FSDP2 (no collectives
    inside the sampler), in the compute dtype (a bf16 KV cache on CUDA)."""
    model.eval()
    with torch.no_grad(), common.unsharded(model), common.autocast(model):
        yield
    model.train()


def observed_golds(row, roll, world):
    """The gold of a simulated rollout (--sim-reward observed): the answer its own observations give, with the
    known entities' facts (data/world.observed_answer); none where its chain breaks."""
    lookups = world["question_lookups"][row["id"]]
    q = Question(row["question"], "", row.get("hops"), row.get("type"), [tuple(x) for x in lookups])
    answer = observed_answer(world, q, env.observations(roll.text))
    return [answer] if answer is not None else []


def load_world(data, prompts):
    """world.json of the embedded world in `data`, checked to hold the lookups of every RL prompt."""
    path = os.path.join(data, "world.json")
    if not os.path.isfile(path):
        raise SystemExit(f"--sim-reward observed needs the embedded world's {path}: use --sim-reward gold on other data")
    with open(path, encoding="utf-8") as f:
        world = json.load(f)
    missing = [i for i, p in enumerate(prompts) if p["id"] not in world["question_lookups"]]
    if missing:
        raise SystemExit(f"{prompts.where(missing[0])}: question {prompts[missing[0]]['id']!r} has no lookups in {path}")
    return world


def score(rolls, batch, tool, args, run, step, mode, world=None):
    """A step's rollouts (G per row of `batch`) -> (rewards (P*G,), keep (P*G,) bool, searches, failed,
    excluded), the counts summed over ranks. The reward is env.reward's binary EM against the row's answers,
    or, for simulated rollouts with --sim-reward observed, against what its own observations say
    (observed_golds). Too many failed searches stop the run (the tool is down); a rollout that saw one is
    left out of the loss (keep False), since "Retrieval failed." is no search result and its reward is no
    verdict on the policy."""
    rows = [p for p in batch for _ in range(args.group_size)]
    observed = mode == "sim" and args.sim_reward == "observed"
    golds = [observed_golds(p, r, world) if observed else p["answers"] for p, r in zip(rows, rolls)]
    rewards = torch.tensor([env.reward(r.text, g) for r, g in zip(rolls, golds)])
    calls = int(run.all_sum(sum(r.n_tool_calls for r in rolls)))
    failed = int(run.all_sum(sum(r.n_failed_calls for r in rolls)))
    env.check_failures(failed, calls, args.max_search_failures, f"[grpo] step {step}", tool.last_error)
    keep = torch.tensor([r.n_failed_calls == 0 for r in rolls])
    excluded = int(run.all_sum(len(rolls) - int(keep.sum())))
    if failed:
        run.print(f"[grpo] step {step}: {failed} of {calls} searches failed, {excluded} rollouts left out of "
                  f"the loss; last error: {tool.last_error}")
    return rewards, keep, calls, failed, excluded


def log_step(metrics, run, args, step, mode, rolls, rewards, **values):
    """One metrics.jsonl row per step: the means over every rank's rollouts, the share of groups whose rewards
    differ (only those give GRPO a signal: an all-equal group's advantages are 0), `values`, the lr and the
    sampling speed."""
    metrics.tick()
    n = run.all_sum(len(rolls))
    r = rewards.view(-1, args.group_size)
    mixed = run.all_sum(int((r.max(1).values > r.min(1).values).sum())) / run.all_sum(len(r))
    metrics.log(step, mode=mode, reward=run.all_sum(rewards.sum().item()) / n, groups_with_signal=mixed,
                actions=run.all_sum(sum(r.n_actions for r in rolls)) / n,
                length=run.all_sum(sum(len(r.completion) for r in rolls)) / n,
                **values, lr=common.lr_at(step, args), sample_tok_s=rolls.stats.tokens_per_s)


def validate(model, tok, rows, tool, args, run):
    """The RL objective, measured on fixed held-out prompts (dev questions, the same ones every time, so
    unlike the per-step training reward it does not move with which prompts a step drew), with the real
    tool: val_reward is the mean reward of --val-samples rollouts per prompt at the training temperature,
    drawn with the same seed at every validation so that two validations differ by the policy, not by the
    dice; val_greedy is the reward of one greedy rollout per prompt (what eval.py's EM measures). Their
    search calls are evaluation, not training: not counted in real_search_calls."""
    mine = run.shard(rows)
    prompts = [common.encode_prompt(tok, r["question"]) for r in mine]
    k = args.val_samples
    with sampling(model):
        greedy = sample(model, tok, prompts, tool=tool, mode="real", greedy=True, **sampling_kwargs(args))
        drawn = sample(model, tok, [p for p in prompts for _ in range(k)], tool=tool, mode="real",
                       seed=args.seed * 1_000_003 + 7919 + run.rank, **sampling_kwargs(args)) if k else []

    def mean_reward(rolls, reps):
        golds = [row["answers"] for row in mine for _ in range(reps)]
        return run.all_sum(sum(env.reward(r.text, g) for r, g in zip(rolls, golds))) / max(1, run.all_sum(len(golds)))

    calls = run.all_sum(sum(r.n_tool_calls for r in list(greedy) + list(drawn)))
    failed = run.all_sum(sum(r.n_failed_calls for r in list(greedy) + list(drawn)))
    return {"val_reward": mean_reward(drawn, k) if k else None, "val_greedy": mean_reward(greedy, 1),
            "val_search_calls": int(calls), "val_failed_search_calls": int(failed)}


def log_validation(step, model, tok, dev, tool, args, run, metrics):
    """validate() after `step` updates, its failed searches checked as a step's are, logged at `step`."""
    val = validate(model, tok, dev, tool, args, run)
    env.check_failures(val["val_failed_search_calls"], val["val_search_calls"], args.max_search_failures,
                       f"[grpo] validation after step {step}", tool.last_error)
    metrics.log(step, **{k: v for k, v in val.items() if v is not None})


def train_only(model, pattern):
    """Freeze every parameter but those whose names match `pattern` (--trainable); returns those."""
    trained = [p for name, p in model.named_parameters() if pattern.search(name)]
    model.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    return trained


# The embedded world's tiny model: what it needs instead of the paper's settings (common.parse_args: on the
# world's data).
EMBEDDED = dict(lr=1e-4, steps=24, batch_size=16, temperature=1.0, sim_reward="observed")


def parse_arguments():
    """GRPO's flags, with the shared ones (common.add_common_args) and the sampler's, parsed and checked. The
    parser comes back too: main refuses a --trainable that matches no weight once the model is loaded."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    common.add_common_args(ap, out="runs/rl", lr=7e-7, steps=None, batch_size=48, epochs=1)
    ap.add_argument("--sim-ratio", type=int, default=5, help="simulated steps per real step, simulated first (0 = all real)")
    ap.add_argument("--sim-reward", choices=("gold", "observed"), default="gold",
                    help="what a simulated rollout's answer is scored against: the question's gold answers (the "
                         "paper's code), or the answer its own observations give (the embedded world only: "
                         "data/world.observed_answer needs its world.json)")
    ap.add_argument("--group-size", type=int, default=5, help="trajectories sampled per prompt (G)")
    ap.add_argument("--kl-coef", type=float, default=0.001, help="beta, weight of the k3 KL to the frozen reference")
    ap.add_argument("--clip", type=float, default=0.2, help="PPO clip range epsilon")
    ap.add_argument("--loss-agg", choices=("sequence", "token"), default="token",
                    help="sequence: mean over each sequence's tokens, then over sequences (the GRPO paper); "
                         "token: mean over all policy tokens of the batch (verl's token-mean)")
    ap.add_argument("--trainable", default=".",
                    help="regex: RL trains the parameters whose names match it, the rest stay frozen "
                         "('.': every weight)")
    ap.add_argument("--ppo-epochs", type=int, default=1, help="policy updates per batch of rollouts")
    ap.add_argument("--micro-tokens", type=int, default=2048,
                    help="padded tokens per forward/backward (a step's rollouts are split by length to fit)")
    # the sampler's flags; temperature 0.6 is the paper's, the budget RL has always sampled with (shorter
    # than eval's 1024: a step samples group-size rollouts per prompt)
    add_sampling_args(ap, max_new_tokens=768)
    ap.add_argument("--val-prompts", type=int, default=100,
                    help="questions of DATA/dev.jsonl on which the objective is measured (val_reward, val_greedy) "
                         "at the start, every --val-every steps and at the end (0 = off: no dev.jsonl needed)")
    ap.add_argument("--val-samples", type=int, default=4,
                    help="rollouts per dev question at the training temperature for val_reward (0 = greedy only)")
    ap.add_argument("--val-every", type=int, default=0, help="validate every N steps too (0 = start and end only)")
    ap.add_argument("--search", default=None, help="corpus JSONL (local BM25) or retrieval server URL "
                                                   "(None: DATA/corpus.jsonl)")
    ap.add_argument("--max-search-failures", type=float, default=0.1,
                    help="stop when more than this fraction of a step's searches fail (the tool is down)")
    ap.set_defaults(warmup=0, save_every=8)
    args = common.parse_args(ap, EMBEDDED)
    if args.group_size < 2:
        ap.error("--group-size must be >= 2 (advantages are normalised within a group)")
    try:
        re.compile(args.trainable)
    except re.error as e:
        ap.error(f"--trainable {args.trainable!r} is not a regular expression: {e}")
    return ap, args


def main():
    # -------------------------------------------------------------------------
    # arguments
    ap, args = parse_arguments()

    # -------------------------------------------------------------------------
    # device, dtype, distributed
    run = common.Run(args)
    checkpoints.claim_out(run, args)

    # -------------------------------------------------------------------------
    # data, checked before the model loads: a row without answers would otherwise stop the run at the
    # step that draws it, and a question longer than the context would size a KV cache for it
    checkpoints.ensure(args.data, run)
    prompts = common.read_jsonl(os.path.join(args.data, "rl.jsonl"), common.QUESTION_ROWS)
    dev = common.read_jsonl(os.path.join(args.data, "dev.jsonl"), common.QUESTION_ROWS,
                            also="; or --val-prompts 0 to train without validation") if args.val_prompts else []
    if args.search is None:
        common.need_file(os.path.join(args.data, "corpus.jsonl"), also="; or --search a corpus file or a server URL")
    common.settle_schedule(args, len(prompts), "RL prompts", run)  # --steps from --epochs on real data
    n_sim = args.steps * args.sim_ratio // (args.sim_ratio + 1)  # steps [0, n_sim) simulated (RL-1), the rest real
    run.print(f"[grpo] {n_sim} simulated steps, then {args.steps - n_sim} real steps")
    world = None
    if args.sim_reward == "observed" and n_sim:  # the embedded world's facts and every RL prompt's lookups
        world = load_world(args.data, prompts)

    # -------------------------------------------------------------------------
    # model + tokenizer, and the frozen reference (the policy at its initialisation)
    path, state = checkpoints.resume_or_init(run, args, default_init="runs/sft3")
    for rows in (prompts, dev):
        common.check_prompts(rows, path)
    model, tok = common.load_model(path, run, args.grad_checkpointing)
    ref_path = state["extra"]["reference"] if state else path
    ref, _ = common.load_model(ref_path, run, frozen=True)  # in the compute dtype: no optimizer, no masters
    ref.eval().requires_grad_(False)
    trained = train_only(model, re.compile(args.trainable))  # the reference is frozen whole
    if not trained:
        ap.error(f"--trainable {args.trainable!r} matches no parameter name (they look like "
                 f"{next(n for n, _ in model.named_parameters())!r}; '.' matches all)")
    run.print(f"[grpo] training {sum(p.numel() for p in trained):,} of {common.num_params(model):,} parameters "
              f"(--trainable {args.trainable})")

    # -------------------------------------------------------------------------
    # data and the search tool
    tool = env.make_search_tool(args.search or os.path.join(args.data, "corpus.jsonl"))
    run.print(f"[data] {len(prompts)} RL prompts; tool {tool.check()}")  # check(): SearchError if it does not answer
    dev = common.evenly_spaced(dev, args.val_prompts)

    # -------------------------------------------------------------------------
    # optimizer + schedule
    opt = common.make_optimizer(model, args)
    start = checkpoints.restore(model, opt, state) if state else 0
    real_calls = state["extra"]["real_search_calls"] if state else 0
    failed_calls = state["extra"].get("failed_search_calls", 0) if state else 0  # of real_calls

    # -------------------------------------------------------------------------
    # loop
    metrics = common.Metrics(run, args.out, args.steps, start, "grpo")
    if dev and start == 0:
        log_validation(0, model, tok, dev, tool, args, run, metrics)  # before any update: the initial policy
    for step in range(start, args.steps):
        mode = "sim" if step < n_sim else "real"
        # ---- rollouts: this rank's share of the step's prompts, G samples each
        batch = [prompts[i] for i in run.shard(common.epoch_order(len(prompts), step, args.batch_size, args.seed))]
        prompt_ids = [common.encode_prompt(tok, p["question"]) for p in batch for _ in range(args.group_size)]
        with sampling(model):
            rolls = sample(model, tok, prompt_ids, tool=tool, mode=mode,
                           seed=args.seed * 1_000_003 + step * 1009 + run.rank, **sampling_kwargs(args))
        # ---- rewards (binary EM); a rollout that saw a failed search is left out (keep), too many stop the run
        rewards, keep, calls, failed, excluded = score(rolls, batch, tool, args, run, step, mode, world)
        real_calls, failed_calls = real_calls + calls, failed_calls + failed
        # ---- advantages, within each group of G
        adv = group_advantages(rewards, args.group_size, keep)

        # ---- loss over sequences prompt + completion; only policy-written tokens of kept rollouts are scored
        seqs = loss_sequences(rolls)
        n_tok = run.all_sum(sum(sum(m) for _, m in seqs))
        n_seq, per_seq = max(run.all_sum(int(keep.sum())), 1), args.loss_agg == "sequence"
        micro = common.length_batches([len(ids) for ids, _ in seqs], args.micro_tokens, run)  # gradient accumulation
        padded = [(common.pad([seqs[i][0] for i in mb]), common.pad([seqs[i][1] for i in mb])) for mb in micro]
        with torch.no_grad():  # reference log-probs, once per batch
            ref_lps = [common.sequence_logprobs(ref, ids, mask, run.device)[0] for ids, mask in padded]
        old_lps = [None] * len(micro)
        # ---- update
        for epoch in range(args.ppo_epochs):
            kl_sum = pg_sum = 0.0
            for j, mb in enumerate(micro):
                lp, m = common.sequence_logprobs(model, *padded[j], run.device)
                if epoch == 0:
                    old_lps[j] = lp.detach()  # on-policy: the sampling policy is the current one
                loss, kl, pg = policy_loss(lp, old_lps[j], ref_lps[j], adv[mb].to(run.device), m,
                                           n_seq if per_seq else max(n_tok, 1), args.clip, args.kl_coef, per_seq)
                (loss * run.world).backward()
                kl_sum, pg_sum = kl_sum + kl, pg_sum + pg
            gnorm = common.clip_and_step(model, opt, step, args)
        kl_mean, pg_mean = run.all_sum(kl_sum) / max(n_tok, 1), run.all_sum(pg_sum) / max(n_tok, 1)
        checkpoints.check_finite(pg_mean + kl_mean, step, args.out)
        log_step(metrics, run, args, step, mode, rolls, rewards, real_search_calls=real_calls,
                 failed_search_calls=failed_calls, excluded_rollouts=excluded, kl=kl_mean, pg=pg_mean, grad_norm=gnorm)

        # ---------------------------------------------------------------------
        # save
        if dev and (step + 1 == args.steps or (args.val_every and (step + 1) % args.val_every == 0)):
            log_validation(step + 1, model, tok, dev, tool, args, run, metrics)  # after step + 1 updates
        extra = {"real_search_calls": real_calls, "failed_search_calls": failed_calls,
                 "reference": os.path.abspath(ref_path)}
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            checkpoints.save_checkpoint(run, args.out, step + 1, model, tok, opt, args, extra=extra)
        if step + 1 == n_sim and n_sim < args.steps:
            # end of RL stage 1 (simulated): save the paper's RL-1 model to OUT/rl1 (RL-2, real, follows)
            checkpoints.save_checkpoint(run, os.path.join(args.out, "rl1"), step + 1, model, tok, opt, args, extra=extra)
    metrics.close()
    run.print(f"[done] {checkpoints.latest_checkpoint(args.out) or 'no checkpoint (--steps 0: validation only)'}; "
              f"real search calls: {real_calls}")
    run.close()


if __name__ == "__main__":
    main()
