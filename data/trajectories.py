"""Reasoning text for the embedded world: tool trajectories, pure-CoT traces and contrastive pairs.

A question is resolved one lookup at a time. Every lookup is one "step" that opens with a decision
point, "I need the <relation> of <X>.", and continues in one of two ways (paper §3.1):
- X is known (its page was in pretraining): recall the fact from memory,
      " I remember that the birthplace of X is Y.\\n"
- X is unknown: act, then copy the fact out of the observation,
      " I will search for it. <begin_search> X birthplace </end_search>"   (model segment ends here)
      "\\n\\n<search_result> result 1: ... </search_result>\\n\\n"        (tool segment)
      "The search result says that the birthplace of X is Y.\\n"
and the response ends with "So the answer is Y.\\n</think>\\n\\nThe answer is \\\\boxed{Y}".
All tags come from env.TAGS; nothing here hard-codes a tag string.

Queries are templated, "<name> <relation>", so that BM25 over the world's corpus puts the subject's
page in the top-k (data/build.py measures how often). Observations are produced by the caller's
`observe(query) -> (observation text, retrieved doc ids)`, i.e. the real tool, so training
observations are exactly what the sampler injects at run time.

What we simplified: the paper's trajectories are sampled from a strong model and filtered; ours are
written from templates, with the right decision at every step by construction.
"""
from env import TAGS
from data.world import fact_sentence


def query_for(name, relation):
    return f"{name} {relation}"


def need(name, relation):
    return f"I need the {relation} of {name}."


def recall(name, relation, value):
    s = fact_sentence(name, relation, value)
    return f" I remember that {s[0].lower()}{s[1:]}\n"


def act(name, relation):
    return f" I will search for it. {TAGS.search_open} {query_for(name, relation)} {TAGS.search_close}"


def read(name, relation, value):
    s = fact_sentence(name, relation, value)
    return f"The search result says that {s[0].lower()}{s[1:]}\n"


def conclusion(world, q):
    """The last line of reasoning, the end of thinking and the boxed answer."""
    text = ""
    if q.type == "comparison":
        (a, rel), (b, _) = q.lookups
        ya, yb = world.fact(a, rel), world.fact(b, rel)
        lo, hi = sorted((ya, yb))
        text = f"{lo} is earlier than {hi}.\n" if q.compare == "earlier" else f"{hi} is later than {lo}.\n"
    return text + f"So the answer is {q.answer}.\n{TAGS.think_close}\n\nThe answer is \\boxed{{{q.answer}}}"


def steps(world, q):
    """[(name, relation, value, known)] in lookup order."""
    return [(n, r, world.fact(n, r), world.by_name[n].known) for n, r in q.lookups]


def trajectory(world, q, observe, use_tool=True, upto=None):
    """Segments [{"text", "tool"}] of the whole response after "<think>\\n", and the searches made as
    [(query, gold doc id, retrieved ids)]. use_tool=False recalls every fact (pure CoT; callers only
    ask for it on questions whose lookups are all known). upto=k stops right after the decision
    sentence of step k: the segments then hold the stage-1 prefix."""
    segments, searches, text = [], [], ""
    for i, (name, rel, value, known) in enumerate(steps(world, q)):
        text += need(name, rel)
        if i == upto:
            return segments + [{"text": text, "tool": False}], searches
        if known or not use_tool:
            text += recall(name, rel, value)
            continue
        query = query_for(name, rel)
        observation, ids = observe(query)
        searches.append((query, world.by_name[name].id, ids))
        segments += [{"text": text + act(name, rel), "tool": False}, {"text": observation, "tool": True}]
        text = read(name, rel, value)
    segments.append({"text": text + conclusion(world, q), "tool": False})
    return segments, searches


def contrastive_pair(world, q, k, observe, wrong_value):
    """Stage-1 pair at the decision point of step k -> (prefix, chosen, rejected, direction).
    The prefix is the reasoning so far, with the real observations of earlier searches.
    "search": the fact is about an unknown entity; chosen acts, rejected recalls a wrong fact.
    "answer": the fact is known; chosen recalls it, rejected searches needlessly."""
    segments, _ = trajectory(world, q, observe, upto=k)
    prefix = "".join(s["text"] for s in segments)
    name, rel, value, known = steps(world, q)[k]
    if known:
        return prefix, recall(name, rel, value), act(name, rel), "answer"
    return prefix, act(name, rel), recall(name, rel, wrong_value), "search"


def workflow_trajectory(world, q, observe):
    """The workflow's format, as segments: every decision sentence is followed by a result block that an
    external controller retrieved with that sentence as the query (no action tags: the model never acts,
    and known facts are looked up too), then the fact is read out of it. observe(query) -> (observation
    text, retrieved doc ids). Base reading traces (joined into one text) and the workflow model's
    fine-tuning file (workflow.jsonl) have this form; eval.py --policy workflow runs it."""
    segments, text = [], ""
    for name, rel, value, _ in steps(world, q):
        observation, _ = observe(need(name, rel))
        segments += [{"text": text + need(name, rel), "tool": False}, {"text": observation, "tool": True}]
        text = read(name, rel, value)
    segments.append({"text": text + conclusion(world, q), "tool": False})
    return segments
