"""Write the embedded world's files for every AutoCoA stage (formats: data/README.md).

    python -m data.build --out runs/world --seed 0

One seed -> one world -> byte-identical files:
    corpus.jsonl  the search tool's corpus: every entity's page, held-out ones included, plus distractors
    base.jsonl    pretraining text for the tiny base model (stands in for R1-Distill): pages of the
                  KNOWN entities, pure reasoning traces over them answered from memory, tool-use
                  traces from a parallel world (searching, then copying facts out of the results)
    stage1.jsonl  contrastive pairs from the teacher's mistakes ("when to act", paper §3.1, SFT stage 1)
    stage2.jsonl  the teacher's right trajectories, tool and pure-CoT at 5:1 as in the paper (SFT stages 2, 3)
    workflow.jsonl  stage 2's questions in the workflow's format (the workflow baseline's model)
    rl.jsonl, dev.jsonl, test.jsonl   questions with gold answers (RL prompts and evaluation)
    test_cf.jsonl, corpus_cf.jsonl    the counterfactual check: held-out entities' facts changed in a copy
                  of the corpus, and the test questions whose gold changes with it (eval.py reports how
                  often a model follows the corpus rather than what it remembers)
    world.json    entities with their split, facts, and the lookups behind every rl/dev/test question
    meta.json     seed, arguments, counts per file, retrieval hit rates, the teacher's statistics and
                  the held-out leak check

Held out by entity, not only by question (data/world.py): dev and test questions start from dev and test
entities, whose names and facts appear in no training file (base, stage1, stage2, workflow, rl; checked
here and in meta.json), so the tool is the only way to answer them. A share of test and dev questions
is about known entities only (recalling is right there; the "when to act" measurement needs both).

Training observations are env.format_observation of what env.BM25Search returns for the trajectory's
query, with the sampler's top-k, over the corpus without the held-out pages (a training observation
must not show a held-out page as a lower-ranked hit); at run time the tool searches the whole corpus.
"""
import argparse
import json
import math
import os
import random
import re

import env
from data.world import (COMPARE_WORDS, DEFAULT_SIZES, DEFAULT_SPLIT_FRACTIONS, RELATIONS, SPLITS, TYPES, Entity,
                        document, make_questions, make_world, unknown_lookups)
from data.trajectories import (Teacher, query_for, short_query, teacher_run, trajectory, workflow_trajectory, year_check,
                               year_pair)


PLURALS = {"person": "people", "org": "orgs", "city": "cities", "country": "countries", "book": "books"}
TRAINING_FILES = ("base", "stage1", "stage2", "workflow", "rl")
READING_PER_WORLD = 400  # fresh tool-use traces drawn from each parallel world (build)
TOPK = 1  # documents per search in the world's observations; the stages read it from meta.json


def stratified(groups, n, rng):
    """n items drawn without replacement as evenly as possible over the groups (dict key -> list);
    groups that run out leave their share to the others. Keys are visited in sorted order."""
    pools = {k: rng.sample(v, len(v)) for k, v in sorted(groups.items())}
    out = []
    while len(out) < n and any(pools.values()):
        for k in sorted(pools):
            if pools[k] and len(out) < n:
                out.append(pools[k].pop())
    return out


def question_row(id_, q, world):
    """A question file's row; held_out: it needs a fact of a dev or test entity (only the tool has it)."""
    return {"id": id_, "question": q.question, "answers": [q.answer], "hops": q.hops, "type": q.type,
            "held_out": world.split_of(q) != "train"}


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def counterfactual(world, rng):
    """A copy of the world's facts in which every held-out entity's facts have other values of the same kind
    -> {name: facts}: a name becomes another entity it may point at, a year the year another entity has for
    the same relation, so a changed year stays in the range the models were trained on."""
    facts = {e.name: dict(e.facts) for e in world.entities}
    for e in world.real():
        if not e.held_out:
            continue
        for rel, value in e.facts.items():
            obj = RELATIONS[rel][1]
            if obj == "year":
                others = [x.facts[rel] for x in world.real(e.type) if rel in x.facts and x.facts[rel] != value]
            else:
                others = [x.name for x in world.real(obj) if x.name != value and (not x.held_out or x.split == e.split)]
            facts[e.name][rel] = rng.choice(others)
    return facts


def answer_with(facts, q):
    """q's answer when the world's facts are `facts` (the chain is followed again: a changed fact can lead
    to other entities). None if there is none: the chain breaks (an entity without that relation) or a
    comparison's two years are equal."""
    if q.type == "comparison":
        (a, rel), (b, _) = q.lookups
        ya, yb = facts[a][rel], facts[b][rel]
        if ya == yb:
            return None
        return a if (ya < yb) == (q.compare == "earlier") else b
    cur = q.lookups[0][0]
    for _, rel in q.lookups:
        if rel not in facts.get(cur, {}):
            return None
        cur = facts[cur][rel]
    return str(cur)


def build(out_dir, seed=0, sizes=None, fractions=None, n_distractors=40, topk=TOPK, n_test=800, n_dev=200,
          n_rl=500, n_tool=1500, n_cot=300, n_pairs=600, n_traces=600, n_reading=1600, n_fresh=3200, n_drills=0,
          drills_per_text=10, known_share=0.2,
          teacher=None, attempts=2, compare_words=COMPARE_WORDS):
    """Build the world for `seed` and write every file into out_dir; returns the meta dict.
    known_share: the share of test and dev questions about known entities only (the rest start from a
    held-out entity). teacher: data.trajectories.Teacher (its mistake rates); attempts: teacher runs per
    question (the first right one goes to stage 2, each wrong one gives a stage-1 pair). compare_words: what
    comparisons ask (data/world.COMPARE_WORDS), in this world and the parallel ones."""
    # -------------------------------------------------------------------- world and splits
    world = make_world(seed, sizes, fractions, n_distractors=n_distractors)
    rng = random.Random(f"build-{seed}")  # str seeds are hashed with sha512: stable across runs
    strata = make_questions(world, rng, words=compare_words)
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
    pool = {k: [q for q in v if q.question not in taken] for k, v in by_split["train"].items()}  # trains the rest

    # -------------------------------------------------------------------- the search tool
    corpus = [{"id": e.id, "contents": document(e)} for e in world.entities]
    full = env.BM25Search(corpus)
    training = env.BM25Search([row for row, e in zip(corpus, world.entities) if not e.held_out])
    cache = {}

    def observe(query):  # what training text shows: the corpus without held-out pages
        if query not in cache:
            cache[query] = training.search([query], topk=topk)[0]
        docs = cache[query]
        return env.format_observation(docs), [d["id"] for d in docs]

    lookups = [(e.name, r) for e in world.real() for r in RELATIONS if r in e.facts]
    gold = [world.by_name[n].id for n, _ in lookups]
    retrieval = {}
    for label, make_query in (("full name", query_for), ("last word only", short_query)):
        results = full.search([make_query(n, r) for n, r in lookups], topk=3)
        retrieval[label] = {"top1": round(sum(bool(d) and d[0]["id"] == g for d, g in zip(results, gold)) / len(gold), 4),
                            "top3": round(sum(g in [x["id"] for x in d] for d, g in zip(results, gold)) / len(gold), 4)}

    # -------------------------------------------------------------------- stage 2 and stage 1: the teacher
    teacher = teacher or Teacher()
    trng = random.Random(f"teacher-{seed}")
    names_of = {t: [e.name for e in world.real(t) if not e.held_out] for t in TYPES}

    def wrong_value(name, rel):  # a made-up fact of the right kind, never the true one
        value, obj = world.fact(name, rel), RELATIONS[rel][1]
        if obj == "year":
            return value + trng.choice((-1, 1)) * trng.randint(1, 60)
        return trng.choice([x for x in names_of[obj] if x != value])

    tool_groups = {k: [q for q in v if unknown_lookups(world, q) > 0] for k, v in pool.items()}
    cot_groups = {k: [q for q in v if unknown_lookups(world, q) == 0] for k, v in pool.items()}
    stage2, stage2_questions = [], []
    by_id = {e.id: e for e in world.entities}
    runs = {"runs": 0, "right": 0, "kept_not_canonical": 0, "kept_searches": 0, "kept_short_queries": 0}
    pairs = {"search": [], "answer": []}  # at most half of n_pairs each way; "answer" mistakes are rarer
    for q in stratified(tool_groups, sum(map(len, tool_groups.values())), rng):  # all, in stratified order
        if len(stage2) >= n_tool and len(pairs["search"]) >= n_pairs // 2 and (
                len(pairs["answer"]) >= n_pairs // 2 or runs["runs"] >= 10 * n_tool):  # "answer" mistakes are rare
            break
        for _ in range(attempts):
            out = teacher_run(world, q, observe, trng, teacher, wrong_value)
            runs["runs"] += 1
            if not out["right"]:
                if out["error"] is None:
                    continue
                prefix, chosen, rejected, direction = out["error"]
                if len(pairs[direction]) < n_pairs // 2:
                    pairs[direction].append({"question": q.question, "prefix": prefix, "chosen": chosen,
                                             "rejected": rejected, "direction": direction, "hops": q.hops})
                continue
            runs["right"] += 1
            if len(stage2) < n_tool:
                text = "".join(s["text"] for s in out["segments"])
                runs["kept_not_canonical"] += text != "".join(s["text"] for s in trajectory(world, q, observe)[0])
                runs["kept_searches"] += len(out["searches"])
                runs["kept_short_queries"] += sum(not query.startswith(by_id[g].name + " ") for query, g, _ in out["searches"])
                stage2.append({"question": q.question, "answers": [q.answer], "hops": q.hops, "type": q.type,
                               "kind": "tool", "segments": out["segments"]})
                stage2_questions.append(q)
            break
    # The teacher's mistakes on questions about known entities only (a needless search with a query that
    # missed) are the "answer" pairs: rarer per run, so they get runs of their own (passes over those
    # questions until there are enough).
    for q in stratified(cot_groups, sum(map(len, cot_groups.values())), rng) * 10:
        if len(pairs["answer"]) >= n_pairs // 2:
            break
        out = teacher_run(world, q, observe, trng, teacher, wrong_value)
        runs["runs"] += 1
        runs["right"] += out["right"]
        if out["error"] is not None and out["error"][3] == "answer":
            prefix, chosen, rejected, direction = out["error"]
            pairs["answer"].append({"question": q.question, "prefix": prefix, "chosen": chosen,
                                    "rejected": rejected, "direction": direction, "hops": q.hops})
    for q in stratified(cot_groups, n_cot, rng):
        segments, _ = trajectory(world, q, observe, use_tool=False)
        stage2.append({"question": q.question, "answers": [q.answer], "hops": q.hops, "type": q.type,
                       "kind": "cot", "segments": segments})
        stage2_questions.append(q)
    stage1 = pairs["search"] + pairs["answer"]
    rng.shuffle(stage2)
    rng.shuffle(stage1)
    # The workflow baseline's model trains on the same questions in the workflow's format (eval.py):
    # the controller retrieves after every decision sentence, known facts included; the model reads.
    workflow = [{"question": q.question, "answers": [q.answer], "hops": q.hops, "type": q.type, "kind": "workflow",
                 "segments": workflow_trajectory(world, q, observe)} for q in stage2_questions]
    random.Random(f"workflow-{seed}").shuffle(workflow)

    # -------------------------------------------------------------------- base pretraining text
    base = [{"text": document(e), "kind": "doc"} for e in world.real() if e.known]
    for i, q in enumerate(stratified(cot_groups, n_traces, rng)):
        segments, _ = trajectory(world, q, observe, use_tool=False)
        response = "".join(s["text"] for s in segments)
        base.append({"text": f"{q.question}\n{env.TAGS.think_open}\n{response}", "kind": "trace",
                     "question": q.question, "response": response, "instruction": i % 2 == 1})
    # tool-use traces from one parallel world, read several times in the first phase of pretraining (pretrain.py)
    base += [{**row, "phase": 1} for row in reading_traces(world, seed + 1_000_003, f"reading-{seed}", sizes,
                                                           n_reading, rng, n_distractors, topk,
                                                           words=compare_words)]
    # Year drills (off by default; RESULTS.md measures them): a comparison's digit-by-digit decision on random
    # pairs of years in the world's range (half of them close), the arithmetic a reasoning model brings with
    # it. No names. drills_per_text of them share one text, one per line, like a worksheet: one drill per
    # text (thousands of texts that open with a question about two numbers) spoilt how the base model
    # copies the question's names.
    years = sorted({v for e in world.entities for v in e.facts.values() if isinstance(v, int)})
    drills = []
    for _ in range(n_drills):
        ya, yb = year_pair(rng, years[0], years[-1])
        drills.append(year_check(ya, yb, rng.choice(("earlier", "later"))) + ".")
    base += [{"text": "\n".join(drills[i:i + drills_per_text]), "kind": "drill"}
             for i in range(0, len(drills), drills_per_text)]
    rng.shuffle(base)
    # Fresh tool-use traces for the second phase of pretraining (pretrain.py): from many more parallel worlds,
    # READING_PER_WORLD traces each, so that a fact is read about once. Over several passes a small model can
    # remember the first parallel world's values as well as copy them, and some seeds learn to remember
    # instead (RESULTS.md, "The base model's seed"); on facts it never saw before only copying lowers the loss.
    frng = random.Random(f"fresh-{seed}")
    fresh = [row for w in range(math.ceil(n_fresh / READING_PER_WORLD))
             for row in reading_traces(world, seed + 2_000_003 + w, f"fresh-{seed}-{w}", sizes,
                                       min(READING_PER_WORLD, n_fresh - w * READING_PER_WORLD), frng,
                                       n_distractors, topk, shuffle_facts=True, words=compare_words)]
    frng.shuffle(fresh)
    base += [{**row, "phase": 2} for row in fresh]

    # -------------------------------------------------------------------- the counterfactual check
    cf_facts = counterfactual(world, random.Random(f"counterfactual-{seed}"))
    corpus_cf = [{"id": e.id, "contents": document(Entity(e.id, e.name, e.type, facts=cf_facts[e.name]))}
                 for e in world.entities]
    test_rows = [question_row(f"test-{i:05d}", q, world) for i, q in enumerate(splits["test"])]
    test_cf = []
    for row, q in zip(test_rows, splits["test"]):
        new = answer_with(cf_facts, q)
        if new is not None and new != q.answer:
            test_cf.append({**row, "answers": [new], "original_answers": [q.answer]})

    # -------------------------------------------------------------------- write
    os.makedirs(out_dir, exist_ok=True)
    rows = {name: [question_row(f"{name}-{i:05d}", q, world) for i, q in enumerate(qs)] for name, qs in splits.items()}
    files = {"corpus": corpus, "base": base, "stage1": stage1, "stage2": stage2, "workflow": workflow, **rows,
             "test_cf": test_cf, "corpus_cf": corpus_cf}
    leaks = held_out_leaks(world, {name: files[name] for name in TRAINING_FILES})
    if leaks:
        raise AssertionError(f"held-out names in training files: {leaks}")
    for name, data in files.items():
        write_jsonl(os.path.join(out_dir, f"{name}.jsonl"), data)
    world_json = world.to_json()
    world_json["question_lookups"] = {r["id"]: [list(l) for l in q.lookups]
                                      for name, qs in splits.items() for r, q in zip(rows[name], qs)}
    with open(os.path.join(out_dir, "world.json"), "w", encoding="utf-8") as f:
        json.dump(world_json, f, ensure_ascii=False, indent=1)
    meta = {
        "seed": seed, "topk": topk, "distractors": n_distractors, "sizes": {**DEFAULT_SIZES, **(sizes or {})},
        "entities": {s: sum(e.split == s for e in world.real()) for s in SPLITS}, "name_words": len(world.words),
        "counts": {name: len(data) for name, data in files.items()},
        "questions_needing_a_held_out_fact": {name: sum(world.split_of(q) == name for q in splits[name])
                                              for name in ("test", "dev")},
        "held_out_names_in_training_files": 0,
        "stage2_kinds": {k: sum(r["kind"] == k for r in stage2) for k in ("tool", "cot")},
        "stage1_directions": {d: sum(r["direction"] == d for r in stage1) for d in ("search", "answer")},
        "teacher": {**vars(teacher), **runs}, "compare_words": list(compare_words),
        "hops": {name: {h: sum(r["hops"] == h for r in rs) for h in (1, 2, 3, 4)} for name, rs in rows.items()},
        "retrieval": {"lookups": len(lookups), **retrieval},
    }
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return meta


def reading_traces(world, world_seed, pool_seed, sizes, n, rng, n_distractors, topk, shuffle_facts=False,
                   words=COMPARE_WORDS):
    """n tool-use traces from a parallel world (made with world_seed: names from `world`'s word pool but
    none of its names, no page of it in the base text), under the tool's instruction: every fact is
    searched, then copied out of the result. With the recall traces (half of them under the instruction
    too) they make the base model what R1-Distill is: it answers from memory when asked plainly, and when
    the prompt offers the tool it may write search calls and read their results, but nothing taught it WHEN
    a search is needed (SFT stage 1). Half, not all, of the recall traces go without the instruction: with
    none under it, the base model copied names badly under the instruction (RESULTS.md)."""
    # Its years start anywhere from 1000 to 6499 (the world's years fill the span after that): a base model
    # that only ever copied years of the real world's range read a year outside it out of a result and then
    # wrote a familiar first digit in its answer (RESULTS.md, "Do the models read the tool?"); from many
    # ranges it learns to copy the digits.
    first_year = random.Random(f"years-{world_seed}").randrange(1000, 8000 - 1500)
    other = make_world(world_seed, sizes, {"known": 1.0, "dev": 0.0, "test": 0.0}, n_distractors=n_distractors,
                       words=world.words, avoid=[e.name for e in world.entities], first_year=first_year)
    page_rng = random.Random(f"pages-{world_seed}") if shuffle_facts else None
    search = env.BM25Search([{"id": e.id, "contents": document(e, page_rng)} for e in other.entities])
    pool = [q for qs in make_questions(other, random.Random(pool_seed), words=words).values() for q in qs]

    def observe(query):
        docs = search.search([query], topk)[0]
        return env.format_observation(docs), [d["id"] for d in docs]
    rows = []
    for q in sorted(rng.sample(pool, min(n, len(pool))), key=lambda q: q.question):
        response = "".join(s["text"] for s in trajectory(other, q, observe, search_all=True)[0])
        rows.append({"text": f"{q.question}\n{env.TAGS.think_open}\n{response}", "kind": "reading",
                     "question": q.question, "response": response, "instruction": True})
    return rows


def held_out_leaks(world, files):
    """{file: [held-out names found in it]}: the static check that no training file mentions a dev or test
    entity (by name; its facts cannot appear without its name)."""
    held = sorted(e.name for e in world.real() if e.held_out)
    if not held:
        return {}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, held)) + r")\b")
    out = {}
    for name, rows in files.items():
        found = sorted(set(pattern.findall(json.dumps(rows, ensure_ascii=False))))
        if found:
            out[name] = found
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/world", help="output directory")
    ap.add_argument("--seed", type=int, default=0, help="world seed; same seed -> byte-identical files")
    for t, flag in PLURALS.items():
        ap.add_argument(f"--{flag}", type=int, default=DEFAULT_SIZES[t], help=f"number of real {t} entities")
    for split, f in DEFAULT_SPLIT_FRACTIONS.items():
        ap.add_argument(f"--{split}-fraction", type=float, default=f, help=f"share of each type's entities in {split}")
    ap.add_argument("--distractors", type=int, default=40, help="extra corpus pages never asked about")
    ap.add_argument("--topk", type=int, default=TOPK, help="documents per search (the stages read it from meta.json)")
    ap.add_argument("--n-test", type=int, default=800, help="test questions (stratified)")
    ap.add_argument("--n-dev", type=int, default=200, help="dev questions (stratified)")
    ap.add_argument("--known-share", type=float, default=0.2,
                    help="share of test/dev questions about known entities only (the rest need a held-out fact)")
    ap.add_argument("--n-rl", type=int, default=500, help="RL prompts (stratified)")
    ap.add_argument("--n-tool", type=int, default=1500, help="stage-2 tool trajectories")
    ap.add_argument("--n-cot", type=int, default=300, help="stage-2 pure-CoT trajectories (paper 5:1)")
    ap.add_argument("--n-pairs", type=int, default=600, help="stage-1 contrastive pairs (from the teacher's mistakes)")
    ap.add_argument("--n-traces", type=int, default=600, help="reasoning traces in base.jsonl")
    ap.add_argument("--n-reading", type=int, default=1600, help="parallel-world tool-use traces in base.jsonl")
    ap.add_argument("--n-fresh", type=int, default=3200,
                    help="tool-use traces for pretraining's second phase (base.jsonl rows with phase 2)")
    ap.add_argument("--n-drills", type=int, default=0, help="year-comparison drills in base.jsonl (off by default: "
                    "RESULTS.md measures what 3,000 of them do)")
    ap.add_argument("--drills-per-text", type=int, default=10, help="drills per base text (one per line)")
    for k, v in vars(Teacher()).items():
        ap.add_argument(f"--teacher-{k.replace('_', '-')}", type=float, default=v,
                        help=f"the teacher's mistake rate: {k} (data/trajectories.py Teacher)")
    ap.add_argument("--attempts", type=int, default=2, help="teacher runs per question")
    ap.add_argument("--compare-words", nargs="+", choices=("earlier", "later"), default=list(COMPARE_WORDS),
                    help="what comparison questions ask (data/world.py COMPARE_WORDS has why the default is one)")
    args = ap.parse_args()
    print(vars(args))
    meta = build(args.out, args.seed, {t: getattr(args, flag) for t, flag in PLURALS.items()},
                 {s: getattr(args, f"{s}_fraction") for s in DEFAULT_SPLIT_FRACTIONS}, args.distractors, args.topk,
                 args.n_test, args.n_dev, args.n_rl, args.n_tool, args.n_cot, args.n_pairs, args.n_traces,
                 args.n_reading, args.n_fresh, args.n_drills, args.drills_per_text, args.known_share,
                 Teacher(**{k: getattr(args, f"teacher_{k}") for k in vars(Teacher())}),
                 args.attempts, tuple(args.compare_words))
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
