"""Reasoning text for the embedded world: the agent's trajectories, the workflow's, and stage 1's pairs.

A question is resolved one lookup at a time. Every lookup is one step: "I need X's <relation>.", then the
model asks its memory, " From memory, X's birthplace is", and the next word is the decision (paper §3.1):
- X is known (its page was in pretraining): the value, and the step ends,
      " Y.\\n"
- X is unknown: "missing", then act, and copy the fact out of the search result,
      " missing. I will search for it. <begin_search> X's birthplace </end_search>"   (model segment ends here)
      "\\n\\n<search_result> result 1: ... </search_result>\\n\\n"                    (tool segment)
      "The search result says that X's birthplace is Y.\\n"
In a chain, each step that leaves lookups to do ends by restating what is left, the value found in place of
what it resolved, "Now the question is: What is Y's country?\\n", so the next step's relation is the one
right after "Y's" on that line: copied, not counted from the start of the question.
The decision word stands where the value would: where a fact is recalled, keyed by its name and relation
together, so the model decides with what it remembers at hand (a decision before the name and relation are
written cannot see whether the fact is there).
A comparison then decides digit by digit, "Is 1850 earlier than 1862? 1 = 1, 8 = 8, 5 < 6: Yes, so it is A.",
and every response ends "So the answer is \\\\boxed{Y}.\\n</think>\\n\\nThe answer is \\\\boxed{Y}".
All tags come from env.TAGS.

The paper samples its SFT data from a strong model and keeps the runs whose answer is right. Here the
teacher is this file: it writes the right trajectory, which recalls exactly the known facts and searches
every other one, so no fact a trajectory states is made up. Stage 1's pairs are its decisions against
their opposites at the same decision point (`decision_pair`): "missing" where the fact is known, or a value
where it is not. Observations come from the caller's
`observe(query) -> (observation text, retrieved doc ids)`: the real search tool, so training observations
are what the sampler injects at run time.
"""
from data.world import composition_text, fact_sentence, phrase
from env import TAGS


def query_for(name, relation):
    return phrase(name, relation)


def need(name, relation):
    return f"I need {phrase(name, relation)}."


def stated(name, relation, value):
    """The fact as the reasoning states it: "X's birth year is 1850."."""
    return fact_sentence(name, relation, value)


MISSING = "missing"  # the decision word for a fact the model does not remember ("whenever a fact is missing")


def memory(name, relation):
    """The decision point: the memory line up to the word that decides, " From memory, X's R is"."""
    return f" From memory, {phrase(name, relation)} is"


def recall(name, relation, value):
    return f"{memory(name, relation)} {value}.\n"


def act(name, relation):
    return f" I will search for it. {TAGS.search_open} {query_for(name, relation)} {TAGS.search_close}"


def miss(name, relation):
    """The memory line of a fact the model does not have, and the search it leads to."""
    return f"{memory(name, relation)} {MISSING}.{act(name, relation)}"


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


def question_left(q, k, value):
    """After lookup k of a chain, the question that is left, with the value found in place of what the lookup
    resolved ("What is Y's country?"); None after the chain's last lookup, and in a comparison (its two
    lookups do not chain)."""
    rest = [rel for _, rel in q.lookups[k + 1:]]
    return composition_text(value, rest) if q.type == "composition" and rest else None


def restate(q, k, value):
    """The line that ends step k of a chain, "Now the question is: What is Y's country?\\n" (question_left; ""
    where nothing is left). The next lookup is then the relation right after "Y's" on the line just written:
    a copy, however long the chain, not a count of how far it has got."""
    left = question_left(q, k, value)
    return f"Now the question is: {left}\n" if left else ""


def steps(world, q):
    """[(name, relation, value, known)] in lookup order."""
    return [(n, r, world.fact(n, r), world.by_name[n].known) for n, r in q.lookups]


def trajectory(world, q, observe, search="unknown"):
    """The response after "<think>\\n", every decision right, as segments [{"text", "tool"}]. search: which
    facts are searched: "unknown" (the agent: every fact of an entity that is not known, the rest recalled),
    "all" (the base text's tool-use traces: a parallel world, none of whose pages the base model read; they
    search straight away, without asking memory first, which is what stages 1 and 2 teach) or "none" (pure
    CoT: callers ask for it only where every lookup is known)."""
    segments, text, values = [], "", []
    for k, (name, rel, value, known) in enumerate(steps(world, q)):
        text += need(name, rel)
        values.append(value)
        if search == "none" or (search == "unknown" and known):
            text += recall(name, rel, value) + restate(q, k, value)
            continue
        observation, _ = observe(query_for(name, rel))
        way = act(name, rel) if search == "all" else miss(name, rel)
        segments += [{"text": text + way, "tool": False}, {"text": observation, "tool": True}]
        text = read(name, rel, value) + restate(q, k, value)
    segments.append({"text": text + conclusion(q, values), "tool": False})
    return segments


def workflow_trajectory(world, q, observe):
    """The workflow's format, as segments: every decision sentence is followed by a result block that an
    external controller retrieved with that sentence as the query (no action tags: the model never acts, and
    known facts are looked up too), then the fact is read out of it. The workflow model's fine-tuning file
    (workflow.jsonl) has this form; eval.py --policy workflow runs it."""
    segments, text, values = [], "", []
    for k, (name, rel, value, _) in enumerate(steps(world, q)):
        observation, _ = observe(need(name, rel))
        segments += [{"text": text + need(name, rel), "tool": False}, {"text": observation, "tool": True}]
        text = read(name, rel, value) + restate(q, k, value)
        values.append(value)
    segments.append({"text": text + conclusion(q, values), "tool": False})
    return segments


def decision_pair(world, q, k, observe):
    """Stage 1's pair at lookup k of q: the right trajectory up to that step's decision word (its observations
    included) as the prefix, which ends " From memory, X's R is"; then the two words it can go on with, each
    to the end of its sentence: the value (" V.") and " missing.". chosen = the right one: the value where X
    is known (direction "answer"), "missing" where it is not (direction "search"); rejected = the other. The
    rejected value of an unknown X is its real value, which the model cannot know: nothing is made up, and
    the pair differs in the decision alone. -> dict(prefix, chosen, rejected, direction)."""
    segments = trajectory(world, q, observe)
    text = "".join(s["text"] for s in segments)
    name, rel, value, known = steps(world, q)[k]
    cut = text.index(need(name, rel)) + len(need(name, rel) + memory(name, rel))
    value_way, missing_way = f" {value}.", f" {MISSING}."
    if known:
        return {"prefix": text[:cut], "chosen": value_way, "rejected": missing_way, "direction": "answer"}
    return {"prefix": text[:cut], "chosen": missing_way, "rejected": value_way, "direction": "search"}
