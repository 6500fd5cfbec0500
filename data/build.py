"""Write the embedded world's files for every AutoCoA stage (formats: data/README.md).

    python -m data.build --out runs/world --seed 0

One seed -> one world -> byte-identical files:
    corpus.jsonl  the search tool's corpus: every entity's page, held-out ones included, written in a way drawn for it
    base.jsonl    pretraining text for the tiny base model (it stands in for R1-Distill): the KNOWN entities'
                  pages, questions about them answered from memory, and tool-use traces from parallel worlds
    stage1.jsonl  decision pairs: the right step against its opposite ("when to act", SFT stage 1)
    stage2.jsonl  right trajectories, tool-using and pure-CoT at 5:1 as in the paper (SFT stages 2 and 3)
    workflow.jsonl  stage 2's questions in the workflow's format (the workflow baseline's model)
    rl.jsonl, dev.jsonl, test.jsonl   questions with gold answers (RL prompts and evaluation)
    the reading checks, each a copy of the corpus that a model which reads answers as it does on the real one:
    corpus_cf.jsonl + test_cf.jsonl   held-out entities' facts changed, and the test questions whose gold
                                      changes with them (does the model follow the corpus or its memory?)
    corpus_<layout>.jsonl             every fact kept, the pages laid out otherwise (PERTURBATIONS): does the
                                      model find a fact by its relation and subject, not by where it stands?
    world.json    entities with their split, facts, and the lookups behind every rl/dev/test question; the
                  `unrehearsed` known entities, which no fine-tuning file looks up (when to act from memory)
    meta.json     seed, arguments, counts per file, retrieval hit rates and the held-out leak check

Held out by entity, not only by question (data/world.py): dev and test questions need facts of dev and test
entities, whose names appear in no training file (checked here), so the tool is the only way to answer
them. A share of test and dev questions is about known entities only (recalling is right there; the "when
to act" measurement needs both).

Training observations are env.format_observation of what env.BM25Search returns for the trajectory's query,
with the sampler's top-k, over the corpus without the held-out pages (a training observation must not show a
held-out page as a lower-ranked hit); at run time the tool searches the whole corpus.
"""
import argparse
import collections
import json
import os
import random
import re

import env
from data.trajectories import decision_pair, query_for, question_left, trajectory, workflow_trajectory
from data.world import (DEFAULT_SIZES, DEFAULT_SPLIT_FRACTIONS, RELATIONS, SPLITS, TYPES, answer_with, fact_sentence,
                        make_questions, make_world, page, parse_facts, unknown_lookups)

PLURALS = {"person": "people", "org": "orgs", "city": "cities", "country": "countries", "book": "books"}
TRAINING_FILES = ("base", "stage1", "stage2", "workflow", "rl")
TOPK = 1  # documents per search (the paper's code returns 3; see data/README.md); the stages read it from meta.json
PER_PARALLEL_WORLD = 400  # tool-use traces drawn from each parallel world: about one per fact
PERTURBATIONS = ("shuffled", "prose", "split", "foreign", "merged")


def stratified(groups, n, rng):
    """n items drawn without replacement as evenly as possible over the groups (dict key -> list); groups that
    run out leave their share to the others. Keys are visited in sorted order."""
    pools = {k: rng.sample(v, len(v)) for k, v in sorted(groups.items())}
    out = []
    while len(out) < n and any(pools.values()):
        for k in sorted(pools):
            if pools[k] and len(out) < n:
                out.append(pools[k].pop())
    return out


def evenly_recalled(groups, n, rng):
    """n questions about known entities, drawn over the groups like `stratified`, but within a group the next
    is the question whose facts have been recalled least so far: every known fact is recalled about equally
    often (stage 2's pure-recall trajectories), so that none is left out of what stage 2 teaches to recall."""
    count, out = collections.Counter(), []
    pools = {k: rng.sample(v, len(v)) for k, v in sorted(groups.items())}
    while len(out) < n and any(pools.values()):
        for k in sorted(pools):
            if pools[k] and len(out) < n:
                q = min(pools[k], key=lambda q: (max(count[f] for f in q.lookups), sum(count[f] for f in q.lookups)))
                pools[k].remove(q)
                out.append(q)
                count.update(q.lookups)
    return out


def question_row(id_, q, world):
    """A question file's row; held_out: it needs a fact of a dev or test entity (only the tool has it)."""
    return {"id": id_, "question": q.question, "answers": [q.answer], "hops": q.hops, "type": q.type,
            "held_out": world.split_of(q) != "train"}


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def searcher(rows, topk):
    """observe(query) -> (observation text, retrieved ids): BM25 over rows, cached."""
    search, cache = env.BM25Search(rows), {}

    def observe(query):
        if query not in cache:
            cache[query] = search.search([query], topk=topk)[0]
        return env.format_observation(cache[query]), [d["id"] for d in cache[query]]
    return observe


# ----------------------------------------------------------------------------- the reading checks

def counterfactual(world, rng):
    """A copy of the world's facts in which every held-out entity's facts have other values of the same kind ->
    {name: facts}: a name becomes another entity it may point at, a year another entity's year for the same
    relation."""
    facts = {e.name: dict(e.facts) for e in world.entities}
    for e in world.entities:
        if not e.held_out:
            continue
        for rel, value in e.facts.items():
            obj = RELATIONS[rel][1]
            if obj == "year":
                others = [x.facts[rel] for x in world.of_type(e.type) if x.facts[rel] != value]
            else:
                others = [x.name for x in world.of_type(obj) if x.name != value and (not x.held_out or x.split == e.split)]
            facts[e.name][rel] = rng.choice(others)
    return facts


def perturbed(world, kind, rng):
    """The corpus with every fact kept and the pages laid out another way (a model that finds a fact by its
    relation and subject answers as before):
      shuffled  each page's facts in a new order;
      prose     the same, joined into one sentence ("X's birthplace is Y; X's employer is Z, and ...");
      split     each page cut in two documents with the same title, its facts dealt between them;
      foreign   two true facts of other entities of the same type inserted in each page at random places;
      merged    the pages of two entities of a type in one document, titled with the first one's name."""
    out = []
    if kind == "merged":  # pages of two entities of a type in one document, under the first one's title
        for t in TYPES:
            ents = world.of_type(t)
            for a, b in zip(ents[0::2], ents[1::2] + ([None] if len(ents) % 2 else [])):
                sentences = [fact_sentence(e.name, r, v) for e in (a, b) if e for r, v in e.facts.items()]
                rng.shuffle(sentences)
                out.append({"id": a.id, "contents": f'"{a.name}"\n' + " ".join(sentences)})
        return out
    for e in world.entities:
        out += documents(e, written(e, world, rng, mentions=2 * (kind == "foreign"), parts=1 + (kind == "split"),
                                    prose=kind == "prose"))
    return out


def documents(e, texts):
    """Corpus rows for entity e's page written as texts: id e0012 for one document, e0012a and e0012b for two."""
    return [{"id": e.id + ("ab"[k] if len(texts) > 1 else ""), "contents": t} for k, t in enumerate(texts)]


def written(e, world, rng, mentions=0, parts=1, prose=False, facts=None):
    """Entity e's page as a writer might lay it out -> the contents of 1 or `parts` documents titled with its
    name: its facts (e.facts, or `facts`) in a drawn order, `mentions` facts of other entities of its type at
    drawn places, dealt over `parts` documents at a drawn cut, the sentences of each run together ("X's R is
    V; X's S is W, and ...") where prose. Every fact is kept."""
    sentences = [fact_sentence(e.name, r, v) for r, v in (e.facts if facts is None else facts).items()]
    rng.shuffle(sentences)
    for other in rng.sample([x for x in world.of_type(e.type) if x is not e], mentions):
        r = rng.choice(sorted(other.facts))
        sentences.insert(rng.randrange(len(sentences) + 1), fact_sentence(other.name, r, other.facts[r]))
    cuts = sorted(rng.sample(range(1, len(sentences)), min(parts, len(sentences)) - 1))
    docs = [sentences[a:b] for a, b in zip([0] + cuts, cuts + [len(sentences)])]
    if prose:
        docs = [["".join(s[:-1] + rng.choice(("; ", ", and ", ", ")) for s in d[:-1]) + d[-1]] for d in docs]
    return [f'"{e.name}"\n' + " ".join(d) for d in docs]


def corpus_pages(world, rng, facts=None):
    """The search tool's corpus: each entity's page written in a way drawn for it, as the parallel worlds'
    pages of the base text are (`written`): a third of them dealt over two documents with the same title
    (ids e0012a, e0012b), half of them run together; the facts in a drawn order. No page states another
    entity's fact. facts: {name: facts} to state instead of the world's (the counterfactual corpus, laid out
    the same with the same rng seed) -> [(entity, {"id", "contents"})]."""
    return [(e, row) for e in world.entities
            for row in documents(e, written(e, world, rng, parts=rng.choice((1, 1, 2)), prose=rng.random() < 0.5,
                                            facts=None if facts is None else facts[e.name]))]


def retrieval_hits(rows, world, lookups):
    """Of the lookups (name, relation), the share whose templated query finds a document that states the fact:
    first, and among the first three."""
    results = env.BM25Search(rows).search([query_for(n, r) for n, r in lookups], topk=3)
    facts = [(r, n, str(world.fact(n, r))) for n, r in lookups]
    top1 = sum(bool(d) and f in parse_facts(d[0]["contents"]) for d, f in zip(results, facts))
    top3 = sum(any(f in parse_facts(x["contents"]) for x in d) for d, f in zip(results, facts))
    return {"top1": round(top1 / len(lookups), 4), "top3": round(top3 / len(lookups), 4)}


# ----------------------------------------------------------------------------- the base text

def reading_traces(world, world_seed, n, rng, sizes, topk):
    """n tool-use traces from a parallel world (made with world_seed: names from `world`'s word pool but none
    of its names, no page of it in the base text), under the tool's instruction: every fact is searched, then
    copied out of the result. Each entity's page is written in a way drawn for it (`written`: run together,
    spread over two documents, beside facts of other entities, or plainly), so a value is found by its subject
    and relation alone; the result holds the document that states the fact among topk, at a place drawn at
    random (so the right page is found by its name, not by its rank). With the pages and the answers from memory of
    the known entities, they make the base model what R1-Distill is: it answers from memory when asked
    plainly, and when the prompt offers the tool it searches and reads; nothing taught it WHEN a search is
    needed (SFT stage 1)."""
    other = make_world(world_seed, sizes, {"known": 1.0, "dev": 0.0, "test": 0.0}, words=world.words,
                       avoid=[e.name for e in world.entities])
    prng = random.Random(f"pages-{world_seed}")
    # drawn per page: 0-2 facts of other entities (more delayed copying past the schedule: RESULTS.md), a
    # third of the pages over two documents, half of them run together
    docs_of = {e.name: [{"id": f"{e.id}{k}", "contents": text} for k, text in enumerate(
        written(e, other, prng, mentions=prng.choice((0, 0, 1, 2)), parts=prng.choice((1, 1, 2)),
                prose=prng.random() < 0.5))] for e in other.entities}
    search = env.BM25Search([d for docs in docs_of.values() for d in docs])

    def observe(query):  # the trajectory's templated query, "X's R": the document of X that states it
        right = next(d for d in docs_of[query.split("'s ")[0]] if f"{query} is " in d["contents"])
        hits = [d for d in search.search([query], topk=topk + 1)[0] if d["id"] != right["id"]][:topk - 1]
        docs = hits + [right]
        rng.shuffle(docs)
        return env.format_observation(docs), [d["id"] for d in docs]

    pool = [q for qs in make_questions(other, random.Random(f"questions-{world_seed}")).values() for q in qs]
    rows = []
    for q in sorted(rng.sample(pool, min(n, len(pool))), key=lambda q: q.question):
        segments = trajectory(other, q, observe, search="all")
        response = "".join(s["text"] for s in segments)
        rows.append({"text": f"{q.question}\n{env.TAGS.think_open}\n{response}", "kind": "reading",
                     "question": q.question, "response": response, "instruction": True, "segments": segments})
    return rows


def restated(world, q):
    """The questions a trajectory of q restates on its way (data/trajectories.restate)."""
    return {question_left(q, k, world.fact(*lookup)) for k, lookup in enumerate(q.lookups)} - {None}


def held_out_leaks(world, files):
    """{file: [held-out names found in it]}: the static check that no training file mentions a dev or test
    entity (by name; its facts cannot appear without its name)."""
    held = sorted(e.name for e in world.entities if e.held_out)
    if not held:
        return {}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, held)) + r")\b")
    out = {}
    for name, rows in files.items():
        found = sorted(set(pattern.findall(json.dumps(rows, ensure_ascii=False))))
        if found:
            out[name] = found
    return out


# ----------------------------------------------------------------------------- build

def build(out_dir, seed=0, sizes=None, fractions=None, topk=TOPK, n_test=800, n_dev=200, n_rl=500, n_tool=1500,
          n_cot=300, n_pairs=600, n_recall=1000, n_reading=1600, reading_repeats=3, page_repeats=30, known_share=0.2,
          unrehearsed_share=0.2):
    """Build the world for `seed` and write every file into out_dir; returns the meta dict. known_share: the
    share of test and dev questions about known entities only (the rest need a held-out fact). unrehearsed_share:
    the share of known entities that no fine-tuning file (stages 1 and 2, the workflow's, RL's) looks up."""
    # -------------------------------------------------------------------- world and splits
    world = make_world(seed, sizes, fractions)
    rng = random.Random(f"build-{seed}")  # str seeds are hashed with sha512: stable across runs
    strata = make_questions(world, rng)
    by_split = {s: {k: [q for q in v if world.split_of(q) == s] for k, v in sorted(strata.items())}
                for s in ("train", "dev", "test")}
    all_known = {k: [q for q in v if unknown_lookups(world, q) == 0] for k, v in by_split["train"].items()}
    taken = set()

    def draw(groups, n):
        qs = stratified({k: [q for q in v if q.question not in taken] for k, v in groups.items()}, n, rng)
        taken.update(q.question for q in qs)
        return qs

    splits = {}
    for name, n in (("test", n_test), ("dev", n_dev)):
        n_known = round(known_share * n)
        splits[name] = draw(by_split[name], n - n_known) + draw(all_known, n_known)
    splits["rl"] = draw({k: [q for q in v if unknown_lookups(world, q) > 0] for k, v in by_split["train"].items()}, n_rl)
    # a share of the known entities, per type, that no fine-tuning file looks up: the base model remembers them,
    # but no SFT or RL text recalls them, so the decision on them is read from memory or not at all (RL prompts
    # that touch one are dropped, not redrawn, so that the base text stays what it was)
    krng = random.Random(f"unrehearsed-{seed}")
    unrehearsed = set()
    for t in TYPES:
        known = [e.name for e in world.of_type(t) if e.known]
        unrehearsed.update(krng.sample(known, round(unrehearsed_share * len(known))))
    rehearsable = lambda q: not unrehearsed.intersection(n for n, _ in q.lookups)  # noqa: E731
    splits["rl"] = [q for q in splits["rl"] if rehearsable(q)]
    # the rest trains, but for a chain that restates a dev or test question on its way (its tail from a
    # known entity: data/trajectories.restate), so that no dev or test question is a training text
    held = {q.question for name in ("test", "dev") for q in splits[name]}
    pool = {k: [q for q in v if q.question not in taken and not restated(world, q) & held]
            for k, v in by_split["train"].items()}
    known_pool = {k: [q for q in v if unknown_lookups(world, q) == 0] for k, v in pool.items()}  # the base text's
    sft_pool = {k: [q for q in v if rehearsable(q)] for k, v in pool.items()}  # the fine-tuning files'
    tool_pool = {k: [q for q in v if unknown_lookups(world, q) > 0] for k, v in sft_pool.items()}
    recall_pool = {k: [q for q in v if unknown_lookups(world, q) == 0] for k, v in sft_pool.items()}

    # -------------------------------------------------------------------- the corpus and the search tool
    pages = corpus_pages(world, random.Random(f"pages-{seed}"))
    corpus = [row for _, row in pages]
    observe = searcher([row for e, row in pages if not e.held_out], topk)  # training side

    # -------------------------------------------------------------------- stage 2, the workflow's file, stage 1
    stage2 = [{"question": q.question, "answers": [q.answer], "hops": q.hops, "type": q.type, "kind": kind,
               "segments": trajectory(world, q, observe, search="unknown" if kind == "tool" else "none")}
              for kind, qs in (("tool", stratified(tool_pool, n_tool, rng)),
                               ("cot", evenly_recalled(recall_pool, n_cot, rng)))
              for q in qs]
    # the workflow baseline's model trains on the same questions in the workflow's format (eval.py)
    by_question = {q.question: q for qs in pool.values() for q in qs}
    workflow = [{**{k: r[k] for k in ("question", "answers", "hops", "type")}, "kind": "workflow",
                 "segments": workflow_trajectory(world, by_question[r["question"]], observe)} for r in stage2]
    pair_rng = random.Random(f"pairs-{seed}")

    # stage 1: decision points of training questions, half where the fact is known (recall is right), half
    # where it is not (search is right), at every depth of the chains
    points = {"answer": [], "search": []}
    for q in stratified(sft_pool, sum(map(len, sft_pool.values())), rng):
        for k, (name, _) in enumerate(q.lookups):
            points["answer" if world.by_name[name].known else "search"].append((q, k))
    stage1 = [{"question": q.question, **decision_pair(world, q, k, observe), "hops": q.hops}
              for direction in ("search", "answer") for q, k in pair_rng.sample(points[direction], n_pairs // 2)]
    rng.shuffle(stage2)
    rng.shuffle(stage1)
    random.Random(f"workflow-{seed}").shuffle(workflow)

    # -------------------------------------------------------------------- the base text
    brng = random.Random(f"base-{seed}")
    # the known pages, each time in another layout, so the facts are remembered by relation, not by place
    base = [{"text": page(e.name, e.facts, brng), "kind": "page"} for _ in range(page_repeats)
            for e in world.entities if e.known]
    # questions about known entities answered from memory, asked plainly (no tool in the prompt)
    for q in stratified(known_pool, n_recall, brng):
        response = "".join(s["text"] for s in trajectory(world, q, observe, search="none"))
        base.append({"text": f"{q.question}\n{env.TAGS.think_open}\n{response}", "kind": "recall",
                     "question": q.question, "response": response, "instruction": False})
    # tool-use traces from parallel worlds: only copying the value out of the result can predict it. Each
    # trace is read reading_repeats times, which makes the base model copy sooner (RESULTS.md)
    base += [row for w in range(-(-n_reading // PER_PARALLEL_WORLD))
             for row in reading_traces(world, seed + 1_000_003 + w, min(PER_PARALLEL_WORLD, n_reading - w * PER_PARALLEL_WORLD),
                                       brng, sizes, topk)
             for _ in range(reading_repeats)]
    brng.shuffle(base)

    # -------------------------------------------------------------------- the reading checks
    cf_facts = counterfactual(world, random.Random(f"counterfactual-{seed}"))
    # the same layouts as the corpus (the same rng seed): only the values change
    corpus_cf = [row for _, row in corpus_pages(world, random.Random(f"pages-{seed}"), cf_facts)]
    test_rows = [question_row(f"test-{i:05d}", q, world) for i, q in enumerate(splits["test"])]
    test_cf = [{**row, "answers": [new], "original_answers": [q.answer]} for row, q in zip(test_rows, splits["test"])
               if (new := answer_with(cf_facts, q)) is not None and new != q.answer]
    layouts = {kind: perturbed(world, kind, random.Random(f"{kind}-{seed}")) for kind in PERTURBATIONS}

    # -------------------------------------------------------------------- write
    os.makedirs(out_dir, exist_ok=True)
    rows = {name: [question_row(f"{name}-{i:05d}", q, world) for i, q in enumerate(qs)] for name, qs in splits.items()}
    files = {"corpus": corpus, "base": base, "stage1": stage1, "stage2": stage2, "workflow": workflow, **rows,
             "test_cf": test_cf, "corpus_cf": corpus_cf, **{f"corpus_{k}": v for k, v in layouts.items()}}
    leaks = held_out_leaks(world, {name: files[name] for name in TRAINING_FILES})
    if leaks:
        raise AssertionError(f"held-out names in training files: {leaks}")
    for name, data in files.items():
        write_jsonl(os.path.join(out_dir, f"{name}.jsonl"), data)
    world_json = world.to_json()
    world_json["unrehearsed"] = sorted(unrehearsed)
    world_json["question_lookups"] = {r["id"]: [list(l) for l in q.lookups]
                                      for name, qs in splits.items() for r, q in zip(rows[name], qs)}
    with open(os.path.join(out_dir, "world.json"), "w", encoding="utf-8") as f:
        json.dump(world_json, f, ensure_ascii=False, indent=1)
    lookups = [(e.name, r) for e in world.entities for r in e.facts]
    meta = {
        "seed": seed, "topk": topk, "sizes": {**DEFAULT_SIZES, **(sizes or {})},
        "entities": {s: sum(e.split == s for e in world.entities) for s in SPLITS}, "name_words": len(world.words),
        "counts": {name: len(data) for name, data in files.items()},
        "questions_needing_a_held_out_fact": {name: sum(world.split_of(q) == name for q in splits[name])
                                              for name in ("test", "dev")},
        "held_out_names_in_training_files": 0,
        "unrehearsed_known_entities": len(unrehearsed),
        "stage2_kinds": {k: sum(r["kind"] == k for r in stage2) for k in ("tool", "cot")},
        "stage1_directions": {d: sum(r["direction"] == d for r in stage1) for d in ("search", "answer")},
        "base_kinds": {k: sum(r["kind"] == k for r in base) for k in ("page", "recall", "reading")},
        "hops": {name: {h: sum(r["hops"] == h for r in rs) for h in (1, 2, 3, 4)} for name, rs in rows.items()},
        "retrieval": {"lookups": len(lookups), "corpus": retrieval_hits(corpus, world, lookups),
                      **{k: retrieval_hits(v, world, lookups) for k, v in layouts.items()}},
    }
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return meta


def examples(seed=0):
    """The examples of data/README.md, rendered from the code (tests/test_data.py keeps the two equal): a page,
    a question of each stratum, the right trajectory of a question that needs a search and a recall, and the
    decision pair at its first step."""
    world = make_world(seed)
    strata = make_questions(world, random.Random(f"build-{seed}"))
    pages = corpus_pages(world, random.Random(f"pages-{seed}"))
    observe = searcher([row for e, row in pages if not e.held_out], TOPK)
    mixed, comparison = (next(q for q in strata[k] if world.split_of(q) == "train"  # what stage 2 trains on
                              and [world.by_name[n].known for n, _ in q.lookups] == pattern)
                         for k, pattern in ((("composition", 2), [False, True]), (("comparison", 2), [True, False])))
    first = world.by_name[mixed.lookups[0][0]]
    lines = ["An entity's page (corpus.jsonl's `contents`: one document, or two with the same title):", "```",
             *(row["contents"] for e, row in pages if e is first), "```",
             "Questions, one per stratum, with their answers:", "```"]
    lines += [f"{strata[k][0].question}  ->  {strata[k][0].answer}" for k in sorted(strata)]
    lines += ["```", "The right trajectory (stage2.jsonl; tool segments are the lines between the result tags):",
              "```", mixed.question, "".join(s["text"] for s in trajectory(world, mixed, observe)), "```",
              "and one for a comparison:", "```", comparison.question,
              "".join(s["text"] for s in trajectory(world, comparison, observe)), "```"]
    pair = decision_pair(world, mixed, 0, observe)
    lines += ["The decision pair at its first step (stage1.jsonl, direction search):", "```",
              f"prefix:   ...{pair['prefix'][pair['prefix'].rindex('I need'):]}", f"chosen:   {pair['chosen'].rstrip()}", f"rejected: {pair['rejected'].rstrip()}",
              "```"]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/world", help="output directory")
    ap.add_argument("--examples", action="store_true", help="print data/README.md's examples instead of building")
    ap.add_argument("--seed", type=int, default=0, help="world seed; same seed -> byte-identical files")
    for t, flag in PLURALS.items():
        ap.add_argument(f"--{flag}", type=int, default=DEFAULT_SIZES[t], help=f"number of {t} entities")
    for split, f in DEFAULT_SPLIT_FRACTIONS.items():
        ap.add_argument(f"--{split}-fraction", type=float, default=f, help=f"share of each type's entities in {split}")
    ap.add_argument("--topk", type=int, default=TOPK, help="documents per search (the stages read it from meta.json)")
    ap.add_argument("--n-test", type=int, default=800, help="test questions (stratified)")
    ap.add_argument("--n-dev", type=int, default=200, help="dev questions (stratified)")
    ap.add_argument("--known-share", type=float, default=0.2,
                    help="share of test/dev questions about known entities only (the rest need a held-out fact)")
    ap.add_argument("--unrehearsed-share", type=float, default=0.2,
                    help="share of known entities that no fine-tuning file looks up (when to act, from memory)")
    ap.add_argument("--n-rl", type=int, default=500, help="RL prompts (stratified)")
    ap.add_argument("--n-tool", type=int, default=1500, help="stage-2 tool trajectories")
    ap.add_argument("--n-cot", type=int, default=300, help="stage-2 pure-CoT trajectories (paper 5:1)")
    ap.add_argument("--n-pairs", type=int, default=600, help="stage-1 decision pairs (half each way)")
    ap.add_argument("--n-recall", type=int, default=1000, help="questions about known entities answered from memory "
                                                               "in base.jsonl")
    ap.add_argument("--n-reading", type=int, default=1600, help="parallel-world tool-use traces in base.jsonl")
    ap.add_argument("--reading-repeats", type=int, default=3, help="copies of each tool-use trace in base.jsonl")
    ap.add_argument("--page-repeats", type=int, default=30, help="copies of each known page in base.jsonl, each in "
                                                                 "another layout")
    args = ap.parse_args()
    if args.examples:
        print(examples(args.seed))
        return
    print(vars(args))
    meta = build(args.out, args.seed, {t: getattr(args, flag) for t, flag in PLURALS.items()},
                 {s: getattr(args, f"{s}_fraction") for s in DEFAULT_SPLIT_FRACTIONS}, args.topk, args.n_test,
                 args.n_dev, args.n_rl, args.n_tool, args.n_cot, args.n_pairs, args.n_recall, args.n_reading, args.reading_repeats,
                 args.page_repeats, args.known_share, args.unrehearsed_share)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
