"""Reasoning text for the embedded world: tool trajectories, pure-CoT traces and contrastive pairs.

A question is resolved one lookup at a time. Every lookup is one "step" that opens with a decision
point, "I need the <relation> of <X>.", and continues in one of two ways (paper §3.1):
- X is known (its page was in pretraining): recall the fact from memory,
      " I remember that X was born in Y.\\n"
- X is unknown: act, then copy the fact out of the observation,
      " I will search for it. <begin_search> X birthplace </end_search>"   (model segment ends here)
      "\\n\\n<search_result> result 1: ... </search_result>\\n\\n"        (tool segment)
      "The search result says that X was born in Y.\\n"
and the response ends with "So the answer is \\\\boxed{Y}.\\n</think>\\n\\nThe answer is \\\\boxed{Y}".
All tags come from env.TAGS; nothing here hard-codes a tag string.

Queries are templated, "<name> <relation>", so that BM25 over the world's corpus puts the subject's
page first (data/build.py measures how often). Observations are produced by the caller's
`observe(query) -> (observation text, retrieved doc ids)`, i.e. the real search tool over the corpus
without held-out pages, so training observations are what the sampler injects at run time.

The paper's SFT data are sampled from a strong but fallible model and filtered by the answer; here a
simulated teacher (`Teacher`, `teacher_run`) plays that model. It has habits that are sometimes wrong:
it "remembers" facts it never read (years above all), searches with only the last word of a name, and
searches facts it knows. Filtering by the final answer keeps the runs whose mistakes did not matter (a
made-up year that still orders a comparison right, a short query that still found the page): stage 2
inherits those habits, as a distilled model inherits its teacher's. The runs that failed give stage 1
its pairs by error analysis: at the first wrong decision, the continuation that would have led to the
right answer (chosen) against the one the teacher wrote (rejected), from the same prefix.
"""
from dataclasses import dataclass

from env import TAGS
from data.world import fact_sentence


def query_for(name, relation):
    return f"{name} {relation}"


def need(name, relation):
    return f"I need the {relation} of {name}."


def in_clause(name, relation, value):
    """The fact sentence as the object of "that": "the birth year of X is 1850.", "X was born in Y."."""
    s = fact_sentence(name, relation, value)
    return "the" + s[3:] if s.startswith("The ") else s


def recall(name, relation, value):
    return f" I remember that {in_clause(name, relation, value)}\n"


def act(name, relation, query=None):
    return f" I will search for it. {TAGS.search_open} {query or query_for(name, relation)} {TAGS.search_close}"


def short_query(name, relation):
    """The teacher's lazy query: the last word of the name only, which other pages share."""
    return query_for(name.split()[-1], relation)


def read(name, relation, value):
    return f"The search result says that {in_clause(name, relation, value)}\n"


def year_check(ya, yb, compare):
    """The comparison's decision in steps a small model can take one at a time: digits compared at the same
    place up to the first that differs, the question's word copied next to that comparison, then the
    answer, which depends on those two tokens only: "Is 1850 later than 1862? 1 = 1, 8 = 8, 5 < 6, later: No"
    (data/build.py --n-drills puts it in the base text on random years)."""
    digits = []
    for da, db in zip(str(ya), str(yb)):
        digits.append(f"{da} {'=' if da == db else '<' if da < db else '>'} {db}")
        if da != db:
            break
    return f"Is {ya} {compare} than {yb}? {', '.join(digits)}, {compare}: {'Yes' if (ya < yb) == (compare == 'earlier') else 'No'}"


def year_pair(rng, lo, hi):
    """Two random years in [lo, hi] for a comparison drill or probe, half of the time close together."""
    ya = rng.randint(lo, hi)
    return ya, ya + rng.choice((-1, 1)) * rng.randint(1, 60) if rng.random() < 0.5 else rng.randint(lo, hi)


def winner(q, ya, yb):
    """The comparison's answer when its two years are ya and yb (as stated, right or made up)."""
    (a, _), (b, _) = q.lookups
    return a if (ya < yb) == (q.compare == "earlier") else b


def conclusion(world, q, values=None):
    """The last line of reasoning, the end of thinking and the boxed answer. values: the comparison's two
    years as the reasoning stated them (default: the true ones); the answer then follows from them.
    A comparison decides in the question's order, one local step at a time: the years are copied from the
    lines above, "earlier"/"later" from the question, and the name is the first one on yes, the second on no."""
    text, answer = "", q.answer
    if q.type == "comparison":
        (a, rel), (b, _) = q.lookups
        ya, yb = values or [world.fact(a, rel), world.fact(b, rel)]
        answer = winner(q, ya, yb)
        text = f"{year_check(ya, yb, q.compare)}, so it is {answer}.\n"
    # the answer is boxed in the reasoning too, so that writing it after </think> repeats a line verbatim
    # (a small model copies "answer is \boxed{" -> Y far more reliably than it re-finds Y in the reasoning)
    return text + f"So the answer is \\boxed{{{answer}}}.\n{TAGS.think_close}\n\nThe answer is \\boxed{{{answer}}}"


def steps(world, q):
    """[(name, relation, value, known)] in lookup order."""
    return [(n, r, world.fact(n, r), world.by_name[n].known) for n, r in q.lookups]


def trajectory(world, q, observe, use_tool=True, search_all=False):
    """The canonical response, every decision right: segments [{"text", "tool"}] of the whole response after
    "<think>\\n", and the searches made as [(query, gold doc id, retrieved ids)]. use_tool=False recalls
    every fact (pure CoT; callers only ask for it on questions whose lookups are all known); search_all
    searches every fact (the base text's parallel world, none of whose pages the base model has read)."""
    segments, searches, text = [], [], ""
    for name, rel, value, known in steps(world, q):
        text += need(name, rel)
        if (known and not search_all) or not use_tool:
            text += recall(name, rel, value)
            continue
        query = query_for(name, rel)
        observation, ids = observe(query)
        searches.append((query, world.by_name[name].id, ids))
        segments += [{"text": text + act(name, rel), "tool": False}, {"text": observation, "tool": True}]
        text = read(name, rel, value)
    segments.append({"text": text + conclusion(world, q), "tool": False})
    return segments, searches


def workflow_trajectory(world, q, observe):
    """The workflow's format, as segments: every decision sentence is followed by a result block that an
    external controller retrieved with that sentence as the query (no action tags: the model never acts,
    and known facts are looked up too), then the fact is read out of it. observe(query) -> (observation
    text, retrieved doc ids). The workflow model's fine-tuning file (workflow.jsonl) has this form;
    eval.py --policy workflow runs it."""
    segments, text = [], ""
    for name, rel, value, _ in steps(world, q):
        observation, _ = observe(need(name, rel))
        segments += [{"text": text + need(name, rel), "tool": False}, {"text": observation, "tool": True}]
        text = read(name, rel, value)
    segments.append({"text": text + conclusion(world, q), "tool": False})
    return segments


# ----------------------------------------------------------------------------- the fallible teacher

@dataclass
class Teacher:
    """How often the simulated teacher makes each mistake, per lookup."""
    year_recall: float = 0.7   # "remembers" a year of an entity it never read (a made-up year)
    recall: float = 0.1        # the same for any other fact of an unknown entity
    short_query: float = 0.25  # searches with the last word of the name only
    needless: float = 0.15     # searches a fact it knows


def teacher_run(world, q, observe, rng, teacher, wrong_value):
    """One run of the teacher on q -> dict(segments, searches, right, error).

    observe(query) -> (observation text, retrieved doc ids); wrong_value(name, relation) -> a wrong
    value of the right kind. error is None, or the first mistake of the teacher's that made the answer
    wrong (not a miss of the tool's on a right query), as the stage-1 pair at that decision point: (prefix, chosen, rejected, direction). A composition stops at
    its first wrong fact (the chain is broken); a comparison goes on with the wrong year, and is right
    whenever the years still order the same way."""
    by_id = {e.id: e for e in world.entities}
    segments, searches, text, got, error = [], [], "", [], None
    for name, rel, value, known in steps(world, q):
        decision = need(name, rel)
        prefix = "".join(s["text"] for s in segments) + text + decision
        right_step = recall(name, rel, value) if known else act(name, rel)
        direction = "answer" if known else "search"
        made_up = rng.random() < (teacher.year_recall if rel.endswith("year") else teacher.recall)
        if (known and rng.random() >= teacher.needless) or (not known and made_up):
            got_value = value if known else wrong_value(name, rel)
            step = recall(name, rel, got_value)
            text += decision + step
        else:
            query = short_query(name, rel) if rng.random() < teacher.short_query else query_for(name, rel)
            observation, ids = observe(query)
            searches.append((query, world.by_name[name].id, ids))
            top = by_id.get(ids[0]) if ids else None  # it reads the first page, whichever entity it is about
            got_value = top.facts.get(rel) if top is not None else None
            step = act(name, rel, query)
            segments += [{"text": text + decision + step, "tool": False}, {"text": observation, "tool": True}]
            text = "" if got_value is None else read(name, rel, got_value)
        got.append(got_value)
        if got_value != value:
            if step != right_step:  # a full-name search that the tool answered with another page: no pair
                error = error or (prefix, right_step, step, direction)
            if q.type != "comparison" or got_value is None:
                return {"segments": None, "searches": searches, "right": False, "error": error}
    if q.type == "comparison" and winner(q, *got) != q.answer:  # made-up years that order the other way
        return {"segments": None, "searches": searches, "right": False, "error": error}
    segments.append({"text": text + conclusion(world, q, got), "tool": False})
    return {"segments": segments, "searches": searches, "right": True, "error": None}

