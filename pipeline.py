"""The whole paper on the embedded world, in one command: world -> base -> SFT stages -> RL -> eval.

Trains every model of the paper's Table 1 with each stage's default settings, evaluates them all on the test
split (greedy, the world's BM25 as the tool), and prints a table shaped like Table 1 (EM with its 95%
interval, on held-out and known-only questions, by hops, comparisons, searches per question, real searches
in RL); then each agent's first-step decision (eval.when_to_act), the reading checks (every agent again on
the counterfactual corpus and on the pages laid out otherwise; SFT-1&2&3 with its own observations), where
comparisons go wrong (eval.comparison_steps), whether chains ask for the right lookups (eval.chain_steps),
the decision word at the first step of the base model and each SFT stage, the base model's copying and
memory and the world model of RL stage 1 (probe.py), and paired comparisons.

    python pipeline.py                                  # everything, into runs/
    python pipeline.py --skip-train                     # only (re)evaluate existing checkpoints
    python pipeline.py --limit 100                      # evaluate on 100 test questions (evenly spaced over the strata)
    python pipeline.py --runs runs/s1 --seed 1 --base runs/base     # another training seed on the same base
    python pipeline.py --runs runs/b1 --base-seed 1                 # another base model
    python pipeline.py --across runs runs/s1 runs/b1                # one row per finished run: each claim, every seed

Rows (-> the checkpoint each is evaluated from, under --runs):
    no tool            base, no tool in the prompt    base, with the tool   base, as an agent
    RAG                workflow: one retrieval with the question, then the model reads
    workflow           workflow: the controller searches at every step (eval.py explains the model)
    SFT-1              sft1            SFT-2              sft2_only (base + stage 2)
    SFT-1&2            sft2            SFT-1&2&3          sft3
    RL-2 only          rl2_only  (GRPO, all real, from the base model)
    SFT-1&2&3 + RL-1   rl/rl1    (the 5:1 run after its simulated steps)
    SFT-1&2&3 + RL-1&2 rl        (the 5:1 run, simulated then real)
    SFT-1&2 + RL-2     rl2_sft12 (GRPO, all real, from SFT-1&2: the paper's comparison for 5:1)
The workflow model is the base model fine-tuned like SFT-2 on the same questions in the workflow's format
(data/build.py's workflow.jsonl), so that it can read what the controller retrieves. Each stage is skipped
when its output already has a checkpoint, so an interrupted pipeline resumes.

Jobs run as separate processes, --jobs at a time (default 2, one per core of the embedded setup's machine),
each on one CPU thread, and each as soon as the jobs it needs are done: the default chain (world -> base ->
SFT-1 -> SFT-2 -> SFT-3 -> 5:1 RL) goes first, the other Table-1 runs and the evaluations fill the other core.
A job that starts alone with nothing else ready (the base model, which every other job needs) gets every
core's thread. The RL runs skip their own validation (--val-prompts 0): every model is evaluated on the test
split here. Each job's output is in RUNS/logs/<job>.log.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import checkpoints
import common
import eval as eval_lib
import jsonl
import probe as probe_lib
from data.build import PERTURBATIONS

ROOT = os.path.dirname(os.path.abspath(__file__))
# The stages, each trained into RUNS/<name> from the stage it names (the world: its data). The first five
# are the default chain a stage script builds when run alone (checkpoints.ensure -> `--build`).
STAGES = {
    "world": (["-m", "data.build"], None),
    "base": (["pretrain.py"], None),
    "sft1": (["sft_contrastive.py"], "base"),
    "sft2": (["sft_coa.py", "--mask-obs"], "sft1"),
    "sft3": (["sft_coa.py"], "sft2"),
    "rl": (["grpo.py", "--sim-ratio", "5"], "sft3"),
    "sft2_only": (["sft_coa.py", "--mask-obs"], "base"),
    "rl2_sft12": (["grpo.py", "--sim-ratio", "0"], "sft2"),
    "rl2_only": (["grpo.py", "--sim-ratio", "0"], "base"),
    "workflow": (["sft_coa.py", "--mask-obs", "--file", "workflow.jsonl"], "base"),
}
DEFAULT_CHAIN = ["runs/world", "runs/base", "runs/sft1", "runs/sft2", "runs/sft3"]
ROWS = [  # (name, checkpoint, eval policy, the stage that makes the checkpoint and counts its real search calls)
    ("no tool", "base", "none", "base"),
    ("base, with the tool", "base", "agent", "base"),
    ("RAG", "workflow", "rag", "workflow"),
    ("workflow", "workflow", "workflow", "workflow"),
    ("SFT-1", "sft1", "agent", "sft1"),
    ("SFT-2", "sft2_only", "agent", "sft2_only"),
    ("SFT-1&2", "sft2", "agent", "sft2"),
    ("SFT-1&2&3", "sft3", "agent", "sft3"),
    ("RL-2 only", "rl2_only", "agent", "rl2_only"),
    ("SFT-1&2&3 + RL-1", "rl/rl1", "agent", "rl"),
    ("SFT-1&2&3 + RL-1&2", "rl", "agent", "rl"),
    ("SFT-1&2 + RL-2", "rl2_sft12", "agent", "rl2_sft12"),
]
# Does a model read the tool? Every agent from SFT-2 on, and the workflow, again on copies of the corpus
# (data/build.py): the counterfactual one (held-out facts changed: does it follow the corpus or its memory?)
# and the other layouts (every fact kept, pages laid out otherwise: does it find a fact by its relation and
# subject, or by where it stands?); and SFT-1&2&3 with its own observations in place of the tool.
# (The 5:1 run's model after its simulated steps, SFT-1&2&3 + RL-1, is checked as the 5:1 run's final model.)
READERS = [row for row in ROWS if row[0] in ("workflow", "SFT-2", "SFT-1&2", "SFT-1&2&3", "SFT-1&2&3 + RL-1&2",
                                              "SFT-1&2 + RL-2")]
CHECK_LIMIT = 200  # questions per reading check (evenly spaced over the strata), paired with the same ones on the real corpus
CHECKS = [(f"{name}, counterfactual corpus", ckpt, policy, made_by,
           ["--split", "test_cf", "--search", "corpus_cf", "--limit", str(CHECK_LIMIT)])
          for name, ckpt, policy, made_by in READERS]
CHECKS += [(f"{name}, {layout} pages", ckpt, policy, made_by, ["--search", f"corpus_{layout}", "--limit", str(CHECK_LIMIT)])
           for layout in PERTURBATIONS for name, ckpt, policy, made_by in READERS]
CHECKS += [("SFT-1&2&3, own observations", "sft3", "agent", "sft3", ["--mode", "sim"])]
DECIDERS = [("base", "base"), ("SFT-1", "sft1"), ("SFT-2", "sft2_only"), ("SFT-1&2", "sft2"), ("SFT-1&2&3", "sft3")]
# Paired comparisons on the same test questions (per-question EM difference, 95% bootstrap interval)
PAIRS = [("SFT-1", "no tool"), ("SFT-2", "SFT-1"), ("SFT-1&2", "SFT-2"), ("SFT-1&2&3", "SFT-1&2"),
         ("SFT-1&2&3 + RL-1", "SFT-1&2&3"), ("SFT-1&2&3 + RL-1&2", "SFT-1&2&3"),
         ("SFT-1&2 + RL-2", "SFT-1&2"), ("SFT-1&2&3 + RL-1&2", "SFT-1&2 + RL-2"),
         ("SFT-1&2&3", "workflow"), ("SFT-1&2&3 + RL-1&2", "workflow"), ("SFT-1&2 + RL-2", "workflow")]
# Priority when several jobs are ready: the longest remaining chain first (world -> ... -> sft3 -> rl), then
# the longest side job (GRPO from the base model), so that the last minutes are filled by short
# evaluations instead of one long job alone on a core.
ORDER = ["world", "base", "sft1", "sft2", "sft3", "rl", "rl2_only", "sft2_only", "workflow", "rl2_sft12"]


class Plan:
    """Where a pipeline's outputs go (--runs) and the seeds it trains with: the base model's (--base-seed, or an
    existing base model, --base) and every later stage's (--seed)."""

    def __init__(self, runs="runs", seed=0, base_seed=0, base=None):
        self.runs, self.seed, self.base_seed, self.base = runs, seed, base_seed, base

    def path(self, name):
        """A stage's output (or, for a check's corpus_*, the world's file)."""
        if name == "base" and self.base:
            return self.base
        if name.startswith("corpus_"):
            return f"{self.runs}/world/{name}.jsonl"
        return f"{self.runs}/{name}"

    def command(self, name):
        """The command that trains stage `name` (its script's defaults, but for where it reads and writes)."""
        script, start = STAGES[name]
        if name == "world":
            return script + ["--out", self.path(name)]
        cmd = script + ["--data", self.path("world"), "--out", self.path(name)]
        cmd += ["--init", self.path(start)] if start else []
        return cmd + ["--seed", str(self.base_seed if name == "base" else self.seed)]

    def eval_file(self, name):
        return os.path.join(self.runs, "eval", name.replace(",", "").replace(" ", "_").replace("&", "+") + ".jsonl")

    def probe_file(self, kind):
        """probe.py's outputs: the world model that RL stage 1 runs on ("probe"), the base model's copying out of
        search results ("copy") and its memory of the known entities' facts ("recall")."""
        return os.path.join(self.runs, "eval", f"{kind}.jsonl")


def needed(name):
    """The stages `name` is made from, itself included (what `--build` runs)."""
    start = STAGES[name][1]
    return {name} | ({"world"} if name != "world" else set()) | (needed(start) if start else set())


def jobs(plan, limit, batch_size, skip_train, only=None):
    """Every job of the pipeline as (key, command, needs), training first, in priority order. A stage whose
    output already has a checkpoint is left out, so an interrupted pipeline resumes. only: a set of stages;
    then just those, and no evaluation."""
    out = []
    for name in ORDER if not skip_train else []:
        if (only is not None and name not in only) or (name == "base" and plan.base):
            continue
        if checkpoints.have(os.path.join(ROOT, plan.path(name))):
            print(f"[pipeline] {plan.path(name)}: already done, skipping")
            continue
        cmd = plan.command(name)
        cmd += ["--val-prompts", "0"] if cmd[0] == "grpo.py" else []  # every RL model is evaluated below
        # --overwrite: an output without a complete checkpoint may still hold a killed run's step directories
        needs = [] if name == "world" else ["world"] + ([STAGES[name][1]] if STAGES[name][1] else [])
        out.append((name, cmd + ["--overwrite"] if name != "world" else cmd, needs))
    scheduled = {k for k, *_ in out}
    out = [(k, cmd, [n for n in needs if n in scheduled]) for k, cmd, needs in out]
    if only is not None:
        return out
    for name, ckpt, policy, made_by, extra in [(*row, []) for row in ROWS] + CHECKS:
        if skip_train and not checkpoints.have(os.path.join(ROOT, plan.path(ckpt))):
            print(f"[pipeline] {name}: no checkpoint at {plan.path(ckpt)}, not evaluated")
            continue
        extra = [plan.path(x) if x.startswith("corpus_") else x for x in extra]
        cmd = ["eval.py", "--ckpt", plan.path(ckpt), "--data", plan.path("world"), "--policy", policy, "--name", name,
               "--out", plan.eval_file(name), "--batch-size", str(batch_size), "--no-plot"] + extra
        cmd += ["--limit", str(limit)] if limit and "--limit" not in extra else []
        out.append((f"eval {name}", cmd, [n for n in (made_by, "world") if n in scheduled]))
    world = ["--data", plan.path("world")]
    probes = [("probe SFT-1&2&3", ["probe.py", "--ckpt", plan.path("sft3"), "--split", "rl", "--batch-size",
                                   str(batch_size)] + (["--limit", str(limit)] if limit else []), "sft3", "probe"),
              ("copy base", ["probe.py", "--ckpt", plan.path("base"), "--copy", "3000", "--split", "train"], "base", "copy"),
              ("recall base", ["probe.py", "--ckpt", plan.path("base"), "--recall", "1000"], "base", "recall")]
    # the decision word at the first step, teacher-forced: stage 1's contribution to "when to act", and each
    # later stage's (probe.py --decision)
    probes += [(f"decision {name}", ["probe.py", "--ckpt", plan.path(ckpt), "--decision", "300"], ckpt,
                f"decision-{ckpt}") for name, ckpt in DECIDERS]
    for key, cmd, made_by, kind in probes:
        out.append((key, cmd + world + ["--out", plan.probe_file(kind)], [n for n in (made_by, "world") if n in scheduled]))
    return out


def run_jobs(todo, workers, times, logs):
    """Run the jobs on `workers` processes of one thread each, every job as soon as what it needs is done.
    A job's output goes to LOGS/<job>.log. Stops at the first failure (its log is named)."""
    os.makedirs(os.path.join(ROOT, logs), exist_ok=True)
    pending = {k for k, *_ in todo}
    commands = {k: cmd for k, cmd, _ in todo}
    running = {}
    while pending or running:
        ready = [(k, commands[k]) for k, _, needs in todo
                 if k in pending and not any(n in pending or n in running for n in needs)]
        for key, cmd in ready[:workers - len(running)]:
            log = os.path.join(ROOT, logs, key.replace("/", "_").replace(" ", "_") + ".log")
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


def rl_real_calls(path):
    """Real search calls made while training an RL checkpoint (saved in its trainer_state.pt)."""
    import torch
    ckpt = checkpoints.resolve_checkpoint(os.path.join(ROOT, path))
    state = os.path.join(ckpt, "trainer_state.pt") if ckpt else None
    if not state or not os.path.isfile(state):
        return None
    return torch.load(state, map_location="cpu", weights_only=False)["extra"].get("real_search_calls")


def load_eval(plan, name):
    """(summary, records) written by the eval job `name`, or None if it has not run."""
    path = os.path.join(ROOT, plan.eval_file(name))
    if not os.path.isfile(path):
        return None
    with open(path[:-len(".jsonl")] + ".summary.json") as f:
        summary = json.load(f)["summaries"][0]
    records = jsonl.read(path)
    summary["name"] = name
    return summary, records


def unrehearsed_questions(plan):
    """The ids of the test questions whose first lookup is a known fact that no SFT text recalls
    (probe.sft_recalls), or None without the world's files."""
    world_dir = os.path.join(ROOT, plan.path("world"))
    if not all(os.path.isfile(os.path.join(world_dir, f)) for f in ("world.json", "stage1.jsonl", "stage2.jsonl")):
        return None
    with open(os.path.join(world_dir, "world.json")) as f:
        world = json.load(f)
    rehearsed = probe_lib.sft_recalls(world_dir, world)
    known = {e["name"] for e in world["entities"] if e.get("known")}
    return {q for q, lookups in world["question_lookups"].items()
            if lookups and lookups[0][0] in known and tuple(lookups[0]) not in rehearsed}


def known_first_steps(records, unrehearsed):
    """The first step's decision on the questions that start from a known fact, split by whether SFT recalls
    that fact (unrehearsed: the ids of those it does not, unrehearsed_questions) -> {n_known_in_sft,
    search_known_in_sft, n_known_not_in_sft, search_known_not_in_sft} (a share of searches; None where n is 0)."""
    out = {}
    for key, want in (("in_sft", False), ("not_in_sft", True)):
        first = [r["first_step_search"] for r in records if r.get("first_known") and (r["id"] in unrehearsed) == want]
        out[f"n_known_{key}"], out[f"search_known_{key}"] = len(first), sum(first) / len(first) if first else None
    return out


def collect(plan):
    """Each row's summary (written by its eval job) with the real search calls of its RL training; the reading
    checks (counterfactual corpus: of the questions solved with the real one, how often the answer follows the
    changed corpus; layouts: EM, its paired difference to the same questions on the real corpus, and the
    reading lines' copy rate; own observations: EM without the real tool); the probes; the paired comparisons."""
    results, records = [], {}
    unrehearsed = unrehearsed_questions(plan)
    for name, ckpt, policy, made_by in ROWS:
        loaded = load_eval(plan, name)
        if loaded is None:
            print(f"[pipeline] {name}: no evaluation in {plan.eval_file(name)}, skipped")
            continue
        summary, records[name] = loaded
        summary["comparison_steps"] = eval_lib.comparison_steps(records[name])  # from the trajectories
        summary["chain_steps"] = eval_lib.chain_steps(records[name])
        summary["reading"] = eval_lib.reading(records[name])
        summary["rl_real_search_calls"] = rl_real_calls(plan.path(ckpt)) if made_by.startswith("rl") else 0
        if summary.get("when_to_act") and unrehearsed:
            summary["when_to_act"].update(known_first_steps(records[name], unrehearsed))
        results.append(summary)
    checks = []
    for name, ckpt, policy, made_by, extra in CHECKS:
        loaded = load_eval(plan, name)
        row = next((r for r, c, p, _ in ROWS if c == ckpt and p == policy), None)
        if loaded is None or row not in records:
            continue
        summary, recs = loaded
        check = {"name": name, "model": row, "overall": summary["overall"], "reading": eval_lib.reading(recs)}
        if "test_cf" in extra:
            check["follows"] = eval_lib.follows(records[row], recs)
        elif "--search" in extra:  # a layout: the same questions on the real corpus
            check["layout"] = name.rsplit(", ", 1)[1].split()[0]
            check["paired"] = eval_lib.paired(recs, records[row])
        checks.append(check)
    pairs = [{"a": a, "b": b, **eval_lib.paired(records[a], records[b])} for a, b in PAIRS
             if a in records and b in records]
    probe = {}
    for key in ("probe", "copy", "recall") + tuple(f"decision-{ckpt}" for _, ckpt in DECIDERS):
        summary_file = os.path.join(ROOT, plan.probe_file(key)[:-len(".jsonl")] + ".summary.json")
        if os.path.isfile(summary_file):
            with open(summary_file) as f:
                probe[key] = json.load(f)[key.split("-")[0]]
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


def diff_ci(p):
    lo, hi = p["ci"]
    return f"{100 * p['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def table(results, checks=(), pairs=(), probe=None):
    """Markdown: Table 1's shape with EM by hops instead of by dataset (compositions by hops, comparisons apart);
    when to act; the reading checks; where comparisons go wrong; the probes; the paired comparisons."""
    probe = probe or {}
    em = lambda b: pct(b["em"]) if b and b.get("n") else "-"  # noqa: E731
    lines = ["| method | EM [95% CI] | held-out | known only | 1 hop | 2 hops | 3 hops | 4 hops | comparison "
             "| searches / question | real searches in RL | paper avg EM (7B) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in results:
        o, h, held = s["overall"], s["by_hops"], s.get("by_held_out", {})
        lines.append(f"| {s['name']} | {em_ci(o)} | {em(held.get('held-out'))} | {em(held.get('known only'))} | "
                     + " | ".join(em(h.get(str(k))) for k in (1, 2, 3, 4))
                     + f" | {em(s['by_type'].get('comparison'))} | {o['searches']:.2f} "
                     f"| {s['rl_real_search_calls'] or 0} | {PAPER_AVG_EM.get(s['name'], '-')} |")
    acts = [s for s in results if s.get("when_to_act")]
    if acts:  # eval.when_to_act: the first step's decision, by whether the model knows the entity
        lines += ["", "| when to act (eval.when_to_act) | first step searches: known entity | unknown entity "
                  "| searches / question, known-only questions | known facts that SFT recalls "
                  "| known facts that no SFT text recalls |", "|---|---|---|---|---|---|"]
        for s in acts:
            w = s["when_to_act"]
            known = s.get("by_held_out", {}).get("known only")
            searches = f"{known['searches']:.2f}" if known else "-"
            by_sft = [f"{pct(w[f'search_known_{k}'])}% of {w[f'n_known_{k}']}" if w.get(f"n_known_{k}") else "-"
                      for k in ("in_sft", "not_in_sft")]
            lines.append(f"| {s['name']} | {pct(w['search_known'])}% | {pct(w['search_unknown'])}% | {searches} "
                         f"| {' | '.join(by_sft)} |")
    decisions = [(name, probe[f"decision-{ckpt}"]) for name, ckpt in DECIDERS if probe.get(f"decision-{ckpt}")]
    if decisions:  # probe.py --decision: teacher-forced at the first step's decision word
        lines += ["", "| decision word at the first step (probe.py --decision 300) | greedy writes 'missing': known "
                  "/ train / test entities | 'missing' over the fact's value | mean logit margin, missing - value "
                  "| linear probe for 'known' | known facts that no SFT text recalls: greedy 'missing' |",
                  "|---|---|---|---|---|---|"]
        for name, d in decisions:
            unrehearsed = d.get(probe_lib.NOT_IN_SFT)
            lines.append(f"| {name} | " + " / ".join(f"{pct(d[g]['greedy'])}%" for g in ("known", "train", "test"))
                         + " | " + " / ".join(f"{pct(d[g]['searches'])}%" for g in ("known", "train", "test"))
                         + " | " + " / ".join(f"{d[g]['margin']:+.2f}" for g in ("known", "train", "test"))
                         + f" | {d['linear_probe_balanced_accuracy']:.2f} | "
                         + (f"{pct(unrehearsed['greedy'])}% of {unrehearsed['cases']}" if unrehearsed else "-") + " |")
    layouts = [c for c in checks if c.get("layout")]
    if layouts:  # does the model find a fact by its relation and subject? the same questions, pages laid out otherwise
        names = list(dict.fromkeys(c["model"] for c in layouts))
        kinds = list(dict.fromkeys(c["layout"] for c in layouts))
        lines += ["", "| reading check: pages laid out otherwise (EM on the same questions, and minus the real corpus) | "
                  + " | ".join(kinds) + " | reading lines that copy the result's value: real / " + " / ".join(kinds) + " |",
                  "|---|" + "---|" * (len(kinds) + 1)]
        real = {s["name"]: s for s in results}
        for m in names:
            cells = []
            for k in kinds:
                c = next((c for c in layouts if c["model"] == m and c["layout"] == k), None)
                cells.append(f"{em(c['overall'])} ({diff_ci(c['paired'])})" if c else "-")
            copy = [real[m].get("reading")] + [next((c.get("reading") for c in layouts if c["model"] == m
                                                     and c["layout"] == k), None) for k in kinds]
            lines.append(f"| {m} | " + " | ".join(cells) + " | "
                         + " / ".join(f"{pct(r['copied'])}%" if r else "-" for r in copy) + " |")
    cfs = [c for c in checks if c.get("follows") is not None]
    if cfs:
        lines += ["", "| reading check: counterfactual corpus | questions | EM [95% CI] | of the questions solved with "
                  "the real corpus: follows the changed corpus / answers what it remembers |", "|---|---|---|---|"]
        for c in cfs:
            f = c["follows"]
            fol = f"{pct(f['follows_corpus'])}% / {pct(f['follows_memory'])}% (of {f['n_solved']})" if f["n_solved"] else "-"
            lines.append(f"| {c['model']} | {c['overall']['n']} | {em_ci(c['overall'])} | {fol} |")
    own = [c for c in checks if c["name"].endswith("own observations")]
    for c in own:
        lines += ["", f"{c['model']} with its own observations in place of the tool: EM {em_ci(c['overall'])}"]
    steps = [s for s in results if s.get("comparison_steps")]
    if steps:  # eval.comparison_steps: which local step of a comparison's decision line goes wrong
        lines += ["", "| comparisons: decision line (eval.comparison_steps) | n | both years as stated above "
                  "| yes / no right for the line | the name that follows | both years from a result line, not "
                  "recalled |", "|---|---|---|---|---|---|"]
        for s in steps:
            c = s["comparison_steps"]
            lines.append(f"| {s['name']} | {c['n']} | " + " | ".join(
                pct(c[k]) for k in ("years", "decision", "name", "searched")) + " |")
    chains = [s for s in results if s.get("chain_steps")]
    if chains:  # eval.chain_steps: does each step of a chain ask for the right relation of the right entity?
        lines += ["", "| chains of 2-4 hops: need lines (eval.chain_steps) | n | the question's relations, in order "
                  "| each about the value stated before |", "|---|---|---|---|"]
        for s in chains:
            c = s["chain_steps"]
            lines.append(f"| {s['name']} | {c['n']} | {pct(c['relations'])} | {pct(c['subjects'])} |")
    for key, what in (("copy", "copies out of a search result (train entities, whose pages no base text holds)"),
                      ("recall", "remembers (known entities, asked without the tool)")):
        if probe.get(key):  # probe.py --copy / --recall: {values, copied, by_relation}
            c = probe[key]
            lines += ["", f"base model, teacher-forced (probe.py --{key}): {what} {c['copied']} of {c['values']} "
                      f"values ({pct(c['copied'] / max(c['values'], 1))}%); fewest by relation: " + ", ".join(
                          f"{rel} {k}/{n}" for rel, (k, n) in sorted(c["by_relation"].items(), key=lambda x: x[1][0] / x[1][1])[:3])]
    if probe.get("probe"):  # probe.py's summary: {group: {actions, right, wrong, absent, real_has_fact}}
        lines += ["", "| world model (SFT-1&2&3, RL prompts): actions about | n | own observation right / "
                  "wrong / absent |", "|---|---|---|"]
        for group, g in probe["probe"].items():
            if isinstance(g, dict) and g.get("actions"):
                lines.append(f"| {group} entities | {g['actions']} | " + " / ".join(
                    f"{100 * g[k] / g['actions']:.1f}%" for k in ("right", "wrong", "absent")) + " |")
    if pairs:
        lines += ["", "| paired comparison (same test questions) | EM difference [95% CI] |", "|---|---|"]
        lines += [f"| {p['a']} - {p['b']} | {diff_ci(p)} |" for p in pairs]
    return "\n".join(lines)


AGENTS = ["SFT-2", "SFT-1&2", "SFT-1&2&3", "SFT-1&2&3 + RL-1&2", "SFT-1&2 + RL-2"]  # every agent from SFT-2 on


def across(runs):
    """Markdown: one row per run (each RUN/eval/summaries.json, written at the end of a full pipeline run) with
    what the README claims, so that a claim can be checked on every seed: the best agent against the workflow,
    the paper's RL comparison, each SFT stage's EM, when to act, comparisons, the reading checks and the base
    model's copying."""
    lines = ["| run | base / training seed | workflow EM | best agent: EM, searches | best agent - workflow "
             "| 5:1 - SFT-1&2 + RL-2 (real searches) | SFT-1&2 - SFT-2 | SFT-1&2&3 - SFT-1&2 "
             "| SFT-1&2 first step searches: known / unknown (known: SFT recalls the fact / no SFT text does) "
             "| SFT-1&2 writes 'missing' (probe.py --decision): known facts / those no SFT text recalls "
             "| comparisons, agents from SFT-2 on "
             "| counterfactual followed | each layout - real corpus, worst agent | base copies, worst relation "
             "| minutes |", "|" + "---|" * 15]
    for run in runs:
        with open(os.path.join(ROOT, run, "eval", "summaries.json")) as f:
            d = json.load(f)
        rows = {s["name"]: s for s in d["summaries"]}
        pairs = {(p["a"], p["b"]): p for p in d["pairs"]}
        agents = [a for a in AGENTS if a in rows]
        best = max(agents, key=lambda a: rows[a]["overall"]["em"])
        records = {n: jsonl.read(os.path.join(ROOT, Plan(run).eval_file(n))) for n in (best, "workflow")}
        best_vs_workflow = eval_lib.paired(records[best], records["workflow"])
        decided = lambda p: (f"{pct(p['known']['greedy'])}% / " + (  # noqa: E731
            f"{pct(p[probe_lib.NOT_IN_SFT]['greedy'])}%" if probe_lib.NOT_IN_SFT in p else "-")) if p else "-"
        span = lambda xs: f"{min(xs):.1f}-{max(xs):.1f}"  # noqa: E731
        w = rows["SFT-1&2"]["when_to_act"]
        layouts = {}
        for c in d["checks"]:
            if c.get("layout") and c["model"] in agents:
                layouts[c["layout"]] = min(layouts.get(c["layout"], 1.0), c["paired"]["diff"])
        follows = [c["follows"]["follows_corpus"] for c in d["checks"] if c.get("follows") and c["model"] in agents]
        copy = d["probe"]["copy"]
        worst = min(copy["by_relation"].items(), key=lambda x: x[1][0] / x[1][1])
        base = f"{d['base']}" if d.get("base") else f"seed {d['base_seed']}"
        lines.append(
            f"| {run} | {base} / {d['seed']} | {pct(rows['workflow']['overall']['em'])} "
            f"| {best} {pct(rows[best]['overall']['em'])}, {rows[best]['overall']['searches']:.2f} "
            f"(workflow {rows['workflow']['overall']['searches']:.2f}) "
            f"| {diff_ci(best_vs_workflow)} "
            f"| {diff_ci(pairs[('SFT-1&2&3 + RL-1&2', 'SFT-1&2 + RL-2')])} ({rows['SFT-1&2&3 + RL-1&2']['rl_real_search_calls']} "
            f"/ {rows['SFT-1&2 + RL-2']['rl_real_search_calls']}) "
            f"| {diff_ci(pairs[('SFT-1&2', 'SFT-2')])} | {diff_ci(pairs[('SFT-1&2&3', 'SFT-1&2')])} "
            f"| {pct(w['search_known'])}% / {pct(w['search_unknown'])}% ("
            + " / ".join(f"{pct(w[f'search_known_{k}'])}% of {w[f'n_known_{k}']}" if w.get(f"n_known_{k}") else "-"
                         for k in ("in_sft", "not_in_sft"))
            + ") "
            f"| {decided(d['probe'].get('decision-sft2'))} "
            f"| {span([100 * rows[a]['by_type']['comparison']['em'] for a in agents])} "
            f"| {span([100 * x for x in follows])}% "
            f"| " + ", ".join(f"{k} {100 * v:+.1f}" for k, v in layouts.items())
            + f" | {copy['copied']}/{copy['values']}, {worst[0]} {worst[1][0]}/{worst[1][1]} "
            f"| {d['wall_seconds'] / 60:.1f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    ap.add_argument("--runs", default="runs", help="where every output goes: RUNS/world, RUNS/base, ..., RUNS/eval")
    ap.add_argument("--seed", type=int, default=0, help="seed of every training stage after the base model")
    ap.add_argument("--base-seed", type=int, default=0, help="seed of the base model's pretraining")
    ap.add_argument("--base", help="an existing base model to start from instead of pretraining one (e.g. "
                                   "runs/base, for another --seed on the same base)")
    ap.add_argument("--skip-train", action="store_true", help="only evaluate existing checkpoints")
    ap.add_argument("--limit", type=int, default=0, help="evaluate on this many test questions (0 = all)")
    ap.add_argument("--batch-size", type=int, default=200, help="questions decoded together at evaluation")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="jobs run at once, one CPU thread each (default: 2, the embedded setup's cores)")
    ap.add_argument("--table", action="store_true", help="only print the tables, from the evaluations in RUNS/eval "
                    "(and refresh RUNS/eval/summaries.json with them)")
    ap.add_argument("--across", nargs="+", metavar="RUNS", help="only print one row per finished run (its "
                    "RUNS/eval/summaries.json) with what the README claims, to check each claim on every seed")
    ap.add_argument("--build", metavar="OUT", help="only make this stage's output and what it needs (e.g. runs/sft3; "
                    "what a stage script runs when its default input is missing)")
    args = ap.parse_args()
    plan = Plan(args.runs, args.seed, args.base_seed, args.base)
    if args.build:
        runs, name = os.path.split(os.path.normpath(args.build))
        if name not in STAGES:
            ap.error(f"--build {args.build}: not one of the pipeline's outputs ({', '.join(STAGES)}, under a --runs)")
        plan.runs = runs or "."
        run_jobs(jobs(plan, 0, 0, False, only=needed(name)), max(1, args.jobs), {}, os.path.join(plan.runs, "logs"))
        return
    if args.across:
        print(across(args.across))
        return
    if args.table:  # from the evaluations' files in RUNS/eval, as the end of a full run does
        results, checks, pairs, probe = collect(plan)
        print(table(results, checks, pairs, probe))
        saved = os.path.join(ROOT, args.runs, "eval", "summaries.json")
        if os.path.isfile(saved):  # a finished run's: refreshed, for a check or probe rerun by hand since
            with open(saved) as f:
                run = json.load(f)
            with open(saved, "w") as f:
                json.dump({**run, "summaries": results, "checks": checks, "pairs": pairs, "probe": probe}, f, indent=1)
        return
    t0, times = time.time(), {}
    run_jobs(jobs(plan, args.limit, args.batch_size, args.skip_train), max(1, args.jobs), times,
             os.path.join(plan.runs, "logs"))
    results, checks, pairs, probe = collect(plan)
    md = table(results, checks, pairs, probe)
    total = time.time() - t0
    md += f"\n\nwall time {total / 60:.1f} min with {args.jobs} jobs at a time; job seconds {json.dumps(times)}"
    print("\n" + md)
    with open(os.path.join(ROOT, args.runs, "eval", "table.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(ROOT, args.runs, "eval", "summaries.json"), "w") as f:
        json.dump({"summaries": results, "checks": checks, "pairs": pairs, "probe": probe, "job_seconds": times,
                   "wall_seconds": round(total, 1), "jobs": args.jobs, "seed": args.seed,
                   "base_seed": args.base_seed, "base": args.base}, f, indent=1)


if __name__ == "__main__":
    main()
