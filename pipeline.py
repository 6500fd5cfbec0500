"""The whole paper on the embedded world, in one command: world -> base -> SFT stages -> RL -> eval.

Trains every model of the paper's Table 1 with each stage's default settings, evaluates them all
on the test split (greedy, the world's BM25 as the tool), and prints a table shaped like Table 1:
EM overall and by number of hops, F1, and real search calls (per question at evaluation, and in
total during RL training).

    python pipeline.py                       # everything, into runs/
    python pipeline.py --skip-train          # only (re)evaluate existing checkpoints
    python pipeline.py --limit 100           # evaluate on the first 100 test questions only

Rows (-> the checkpoint each is evaluated from):
    no tool            base model, no tool                       runs/base
    RAG                base model, one retrieval with the question
    workflow           base model, the controller searches at every step (eval.py explains why fair)
    SFT-1              runs/sft1            SFT-2             runs/sft2_only (base + stage 2)
    SFT-1&2            runs/sft2            SFT-1&2&3         runs/sft3
    RL-2 only          runs/rl2_only  (GRPO, all real, from the base model)
    SFT-1&2&3 + RL-1   runs/rl/rl1    (the 5:1 run after its simulated steps)
    SFT-1&2&3 + RL-1&2 runs/rl        (the 5:1 run, simulated then real)
    SFT-1&2 + RL-2     runs/rl2_sft12 (GRPO, all real, from SFT-1&2)
    SFT-1&2&3 + RL-2   runs/rl2_sft3  (all real from the same start as the 5:1 run: the paper's
                                       claim that simulated RL lands near all-real RL)
Each stage is skipped when its output already has a checkpoint, so an interrupted pipeline resumes.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import common

ROOT = os.path.dirname(os.path.abspath(__file__))
STAGES = list(common.PIPELINE.items()) + [  # (output, command), in order: the default chain, then Table 1's extra runs
    ("runs/sft2_only", ["sft_coa.py", "--mask-obs", "--init", "runs/base", "--out", "runs/sft2_only"]),
    ("runs/rl", ["grpo.py", "--sim-ratio", "5"]),
    ("runs/rl2_sft3", ["grpo.py", "--sim-ratio", "0", "--out", "runs/rl2_sft3"]),
    ("runs/rl2_sft12", ["grpo.py", "--sim-ratio", "0", "--init", "runs/sft2", "--out", "runs/rl2_sft12"]),
    ("runs/rl2_only", ["grpo.py", "--sim-ratio", "0", "--init", "runs/base", "--out", "runs/rl2_only"]),
]
ROWS = [  # (name, checkpoint, eval policy, RL run whose real search calls are reported)
    ("no tool", "runs/base", "none", None),
    ("RAG", "runs/base", "rag", None),
    ("workflow", "runs/base", "workflow", None),
    ("SFT-1", "runs/sft1", "agent", None),
    ("SFT-2", "runs/sft2_only", "agent", None),
    ("SFT-1&2", "runs/sft2", "agent", None),
    ("SFT-1&2&3", "runs/sft3", "agent", None),
    ("RL-2 only", "runs/rl2_only", "agent", "runs/rl2_only"),
    ("SFT-1&2&3 + RL-1", "runs/rl/rl1", "agent", "runs/rl/rl1"),
    ("SFT-1&2&3 + RL-1&2", "runs/rl", "agent", "runs/rl"),
    ("SFT-1&2 + RL-2", "runs/rl2_sft12", "agent", "runs/rl2_sft12"),
    ("SFT-1&2&3 + RL-2", "runs/rl2_sft3", "agent", "runs/rl2_sft3"),
]


def train(log):
    """Run every stage whose output does not exist yet, timing each."""
    for out, cmd in STAGES:
        if common.have(os.path.join(ROOT, out)):
            print(f"[pipeline] {out}: already done, skipping")
            continue
        print(f"[pipeline] {out}: python {' '.join(cmd)}", flush=True)
        t = time.time()
        subprocess.run([sys.executable] + cmd, check=True, cwd=ROOT)
        log[out] = round(time.time() - t, 1)
        print(f"[pipeline] {out}: {log[out]:.0f} s", flush=True)


def rl_real_calls(path):
    """Real search calls made while training an RL checkpoint (saved in its trainer_state.pt)."""
    import torch
    ckpt = common.resolve_checkpoint(os.path.join(ROOT, path))
    state = os.path.join(ckpt, "trainer_state.pt") if ckpt else None
    if not state or not os.path.isfile(state):
        return None
    return torch.load(state, map_location="cpu", weights_only=False)["extra"].get("real_search_calls")


def evaluate_all(limit, batch_size):
    import torch
    import env
    import eval as ev
    from model import Qwen2
    from tokenizer import Tokenizer
    rows = common.read_jsonl(os.path.join(ROOT, "runs/world/test.jsonl"))
    rows = rows[::max(1, len(rows) // limit)][:limit] if limit else rows
    tool = env.make_search_tool(os.path.join(ROOT, "runs/world/corpus.jsonl"))
    results, loaded = [], {}
    os.makedirs(os.path.join(ROOT, "runs/eval"), exist_ok=True)
    for name, ckpt, policy, rl_run in ROWS:
        path = common.resolve_checkpoint(os.path.join(ROOT, ckpt))
        if path is None:
            print(f"[pipeline] {name}: no checkpoint at {ckpt}, skipped")
            continue
        if path not in loaded:
            loaded = {path: (Qwen2.from_pretrained(path).eval(), Tokenizer.from_pretrained(path))}
        model, tok = loaded[path]
        t = time.time()
        with torch.no_grad():
            summary, records = ev.evaluate(model, tok, rows, policy, tool, name=name, batch_size=batch_size)
        summary["rl_real_search_calls"] = rl_real_calls(rl_run) if rl_run else 0
        summary["eval_seconds"] = round(time.time() - t, 1)
        ev.write_jsonl(os.path.join(ROOT, "runs/eval", name.replace(" ", "_").replace("&", "+") + ".jsonl"), records)
        results.append(summary)
        print(f"[pipeline] {name}: EM {summary['overall']['em']:.3f} ({summary['eval_seconds']:.0f} s)", flush=True)
    return results


# The paper's Table 1, average EM over its six datasets (R1-Distill-Qwen-7B; shared/REFERENCE.md).
PAPER_AVG_EM = {"no tool": 11.8, "workflow": 15.2, "SFT-1": 22.7, "SFT-2": 29.5, "SFT-1&2": 32.0,
                "SFT-1&2&3": 31.3, "RL-2 only": 23.7, "SFT-1&2&3 + RL-1": 31.7, "SFT-1&2&3 + RL-1&2": 33.4,
                "SFT-1&2 + RL-2": 33.9}


def table(results):
    """A Markdown table shaped like the paper's Table 1, with EM by hops instead of by dataset."""
    lines = ["| method | EM | 1 hop | 2 hops | 3 hops | 4 hops | F1 | searches / question | real searches in RL "
             "| paper avg EM (7B) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in results:
        o, h = s["overall"], s["by_hops"]
        em = lambda b: f"{100 * b['em']:.1f}" if b.get("n") else "-"  # noqa: E731
        lines.append(f"| {s['name']} | {em(o)} | " + " | ".join(em(h.get(str(k), {})) for k in (1, 2, 3, 4)) +
                     f" | {100 * o['f1']:.1f} | {o['searches']:.2f} | {s['rl_real_search_calls'] or 0} "
                     f"| {PAPER_AVG_EM.get(s['name'], '-')} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-train", action="store_true", help="only evaluate existing checkpoints")
    ap.add_argument("--limit", type=int, default=0, help="evaluate on this many test questions (0 = all)")
    ap.add_argument("--batch-size", type=int, default=64, help="questions decoded together at evaluation")
    ap.add_argument("--table", action="store_true", help="only print the table of runs/eval/summaries.json")
    args = ap.parse_args()
    if args.table:
        with open(os.path.join(ROOT, "runs/eval/summaries.json")) as f:
            print(table(json.load(f)["summaries"]))
        return
    t0, times = time.time(), {}
    if not args.skip_train:
        train(times)
    results = evaluate_all(args.limit, args.batch_size)
    md = table(results)
    total = time.time() - t0
    print("\n" + md + f"\n\nwall time {total / 60:.1f} min; stage seconds {json.dumps(times)}")
    with open(os.path.join(ROOT, "runs/eval/table.md"), "w") as f:
        f.write(md + f"\n\nwall time {total / 60:.1f} min; stage seconds {json.dumps(times)}\n")
    with open(os.path.join(ROOT, "runs/eval/summaries.json"), "w") as f:
        json.dump({"summaries": results, "stage_seconds": times, "wall_seconds": round(total, 1)}, f, indent=1)


if __name__ == "__main__":
    main()
