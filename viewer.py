"""The trajectory viewer: rollouts as a self-contained HTML page, every token coloured by who wrote it.

Four writers, the split GRPO trains on (sample.Rollout): the prompt; the policy (policy_mask 1, the only
tokens with a loss); an observation injected by the sampler or a workflow's controller, i.e. the search
tool's text (both masks 0); and the observation the model wrote itself in simulated mode (sim_obs_mask 1,
RL stage 1). Each trajectory also shows its question, the gold answers, the prediction, EM and the RL
reward (env.reward), and the queries of its actions (the search calls). Hover a token for its id.

Eval records carry what the page needs in two compact fields (token_fields): completion_ids and
writers, a run-length string of the writers ("p12 t40 p8": 12 policy tokens, 40 tool tokens, 8 policy).

    python eval.py --ckpt runs/sft3 --limit 20 --html runs/eval/sft3.html        # while evaluating
    python viewer.py runs/eval/sft3-test.jsonl --ckpt runs/sft3 --out runs/eval/sft3.html --limit 20
    python -m pytest -q tests/test_viewer.py
"""
import argparse
import html
import json

import checkpoints
import common
import env

# writer code -> (class, label, background). Codes in `writers` strings: p, t, s; the prompt is u (user).
WRITERS = {"u": ("prompt", "#e8e8e8"), "p": ("policy", "#ffffff"), "t": ("tool observation", "#cfe3ff"),
           "s": ("model's own observation (sim)", "#ffd9a8")}
MASKS = {(1, 0): "p", (0, 0): "t", (0, 1): "s"}  # (policy_mask, sim_obs_mask) -> writer


def writers(policy_mask, sim_obs_mask):
    """Run-length writers of a completion: "p12 t40 p8" (MASKS)."""
    runs = []
    for i, kind in enumerate(zip(policy_mask, sim_obs_mask)):
        if kind not in MASKS:
            raise ValueError(f"token {i}: policy_mask and sim_obs_mask both 1 (a token has one writer)")
        w = MASKS[kind]
        if runs and runs[-1][0] == w:
            runs[-1][1] += 1
        else:
            runs.append([w, 1])
    return " ".join(f"{w}{n}" for w, n in runs)


def expand(runs):
    """"p2 t1" -> ["p", "p", "t"]."""
    return [r[0] for r in runs.split() for _ in range(int(r[1:]))]


def token_fields(r):
    """What a record needs for the page, from a sample.Rollout (the prompt is rebuilt from the question)."""
    return {"completion_ids": r.completion, "writers": writers(r.policy_mask, r.sim_obs_mask)}


def tokens_html(tok, ids, kinds):
    """One <span> per token, classed by its writer, its id in the title. A token that does not decode on
    its own (part of a UTF-8 character) is joined with the next ones of the same writer until they do."""
    out, i = [], 0
    while i < len(ids):
        j = i + 1
        while j < len(ids) and j - i < 4 and kinds[j] == kinds[i] and "\ufffd" in tok.decode(ids[i:j]):
            j += 1
        text, title = tok.decode(ids[i:j]), " ".join(map(str, ids[i:j]))
        out.append(f'<span class="{kinds[i]}" title="{title}">{html.escape(text)}</span>')
        i = j
    return "".join(out)


STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:16px;color:#222;max-width:1150px}
.toks{font:12.5px/1.55 ui-monospace,Menlo,monospace;white-space:pre-wrap;border:1px solid #ccc;padding:8px}
.toks span{box-shadow:inset -1px 0 0 rgba(0,0,0,.07)}
section{margin:0 0 22px}h2{font-size:15px;margin:0 0 4px}.meta{margin:0 0 6px}
.ok{color:#0a7a2f;font-weight:600}.bad{color:#b3261e;font-weight:600}
.legend span{padding:1px 8px;margin-right:8px;border:1px solid #ccc}
""" + "".join(f".{k}{{background:{bg}}}" for k, (_, bg) in WRITERS.items())


def page(items, tok, title="trajectories"):
    """The HTML page of items: dicts with question, answers, prompt_ids, completion_ids, writers, and
    optionally policy, prediction, em, finish, queries (an eval record plus prompt_ids)."""
    legend = "".join(f'<span class="{k}">{label}</span>' for k, (label, _) in WRITERS.items())
    parts = [f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>{STYLE}</style>",
             f"<h1 style='font-size:18px'>{html.escape(title)}</h1><p class=legend>{legend}</p>"]
    for n, it in enumerate(items):
        ids, kinds = it["completion_ids"], expand(it["writers"])
        if len(kinds) != len(ids):
            raise ValueError(f"item {n}: writers cover {len(kinds)} tokens, completion_ids has {len(ids)}")
        text = tok.decode(ids)
        reward = env.reward(text, it["answers"])
        pred = it.get("prediction", env.extract_answer(text))
        queries = " &middot; ".join(f"<q>{html.escape(q)}</q>" for q in it.get("queries", [])) or "none"
        parts.append(
            f"<section><h2>#{n + 1} {html.escape(str(it.get('policy', '')))} &middot; "
            f"<span class={'ok' if reward else 'bad'}>reward {reward:.0f}</span> &middot; EM {it.get('em', '-')}"
            f" &middot; finish {it.get('finish', '-')} &middot; {len(ids)} tokens</h2>"
            f"<div class=meta><b>Question:</b> {html.escape(it['question'])}<br><b>Gold:</b> "
            f"{html.escape(' | '.join(map(str, it['answers'])))} &nbsp; <b>Prediction:</b> {html.escape(str(pred))}"
            f"<br><b>Queries ({len(it.get('queries', []))}):</b> {queries}</div>"
            f"<details><summary>prompt ({len(it['prompt_ids'])} tokens)</summary><div class=toks>"
            f"{tokens_html(tok, it['prompt_ids'], ['u'] * len(it['prompt_ids']))}</div></details>"
            f"<div class=toks>{tokens_html(tok, ids, kinds)}</div></section>")
    return "\n".join(parts)


def write_html(path, records, tok, title="trajectories"):
    """The page of eval records (eval.py --html): their prompts are rebuilt from the questions."""
    items = [dict(rec, prompt_ids=common.encode_prompt(tok, rec["question"])) for rec in records]
    with open(path, "w", encoding="utf-8") as f:
        f.write(page(items, tok, title))
    return path


def terminal(r, decode, color):
    """A sample.Rollout's completion for a terminal (sample.py's CLI): the tool's text in cyan, the model's
    own observations in yellow, or, without colour, marked [[tool:...]] and [[model-written:...]]."""
    marks = {"p": ("", ""), "t": ("\x1b[36m", "\x1b[0m") if color else ("[[tool:", "]]"),
             "s": ("\x1b[33m", "\x1b[0m") if color else ("[[model-written:", "]]")}
    out, start = [], 0
    kinds = [MASKS[k] for k in zip(r.policy_mask, r.sim_obs_mask)]
    for i in range(1, len(kinds) + 1):
        if i == len(kinds) or kinds[i] != kinds[start]:
            left, right = marks[kinds[start]]
            out.append(left + decode(r.completion[start:i]) + right)
            start = i
    return "".join(out)


def main(argv=None):
    from tokenizer import Tokenizer
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    ap.add_argument("records", help="eval.py's trajectories JSONL")
    ap.add_argument("--ckpt", required=True, help="the checkpoint (or a stage's --out) whose tokenizer wrote them")
    ap.add_argument("--out", required=True, help="HTML file to write")
    ap.add_argument("--limit", type=int, help="the first N records only")
    ap.add_argument("--policy", help="only the records of this policy")
    a = ap.parse_args(argv)
    ckpt = checkpoints.resolve_checkpoint(a.ckpt)
    if ckpt is None:
        ap.error(f"--ckpt {a.ckpt}: no checkpoint there (config.json or a 'latest' pointer)")
    with open(a.records, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    records = [r for r in records if a.policy in (None, r.get("policy"))][:a.limit]
    missing = [i for i, r in enumerate(records) if "writers" not in r]
    if missing:
        ap.error(f"{a.records}: record {missing[0]} has no token ids (written by an eval.py before the viewer)")
    print(f"wrote {write_html(a.out, records, Tokenizer.from_pretrained(ckpt), a.records)}")


if __name__ == "__main__":
    main()
