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
from data.build import PERTURBATIONS

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
    ("base, with the tool", "runs/base", "agent", "runs/base"),
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
# Does a model read the tool? Every agent from SFT-2 on, and the workflow, again on copies of the corpus
# (data/build.py): the counterfactual one (held-out facts changed: does it follow the corpus or its memory?)
# and the other layouts (every fact kept, pages laid out otherwise: does it find a fact by its relation and
# subject, or by where it stands?); and SFT-1&2&3 with its own observations in place of the tool.
READERS = [row for row in ROWS if row[0] in ("workflow", "SFT-2", "SFT-1&2", "SFT-1&2&3", "SFT-1&2&3 + RL-1",
                                              "SFT-1&2&3 + RL-1&2", "SFT-1&2 + RL-2", "SFT-1&2&3 + RL-2")]
LAYOUT_LIMIT = 400  # test questions per layout (evenly spaced over the strata), paired with the same ones on the real corpus
CHECKS = [(f"{name}, counterfactual corpus", ckpt, policy, made_by,
           ["--split", "test_cf", "--search", "runs/world/corpus_cf.jsonl"]) for name, ckpt, policy, made_by in READERS]
CHECKS += [(f"{name}, {layout} pages", ckpt, policy, made_by,
            ["--search", f"runs/world/corpus_{layout}.jsonl", "--limit", str(LAYOUT_LIMIT)])
           for layout in PERTURBATIONS for name, ckpt, policy, made_by in READERS]
CHECKS += [("SFT-1&2&3, own observations", "runs/sft3", "agent", "runs/sft3", ["--mode", "sim"])]
# Paired comparisons on the same test questions (per-question EM difference, 95% bootstrap interval)
PAIRS = [("SFT-1", "no tool"), ("SFT-2", "SFT-1"), ("SFT-1&2", "SFT-2"), ("SFT-1&2&3", "SFT-1&2"),
         ("SFT-1&2&3 + RL-1", "SFT-1&2&3"), ("SFT-1&2&3 + RL-1&2", "SFT-1&2&3"), ("SFT-1&2&3 + RL-2", "SFT-1&2&3"),
         ("SFT-1&2 + RL-2", "SFT-1&2"), ("SFT-1&2&3 + RL-1&2", "SFT-1&2 + RL-2"),
         ("SFT-1&2&3 + RL-1&2", "SFT-1&2&3 + RL-2"), ("SFT-1&2&3", "workflow"), ("SFT-1&2 + RL-2", "workflow"),
         ("SFT-1&2&3 + RL-2", "workflow")]
# Priority when several jobs are ready: the longest remaining chain first (world -> ... -> sft3 -> rl), then
# the longest side job (GRPO from the base model), so that the last minutes are filled by short
# evaluations instead of one long job alone on a core.
ORDER = CHAIN + ["runs/rl", "runs/rl2_only", "runs/rl2_sft3", "runs/sft2_only", "runs/workflow", "runs/rl2_sft12"]


PROBE = "runs/eval/probe.jsonl"    # the world model of SFT-1&2&3 on the RL prompts' own lookups (probe.py)
COPY = "runs/eval/copy.jsonl"      # the base model copies held-out values out of search results (probe.py --copy)
RECALL = "runs/eval/recall.jsonl"  # the base model remembers the known entities' facts (probe.py --recall)


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
               "--batch-size", str(batch_size)] + extra + (["--limit", str(limit)] if limit and "--limit" not in extra else [])
        out.append((f"eval {name}", cmd, [made_by], None))
    # the world model that RL stage 1 runs on: SFT-1&2&3's own observations at the RL prompts' actions against
    # the real ones, by the split of the entity looked up (probe.py)
    out.append(("probe SFT-1&2&3", ["probe.py", "--ckpt", "runs/sft3", "--split", "rl", "--out", PROBE,
                                    "--batch-size", str(batch_size)] + (["--limit", str(limit)] if limit else []),
                ["runs/sft3"], None))
    # what the base model brings to SFT: it copies a value out of a search result, and remembers the known facts
    out.append(("copy base", ["probe.py", "--ckpt", "runs/base", "--copy", "1000", "--split", "test", "--out", COPY],
                ["runs/base"], None))
    out.append(("recall base", ["probe.py", "--ckpt", "runs/base", "--recall", "1000", "--out", RECALL],
                ["runs/base"], None))
    return out


def run_jobs(todo, workers, times):
    """Run the jobs on `workers` processes of one thread each, every job as soon as what it needs is done.
    A job's output goes to runs/logs/<job>.log. Stops at the first failure (its log is named)."""
    os.makedirs(os.path.join(ROOT, "runs/logs"), exist_ok=True)
    pending = {k for k, *_ in todo}
    commands = {k: cmd for k, cmd, *_ in todo}
    running = {}
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
    checks (counterfactual corpus: of the questions solved with the real one, how often the answer follows the
    changed corpus; layouts: EM, its paired difference to the same questions on the real corpus, and the
    reading lines' copy rate; own observations: EM without the real tool); the probes; the paired comparisons."""
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
    for key, path in (("probe", PROBE), ("copy", COPY), ("recall", RECALL)):
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
                  "| searches / question, known-only questions |", "|---|---|---|---|"]
        for s in acts:
            w = s["when_to_act"]
            known = s.get("by_held_out", {}).get("known only")
            searches = f"{known['searches']:.2f}" if known else "-"
            lines.append(f"| {s['name']} | {pct(w['search_known'])}% | {pct(w['search_unknown'])}% | {searches} |")
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
    for key, what in (("copy", "copies out of a search result (held-out test entities)"),
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
