"""Reasoning text for the embedded world: the agent's trajectories, the workflow's, and stage 1's pairs.

A question is resolved one lookup at a time. Every lookup is one step that opens with a decision point,
"I need X's <relation>.", and goes on in one of two ways (paper §3.1):
- X is known (its page was in pretraining): recall the fact,
      " I remember that X's birthplace is Y.\\n"
- X is unknown: act, then copy the fact out of the search result,
      " I will search for it. <begin_search> X's birthplace </end_search>"   (model segment ends here)
      "\\n\\n<search_result> result 1: ... </search_result>\\n\\n"          (tool segment)
      "The search result says that X's birthplace is Y.\\n"
A comparison then decides digit by digit, "Is 1850 earlier than 1862? 1 = 1, 8 = 8, 5 < 6: Yes, so it is A.",
and every response ends "So the answer is \\\\boxed{Y}.\\n</think>\\n\\nThe answer is \\\\boxed{Y}".
All tags come from env.TAGS.

The paper samples its SFT data from a strong model and keeps the runs whose answer is right. Here the
teacher is this file: it writes the right trajectory, which recalls exactly the known facts and searches
every other one, so no fact a trajectory states is made up. Stage 1's pairs are its decisions against
their opposites at the same decision point (`decision_pair`): a needless search of a known fact, or a recall
of an unknown one, each cut where it would state the fact. Observations come from the caller's
`observe(query) -> (observation text, retrieved doc ids)`: the real search tool, so training observations
are what the sampler injects at run time.
"""
from data.world import fact_sentence, phrase
from env import TAGS


def query_for(name, relation):
    return phrase(name, relation)


def need(name, relation):
    return f"I need {phrase(name, relation)}."


def stated(name, relation, value):
    """The fact as the reasoning states it: "X's birth year is 1850."."""
    return fact_sentence(name, relation, value)


def recall(name, relation, value):
    return f" I remember that {stated(name, relation, value)}\n"


def act(name, relation):
    return f" I will search for it. {TAGS.search_open} {query_for(name, relation)} {TAGS.search_close}"


def read(name, relation, value):
    return f"The search result says that {stated(name, relation, value)}\n"


def year_check(ya, yb):
    """Is ya earlier than yb, in steps a small model can take one at a time: the digits compared at the same
    place up to the first that differs, then the answer, which follows from that last comparison alone:
    "Is 1850 earlier than 1862? 1 = 1, 8 = 8, 5 < 6: Yes"."""
    digits = []
    for da, db in zip(str(ya), str(yb)):
        digits.append(f"{da} {'=' if da == db else '<' if da < db else '>'} {db}")
        if da != db:
            break
    return f"Is {ya} earlier than {yb}? {', '.join(digits)}: {'Yes' if ya < yb else 'No'}"


def conclusion(q, values):
    """The last line of reasoning, the end of thinking and the boxed answer. values: the facts the reasoning
    stated, in lookup order; a comparison decides from its two years, the first name on Yes."""
    answer = values[-1]
    text = ""
    if q.type == "comparison":
        (a, _), (b, _) = q.lookups
        ya, yb = values
        answer = a if ya < yb else b
        text = f"{year_check(ya, yb)}, so it is {answer}.\n"
    # the answer is boxed in the reasoning too, so that writing it after </think> repeats a line verbatim
    return text + f"So the answer is \\boxed{{{answer}}}.\n{TAGS.think_close}\n\nThe answer is \\boxed{{{answer}}}"


def steps(world, q):
    """[(name, relation, value, known)] in lookup order."""
    return [(n, r, world.fact(n, r), world.by_name[n].known) for n, r in q.lookups]


def trajectory(world, q, observe, search="unknown"):
    """The response after "<think>\\n", every decision right, as segments [{"text", "tool"}]. search: which
    facts are searched: "unknown" (the agent: every fact of an entity that is not known, the rest recalled),
    "all" (the base text's tool-use traces: a parallel world, none of whose pages the base model read) or
    "none" (pure CoT: callers ask for it only where every lookup is known)."""
    segments, text, values = [], "", []
    for name, rel, value, known in steps(world, q):
        text += need(name, rel)
        values.append(value)
        if search == "none" or (search == "unknown" and known):
            text += recall(name, rel, value)
            continue
        observation, _ = observe(query_for(name, rel))
        segments += [{"text": text + act(name, rel), "tool": False}, {"text": observation, "tool": True}]
        text = read(name, rel, value)
    segments.append({"text": text + conclusion(q, values), "tool": False})
    return segments


def workflow_trajectory(world, q, observe):
    """The workflow's format, as segments: every decision sentence is followed by a result block that an
    external controller retrieved with that sentence as the query (no action tags: the model never acts, and
    known facts are looked up too), then the fact is read out of it. The workflow model's fine-tuning file
    (workflow.jsonl) has this form; eval.py --policy workflow runs it."""
    segments, text, values = [], "", []
    for name, rel, value, _ in steps(world, q):
        observation, _ = observe(need(name, rel))
        segments += [{"text": text + need(name, rel), "tool": False}, {"text": observation, "tool": True}]
        text = read(name, rel, value)
        values.append(value)
    segments.append({"text": text + conclusion(q, values), "tool": False})
    return segments


def decision_pair(world, q, k, observe):
    """Stage 1's pair at lookup k of q: the right trajectory up to that decision point (its observations
    included) as the prefix, which ends "I need X's R."; then the two ways on, each up to where it would state
    X's R: the search (" I will search for it. <begin_search> X's R </end_search>") and the recall
    (" I remember that X's R is"). chosen = the right way: recall where X is known (direction "answer"), search
    where it is not (direction "search"); rejected = the other. The two differ in the decision alone: a
    rejected recall that went on to state a made-up value would let the loss fall by making that value
    unlikely, without moving the decision. -> dict(prefix, chosen, rejected, direction)."""
    segments = trajectory(world, q, observe)
    text = "".join(s["text"] for s in segments)
    name, rel, value, known = steps(world, q)[k]
    cut = text.index(need(name, rel)) + len(need(name, rel))
    remember = recall(name, rel, value)
    remember = remember[:remember.rindex(" is ") + len(" is")]  # up to the value
    if known:
        return {"prefix": text[:cut], "chosen": remember, "rejected": act(name, rel), "direction": "answer"}
    return {"prefix": text[:cut], "chosen": act(name, rel), "rejected": remember, "direction": "search"}
