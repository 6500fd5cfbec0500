"""Write the embedded world's files for every AutoCoA stage (formats: data/README.md).

    python -m data.build --out runs/world --seed 0        # ~2 s on one CPU core

One seed -> one world -> byte-identical files:
    corpus.jsonl  the search tool's corpus: every entity's page, known or not, plus distractors
    base.jsonl    pretraining text for the tiny base model (stands in for R1-Distill): pages of the
                  KNOWN entities, pure reasoning traces over them answered from memory, and
                  reading traces from a parallel world (copying facts out of injected results)
    stage1.jsonl  contrastive pairs at a decision point ("when to act", paper §3.1, SFT stage 1)
    stage2.jsonl  SFT trajectories, tool and pure-CoT at 5:1 as in the paper (SFT stages 2 and 3)
    workflow.jsonl  stage 2's questions in the workflow's format (the workflow baseline's model)
    rl.jsonl, dev.jsonl, test.jsonl   questions with gold answers (RL prompts and evaluation)
    world.json    entities, facts, known flags, and the lookups behind every rl/dev/test question
    meta.json     seed, arguments, counts per file and retrieval hit rates

Every question is in exactly one of: test, dev, rl, or the training pool that stage1, stage2 and the
base traces draw from; so no dev/test question text is ever trained on. test/dev/rl are stratified
over the five strata (composition with 1, 2, 3, 4 hops, and comparison).

Observations in stage2 (and in stage1 prefixes) are env.format_observation of what
env.BM25Search returns on corpus.jsonl for the trajectory's query, with the same top-k the sampler
uses, so what the model trains on is what the tool gives it at run time. A trajectory whose search
does not retrieve the subject's page is dropped (meta.json counts them).
"""
import argparse
import json
import os
import random

import env
from data.world import DEFAULT_SIZES, RELATIONS, TYPES, document, make_questions, make_world, unknown_lookups
from data.trajectories import contrastive_pair, need, query_for, trajectory, workflow_trajectory


PLURALS = {"person": "people", "org": "orgs", "city": "cities", "country": "countries", "book": "books"}


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


def question_row(id_, q):
    return {"id": id_, "question": q.question, "answers": [q.answer], "hops": q.hops, "type": q.type}


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build(out_dir, seed=0, sizes=None, known_fraction=0.5, n_distractors=40, topk=3, n_test=400,
          n_dev=200, n_rl=500, n_tool=1500, n_cot=300, n_pairs=600, n_traces=600, n_reading=400):
    """Build the world for `seed` and write every file into out_dir; returns the meta dict."""
    # -------------------------------------------------------------------- world and splits
    world = make_world(seed, sizes, known_fraction, n_distractors)
    rng = random.Random(f"build-{seed}")  # str seeds are hashed with sha512: stable across runs
    strata = make_questions(world, rng)
    for key in sorted(strata):
        rng.shuffle(strata[key])
    splits = {"test": [], "dev": [], "rl": []}
    for name, n in (("test", n_test), ("dev", n_dev), ("rl", n_rl)):
        per = -(-n // len(strata))  # ceil: every stratum gets the same share
        for key in sorted(strata):
            if len(strata[key]) < per:
                raise ValueError(f"stratum {key} has {len(strata[key])} questions left, {name} needs {per}")
            splits[name] += strata[key][:per]
            strata[key] = strata[key][per:]
        splits[name] = splits[name][:n]
    pool = strata  # what is left trains stage1, stage2 and the base traces

    # -------------------------------------------------------------------- the search tool
    corpus = [{"id": e.id, "contents": document(e)} for e in world.entities]
    searcher = env.BM25Search(corpus)
    lookups = [(e.name, r) for e in world.real() for r in RELATIONS if r in e.facts]
    queries = [query_for(n, r) for n, r in lookups]
    results = dict(zip(queries, searcher.search(queries, topk=topk)))  # one batch: every lookup
    decisions = [need(n, r) for n, r in lookups]  # the workflow's queries: the decision sentences
    results.update(zip(decisions, searcher.search(decisions, topk=topk)))

    def observe(query):
        docs = results[query] if query in results else searcher.search([query], topk=topk)[0]
        return env.format_observation(docs), [d["id"] for d in docs]

    gold = [world.by_name[n].id for n, _ in lookups]
    hit1 = sum(results[q][:1] != [] and results[q][0]["id"] == g for q, g in zip(queries, gold))
    hitk = sum(g in [d["id"] for d in results[q]] for q, g in zip(queries, gold))

    # -------------------------------------------------------------------- stage 2: tool + CoT
    tool_groups = {k: [q for q in v if unknown_lookups(world, q) > 0] for k, v in pool.items()}
    cot_groups = {k: [q for q in v if unknown_lookups(world, q) == 0] for k, v in pool.items()}
    stage2, stage2_questions, dropped, n_search, n_search_top1 = [], [], 0, 0, 0
    for q in stratified(tool_groups, sum(map(len, tool_groups.values())), rng):  # all, in stratified order
        if len(stage2) == n_tool:
            break
        segments, searches = trajectory(world, q, observe)
        if any(g not in ids for _, g, ids in searches):
            dropped += 1
            continue
        n_search += len(searches)
        n_search_top1 += sum(ids[0] == g for _, g, ids in searches)
        stage2.append({"question": q.question, "answers": [q.answer], "hops": q.hops, "type": q.type,
                       "kind": "tool", "segments": segments})
        stage2_questions.append(q)
    for q in stratified(cot_groups, n_cot, rng):
        segments, _ = trajectory(world, q, observe, use_tool=False)
        stage2.append({"question": q.question, "answers": [q.answer], "hops": q.hops, "type": q.type,
                       "kind": "cot", "segments": segments})
        stage2_questions.append(q)
    rng.shuffle(stage2)
    # The workflow baseline's model trains on the same questions in the workflow's format (eval.py):
    # the controller retrieves after every decision sentence, known facts included; the model reads.
    workflow = [{"question": q.question, "answers": [q.answer], "hops": q.hops, "type": q.type, "kind": "workflow",
                 "segments": workflow_trajectory(world, q, observe)} for q in stage2_questions]
    random.Random(f"workflow-{seed}").shuffle(workflow)

    # -------------------------------------------------------------------- stage 1: pairs
    stage1 = []
    names_of = {t: [e.name for e in world.real(t)] for t in TYPES}
    for direction, want_known in (("search", False), ("answer", True)):
        groups = {k: [q for q in v if any(world.by_name[n].known == want_known for n, _ in q.lookups)]
                  for k, v in pool.items()}
        for q in stratified(groups, n_pairs // 2, rng):
            k = rng.choice([i for i, (n, _) in enumerate(q.lookups) if world.by_name[n].known == want_known])
            name, rel = q.lookups[k]
            value, obj = world.fact(name, rel), RELATIONS[rel][1]
            if obj == "year":  # a wrong fact of the right kind, never the true one
                wrong = value + rng.choice((-1, 1)) * rng.randint(1, 60)
            else:
                wrong = rng.choice([x for x in names_of[obj] if x != value])
            prefix, chosen, rejected, got = contrastive_pair(world, q, k, observe, wrong)
            assert got == direction
            stage1.append({"question": q.question, "prefix": prefix, "chosen": chosen,
                           "rejected": rejected, "direction": direction, "hops": q.hops})
    rng.shuffle(stage1)

    # -------------------------------------------------------------------- base pretraining text
    base = [{"text": document(e), "kind": "doc"} for e in world.real() if e.known]
    for q in stratified(cot_groups, n_traces, rng):
        segments, _ = trajectory(world, q, observe, use_tool=False)
        response = "".join(s["text"] for s in segments)
        base.append({"text": f"{q.question}\n{env.TAGS.think_open}\n{response}", "kind": "trace",
                     "question": q.question, "response": response})
    # Reading traces from a parallel world (another seed, its own corpus): after a decision sentence
    # an external controller has put a result block, and the trace copies the fact out of it. They are
    # meant to teach the base model to READ retrieved text, as R1-Distill can, but never to ACT (no action
    # tags appear), and nothing about this world. At 1.65M parameters it does not learn to read from them
    # (eval.py has the figures), so the workflow baselines use a model fine-tuned on workflow.jsonl.
    other = make_world(seed + 1_000_003, sizes, 1.0, n_distractors)
    other_search = env.BM25Search([{"id": e.id, "contents": document(e)} for e in other.entities])
    other_pool = [q for qs in make_questions(other, random.Random(f"reading-{seed}")).values() for q in qs
                  if not any(n in world.by_name for n, _ in q.lookups)]

    def observe_other(query):
        return env.format_observation(other_search.search([query], topk)[0]), None

    for q in sorted(rng.sample(other_pool, min(n_reading, len(other_pool))), key=lambda q: q.question):
        response = "".join(s["text"] for s in workflow_trajectory(other, q, observe_other))
        base.append({"text": f"{q.question}\n{env.TAGS.think_open}\n{response}", "kind": "reading",
                     "question": q.question, "response": response})
    rng.shuffle(base)

    # -------------------------------------------------------------------- write
    os.makedirs(out_dir, exist_ok=True)
    rows = {name: [question_row(f"{name}-{i:05d}", q) for i, q in enumerate(qs)] for name, qs in splits.items()}
    files = {"corpus": corpus, "base": base, "stage1": stage1, "stage2": stage2, "workflow": workflow, **rows}
    for name, data in files.items():
        write_jsonl(os.path.join(out_dir, f"{name}.jsonl"), data)
    world_json = world.to_json()
    world_json["question_lookups"] = {r["id"]: [list(l) for l in q.lookups]
                                      for name, qs in splits.items() for r, q in zip(rows[name], qs)}
    with open(os.path.join(out_dir, "world.json"), "w", encoding="utf-8") as f:
        json.dump(world_json, f, ensure_ascii=False, indent=1)
    meta = {
        "seed": seed, "topk": topk, "known_fraction": known_fraction, "distractors": n_distractors,
        "sizes": {**DEFAULT_SIZES, **(sizes or {})},
        "counts": {name: len(data) for name, data in files.items()},
        "stage2_kinds": {k: sum(r["kind"] == k for r in stage2) for k in ("tool", "cot")},
        "stage2_dropped_retrieval_miss": dropped,
        "stage1_directions": {d: sum(r["direction"] == d for r in stage1) for d in ("search", "answer")},
        "hops": {name: {h: sum(r["hops"] == h for r in rs) for h in (1, 2, 3, 4)} for name, rs in rows.items()},
        "retrieval": {"lookups": len(lookups), "top1": round(hit1 / len(lookups), 4),
                      f"top{topk}": round(hitk / len(lookups), 4),
                      "stage2_searches": n_search,
                      "stage2_top1": round(n_search_top1 / max(n_search, 1), 4)},
    }
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/world", help="output directory")
    ap.add_argument("--seed", type=int, default=0, help="world seed; same seed -> byte-identical files")
    for t, flag in PLURALS.items():
        ap.add_argument(f"--{flag}", type=int, default=DEFAULT_SIZES[t], help=f"number of real {t} entities")
    ap.add_argument("--known-fraction", type=float, default=0.5, help="share of entities in pretraining")
    ap.add_argument("--distractors", type=int, default=40, help="similar-name distractor pages")
    ap.add_argument("--topk", type=int, default=3, help="documents per search (must match the sampler)")
    ap.add_argument("--n-test", type=int, default=400, help="test questions (stratified)")
    ap.add_argument("--n-dev", type=int, default=200, help="dev questions (stratified)")
    ap.add_argument("--n-rl", type=int, default=500, help="RL prompts (stratified)")
    ap.add_argument("--n-tool", type=int, default=1500, help="stage-2 tool trajectories")
    ap.add_argument("--n-cot", type=int, default=300, help="stage-2 pure-CoT trajectories (paper 5:1)")
    ap.add_argument("--n-pairs", type=int, default=600, help="stage-1 contrastive pairs (half each way)")
    ap.add_argument("--n-traces", type=int, default=600, help="reasoning traces in base.jsonl")
    ap.add_argument("--n-reading", type=int, default=400, help="parallel-world reading traces in base.jsonl")
    args = ap.parse_args()
    print(vars(args))
    meta = build(args.out, args.seed, {t: getattr(args, flag) for t, flag in PLURALS.items()},
                 args.known_fraction, args.distractors, args.topk, args.n_test, args.n_dev, args.n_rl,
                 args.n_tool, args.n_cot, args.n_pairs, args.n_traces,
                 args.n_reading)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
