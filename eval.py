"""Evaluation: EM / F1 by number of hops for the agent model and for the workflows it is compared with.

The paper's question (Table 1) is whether an agent model that decides by itself when and what to search
beats workflows in which a controller drives the actions. Four policies, all greedy:
  agent     sample(mode="real"): the model writes its own actions; the sampler runs them (--mode sim:
            the model also writes its own observations, for analysis).
  none      sample(mode="none"): no tool, and no tool's instruction in the prompt (the paper's direct
            inference): the model answers from its own knowledge.
  rag       single-retrieval RAG: the controller searches once with the question as the query and puts
            the observation right after the prompt's `<think>\\n`; the model then reads and answers.
  workflow  a ReAct-style workflow: whenever the model finishes a decision sentence (--trigger, default
            a line "I need ... ."), the CONTROLLER searches with that sentence as the query and injects
            the result after it. The model never chooses whether to act: it acts at every step.

Why the workflow is a fair, competent baseline on the embedded world: the paper prompts R1-Distill into a
ReAct loop, which works because R1-Distill follows the loop's instructions and reads retrieved text
about things it never saw. Our tiny base model follows no instruction but the tool's one it was pretrained
with (it knows only the agent's format) and reads unreliably. So the workflow's model (runs/workflow) is
the base model fine-tuned like SFT-2 (the same questions, steps, lr and observation mask) on the workflow's own format, data/build.py's workflow.jsonl: after every
decision sentence, the block the controller retrieved with it as the query, then the fact read out of it.
Like a fine-tuned ReAct agent it never chooses whether to act: the controller acts at every step, known
facts included. So the agent and the workflow learn from the same questions; what differs is who decides
when and what to search. The controller's query is the decision sentence itself, as in workflow.jsonl.
The trigger is a regex on the current line; for a real checkpoint (R1-Distill, few-shot prompted into
ReAct) set it to what marks a step there (e.g. '^\\s*Search:.*$'). RAG uses the same model.

How the workflows are run: by the same sampler as the agent, in the same KV cache. Each is a controller
(sample.py's `controller`): a function asked after every token the model writes that may answer with a
query; the sampler then searches (one batched tool call per step, with the other rows that acted) and
injects the observation right there. RAG's controller asks once, before the first token.

Budgets: --max-new-tokens counts everything after the prompt, observations included, for every policy.
Metrics: EM / F1 of env.extract_answer(completion) (no answer scores 0), mean actions (retrieval steps,
whoever drove them; the agent's refused ones too) and mean real search calls, overall, by hops and by
question type. On the embedded world, also stage 1's "when to act" for the agent: at its first step, how
often it searches when the question's first entity is known vs unknown to it (world.json `known`); and, from
the trajectories, where comparisons (`comparison_steps`) and chains (`chain_steps`) go wrong, and how often
the reading lines copy the result (`reading`).

The world-model probe (the model's own observations against the tool's) is probe.py; the trajectory
viewer (--html) is viewer.py.

Questions: DATA/<--split>.jsonl, test.jsonl by default. --data may be left out only for a checkpoint of the
embedded world (its tokenizer has the world's chat format: common.world_checkpoint), which reads runs/world;
any other checkpoint needs --data, a directory with the split (real questions: `python -m data.convert
DATASET FILE --out DIR --split test`, data/README.md) and, unless --search says otherwise, corpus.jsonl.

    python eval.py --ckpt runs/sft3 --policy agent                  # test split, the world's corpus
    python eval.py --ckpt runs/base --policy none                   # no tool
    python eval.py --ckpt runs/workflow --policy rag workflow       # the workflow baselines
    python eval.py --ckpt runs/rl --policy agent --mode sim --limit 100
    python eval.py --ckpt runs/hotpotqa-rl --data runs/hotpotqa --search http://127.0.0.1:8000   # real data
    python eval.py --ckpt runs/sft3 --limit 20 --html runs/eval/sft3.html   # + a page of the trajectories
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

import checkpoints
import common
import env
import jsonl
import viewer
from data.world import parse_facts
from sample import SAMPLING_DEFAULTS, add_sampling_args, sample, sampling_kwargs

POLICIES = ("agent", "none", "rag", "workflow")
HOPS = (1, 2, 3, 4)  # always reported (an empty bucket prints "-")
WORKFLOW_TRIGGER = r"^\s*I need [^.\n]*\.\s*$"  # a whole line that is the world's decision sentence
TRIGGER_MAX_TOKENS = 128  # a line longer than this is never a decision sentence (bounds the decoding)

# -----------------------------------------------------------------------------
# the four policies: the workflows are controllers that sample.py runs in its own loop and cache


def rag_controller(questions):
    """RAG: one search per row before its first token, the question as the query (sample.py drops the
    observation's leading blank line there: it follows the prompt's `<think>\\n`)."""
    return lambda r, line_start: None if r.completion else questions[r.index]


def workflow_controller(decode, trigger, max_actions):
    """The workflow: when the row's current line is a decision sentence (the regex `trigger`), search with
    the sentence as the query and inject the result after it, up to max_actions times per row."""
    trigger = re.compile(trigger) if isinstance(trigger, str) else trigger

    def controller(r, line_start):
        if r.n_actions >= max_actions or len(r.completion) - line_start > TRIGGER_MAX_TOKENS:
            return None
        line = decode(r.completion[line_start:])
        return line.strip() if trigger.search(line) else None
    return controller


def run_policy(policy, model, tok, prompts, questions, tool, mode="real", trigger=WORKFLOW_TRIGGER, **gen):
    """One Rollout per prompt (sample.Rollouts). agent: the model decides when to act (mode "real" or
    "sim"); none: no tool; rag and workflow: a controller decides, the model's own tags are plain text.
    gen: sample()'s keyword arguments (max_new_tokens, max_actions, topk, obs_max_tokens, temperature,
    top_p, logits_processor); greedy unless a temperature is given."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    gen.setdefault("temperature", 0.0)  # eval scores the greedy trajectory
    controller = None
    if policy == "rag":
        controller = rag_controller(questions)
    elif policy == "workflow":
        max_actions = gen.get("max_actions", SAMPLING_DEFAULTS["max_actions"])
        controller = workflow_controller(tok.decode, trigger, max_actions)
    return sample(model, tok, prompts, tool=None if policy == "none" else tool,
                  mode=mode if policy == "agent" else "none", controller=controller, **gen)


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
            "first_step_names": first[0] in first_line if first else None, "held_out": row.get("held_out"),
            # the counterfactual check (data/build.py's test_cf.jsonl): EM against what the corpus said before
            # it was changed, i.e. against what a model that does not read would still answer
            "em_original": env.exact_match(pred, row["original_answers"]) if "original_answers" in row else None,
            "queries": r.queries, "text": r.text}


def bootstrap_ci(values, reps=1000, seed=0):
    """95% interval of the mean of `values` by the percentile bootstrap over questions (seeded: the same
    records give the same interval). For a paired comparison pass the per-question differences."""
    if not values:
        return None
    g = torch.Generator().manual_seed(seed)
    v = torch.tensor(values, dtype=torch.float64)
    means = v[torch.randint(len(v), (reps, len(v)), generator=g)].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return [lo, hi]


def paired(a, b):
    """EM of records `a` minus EM of records `b` on the questions both have (joined by id), with the 95%
    bootstrap interval of the per-question difference: a paired comparison of two models."""
    em_b = {r["id"]: r["em"] for r in b}
    diffs = [r["em"] - em_b[r["id"]] for r in a if r["id"] in em_b]
    return {"n": len(diffs), "diff": sum(diffs) / len(diffs) if diffs else None, "ci": bootstrap_ci(diffs)}


def follows(real, counterfactual):
    """Does the model read the tool? Of the counterfactual questions it solved with the real corpus (`real`
    records, joined by id), the share it answers with the changed corpus's answer (follows the corpus)
    and with the answer from before the change (follows what it remembers)."""
    solved = {r["id"] for r in real if r["em"]}
    rows = [r for r in counterfactual if r["id"] in solved]
    n = len(rows)
    return {"n_solved": n, "follows_corpus": sum(r["em"] for r in rows) / n if n else None,
            "follows_memory": sum(r["em_original"] for r in rows) / n if n else None}


def bucket(records):
    """Means of one group of records, and the 95% bootstrap interval of its EM; an empty group has n 0 and
    None means. em_original: only on counterfactual questions (record())."""
    n = len(records)
    mean = lambda key: sum(r[key] for r in records) / n if n else None  # noqa: E731
    out = {"n": n, "em": mean("em"), "em_ci": bootstrap_ci([r["em"] for r in records]), "f1": mean("f1"),
           "actions": mean("n_actions"), "searches": mean("n_tool_calls")}
    if n and all(r.get("em_original") is not None for r in records):
        out["em_original"] = mean("em_original")
    return out


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


# a line of the embedded world's reasoning that states a fact (data/trajectories.read or recall), read out of
# a result or recalled, around the fact sentence itself (data/world.parse_facts reads it)
READ = "The search result says that"  # data/trajectories.read; data/trajectories.recall opens "From memory,"
STATED = re.compile(rf"({READ}|From memory,) (.+?\.)\n")
# a comparison of the embedded world (data/trajectories.py): the question, and its decision line (year_check,
# then the name)
COMPARISON_QUESTION = re.compile(r"earlier, (.+) or (.+)\?$")
DECISION = re.compile(r"Is (\d+) earlier than (\d+)\? [^:\n]*: (Yes|No), so it is (.+?)\.\n")


def comparison_steps(records):
    """Where the embedded world's comparisons go wrong, one local step of the decision line at a time, as
    shares of the comparisons that have one: `years`, both years as the reasoning stated them above, in
    the question's order; `decision`, Yes/No right for the years on the line; `name`, the first name on Yes,
    the second on No; `searched`, both years stated as read out of a search result ("The search result says
    ..."; a model without the tool that writes such a line invents the result), not recalled. None when no
    record is such a comparison."""
    n, counts = 0, dict.fromkeys(("years", "decision", "name", "searched"), 0)
    for r in records:
        q = COMPARISON_QUESTION.search(r.get("question", "")) if r.get("type") == "comparison" else None
        line = DECISION.search(r.get("text", "")) if q else None
        if not line:
            continue
        n += 1
        (a, b), (ya, yb, yes, name) = q.groups(), line.groups()
        stated = {}  # the last statement about each name, and whether it was read
        for m in STATED.finditer(r["text"][:line.start()]):
            for _, subject, value in parse_facts(m.group(2)):
                if value.isdigit():
                    stated[subject] = (value, m.group(1) == READ)
        counts["years"] += stated.get(a, ("",))[0] == ya and stated.get(b, ("",))[0] == yb
        counts["decision"] += (yes == "Yes") == (int(ya) < int(yb))
        counts["name"] += name == (a if yes == "Yes" else b)
        counts["searched"] += all(stated.get(x, (None, False))[1] for x in (a, b))
    return {"n": n, **{k: v / n for k, v in counts.items()}} if n else None


# a chain of the embedded world (data/world.composition_text): the question, and each step's need line
CHAIN_QUESTION = re.compile(r"^What is ([A-Z][a-z]+ [A-Z][a-z]+)((?:'s [a-z]+(?: [a-z]+)?)+)\?$")
NEED = re.compile(r"I need ([A-Z][a-z]+ [A-Z][a-z]+)'s ([a-z]+(?: [a-z]+)?)\.")


def chain_steps(records):
    """Where the embedded world's chains go wrong, as shares of the compositions of two or more hops:
    `relations`, the need lines ask for the question's relations, in its order, and no more; `subjects`, the
    first need is about the question's entity and each later one about the value the reasoning stated for
    the need before it (recalled or read). Both right and the answer still wrong: a stated value was wrong.
    None when no record is such a chain."""
    n = relations = subjects = 0
    for r in records:
        q = CHAIN_QUESTION.match(r.get("question", "")) if r.get("type") == "composition" else None
        rels = re.findall(r"'s ([a-z]+(?: [a-z]+)?)", q.group(2)) if q else []
        if len(rels) < 2:
            continue
        n += 1
        text = r.get("text", "")
        needs = list(NEED.finditer(text))
        relations += [m.group(2) for m in needs] == rels
        subject, follows = q.group(1), True
        for k, m in enumerate(needs):
            if m.group(1) != subject:
                follows = False
                break
            end = needs[k + 1].start() if k + 1 < len(needs) else len(text)
            stated = [v for line in STATED.finditer(text, m.end(), end) for rel, subj, v in parse_facts(line.group(2))
                      if (subj, rel) == m.groups()]
            subject = stated[0] if stated else None
        subjects += follows and bool(needs)
    return {"n": n, "relations": relations / n, "subjects": subjects / n} if n else None


def reading(records):
    """How faithfully the reasoning copies what it reads: of the lines "The search result says that X's R is
    V." that follow a result stating X's R, the share whose V is the result's value (a model
    that names the right entity and relation, then writes another value, remembers or guesses instead of
    copying). None when no line qualifies."""
    n = copied = 0
    for r in records:
        text = r.get("text", "")
        for m in STATED.finditer(text):
            if m.group(1) != READ:
                continue  # recalled, not read
            start = text.rfind(env.TAGS.result_open, 0, m.start())
            close = text.find(env.TAGS.result_close, start) if start >= 0 else -1
            line = parse_facts(m.group(2))
            if close < 0 or close > m.start() or len(line) != 1:
                continue  # no whole result above this line, or no fact on it
            (relation, subject, value), = line
            stated = [v for rel, subj, v in parse_facts(text[start:close]) if (rel, subj) == (relation, subject)]
            if stated:
                n += 1
                copied += stated[0] == value
    return {"n": n, "copied": copied / n} if n else None


def score(records, name=""):
    """Summary of scored records: overall, by hops of the compositions (1-4 always, plus any others; a
    comparison has its own column, not "2 hops"; keys are strings so the JSON round-trips), by question
    type, held-out vs known-only questions (where the rows say), and the first step's when-to-act."""
    chains = [r for r in records if r["type"] != "comparison"]
    hops = sorted(set(HOPS) | {r["hops"] for r in chains if r["hops"] is not None})
    types = sorted({str(r["type"]) for r in records})
    held = {label: [r for r in records if r.get("held_out") is flag] for label, flag in (("held-out", True),
                                                                                         ("known only", False))}
    return {"name": name, "overall": bucket(records),
            "by_hops": {str(h): bucket([r for r in chains if r["hops"] == h]) for h in hops},
            "by_type": {t: bucket([r for r in records if str(r["type"]) == t]) for t in types},
            "by_held_out": {k: bucket(v) for k, v in held.items() if v},
            "when_to_act": when_to_act(records), "comparison_steps": comparison_steps(records),
            "chain_steps": chain_steps(records),
            "reading": reading(records)}


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
        prompts = [common.encode_prompt(tok, row["question"], tool=policy != "none") for row in batch]
        rolls = run_policy(policy, model, tok, prompts, [row["question"] for row in batch], tool, **kw)
        calls, failed = sum(r.n_tool_calls for r in rolls), sum(r.n_failed_calls for r in rolls)
        n_failed, last_error = n_failed + failed, getattr(tool, "last_error", None)
        if failed:
            print(f"[{policy}] {failed} of {calls} searches failed; last error: {last_error}", file=sys.stderr)
        if max_search_failures is not None:
            env.check_failures(failed, calls, max_search_failures,
                               f"[eval {policy}] questions {i + 1}-{i + len(batch)}", last_error)
        records += [{**record(row, policy, r, first(row) if policy == "agent" else None),  # only an agent decides
                     **viewer.token_fields(r)} for row, r in zip(batch, rolls)]  # token ids + writers: --html
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
    groups = [g for g in ("held-out", "known only") if any(g in s.get("by_held_out", {}) for s in summaries)]
    cols += [(g, lambda s, g=g: s.get("by_held_out", {}).get(g)) for g in groups]
    width = max([len("method")] + [len(s["name"]) for s in summaries])
    out = []
    metrics = [("n", "questions", "{:.0f}"), ("em", "EM %", "{:.1f}"), ("f1", "F1 %", "{:.1f}"),
               ("actions", "actions per question", "{:.2f}"), ("searches", "real searches per question", "{:.2f}")]
    if any("em_original" in s["overall"] for s in summaries):  # counterfactual questions
        metrics.insert(2, ("em_original", "EM % against the answer before the corpus was changed "
                                          "(a model that does not read scores here)", "{:.1f}"))
    for key, title, fmt in metrics:
        out.append(f"{title}\n{'method':<{width}} " + " ".join(f"{c:>11}" for c, _ in cols))
        for s in summaries:
            cells = []
            for _, get in cols:
                b = get(s)
                v = None if b is None or b["n"] == 0 or b.get(key) is None else \
                    b[key] * (100 if key in ("em", "f1", "em_original") else 1)
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
    steps = [s for s in summaries if s.get("comparison_steps")]
    if steps:
        out.append("comparisons, % of those with a decision line: both years as stated above / yes-no right for "
                   "the line / the name that follows / both years from a result line")
        out += [f"{s['name']:<{width}} " + " ".join(f"{100 * s['comparison_steps'][k]:>10.1f}%" for k in (
            "years", "decision", "name", "searched")) for s in steps]
        out.append("")
    reads = [s for s in summaries if s.get("reading")]
    if reads:
        out.append("reading lines that follow a result stating their fact: how many / % that copy its value")
        out += [f"{s['name']:<{width}} {s['reading']['n']:>11} {100 * s['reading']['copied']:>10.1f}%" for s in reads]
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
# command line


def saved_data(ckpt):
    """', e.g. the --data it was trained on: DIR' when the checkpoint's args.json names one, else ''."""
    path, data = os.path.join(ckpt, "args.json"), None
    if os.path.isfile(path):
        with open(path) as f:
            data = json.load(f).get("data")
    return f", e.g. the one it was trained on: --data {data} ({path})" if data else ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    ap.add_argument("--ckpt", help="checkpoint directory, or a stage's --out (its latest checkpoint)")
    ap.add_argument("--policy", nargs="+", choices=POLICIES, default=["agent"], help="one or more policies")
    ap.add_argument("--split", default="test", help="the questions: DATA/<split>.jsonl (data/convert.py --split)")
    ap.add_argument("--data", default=None, help="directory with <split>.jsonl and corpus.jsonl (and the embedded "
                    "world's world.json, for when_to_act); None: runs/world for a checkpoint of the embedded "
                    "world, required for any other")
    ap.add_argument("--search", help="corpus JSONL (BM25) or retrieval server URL (None: DATA/corpus.jsonl)")
    ap.add_argument("--limit", type=int, help="evaluate N questions evenly spaced over the split (all strata)")
    ap.add_argument("--out", help="trajectories JSONL; .summary.json and .png (--no-plot: none) beside it "
                                  "(None: runs/eval/<name>-<split>.jsonl)")
    ap.add_argument("--name", help="label of this checkpoint in tables (None: the --ckpt folder's name)")
    ap.add_argument("--batch-size", type=int, default=16, help="questions sampled together")
    ap.add_argument("--mode", choices=("real", "sim"), default="real",
                    help="agent only: real tool calls, or the model writes its own observations")
    ap.add_argument("--max-search-failures", type=float, default=0.1,
                    help="stop when more than this fraction of a batch's searches fail (the tool is down)")
    ap.add_argument("--trigger", default=WORKFLOW_TRIGGER, help="workflow: regex on the current line that "
                                                                "makes the controller search")
    ap.add_argument("--report", nargs="+", metavar="SUMMARY", help="only merge .summary.json files: table + plot")
    ap.add_argument("--html", metavar="FILE", help="also write the evaluated trajectories as a page (viewer.py)")
    ap.add_argument("--no-plot", action="store_true", help="no .png of EM by hops beside --out (pipeline.py: its "
                                                            "table has every figure)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="None: bfloat16 on CUDA, float32 on CPU")
    add_sampling_args(ap, temperature=0.0)  # EM of the greedy trajectory, the model's best guess (all policies)
    args = common.parse_args(ap, {}, argv)  # on the embedded world: its --topk (meta.json)

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
    ckpt = checkpoints.resolve_checkpoint(args.ckpt)
    if ckpt is None:
        ap.error(f"--ckpt {args.ckpt}: no checkpoint there (config.json or a 'latest' pointer)")
    if args.data is None:  # common.parse_args gave runs/world to a checkpoint of the embedded world only
        raise SystemExit(f"--ckpt {args.ckpt} is not a checkpoint of the embedded world (its tokenizer has another "
                         f"chat format): pass --data, the directory of the questions it is to answer "
                         f"({args.split}.jsonl, from `python -m data.convert DATASET FILE --out DIR --split "
                         f"{args.split}`)" + saved_data(ckpt))
    split = args.split
    name = args.name or os.path.basename(os.path.normpath(args.ckpt))
    out = args.out or f"runs/eval/{name}-{split}.jsonl"
    base = out[:-len(".jsonl")] if out.endswith(".jsonl") else out
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)

    needs_tool = any(p in ("rag", "workflow") or (p == "agent" and args.mode == "real") for p in args.policy)
    if needs_tool and not args.search:  # before the model loads, as the questions are (load_for_sampling)
        common.need_file(os.path.join(args.data, "corpus.jsonl"), also="; or --search a corpus file or a server URL")
    rows, model, tok = common.load_for_sampling(args, ckpt, split, "eval")
    tool = env.make_search_tool(args.search or os.path.join(args.data, "corpus.jsonl")) if needs_tool else None
    if tool is not None:
        print(f"[eval] search tool: {tool.check()}")  # raises SearchError: no evaluation on a dead tool
    gen = sampling_kwargs(args)

    world = None  # the embedded world's facts: who is known and every question's lookups (when_to_act)
    if os.path.isfile(os.path.join(args.data, "world.json")):
        with open(os.path.join(args.data, "world.json"), encoding="utf-8") as f:
            world = json.load(f)

    summaries, records = [], []
    for policy in args.policy:
        label = f"{name}:{policy}" + ("-sim" if policy == "agent" and args.mode == "sim" else "")
        s, recs = evaluate(model, tok, rows, policy, tool, name=label, batch_size=args.batch_size,
                           mode=args.mode, trigger=args.trigger, world=world,
                           max_search_failures=args.max_search_failures, **gen)
        summaries.append(s)
        records += recs
    jsonl.write(out, records)
    with open(base + ".summary.json", "w") as f:
        json.dump({"args": vars(args), "checkpoint": ckpt, "summaries": summaries}, f, indent=1)
    print(format_table(summaries))
    if not args.no_plot:
        plot(summaries, base + ".png")
    if args.html:
        viewer.write_html(args.html, records, tok, title=f"{name} on {split}")
    print(f"[eval] wrote {out} and {base}.summary.json" + (f" and {args.html}" if args.html else ""))


if __name__ == "__main__":
    main()
