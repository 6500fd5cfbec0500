"""Evaluation: EM / F1 by number of hops for the agent model and for the workflows it is compared with.

The paper's question (Table 1) is whether an agent model that decides by itself when and what to search
beats workflows in which a controller drives the actions. Four policies, all greedy:
  agent     sample(mode="real"): the model writes its own actions; the sampler runs them (--mode sim:
            the model also writes its own observations, for analysis).
  none      sample(mode="none"): no tool, the model answers from its own knowledge.
  rag       single-retrieval RAG: the controller searches once with the question as the query and puts
            the observation right after the prompt's `<think>\\n`; the model then reads and answers.
  workflow  a ReAct-style workflow: whenever the model finishes a decision sentence (--trigger, default
            a line "I need ... ."), the CONTROLLER searches with that sentence as the query and injects
            the result after it. The model never chooses whether to act: it acts at every step.

Why the workflow is a fair, competent baseline on the embedded world: the paper prompts R1-Distill into
a ReAct loop, which works because R1-Distill can read retrieved text about things it never saw. Our
1.65M-parameter base model cannot (as the workflow's model it scored EM 0.0: an unknown entity's name is
a token it never saw in pretraining, so it cannot write it). So the workflow's model (runs/workflow) is the
base model fine-tuned like SFT-2 (same 1,800 questions, steps, lr, observation mask) on the workflow's
own format, data/build.py's workflow.jsonl: after every decision sentence, the block the controller
retrieved with it as the query, then the fact read out of it. Like a fine-tuned ReAct agent it never
chooses whether to act: the controller acts at every step, known facts included. So the agent and the
workflow learn from the same questions; what differs is who decides when and what to search. BM25 with
the decision sentence as the query ranks the right page first for all 2,640 lookups of the default
world's rl/dev/test questions. The trigger is a regex on the current line; for a real checkpoint
(R1-Distill, few-shot prompted into ReAct) set it to what marks a step there (e.g. '^\\s*Search:.*$').
RAG uses the same model.

How the workflow is run: sample() has no "stop this row and inject" hook, but a logits processor sees the
live rollouts and can force eos, which ends a row. So each round is one batched sample() call in mode
"none" whose processor ends a row right after a decision sentence; the controller then searches for
every stopped row at once (one batched tool call), and the next round continues those rows from
prompt + completion + observation. This re-prefills each row once per step (<= 5 steps here) instead of
keeping the cache, which is simple and exact. The same processor enforces each row's token budget.

Budgets: --max-new-tokens counts everything after the prompt, observations included, for every policy.
Metrics: EM / F1 of env.extract_answer(completion) (no answer scores 0), mean actions (retrieval steps,
whoever drove them; the agent's refused ones too) and mean real search calls, overall, by hops and by
question type. On the embedded world, also stage 1's "when to act" for the agent: at its first step, how
often it searches when the question's first entity is known vs unknown to it (world.json `known`).

World-model probe (--probe): for dev questions that need a search, run the agent (real), and at each of
its actions let the model write the observation itself (sim mode) from the same prefix; report how often
its own observation states the answer-bearing fact "The <relation> of <Name> is <value>." (right, wrong
value, absent), for known vs unknown entities (world.json `known`).

    python eval.py --ckpt runs/sft3 --policy agent                  # test split, the world's corpus
    python eval.py --ckpt runs/base --policy none                   # no tool
    python eval.py --ckpt runs/workflow --policy rag workflow       # the workflow baselines
    python eval.py --ckpt runs/rl --policy agent --mode sim --limit 100
    python eval.py --ckpt runs/sft3 --search http://127.0.0.1:8000 --data runs/hotpotqa
    python eval.py --probe --ckpt runs/sft3                         # world-model fidelity (dev split)
    python eval.py --report runs/eval/*.summary.json --out runs/eval/all.jsonl   # merge tables + plot
    python -m pytest -q tests/test_eval.py
Outputs (--out FILE.jsonl): FILE.jsonl (every trajectory), FILE.summary.json, FILE.png (needs matplotlib).
"""
import argparse
import json
import os
import re
import sys
import time

import torch

import common
import env
from data.world import fact_sentence
from model import Qwen2
from sample import Rollout, sample
from tokenizer import Tokenizer

POLICIES = ("agent", "none", "rag", "workflow")
HOPS = (1, 2, 3, 4)  # always reported (an empty bucket prints "-")
WORKFLOW_TRIGGER = r"^\s*I need [^.\n]*\.\s*$"  # a whole line that is the world's decision sentence
TRIGGER_MAX_TOKENS = 128  # a line longer than this is never a decision sentence (bounds the decoding)

# -----------------------------------------------------------------------------
# the controller: ending rows early, injecting observations


def observation_ids(tok, docs, obs_max_tokens, lead=True):
    """Tokens of env.format_observation(docs), cut (keeping the closing tag) as sample.py cuts one.
    lead=False drops the leading blank line (RAG puts the block right after `<think>\\n`)."""
    text = env.format_observation(docs)
    ids = tok.encode(text if lead else text.lstrip("\n"))
    if len(ids) > obs_max_tokens:
        close = tok.encode(f" {env.TAGS.result_close}\n\n")
        ids = ids[:obs_max_tokens - len(close)] + close
    return ids


class Stopper:
    """A logits processor for sample() that ends row i (by forcing eos, the one way a processor can end a
    sequence) once it has written budgets[i] tokens, or, if i may act, once its current line matches the
    trigger. `stopped[i]` is "length" or "decision"; `lines[i]` the decision sentence. The forced eos is
    not the model's: callers drop it."""

    def __init__(self, tok, budgets, trigger=None, may_act=(), inner=None):
        self.decode, self.eos = tok.decode, tok.eos_id
        self.budgets, self.may_act, self.inner = budgets, set(may_act), inner
        self.trigger = re.compile(trigger) if isinstance(trigger, str) else trigger
        self.line_start, self.stopped, self.lines = {}, {}, {}

    def __call__(self, logits, rollouts):
        if self.inner is not None:  # e.g. a test's script; ours has the last word
            logits = self.inner(logits, rollouts)
        for row, r in enumerate(rollouts):
            i = r.index
            if len(r.completion) >= self.budgets[i]:
                self.stopped[i] = "length"
            elif self.trigger is not None and i in self.may_act and r.completion:
                start = self.line_start.get(i, 0)
                line = self.decode(r.completion[start:]) if len(r.completion) - start <= TRIGGER_MAX_TOKENS else ""
                if self.trigger.search(line):
                    self.stopped[i], self.lines[i] = "decision", line.strip()
                elif "\n" in self.decode(r.completion[-1:]):  # the line is over; the next starts after it
                    self.line_start[i] = len(r.completion)
            if i in self.stopped:
                logits[row] = float("-inf")
                logits[row, self.eos] = 0.0
        return logits


def continue_rows(model, tok, rolls, max_new_tokens, gen, trigger=None, may_act=(), inner=None):
    """One batched sample() call in mode "none" that continues every rollout from prompt + its completion so
    far, appending what the model writes. Returns {position in rolls: decision sentence} for the rows
    the trigger stopped; every other row gets its finish reason."""
    budgets = [max_new_tokens - len(r.completion) for r in rolls]
    stop = Stopper(tok, budgets, trigger, may_act, inner)
    outs = sample(model, tok, [r.prompt + r.completion for r in rolls], mode="none",
                  max_new_tokens=max(budgets) + 1, logits_processor=stop, **gen)  # +1: room for a forced eos
    for j, (r, o) in enumerate(zip(rolls, outs)):
        new = o.completion[:-1] if j in stop.stopped else o.completion
        r.completion += new
        r.policy_mask += [1] * len(new)
        if stop.stopped.get(j) != "decision":
            r.finish = stop.stopped.get(j) or o.finish
    return stop.lines


def inject(r, ids, max_new_tokens):
    """Append controller-injected tokens (policy_mask 0), cut at the budget, which ends the row."""
    room = max_new_tokens - len(r.completion)
    r.completion += ids[:room]
    r.policy_mask += [0] * len(ids[:room])
    if len(ids) >= room:
        r.finish = "length"


# -----------------------------------------------------------------------------
# the four policies: each returns one Rollout per prompt, with .text


def run_policy(policy, model, tok, prompts, questions, tool, mode="real", max_new_tokens=1024, max_actions=10,
               topk=3, obs_max_tokens=512, trigger=WORKFLOW_TRIGGER, logits_processor=None):
    gen = dict(greedy=True, topk=topk, obs_max_tokens=obs_max_tokens)
    if policy in ("agent", "none"):
        return list(sample(model, tok, prompts, tool=tool, mode=mode if policy == "agent" else "none",
                           max_new_tokens=max_new_tokens, max_actions=max_actions,
                           logits_processor=logits_processor, **gen))
    rolls = [Rollout(i, list(p)) for i, p in enumerate(prompts)]
    if policy == "rag":  # one batched search, the question as the query; the block opens the completion
        for r, q, docs in zip(rolls, questions, tool.search(questions, topk)):
            inject(r, observation_ids(tok, docs, obs_max_tokens, lead=False), max_new_tokens)
            r.n_actions, r.n_tool_calls, r.n_failed_calls, r.queries = 1, 1, int(docs is None), [q]
        live = [r for r in rolls if r.finish is None]
        if live:
            continue_rows(model, tok, live, max_new_tokens, gen, inner=logits_processor)
    elif policy == "workflow":  # the controller acts after every decision sentence, up to max_actions
        live = rolls
        while live:
            may_act = [j for j, r in enumerate(live) if r.n_actions < max_actions]
            lines = continue_rows(model, tok, live, max_new_tokens, gen, trigger, may_act, logits_processor)
            acting = [(live[j], line) for j, line in sorted(lines.items())]
            if acting:
                results = tool.search([line for _, line in acting], topk)  # one batched call per round
                for (r, line), docs in zip(acting, results):
                    r.n_actions += 1
                    r.n_tool_calls += 1
                    r.n_failed_calls += docs is None
                    r.queries.append(line)
                    inject(r, observation_ids(tok, docs, obs_max_tokens), max_new_tokens)
            live = [r for r, _ in acting if r.finish is None]
    else:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    for r in rolls:
        r.text = tok.decode(r.completion)
    return rolls


# -----------------------------------------------------------------------------
# scoring


def record(row, policy, r, first=None):
    """One scored trajectory (a JSONL line). first: (name, known) of the entity of the question's first
    lookup and whether the model knows it (embedded world: world.json), or None."""
    pred, first_line = env.extract_answer(r.text), r.text.split("\n", 1)[0]
    return {"id": row.get("id"), "question": row["question"], "answers": row["answers"], "hops": row.get("hops"),
            "type": row.get("type"), "policy": policy, "prediction": pred,
            "em": env.exact_match(pred, row["answers"]), "f1": env.f1_score(pred, row["answers"]),
            "n_actions": r.n_actions, "n_tool_calls": r.n_tool_calls, "finish": r.finish,
            "first_step_search": env.TAGS.search_open in first_line, "first_known": first[1] if first else None,
            "first_step_names": first[0] in first_line if first else None,
            "queries": r.queries, "text": r.text}


def bucket(records):
    """Means of one group of records; an empty group has n 0 and None means."""
    n = len(records)
    mean = lambda key: sum(r[key] for r in records) / n if n else None  # noqa: E731
    return {"n": n, "em": mean("em"), "f1": mean("f1"), "actions": mean("n_actions"),
            "searches": mean("n_tool_calls")}


def when_to_act(records):
    """Stage 1's skill, "when to act", at the first step: how often the first line opens a search when the
    question's first entity is known vs unknown to the model, and the share of questions where it searched
    exactly when the entity was unknown. Also how often that line names the entity at all (a model that
    writes another name decides about the wrong entity). None without first_known (not the world)."""
    judged = [r for r in records if r.get("first_known") is not None]
    if not judged:
        return None
    rate = lambda rs, key: sum(r[key] for r in rs) / len(rs) if rs else None  # noqa: E731
    known, unknown = [r for r in judged if r["first_known"]], [r for r in judged if not r["first_known"]]
    return {"n_known": len(known), "search_known": rate(known, "first_step_search"), "n_unknown": len(unknown),
            "search_unknown": rate(unknown, "first_step_search"),
            "accuracy": sum(r["first_step_search"] != r["first_known"] for r in judged) / len(judged),
            "names_known": rate(known, "first_step_names"), "names_unknown": rate(unknown, "first_step_names")}


def score(records, name=""):
    """Summary of scored records: overall, by hops (1-4 always, plus any others; keys are strings so the
    JSON round-trips), by question type, and the first step's when-to-act decision."""
    hops = sorted(set(HOPS) | {r["hops"] for r in records if r["hops"] is not None})
    types = sorted({str(r["type"]) for r in records})
    return {"name": name, "overall": bucket(records),
            "by_hops": {str(h): bucket([r for r in records if r["hops"] == h]) for h in hops},
            "by_type": {t: bucket([r for r in records if str(r["type"]) == t]) for t in types},
            "when_to_act": when_to_act(records)}


def evaluate(model, tok, rows, policy, tool=None, name=None, batch_size=16, world=None, max_search_failures=None,
             **kw):
    """Run `policy` on question rows ({"question", "answers", "hops", "type"}) in batches ->
    (summary dict, per-question records). world: the embedded world's world.json (for when_to_act), or
    None. max_search_failures: stop (env.SearchError) when more than this fraction of a batch's searches
    fail; None: no limit. kw: run_policy's (mode, max_new_tokens, max_actions, topk, obs_max_tokens, trigger,
    logits_processor)."""
    known = {e["name"]: e["known"] for e in world["entities"]} if world else {}
    lookups = world["question_lookups"] if world else {}

    def first(row):  # (name, known) of the entity the question's first lookup is about, or None
        name = lookups[row["id"]][0][0] if row.get("id") in lookups else None
        return (name, known[name]) if name else None
    records, t0, n_failed = [], time.perf_counter(), 0
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        prompts = [common.encode_prompt(tok, row["question"]) for row in batch]
        rolls = run_policy(policy, model, tok, prompts, [row["question"] for row in batch], tool, **kw)
        calls, failed = sum(r.n_tool_calls for r in rolls), sum(r.n_failed_calls for r in rolls)
        n_failed, last_error = n_failed + failed, getattr(tool, "last_error", None)
        if failed:
            print(f"[{policy}] {failed} of {calls} searches failed; last error: {last_error}", file=sys.stderr)
        if max_search_failures is not None:
            env.check_failures(failed, calls, max_search_failures,
                               f"[eval {policy}] questions {i + 1}-{i + len(batch)}", last_error)
        records += [record(row, policy, r, first(row) if policy == "agent" else None)  # only an agent decides
                    for row, r in zip(batch, rolls)]
        print(f"[{policy}] {len(records)}/{len(rows)}  EM {bucket(records)['em']:.3f}", file=sys.stderr)
    summary = score(records, name or policy)
    summary.update(policy=policy, mode=kw.get("mode", "real") if policy == "agent" else None,
                   seconds=round(time.perf_counter() - t0, 2), failed_search_calls=n_failed)
    return summary, records


def format_table(summaries):
    """Tables (one per metric) of summaries: a row per method, columns overall | hops | types."""
    hops = sorted({h for s in summaries for h in s["by_hops"]}, key=int)
    types = sorted({t for s in summaries for t in s["by_type"]})
    cols = [("all", lambda s: s["overall"])]
    cols += [(f"{h}-hop", lambda s, h=h: s["by_hops"].get(h)) for h in hops]
    cols += [(t[:11], lambda s, t=t: s["by_type"].get(t)) for t in types]
    width = max([len("method")] + [len(s["name"]) for s in summaries])
    out = []
    metrics = (("n", "questions", "{:.0f}"), ("em", "EM %", "{:.1f}"), ("f1", "F1 %", "{:.1f}"),
               ("actions", "actions per question", "{:.2f}"), ("searches", "real searches per question", "{:.2f}"))
    for key, title, fmt in metrics:
        out.append(f"{title}\n{'method':<{width}} " + " ".join(f"{c:>11}" for c, _ in cols))
        for s in summaries:
            cells = []
            for _, get in cols:
                b = get(s)
                v = None if b is None or b["n"] == 0 else b[key] * (100 if key in ("em", "f1") else 1)
                cells.append(f"{'-' if v is None else fmt.format(v):>11}")
            out.append(f"{s['name']:<{width}} " + " ".join(cells))
        out.append("")
    acts = [s for s in summaries if s.get("when_to_act")]
    if acts:
        out.append("when to act (first step), % of questions: searches if the entity is known / unknown, "
                   "right decision; names the entity if known / unknown")
        pct = lambda v: f"{'-':>11}" if v is None else f"{100 * v:>10.1f}%"  # noqa: E731  (no such questions)
        out += [f"{s['name']:<{width}} " + " ".join(pct(s["when_to_act"][k]) for k in (
            "search_known", "search_unknown", "accuracy", "names_known", "names_unknown")) for s in acts]
        out.append("")
    return "\n".join(out)


def plot(summaries, path):
    """EM vs number of hops, one line per method. Returns the path, or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"[plot] matplotlib is not installed (pip install matplotlib); skipping {path}")
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for s in summaries:
        pts = sorted((int(h), b["em"] * 100) for h, b in s["by_hops"].items() if b["n"])
        ax.plot([h for h, _ in pts], [em for _, em in pts], marker="o", label=s["name"])
    ax.set_xlabel("hops")
    ax.set_ylabel("EM %")
    ax.set_ylim(0, 100)
    ax.set_xticks(sorted({int(h) for s in summaries for h, b in s["by_hops"].items() if b["n"]}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -----------------------------------------------------------------------------
# world-model fidelity probe


def action_spans(r):
    """[(a, s, e)] per observation of a rollout: completion[s:e] is the injected observation and
    completion[a:s] the policy text before it (from the previous observation), which ends with the action."""
    spans, a, s = [], 0, None
    for t, m in enumerate(r.policy_mask + [1]):
        if m == 0 and s is None:
            s = t
        elif m == 1 and s is not None:
            spans.append((a, s, t))
            a, s = t, None
    return spans


def parse_query(query, world):
    """A templated query "<Name> <relation>" -> (entity dict, relation), or None."""
    by_name = {e["name"]: e for e in world["entities"]}
    for rel in sorted(world["relations"], key=len, reverse=True):  # longest first, should one end another
        name = query[:-len(rel)].strip()
        if query.endswith(" " + rel) and name in by_name and rel in by_name[name]["facts"]:
            return by_name[name], rel
    return None


class Replay:
    """Logits processor: row i re-writes tokens[i] (the agent's text up to and including its action), then
    writes its own observation (sim mode), then ends. The action is re-written rather than put in the
    prompt because sample() looks for closing tags only in what it generates: this way the sampler
    itself injects the opening tag and hands the observation to the model, exactly as in RL stage 1."""

    def __init__(self, tokens, eos):
        self.tokens, self.eos = tokens, eos

    def __call__(self, logits, rollouts):
        for row, r in enumerate(rollouts):
            forced = self.tokens[r.index]
            if len(r.completion) < len(forced):
                token = forced[len(r.completion)]
            elif r.phase == "policy":  # the observation is written and closed
                token = self.eos
            else:
                continue
            logits[row] = float("-inf")
            logits[row, token] = 0.0
        return logits


def judge(predicted, fact, name, rel):
    """Does a predicted observation state the fact ("right"), the same fact with another value ("wrong"),
    or neither ("absent")?"""
    if fact in predicted:
        return "right"
    return "wrong" if re.search(re.escape(f"The {rel} of {name} is ") + r"[^.\n]*\.", predicted) else "absent"


def probe(model, tok, rows, world, tool, batch_size=16, max_new_tokens=1024, max_actions=10, topk=3,
          obs_max_tokens=512, logits_processor=None):
    """Compare, at each real action of the agent, the observation the model predicts with the real one.
    Returns (summary, per-action records). logits_processor applies to the agent's rollouts (tests)."""
    lookups = world["question_lookups"]
    known = {e["name"]: e["known"] for e in world["entities"]}
    rows = [row for row in rows if any(not known[n] for n, _ in lookups.get(row["id"], []))]
    # ---- 1. the agent, real mode: one job per action it took (refused ones past max_actions left out)
    jobs = []
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        prompts = [common.encode_prompt(tok, row["question"]) for row in batch]
        rolls = sample(model, tok, prompts, tool=tool, mode="real", greedy=True, max_new_tokens=max_new_tokens,
                       max_actions=max_actions, topk=topk, obs_max_tokens=obs_max_tokens,
                       logits_processor=logits_processor)
        for row, r in zip(batch, rolls):
            for k, (a, s, e) in enumerate(action_spans(r)[:max_actions]):
                jobs.append({"row": row, "query": r.queries[k], "real": tok.decode(r.completion[s:e]),
                             "prefix": r.prompt + r.completion[:a], "replay": r.completion[a:s]})
    # ---- 2. the same prefixes, sim mode: the model writes the observation of its action itself
    for i in range(0, len(jobs), batch_size):
        batch = jobs[i:i + batch_size]
        outs = sample(model, tok, [j["prefix"] for j in batch], mode="sim", greedy=True,
                      obs_max_tokens=obs_max_tokens, logits_processor=Replay([j["replay"] for j in batch], tok.eos_id),
                      max_new_tokens=max(len(j["replay"]) for j in batch) + obs_max_tokens + 16)
        for j, o in zip(batch, outs):
            j["predicted"] = tok.decode([t for t, m in zip(o.completion, o.sim_obs_mask) if m])
    # ---- 3. does each predicted observation state the answer-bearing fact?
    records, summary = [], {"questions": len(rows), "unparsed": 0}
    for j in jobs:
        lookup = parse_query(j["query"], world)
        if lookup is None:  # not a "<Name> <relation>" of this world: no fact to look for
            summary["unparsed"] += 1
            continue
        ent, rel = lookup
        fact = fact_sentence(ent["name"], rel, ent["facts"][rel])
        verdict = judge(j["predicted"], fact, ent["name"], rel)
        group = "known" if ent["known"] else "unknown"
        g = summary.setdefault(group, {"actions": 0, "right": 0, "wrong": 0, "absent": 0, "real_has_fact": 0})
        g["actions"] += 1
        g[verdict] += 1
        g["real_has_fact"] += fact in j["real"]
        records.append({"id": j["row"]["id"], "query": j["query"], "group": group, "fact": fact, "verdict": verdict,
                        "real_has_fact": fact in j["real"], "predicted": j["predicted"], "real": j["real"]})
    return summary, records


def format_probe(summary):
    lines = [f"world-model probe: {summary['questions']} questions; actions whose query is not "
             f"'<Name> <relation>': {summary['unparsed']}",
             f"{'entity':<8} {'actions':>7} {'right %':>8} {'wrong %':>8} {'absent %':>8} {'real has fact %':>16}"]
    for group in ("known", "unknown"):
        g = summary.get(group, {"actions": 0})
        n = g["actions"]
        pct = lambda k: f"{100 * g[k] / n:.1f}" if n else "-"  # noqa: E731
        lines.append(f"{group:<8} {n:>7} {pct('right'):>8} {pct('wrong'):>8} {pct('absent'):>8} "
                     f"{pct('real_has_fact'):>16}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# command line


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="checkpoint directory, or a stage's --out (its latest checkpoint)")
    ap.add_argument("--policy", nargs="+", choices=POLICIES, default=["agent"], help="one or more policies")
    ap.add_argument("--split", help="questions file in --data: test (default), dev (default with --probe)")
    ap.add_argument("--data", default="runs/world", help="directory with <split>.jsonl (and world.json for --probe)")
    ap.add_argument("--search", help="corpus JSONL (BM25) or retrieval server URL (default: DATA/corpus.jsonl)")
    ap.add_argument("--limit", type=int, help="evaluate N questions evenly spaced over the split (all strata)")
    ap.add_argument("--out", help="trajectories JSONL; .summary.json and .png beside it "
                                  "(default runs/eval/<name>-<split>.jsonl)")
    ap.add_argument("--name", help="label of this checkpoint in tables (default: the --ckpt folder's name)")
    ap.add_argument("--batch-size", type=int, default=16, help="questions sampled together")
    ap.add_argument("--max-new-tokens", type=int, default=1024, help="budget after the prompt, observations included")
    ap.add_argument("--max-actions", type=int, default=10, help="searches per question (agent and workflow)")
    ap.add_argument("--mode", choices=("real", "sim"), default="real",
                    help="agent only: real tool calls, or the model writes its own observations")
    ap.add_argument("--topk", type=int, default=3, help="documents per search")
    ap.add_argument("--max-search-failures", type=float, default=0.1,
                    help="stop when more than this fraction of a batch's searches fail (the tool is down)")
    ap.add_argument("--obs-max-tokens", type=int, default=512, help="longest observation (cut and closed beyond)")
    ap.add_argument("--trigger", default=WORKFLOW_TRIGGER, help="workflow: regex on the current line that "
                                                                "makes the controller search")
    ap.add_argument("--probe", action="store_true", help="world-model fidelity probe instead of the evaluation")
    ap.add_argument("--report", nargs="+", metavar="SUMMARY", help="only merge .summary.json files: table + plot")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on CUDA, float32 on CPU")
    args = ap.parse_args(argv)

    if args.report:  # no model: tables and plot of earlier runs
        summaries = []
        for path in args.report:
            with open(path) as f:
                summaries += json.load(f)["summaries"]
        print(format_table(summaries))
        out = args.out or "runs/eval/report.jsonl"
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        plot(summaries, os.path.splitext(out)[0] + ".png")
        return
    if not args.ckpt:
        ap.error("--ckpt is required (unless --report)")
    ckpt = common.resolve_checkpoint(args.ckpt)
    if ckpt is None:
        ap.error(f"--ckpt {args.ckpt}: no checkpoint there (config.json or a 'latest' pointer)")
    split = args.split or ("dev" if args.probe else "test")
    name = args.name or os.path.basename(os.path.normpath(args.ckpt))
    out = args.out or f"runs/eval/{name}-{split}{'-probe' if args.probe else ''}.jsonl"
    base = out[:-len(".jsonl")] if out.endswith(".jsonl") else out
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)

    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    print(f"[eval] device {args.device}, dtype {dtype}, checkpoint {ckpt}, split {split}")
    print("[eval] args " + json.dumps(vars(args)))
    rows = common.read_jsonl(os.path.join(args.data, f"{split}.jsonl"), common.QUESTION_ROWS)
    common.check_prompts(rows, ckpt)  # before the model loads; a question beyond the context fails here
    rows = common.evenly_spaced(rows, args.limit)
    model = Qwen2.from_pretrained(ckpt, device=args.device, dtype=dtype).eval()
    tok = Tokenizer.from_pretrained(ckpt)
    needs_tool = args.probe or any(p in ("rag", "workflow") or (p == "agent" and args.mode == "real")
                                   for p in args.policy)
    tool = env.make_search_tool(args.search or os.path.join(args.data, "corpus.jsonl")) if needs_tool else None
    if tool is not None:
        print(f"[eval] search tool: {tool.check()}")  # raises SearchError: no evaluation on a dead tool
    gen = dict(max_new_tokens=args.max_new_tokens, max_actions=args.max_actions, topk=args.topk,
               obs_max_tokens=args.obs_max_tokens)

    world = None  # the embedded world's facts: who is known (when_to_act) and every lookup (--probe)
    if os.path.isfile(os.path.join(args.data, "world.json")):
        with open(os.path.join(args.data, "world.json"), encoding="utf-8") as f:
            world = json.load(f)
    if args.probe:
        if world is None:
            ap.error(f"--probe needs the embedded world's {args.data}/world.json (python -m data.build)")
        summary, records = probe(model, tok, rows, world, tool, args.batch_size, **gen)
        write_jsonl(out, records)
        with open(base + ".summary.json", "w") as f:
            json.dump({"args": vars(args), "checkpoint": ckpt, "probe": summary}, f, indent=1)
        print(format_probe(summary) + f"\n[eval] wrote {out} and {base}.summary.json")
        return

    summaries, records = [], []
    for policy in args.policy:
        label = f"{name}:{policy}" + ("-sim" if policy == "agent" and args.mode == "sim" else "")
        s, recs = evaluate(model, tok, rows, policy, tool, name=label, batch_size=args.batch_size,
                           mode=args.mode, trigger=args.trigger, world=world,
                           max_search_failures=args.max_search_failures, **gen)
        summaries.append(s)
        records += recs
    write_jsonl(out, records)
    with open(base + ".summary.json", "w") as f:
        json.dump({"args": vars(args), "checkpoint": ckpt, "summaries": summaries}, f, indent=1)
    print(format_table(summaries))
    plot(summaries, base + ".png")
    print(f"[eval] wrote {out} and {base}.summary.json")


if __name__ == "__main__":
    main()
