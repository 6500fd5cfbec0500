"""The whole paper on the embedded world, in one command: world -> base -> SFT stages -> RL -> eval.

Trains every model of the paper's Table 1 with each stage's default settings, evaluates them all
on the test split (greedy, the world's BM25 as the tool), and prints a table shaped like Table 1:
EM with its 95% interval, on held-out and known-only questions, by number of hops and for comparisons,
real search calls (per question at evaluation, and in total during RL training), and each agent's
first-step "when to act" (eval.when_to_act). Then where comparisons go wrong (eval.comparison_steps), how
faithfully each model copies what it reads (eval.reading), the
reading checks (the counterfactual corpus, the model's own observations in place of the tool), the
base model's copying and the world-model probe (probe.py) and paired comparisons.

    python pipeline.py                       # everything, into runs/
    python pipeline.py --skip-train          # only (re)evaluate existing checkpoints
    python pipeline.py --limit 100           # evaluate on 100 test questions only (evenly spaced over the strata)

Rows (-> the checkpoint each is evaluated from):
    no tool            base model, no tool                       runs/base
    RAG                runs/workflow: one retrieval with the question, then the model reads
    workflow           runs/workflow: the controller searches at every step (eval.py explains the model)
    SFT-1              runs/sft1            SFT-2             runs/sft2_only (base + stage 2)
    SFT-1&2            runs/sft2            SFT-1&2&3         runs/sft3
    RL-2 only          runs/rl2_only  (GRPO, all real, from the base model)
    SFT-1&2&3 + RL-1   runs/rl/rl1    (the 5:1 run after its simulated steps)
    SFT-1&2&3 + RL-1&2 runs/rl        (the 5:1 run, simulated then real)
    SFT-1&2 + RL-2     runs/rl2_sft12 (GRPO, all real, from SFT-1&2)
    SFT-1&2&3 + RL-2   runs/rl2_sft3  (all real from the same start as the 5:1 run: the paper's
                                       claim that simulated RL lands near all-real RL)
The workflow model (runs/workflow) is the base model fine-tuned like SFT-2 on the same questions in the
workflow's format (data/build.py's workflow.jsonl), so that it can read what the controller retrieves.
Each stage is skipped when its output already has a checkpoint, so an interrupted pipeline resumes.
The base model must copy what it reads: one that copies under 90% of the dev entities' values out of their
pages (probe.py --copy) is set aside and pretrained again with the next seed (base_gate below).

Jobs run as separate processes, --jobs at a time (default 2, one per core of the embedded setup's
machine), each on one CPU thread, and each as soon as the jobs it needs are done: the default chain
(world -> base -> SFT-1 -> SFT-2 -> SFT-3 -> 5:1 RL) goes first, the other Table-1 runs and the
evaluations fill the other core. A job that starts alone with nothing else ready (the base model, which
every other job needs) gets every core's thread. Each job's output is in runs/logs/<job>.log.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import checkpoints
import eval as eval_lib
import jsonl

ROOT = os.path.dirname(os.path.abspath(__file__))
# Training jobs: output -> (command, the outputs it needs). The default chain first, then Table 1's extra runs.
# The default chain: each output, the command that makes it with its defaults; each needs the one before.
# A stage script whose default input is missing has it built here (checkpoints.ensure -> `--build`).
DEFAULT_CHAIN = {
    "runs/world": ["-m", "data.build", "--out", "runs/world"],
    "runs/base": ["pretrain.py"],
    "runs/sft1": ["sft_contrastive.py"],
    "runs/sft2": ["sft_coa.py", "--mask-obs"],
    "runs/sft3": ["sft_coa.py"],
}
CHAIN = list(DEFAULT_CHAIN)
TRAIN = {out: (cmd, [CHAIN[i - 1]] if i else []) for i, (out, cmd) in enumerate(DEFAULT_CHAIN.items())}
TRAIN.update({
    "runs/rl": (["grpo.py", "--sim-ratio", "5"], ["runs/sft3"]),
    "runs/rl2_sft3": (["grpo.py", "--sim-ratio", "0", "--out", "runs/rl2_sft3"], ["runs/sft3"]),
    "runs/sft2_only": (["sft_coa.py", "--mask-obs", "--data", "runs/world", "--init", "runs/base", "--out",
                        "runs/sft2_only"], ["runs/base"]),
    "runs/rl2_sft12": (["grpo.py", "--sim-ratio", "0", "--data", "runs/world", "--init", "runs/sft2", "--out",
                        "runs/rl2_sft12"], ["runs/sft2"]),
    "runs/rl2_only": (["grpo.py", "--sim-ratio", "0", "--data", "runs/world", "--init", "runs/base", "--out",
                       "runs/rl2_only"], ["runs/base"]),
    "runs/workflow": (["sft_coa.py", "--mask-obs", "--data", "runs/world", "--init", "runs/base", "--file",
                       "workflow.jsonl", "--out", "runs/workflow"], ["runs/base"]),
})
ROWS = [  # (name, checkpoint, eval policy, training job that makes the checkpoint and counts its real search calls)
    ("no tool", "runs/base", "none", "runs/base"),
    ("RAG", "runs/workflow", "rag", "runs/workflow"),
    ("workflow", "runs/workflow", "workflow", "runs/workflow"),
    ("SFT-1", "runs/sft1", "agent", "runs/sft1"),
    ("SFT-2", "runs/sft2_only", "agent", "runs/sft2_only"),
    ("SFT-1&2", "runs/sft2", "agent", "runs/sft2"),
    ("SFT-1&2&3", "runs/sft3", "agent", "runs/sft3"),
    ("RL-2 only", "runs/rl2_only", "agent", "runs/rl2_only"),
    ("SFT-1&2&3 + RL-1", "runs/rl/rl1", "agent", "runs/rl"),
    ("SFT-1&2&3 + RL-1&2", "runs/rl", "agent", "runs/rl"),
    ("SFT-1&2 + RL-2", "runs/rl2_sft12", "agent", "runs/rl2_sft12"),
    ("SFT-1&2&3 + RL-2", "runs/rl2_sft3", "agent", "runs/rl2_sft3"),
]
# Does the agent read the tool? The same checkpoints on the counterfactual corpus (data/build.py: held-out
# facts changed, test_cf.jsonl's golds recomputed) and with their own observations in place of the tool.
CF = ["--split", "test_cf", "--search", "runs/world/corpus_cf.jsonl"]
CHECKS = [  # (name, checkpoint, eval policy, training job, extra eval flags)
    ("SFT-1&2&3, counterfactual corpus", "runs/sft3", "agent", "runs/sft3", CF),
    ("SFT-1&2, counterfactual corpus", "runs/sft2", "agent", "runs/sft2", CF),
    ("SFT-1&2&3 + RL-1&2, counterfactual corpus", "runs/rl", "agent", "runs/rl", CF),
    ("SFT-1&2&3 + RL-2, counterfactual corpus", "runs/rl2_sft3", "agent", "runs/rl2_sft3", CF),
    ("SFT-1&2 + RL-2, counterfactual corpus", "runs/rl2_sft12", "agent", "runs/rl2_sft12", CF),
    ("workflow, counterfactual corpus", "runs/workflow", "workflow", "runs/workflow", CF),
    ("SFT-1&2&3, own observations", "runs/sft3", "agent", "runs/sft3", ["--mode", "sim"]),
]
# Paired comparisons on the same test questions (per-question EM difference, 95% bootstrap interval)
PAIRS = [("SFT-1", "no tool"), ("SFT-2", "SFT-1"), ("SFT-1&2", "SFT-2"), ("SFT-1&2&3", "SFT-1&2"),
         ("SFT-1&2&3 + RL-1&2", "SFT-1&2&3"), ("SFT-1&2&3 + RL-2", "SFT-1&2&3"),
         ("SFT-1&2&3 + RL-1&2", "SFT-1&2&3 + RL-2"), ("SFT-1&2 + RL-2", "SFT-1&2"), ("SFT-1&2&3", "workflow"),
         ("SFT-1&2 + RL-2", "workflow")]
# Priority when several jobs are ready: the longest remaining chain first (world -> ... -> sft3 -> rl), then
# the longest side job (GRPO from the base model), so that the last minutes are filled by short
# evaluations instead of one long job alone on a core.
ORDER = CHAIN + ["runs/rl", "runs/rl2_only", "runs/rl2_sft3", "runs/sft2_only", "runs/workflow", "runs/rl2_sft12"]


PROBE = "runs/eval/probe.jsonl"
COPY = "runs/eval/copy.jsonl"  # probe.py --copy of the base model
# The base model's gate. With earlier forms of the fact sentence (data/world.fact_sentence) some pretraining
# seeds never learned to copy a value out of a search result, and no later stage made up for it (RESULTS.md,
# "The base model's seed"); every seed tried since passes, and the gate stays as the check. After
# pretraining, probe.py --copy on the dev entities (test stays untouched): below COPY_GATE of their values,
# the base is set aside (runs/base_seed<S>) and pretrained again with the next seed, BASE_SEEDS seeds at
# most; if none passes, the best copier is kept.
COPY_GATE = 0.9
BASE_SEEDS = 3
COPY_DEV = "runs/eval/copy_dev_seed{}.jsonl"


def eval_file(name):
    return os.path.join("runs/eval", name.replace(" ", "_").replace("&", "+") + ".jsonl")


def needed(target):
    """The training outputs `target` is made from, itself included (what `--build target` runs)."""
    out = {target}
    for need in TRAIN[target][1]:
        out |= needed(need)
    return out


def jobs(limit, batch_size, skip_train, only=None):
    """Every job of the pipeline as (key, command, needs, output or None), training first, in priority order.
    A training job whose output already has a checkpoint is left out, so an interrupted pipeline resumes.
    only: a set of training outputs; then just those, and no evaluation."""
    out = []
    for key in ORDER if not skip_train else []:
        if only is not None and key not in only:
            continue
        cmd, needs = TRAIN[key]
        if checkpoints.have(os.path.join(ROOT, key)):
            print(f"[pipeline] {key}: already done, skipping")
            continue
        # --overwrite: an output without a complete checkpoint may still hold a killed run's step directories
        out.append((key, cmd + ["--overwrite"] if cmd[0].endswith(".py") else cmd, needs, key))
    if only is not None:
        scheduled = {k for k, *_ in out}
        return [(k, cmd, [n for n in needs if n in scheduled], o) for k, cmd, needs, o in out]
    for name, ckpt, policy, made_by, extra in [(*row, []) for row in ROWS] + CHECKS:
        if skip_train and not checkpoints.have(os.path.join(ROOT, ckpt)):
            print(f"[pipeline] {name}: no checkpoint at {ckpt}, not evaluated")
            continue
        cmd = ["eval.py", "--ckpt", ckpt, "--policy", policy, "--name", name, "--out", eval_file(name),
               "--batch-size", str(batch_size)] + extra + (["--limit", str(limit)] if limit else [])
        out.append((f"eval {name}", cmd, [made_by], None))
    # the world model: SFT-1&2&3's own observations against the real ones, by entity split (probe.py)
    out.append(("probe SFT-1&2&3", ["probe.py", "--ckpt", "runs/sft3", "--out", PROBE, "--batch-size", str(batch_size)]
                + (["--limit", str(limit)] if limit else []), ["runs/sft3"], None))
    # can the base model copy a value out of a result at all? (what SFT stage 2 builds on; probe.copy_probe)
    out.append(("copy base", ["probe.py", "--ckpt", "runs/base", "--copy", "1000", "--split", "test", "--out", COPY],
                ["runs/base"], None))
    return out


def copy_share(summary):
    """The share of values copied, from a probe.py --copy summary file."""
    with open(summary) as f:
        r = json.load(f)["copy"]
    return r["copied"] / max(r["values"], 1)


def dev_summary(seed):
    """Where probe.py --copy writes the summary of base seed `seed` on the dev entities."""
    return os.path.join(ROOT, COPY_DEV.format(seed)[:-len(".jsonl")] + ".summary.json")


def dev_copies(seed, threads):
    """The share of the dev entities' values runs/base copies out of their pages (probe.py --copy)."""
    out = os.path.join(ROOT, COPY_DEV.format(seed))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    subprocess.run([sys.executable, "probe.py", "--ckpt", "runs/base", "--copy", "1000", "--split", "dev", "--out", out],
                   cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return copy_share(dev_summary(seed))


def set_aside():
    """{seed: share copied} of the bases the gate has set aside so far (runs/base_seed<S>), so that an
    interrupted pipeline goes on with the next seed."""
    seeds = [int(d.rsplit("seed", 1)[1]) for d in os.listdir(os.path.join(ROOT, "runs"))
             if d.startswith("base_seed")] if os.path.isdir(os.path.join(ROOT, "runs")) else []
    return {s: copy_share(dev_summary(s)) for s in seeds}


def seed_of(cmd):
    """The --seed of a pretrain.py command (its default, 0, without one)."""
    return int(cmd[cmd.index("--seed") + 1]) if "--seed" in cmd else 0


def with_seed(cmd, seed):
    i = cmd.index("--seed") if "--seed" in cmd else len(cmd)
    return cmd[:i] + cmd[i + 2:] + ["--seed", str(seed)]


def base_gate(cmd, tried, threads):
    """After runs/base was pretrained by cmd: None when it copies enough (COPY_GATE), else cmd with the next
    --seed. tried: {seed: share copied} of the bases made so far (updated here)."""
    seed = seed_of(cmd)
    tried[seed] = dev_copies(seed, threads)
    print(f"[pipeline] base seed {seed} copies {100 * tried[seed]:.1f}% of the dev entities' values", flush=True)
    if tried[seed] >= COPY_GATE:
        return None
    os.replace(os.path.join(ROOT, "runs/base"), os.path.join(ROOT, f"runs/base_seed{seed}"))
    if len(tried) < BASE_SEEDS:
        print(f"[pipeline] below {COPY_GATE:.0%}: set aside as runs/base_seed{seed}, pretraining seed {seed + 1}")
        return with_seed(cmd, seed + 1)
    best = max(tried, key=tried.get)
    print(f"[pipeline] no seed reached {COPY_GATE:.0%}; keeping the best copier, seed {best}")
    os.replace(os.path.join(ROOT, f"runs/base_seed{best}"), os.path.join(ROOT, "runs/base"))
    return None


def run_jobs(todo, workers, times):
    """Run the jobs on `workers` processes of one thread each, every job as soon as what it needs is done.
    A job's output goes to runs/logs/<job>.log. Stops at the first failure (its log is named). The base
    model goes through base_gate before anything that needs it starts."""
    os.makedirs(os.path.join(ROOT, "runs/logs"), exist_ok=True)
    pending = {k for k, *_ in todo}
    commands = {k: cmd for k, cmd, *_ in todo}
    running, tried = {}, set_aside() if "runs/base" in commands else {}
    if tried:  # the gate was interrupted: the next seed
        commands["runs/base"] = with_seed(commands["runs/base"], max(tried) + 1)
    while pending or running:
        ready = [(k, commands[k]) for k, _, needs, _ in todo
                 if k in pending and not any(n in pending or n in running for n in needs)]
        for key, cmd in ready[:workers - len(running)]:
            log = os.path.join(ROOT, "runs/logs", key.replace("/", "_").replace(" ", "_") + ".log")
            threads = workers if not running and len(ready) == 1 else 1  # alone: every core; idle OpenMP threads spin
            print(f"[pipeline] start {key}: python {' '.join(cmd)}  ({threads} thread(s), log "
                  f"{os.path.relpath(log, ROOT)})", flush=True)
            with open(log, "w") as f:
                proc = subprocess.Popen([sys.executable] + cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                        env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            running[key] = (proc, time.time(), log)
            pending.discard(key)
        time.sleep(0.5)
        for key, (proc, t, log) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            if proc.returncode != 0:
                for p, *_ in running.values():
                    p.kill()
                sys.exit(f"[pipeline] {key} failed (exit {proc.returncode}); see {log}")
            times[key] = round(time.time() - t, 1) + times.get(key, 0)
            print(f"[pipeline] done {key}: {times[key]:.0f} s", flush=True)
            if key == "runs/base":
                again = base_gate(commands[key], tried, workers if not running else 1)
                if again:
                    commands[key] = again
                    pending.add(key)


def rl_real_calls(path):
    """Real search calls made while training an RL checkpoint (saved in its trainer_state.pt)."""
    import torch
    ckpt = checkpoints.resolve_checkpoint(os.path.join(ROOT, path))
    state = os.path.join(ckpt, "trainer_state.pt") if ckpt else None
    if not state or not os.path.isfile(state):
        return None
    return torch.load(state, map_location="cpu", weights_only=False)["extra"].get("real_search_calls")


def load_eval(name):
    """(summary, records) written by the eval job `name`, or None if it has not run."""
    path = os.path.join(ROOT, eval_file(name))
    if not os.path.isfile(path):
        return None
    with open(path[:-len(".jsonl")] + ".summary.json") as f:
        summary = json.load(f)["summaries"][0]
    records = jsonl.read(path)
    summary["name"] = name
    return summary, records


def collect():
    """Each row's summary (written by its eval job) with the real search calls of its RL training; the reading
    checks (counterfactual corpus: how often the answer follows the changed corpus, among the questions the
    model solved with the real one; own observations: EM without the real tool); the paired comparisons."""
    results, records = [], {}
    for name, ckpt, policy, made_by in ROWS:
        loaded = load_eval(name)
        if loaded is None:
            print(f"[pipeline] {name}: no evaluation in {eval_file(name)}, skipped")
            continue
        summary, records[name] = loaded
        summary["comparison_steps"] = eval_lib.comparison_steps(records[name])  # from the trajectories
        summary["reading"] = eval_lib.reading(records[name])
        summary["rl_real_search_calls"] = rl_real_calls(ckpt) if made_by.startswith("runs/rl") else 0
        results.append(summary)
    checks = []
    for name, ckpt, policy, made_by, extra in CHECKS:
        loaded = load_eval(name)
        row = next((r for r, c, p, _ in ROWS if c == ckpt and p == policy), None)
        if loaded is None or row not in records:
            continue
        summary, recs = loaded
        check = {"name": name, "model": row, "overall": summary["overall"],
                 "held_out": summary.get("by_held_out", {}).get("held-out")}
        if "--split" in extra:
            check["follows"] = eval_lib.follows(records[row], recs)
            # compositions alone: a comparison's answer follows a changed year only if it compares right
            check["follows_compositions"] = eval_lib.follows(*[[r for r in rs if r.get("type") != "comparison"]
                                                               for rs in (records[row], recs)])
        checks.append(check)
    pairs = [{"a": a, "b": b, **eval_lib.paired(records[a], records[b])} for a, b in PAIRS
             if a in records and b in records]
    probe = {}
    for key, path in (("probe", PROBE), ("copy", COPY)):
        summary_file = os.path.join(ROOT, path[:-len(".jsonl")] + ".summary.json")
        if os.path.isfile(summary_file):
            with open(summary_file) as f:
                probe[key] = json.load(f)[key]
    return results, checks, pairs, probe


# The paper's Table 1, average EM over its six datasets (R1-Distill-Qwen-7B; arXiv 2503.06580).
PAPER_AVG_EM = {"no tool": 11.8, "workflow": 15.2, "SFT-1": 22.7, "SFT-2": 29.5, "SFT-1&2": 32.0,
                "SFT-1&2&3": 31.3, "RL-2 only": 23.7, "SFT-1&2&3 + RL-1": 31.7, "SFT-1&2&3 + RL-1&2": 33.4,
                "SFT-1&2 + RL-2": 33.9}


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def em_ci(b):
    """EM with its 95% bootstrap interval over questions, or "-" for an empty group."""
    if not b or not b.get("n"):
        return "-"
    lo, hi = b["em_ci"]
    return f"{pct(b['em'])} [{pct(lo)}, {pct(hi)}]"


def table(results, checks=(), pairs=(), probe=None):
    """Markdown: Table 1's shape with EM by hops instead of by dataset (compositions by hops, comparisons
    apart), then the reading checks, the probes ({"probe": probe.py's summary, "copy": probe.py --copy's})
    and the paired comparisons."""
    probe = probe or {}
    lines = ["| method | EM [95% CI] | held-out | known only | 1 hop | 2 hops | 3 hops | 4 hops | comparison "
             "| searches / question | real searches in RL | first step searches: known / unknown entity "
             "| paper avg EM (7B) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in results:
        o, h, w, held = s["overall"], s["by_hops"], s.get("when_to_act"), s.get("by_held_out", {})
        em = lambda b: pct(b["em"]) if b and b.get("n") else "-"  # noqa: E731
        act = f"{pct(w['search_known'])}% / {pct(w['search_unknown'])}%" if w else "-"
        lines.append(f"| {s['name']} | {em_ci(o)} | {em(held.get('held-out'))} | {em(held.get('known only'))} | "
                     + " | ".join(em(h.get(str(k))) for k in (1, 2, 3, 4))
                     + f" | {em(s['by_type'].get('comparison'))} | {o['searches']:.2f} "
                     f"| {s['rl_real_search_calls'] or 0} | {act} | {PAPER_AVG_EM.get(s['name'], '-')} |")
    steps = [s for s in results if s.get("comparison_steps")]
    if steps:  # eval.comparison_steps: which local step of a comparison's decision line goes wrong
        lines += ["", "| comparisons: decision line (eval.comparison_steps) | n | both years as stated above "
                  "| the question's word | yes / no right for the line | the name that follows | both years "
                  "from a result line, not recalled |", "|---|---|---|---|---|---|---|"]
        for s in steps:
            c = s["comparison_steps"]
            lines.append(f"| {s['name']} | {c['n']} | " + " | ".join(
                pct(c[k]) for k in ("years", "word", "decision", "name", "searched")) + " |")
    reads = [s for s in results if s.get("reading")]
    if reads:  # eval.reading: does the reasoning copy the value it read?
        lines += ["", "| reading lines (eval.reading) | lines after a result that states their fact | value "
                  "copied from the result |", "|---|---|---|"]
        lines += [f"| {s['name']} | {s['reading']['n']} | {pct(s['reading']['copied'])}% |" for s in reads]
    if checks:
        lines += ["", "| reading check | questions | EM [95% CI] | held-out EM | of the questions solved with the "
                  "real corpus: follows the changed corpus / answers what it remembers | the same, compositions only |",
                  "|---|---|---|---|---|---|"]
        for c in checks:
            fol = [f"{pct(f['follows_corpus'])}% / {pct(f['follows_memory'])}% (of {f['n_solved']})"
                   if f and f["n_solved"] else "-" for f in (c.get("follows"), c.get("follows_compositions"))]
            held = pct(c["held_out"]["em"]) if c.get("held_out") else "-"
            lines.append(f"| {c['name']} | {c['overall']['n']} | {em_ci(c['overall'])} | {held} | {fol[0]} | {fol[1]} |")
    if probe.get("copy"):  # probe.py --copy: {split, values, copied}
        c = probe["copy"]
        lines += ["", f"base model, teacher-forced (probe.py --copy): copies {c['copied']} of {c['values']} values "
                  f"({pct(c['copied'] / max(c['values'], 1))}%) out of {c['split']} entities' pages"]
    if probe.get("probe"):  # probe.py's summary: {group: {actions, right, wrong, absent, real_has_fact}}
        lines += ["", "| world model (SFT-1&2&3, dev questions): actions about | n | own observation right / "
                  "wrong / absent |", "|---|---|---|"]
        for group, g in probe["probe"].items():
            if isinstance(g, dict) and g.get("actions"):
                lines.append(f"| {group} entities | {g['actions']} | " + " / ".join(
                    f"{100 * g[k] / g['actions']:.1f}%" for k in ("right", "wrong", "absent")) + " |")
    if pairs:
        lines += ["", "| paired comparison (same test questions) | EM difference [95% CI] |", "|---|---|"]
        for p in pairs:
            lo, hi = p["ci"]
            lines.append(f"| {p['a']} - {p['b']} | {100 * p['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-train", action="store_true", help="only evaluate existing checkpoints")
    ap.add_argument("--limit", type=int, default=0, help="evaluate on this many test questions (0 = all)")
    ap.add_argument("--batch-size", type=int, default=64, help="questions decoded together at evaluation")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="jobs run at once, one CPU thread each (default: 2, the embedded setup's cores)")
    ap.add_argument("--table", action="store_true", help="only print the tables, from the evaluations in runs/eval")
    ap.add_argument("--build", metavar="OUT", help="only make this training output and what it needs (e.g. "
                    "runs/sft3; what a stage script runs when its default input is missing)")
    args = ap.parse_args()
    if args.build:
        target = os.path.normpath(args.build)
        if target not in TRAIN:
            ap.error(f"--build {args.build}: not one of the pipeline's outputs ({', '.join(TRAIN)})")
        run_jobs(jobs(0, 0, False, only=needed(target)), max(1, args.jobs), {})
        return
    if args.table:  # from the evaluations' files in runs/eval, as the end of a full run does
        print(table(*collect()))
        return
    t0, times = time.time(), {}
    run_jobs(jobs(args.limit, args.batch_size, args.skip_train), max(1, args.jobs), times)
    results, checks, pairs, probe = collect()
    md = table(results, checks, pairs, probe)
    total = time.time() - t0
    print("\n" + md + f"\n\nwall time {total / 60:.1f} min with {args.jobs} jobs at a time; job seconds {json.dumps(times)}")
    with open(os.path.join(ROOT, "runs/eval/table.md"), "w") as f:
        f.write(md + f"\n\nwall time {total / 60:.1f} min with {args.jobs} jobs at a time; job seconds {json.dumps(times)}\n")
    with open(os.path.join(ROOT, "runs/eval/summaries.json"), "w") as f:
        json.dump({"summaries": results, "checks": checks, "pairs": pairs, "probe": probe, "job_seconds": times,
                   "wall_seconds": round(total, 1), "jobs": args.jobs}, f, indent=1)


if __name__ == "__main__":
    main()
