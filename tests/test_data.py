"""Tests for data/: the embedded world's files, checked against independent recomputation.

    python -m pytest -q tests/test_data.py

Observations against a fresh BM25Search over corpus.jsonl, every stated fact and every gold answer against
world.json's facts, trajectories against env.reward, the reading checks' corpora against the facts they must
keep. A world of ~330 entities (the default has ~1,650) keeps this fast; nothing here depends on the size.
"""
import json
import os
import random
import re
import subprocess
import sys

import pytest

import env
from data.build import PERTURBATIONS, build, evenly_recalled
from data.world import RELATIONS, RELATIONS_OF, observed_answer, parse_facts, Question

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"person": 160, "org": 60, "city": 50, "country": 6, "book": 60}
KW = dict(sizes=SIZES, n_test=200, n_dev=50, n_rl=50, n_tool=150, n_cot=30, n_pairs=80, n_recall=60,
          n_reading=120, page_repeats=3)
FILES = ["corpus", "base", "stage1", "stage2", "workflow", "rl", "dev", "test", "test_cf", "corpus_cf"] + \
        [f"corpus_{k}" for k in PERTURBATIONS]
TRAINING = ("base", "stage1", "stage2", "workflow", "rl")
T = env.TAGS
NAME = r"[A-Z][a-z]+ [A-Z][a-z]+"  # every world name is two capitalised invented words


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world0")
    build(str(out), seed=0, **KW)
    return out


@pytest.fixture(scope="module")
def files(world_dir):
    out = {f: read_jsonl(world_dir / f"{f}.jsonl") for f in FILES}
    out["world"] = json.loads((world_dir / "world.json").read_text())
    out["meta"] = json.loads((world_dir / "meta.json").read_text())
    out["by_name"] = {e["name"]: e for e in out["world"]["entities"]}
    return out


def training_search(files):
    """A fresh BM25 index over the corpus without held-out pages: what training observations come from."""
    held = {e["id"] for e in files["world"]["entities"] if e["split"] in ("dev", "test")}
    return env.BM25Search([r for r in files["corpus"] if r["id"].rstrip("ab") not in held])


def assert_true_facts(text, by_name):
    """Every fact sentence stated in text is a fact of the world; returns how many."""
    found = parse_facts(text)
    for rel, subject, value in found:
        assert str(by_name[subject]["facts"][rel]) == value, (rel, subject, value)
    return len(found)


def response(row):
    return "".join(s["text"] for s in row["segments"])


# --------------------------------------------------------------------------- determinism

def test_same_seed_is_byte_identical_across_processes(world_dir, tmp_path):
    # a second process with another hash seed: set/dict-order accidents would show up here
    code = f"from data.build import build; build({str(tmp_path)!r}, seed=0, **{KW!r})"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONHASHSEED": "7"})
    for f in FILES + ["world", "meta"]:
        name = f + (".json" if f in ("world", "meta") else ".jsonl")
        assert (world_dir / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_cli_help():
    for module in ("data.build", "data.convert", "data.world"):
        r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and "usage" in r.stdout, module


# --------------------------------------------------------------------------- splits and questions

def test_no_single_word_names_a_known_entity():
    """Known names of a type come in pairs that share a word in the same place: of each type's known names,
    at most one word (the odd one out of an odd count) stands in its place in one name only, so a fact of a
    known entity can only be recalled by both words of its name."""
    from collections import Counter
    from data.world import TYPES, make_world
    w = make_world(0)
    for t in TYPES:
        names = [e.name.split() for e in w.entities if e.known and e.type == t]
        alone = [word for place in (0, 1) for word, n in Counter(n[place] for n in names).items() if n == 1]
        assert len(names) < 2 or len(alone) <= len(names) % 2, (t, alone)


def test_no_name_is_another_in_the_other_order():
    """The search tool weighs words, not their order: "A B" and "B A" would find each other's pages."""
    from data.world import make_world
    names = [e.name for e in make_world(0).entities]
    assert len({frozenset(n.split()) for n in names}) == len(names)


def test_held_out_questions_and_names_never_trained_on(files):
    """No dev/test question text and no dev/test entity's name occurs in a training file (its facts cannot
    occur without it); every word of every held-out name occurs in the base text (it can be copied, not
    recalled); facts of known and train entities never point at a held-out entity."""
    held_q = {r["question"] for r in files["dev"] + files["test"]}
    assert len(held_q) == len(files["dev"]) + len(files["test"])
    training = "\n".join(json.dumps(files[f], ensure_ascii=False) for f in TRAINING)
    assert not [q for q in held_q if q in training]
    held = [e for e in files["world"]["entities"] if e["split"] in ("dev", "test")]
    names = re.compile(r"\b(" + "|".join(re.escape(e["name"]) for e in held) + r")\b")
    found = names.search(training)
    assert found is None, found and found.group(0)
    base_words = set(re.findall(r"[A-Z][a-z]+", "\n".join(r["text"] for r in files["base"])))
    assert all(w in base_words for e in held for w in e["name"].split())
    for e in files["world"]["entities"]:
        if e["split"] not in ("dev", "test"):
            for v in e["facts"].values():
                assert not (isinstance(v, str) and files["by_name"][v]["split"] in ("dev", "test")), (e["name"], v)
    lookups = files["world"]["question_lookups"]
    for split in ("dev", "test"):  # most questions need a held-out fact; the rest are about known entities only
        need = [any(files["by_name"][n]["split"] == split for n, _ in lookups[r["id"]]) for r in files[split]]
        assert need == [r["held_out"] for r in files[split]] and 0.7 < sum(need) / len(need) < 0.9
        assert all(all(files["by_name"][n]["known"] for n, _ in lookups[r["id"]])
                   for r in files[split] if not r["held_out"])


def test_gold_answers_follow_from_the_facts(files):
    """Resolve every rl/dev/test question from world.json's facts, independently of the generator."""
    by_name, lookups = files["by_name"], files["world"]["question_lookups"]
    for r in files["rl"] + files["dev"] + files["test"]:
        steps = lookups[r["id"]]
        assert set(r) == {"id", "question", "answers", "hops", "type", "held_out"}
        assert len(steps) == (r["hops"] if r["type"] == "composition" else 2)
        if r["type"] == "composition":
            name = steps[0][0]
            for subject, rel in steps:
                assert subject == name
                name = str(by_name[name]["facts"][rel])
            assert r["answers"] == [name]
            assert r["question"] == "What is " + steps[0][0] + "".join(f"'s {rel}" for _, rel in steps) + "?"
        else:
            (a, rel), (b, _) = steps
            ya, yb = by_name[a]["facts"][rel], by_name[b]["facts"][rel]
            assert ya != yb and r["answers"] == [a if ya < yb else b] and f"earlier, {a} or {b}?" in r["question"]
    for split in ("rl", "dev", "test"):
        assert {(r["type"], r["hops"]) for r in files[split]} == {("composition", h) for h in (1, 2, 3, 4)} | {
            ("comparison", 2)}, split
    assert not any(r["held_out"] for r in files["rl"])


# --------------------------------------------------------------------------- pages

def test_pages_state_each_fact_once_in_a_drawn_order(files):
    """An entity's page is its facts and nothing else, written in a way drawn for it: one document or two with
    its name as their title (ids e0012a, e0012b), each its sentences or one sentence run together, the facts in
    a drawn order. Every relation stands at every place of its type's pages, a page is run together about half
    the time and in two documents about a third of the time, so neither place nor layout says which fact is
    which."""
    by_name, places, docs = files["by_name"], {}, {}
    for row in files["corpus"]:
        title, text = row["contents"].split("\n", 1)
        e = by_name[title.strip('"')]
        docs.setdefault(e["name"], []).append((row["id"], text))
    prose = 0
    for name, rows in docs.items():
        e, ids, texts = by_name[name], [i for i, _ in rows], [t for _, t in rows]
        facts = [f for t in texts for f in parse_facts(t)]
        assert sorted(facts) == sorted((rel, name, str(v)) for rel, v in e["facts"].items())
        assert ids == ([e["id"]] if len(ids) == 1 else [e["id"] + "a", e["id"] + "b"])
        plain = [" ".join(f"{s}'s {rel} is {v}." for rel, s, v in parse_facts(t)) for t in texts]
        run_together = [t.count(".") == 1 and len(parse_facts(t)) > 1 for t in texts]
        assert all(t == p or r for t, p, r in zip(texts, plain, run_together)), texts
        prose += any(run_together)
        for i, (rel, _, _) in enumerate(facts):
            places.setdefault((e["type"], rel), set()).add(i)
    for (type_, rel), seen in places.items():
        n = len(next(e for e in files["world"]["entities"] if e["type"] == type_)["facts"])
        assert seen == set(range(n)), (type_, rel, seen)
    n = len(docs)
    assert len(docs) == len(by_name) and 0.25 * n < len(files["corpus"]) - n < 0.42 * n  # two documents: a third
    assert 0.3 * n < prose < 0.6 * n  # run together: half of the pages with more than one fact in a document


def test_layouts_keep_every_fact(files):
    """Each reading check's corpus states every fact of every entity (the gold answers are unchanged) in
    another layout: shuffled, the same sentences in another order; foreign, with facts of other entities
    of the same type mixed in; split, one entity's facts dealt between two documents of the same title; prose,
    one sentence; merged, two entities of a type in one document under one title."""
    by_name = files["by_name"]
    truth = {(rel, e["name"], str(v)) for e in files["world"]["entities"] for rel, v in e["facts"].items()}
    for kind in PERTURBATIONS:
        rows = files[f"corpus_{kind}"]
        stated = [f for r in rows for f in parse_facts(r["contents"])]
        assert set(stated) == truth, kind  # nothing lost, nothing false
        titles = [r["contents"].split("\n", 1)[0].strip('"') for r in rows]
        subjects = [{s for _, s, _ in parse_facts(r["contents"])} for r in rows]
        if kind == "shuffled":  # one document per entity, one sentence per fact
            assert len(rows) == len(by_name) and all(r["contents"].count(".") == len(s_) for r, s_ in
                                                     zip(rows, [parse_facts(r["contents"]) for r in rows]))
        if kind == "prose":
            assert all(r["contents"].count(".") == 1 for r in rows)
        if kind == "foreign":
            assert all(len(s) == 3 and t in s for t, s in zip(titles, subjects))
            assert all(by_name[x]["type"] == by_name[t]["type"] for t, s in zip(titles, subjects) for x in s)
        if kind == "split":
            assert all(s == {t} for t, s in zip(titles, subjects)) and len(rows) > 1.9 * len(by_name)
        if kind == "merged":  # two entities' facts under one title: each entity in one document
            assert all(t in s and len(s) <= 2 for t, s in zip(titles, subjects)) and len(rows) < 0.6 * len(by_name)
            assert all(len({by_name[x]["type"] for x in s}) == 1 for s in subjects)
            assert sorted(x for s in subjects for x in s) == sorted(by_name)
    meta = files["meta"]["retrieval"]
    assert meta["corpus"]["top1"] > 0.95 and all(meta[k]["top3"] > 0.99 for k in PERTURBATIONS)


def test_counterfactual_questions_follow_the_changed_corpus(files):
    """test_cf.jsonl: test questions whose gold changes when the held-out entities' facts change in
    corpus_cf.jsonl; its answers are recomputed here from corpus_cf's pages alone. Only held-out pages differ,
    and a changed value is another of the right kind."""
    pages = {}
    for row in files["corpus_cf"]:
        title, text = row["contents"].split("\n", 1)
        pages.setdefault(title.strip('"'), {}).update({rel: value for rel, _, value in parse_facts(text)})
    by_name, lookups = files["by_name"], files["world"]["question_lookups"]
    test = {r["id"]: r for r in files["test"]}
    for before, after in zip(files["corpus"], files["corpus_cf"]):
        name = after["contents"].split("\n", 1)[0].strip('"')
        assert (before != after) == (by_name[name]["split"] in ("dev", "test"))
    relations = files["world"]["relations"]
    years = {(rel, str(v)) for e in files["world"]["entities"] for rel, v in e["facts"].items() if rel.endswith("year")}
    for p in pages.values():  # a changed value is an entity of the right type, or a year the relation has elsewhere
        for rel, v in p.items():
            assert (rel, v) in years if rel.endswith("year") else by_name[v]["type"] == relations[rel][1]
    assert len(files["test_cf"]) > 0.5 * sum(r["held_out"] for r in files["test"])
    for r in files["test_cf"]:
        assert r["original_answers"] == test[r["id"]]["answers"] != r["answers"]
        steps = lookups[r["id"]]
        if r["type"] == "composition":
            cur = steps[0][0]
            for _, rel in steps:
                cur = pages[cur][rel]
        else:
            (a, rel), (b, _) = steps
            cur = a if int(pages[a][rel]) < int(pages[b][rel]) else b
        assert r["answers"] == [cur], r


# --------------------------------------------------------------------------- stage 2, workflow, stage 1

def test_stage2_is_right_at_every_step(files):
    """Every trajectory recalls exactly the facts of known entities and searches every other one with the
    templated query; every fact it states is true (no made-up value, no year it did not read); each
    observation is the training tool's real output; the answer is right and boxed."""
    search, topk, by_name = training_search(files), files["meta"]["topk"], files["by_name"]
    lookups = 0
    for r in files["stage2"]:
        segs, text = r["segments"], response(r)
        assert not segs[0]["tool"] and not segs[-1]["tool"]
        for prev, seg in zip(segs, segs[1:]):
            assert prev["tool"] != seg["tool"]
            if seg["tool"]:
                assert prev["text"].endswith(T.search_close)
                assert seg["text"] == env.format_observation(search.search([env.extract_query(prev["text"])], topk)[0])
            else:  # a value read is one the result states: nothing read is made up
                assert not prev["tool"] or parse_facts(seg["text"].split("\n")[0])[0] in parse_facts(prev["text"])
        reasoning = "".join(s["text"] for s in segs if not s["tool"])
        assert assert_true_facts(reasoning, by_name) >= 1
        for subject, rel in re.findall(rf"I need ({NAME})'s ([a-z ]+?)\.", text):
            lookups += 1
            value = by_name[subject]["facts"][rel]
            if by_name[subject]["known"]:
                assert f"I need {subject}'s {rel}. From memory, {subject}'s {rel} is {value}.\n" in text
            else:
                assert (f"I need {subject}'s {rel}. From memory, {subject}'s {rel} is missing. I will search for it. "
                        f"{T.search_open} {subject}'s {rel} {T.search_close}") in text
                assert f"The search result says that {subject}'s {rel} is {by_name[subject]['facts'][rel]}." in text
        assert text.count(T.think_close) == 1 and env.reward(text, r["answers"]) == 1.0
        if r["type"] == "comparison":
            (ya, yb, yes, name), = re.findall(rf"Is (\d+) earlier than (\d+)\? [^:]+: (Yes|No), so it is ({NAME})\.", text)
            a, b = re.findall(rf"I need ({NAME})'s [a-z ]+?\.", text)
            assert (yes == "Yes") == (int(ya) < int(yb)) and name == (a if yes == "Yes" else b) == r["answers"][0]
        assert (r["kind"] == "cot") == (T.search_open not in text)
    kinds = [r["kind"] for r in files["stage2"]]
    assert kinds.count("tool") == 5 * kinds.count("cot") > 0  # the paper's 5k : 1k mix
    assert lookups > len(files["stage2"])


def test_chains_restate_the_question_that_is_left(files):
    """In stage 2's and the workflow's trajectories of a chain, each lookup but the last is followed by the
    question that is left, the value found in place of what the lookup resolved, and the next lookup is that
    line's first relation; comparisons restate nothing."""
    by_name, n = files["by_name"], 0
    for r in files["stage2"] + files["workflow"]:
        text = response(r)
        restated = re.findall(r"\nNow the question is: (.+)\n", text)
        if r["type"] == "comparison":
            assert not restated
            continue
        m = re.fullmatch(rf"What is ({NAME})((?:'s [a-z]+(?: year)?)+)\?", r["question"])
        subject, relations = m.group(1), re.findall(r"'s ([a-z]+(?: year)?)", m.group(2))
        needs = re.findall(rf"I need ({NAME})'s ([a-z ]+?)\.", text)
        assert needs[0] == (subject, relations[0]) and len(needs) == len(relations) == len(restated) + 1
        for k, line in enumerate(restated):
            subject = str(by_name[subject]["facts"][relations[k]])
            assert line == f"What is {subject}" + "".join(f"'s {rel}" for rel in relations[k + 1:]) + "?"
            assert needs[k + 1] == (subject, relations[k + 1])
            n += 1
    assert n > len(files["stage2"])


def test_workflow_file_is_stage2_in_the_controllers_format(files):
    """workflow.jsonl: stage 2's questions; every decision sentence is followed by the tool's result for that
    very sentence as the query (what eval.py's workflow controller injects), then the fact read out of it;
    never an action tag, never a recall."""
    assert sorted(r["question"] for r in files["workflow"]) == sorted(r["question"] for r in files["stage2"])
    search, topk, by_name = training_search(files), files["meta"]["topk"], files["by_name"]
    for r in files["workflow"]:
        segs = r["segments"]
        assert [s["tool"] for s in segs] == [False, True] * (len(segs) // 2) + [False]
        assert len(segs) // 2 == (2 if r["type"] == "comparison" else r["hops"])  # one retrieval per lookup
        for decision, obs in zip(segs[0::2], segs[1::2]):
            query = decision["text"].split("\n")[-1]
            assert re.fullmatch(rf"I need {NAME}'s [a-z ]+\.", query), query
            assert obs["text"] == env.format_observation(search.search([query], topk)[0])
        for obs, after in zip(segs[1::2], segs[2::2]):  # each value read is one the result states
            assert parse_facts(after["text"].split("\n")[0])[0] in parse_facts(obs["text"])
        text = response(r)
        assert T.search_open not in text and "From memory" not in text and "missing" not in text
        assert text.count("The search result says that") == len(segs) // 2
        assert assert_true_facts("".join(s["text"] for s in segs if not s["tool"]), by_name) == len(segs) // 2
        assert env.reward(text, r["answers"]) == 1.0


def test_stage1_pairs_are_a_decision_against_its_opposite(files):
    """prefix: the right trajectory up to a decision point, ending "I need X's R. From memory, X's R is"; then
    " missing." against the real value, chosen where it is right ("missing" where X is unknown, the value where
    known): the two differ in the decision word alone, and no value is made up. Half each way, at every depth
    of the chains."""
    by_name = files["by_name"]
    directions, depths = [], set()
    for r in files["stage1"]:
        subject, rel = re.search(rf"I need ({NAME})'s ([a-z ]+?)\. From memory, \1's \2 is$", r["prefix"]).groups()
        missing, value = " missing.", f" {by_name[subject]['facts'][rel]}."
        directions.append(r["direction"])
        assert by_name[subject]["known"] == (r["direction"] == "answer")
        right, wrong = (missing, value) if r["direction"] == "search" else (value, missing)
        assert (r["chosen"], r["rejected"]) == (right, wrong)
        assert r["prefix"].count(T.result_open) == r["prefix"].count(T.search_open)
        assert_true_facts(r["prefix"], by_name)
        depths.add(r["prefix"].count("I need "))
    assert directions.count("search") == directions.count("answer") == len(directions) // 2
    assert depths == {1, 2, 3, 4}


# --------------------------------------------------------------------------- the base text

def test_base_text(files):
    """pages: the known entities' pages only, each copy in its own layout; recall: questions about known
    entities answered from memory without the tool, every fact true; reading: parallel worlds (no name of this
    world), under the tool's instruction, every fact searched and read from a result that states it, at any
    rank, in pages written many ways (run together, the entity's other facts in another document, facts of
    other entities beside its own, or plainly)."""
    by_name = files["by_name"]
    pages = [r for r in files["base"] if r["kind"] == "page"]
    known = {e["name"] for e in files["world"]["entities"] if e["known"]}
    titles = [r["text"].split("\n", 1)[0].strip('"') for r in pages]
    assert set(titles) == known and len(pages) == 3 * len(known)
    assert sum(assert_true_facts(r["text"], by_name) for r in pages) > len(pages)
    assert len({r["text"] for r in pages}) > 1.5 * len(known)  # copies differ in their layout
    recall = [r for r in files["base"] if r["kind"] == "recall"]
    for r in recall:
        assert r["instruction"] is False and r["text"] == f"{r['question']}\n{T.think_open}\n{r['response']}"
        assert T.search_open not in r["text"] and assert_true_facts(r["response"], by_name) >= 1
        assert all(by_name[s]["known"] for _, s, _ in parse_facts(r["response"]))
    reading = [r for r in files["base"] if r["kind"] == "reading"]
    assert reading and all(r["instruction"] is True for r in reading)
    ranks, ranks_seen, ways = set(), [], {"prose": 0, "partial": 0, "mentions": 0, "plain": 0}
    for r in reading:
        text = r["response"]
        assert text.count(T.result_open) == text.count(T.search_open) == text.count("I need ") \
            == text.count("The search result says that") and "From memory" not in text  # straight to the tool
        for read, obs in zip(re.findall(r"The search result says that (.+?)\n", text),
                             re.findall(re.escape(T.result_open) + r"(.+?)" + re.escape(T.result_close), text, re.S)):
            results = re.split(r"result \d: ", obs)[1:]
            fact = parse_facts(read)[0]
            rank = next(i for i, d in enumerate(results) if fact in parse_facts(d))
            ranks.add(rank)
            ranks_seen.append(rank)
            doc = results[rank]
            title, facts = doc.split('"')[1], parse_facts(doc)
            own = [rel for rel, subject, _ in facts if subject == title]
            ways["prose"] += ";" in doc or ", and" in doc
            ways["mentions"] += len(own) < len(facts)
            ways["partial"] += len(own) < len(RELATIONS_OF[RELATIONS[fact[0]][0]])  # its other facts elsewhere
            ways["plain"] += doc.count(".") == len(facts) == len(own) == len(RELATIONS_OF[RELATIONS[fact[0]][0]])
    assert ranks == set(range(files["meta"]["topk"]))  # with several results, the right page is at any rank
    assert min(ways.values()) > 0.05 * len(ranks_seen), ways  # pages written many ways
    text = "\n".join(r["text"] for r in reading)
    assert not [n for n in by_name if n in text]  # the parallel worlds teach reading, nothing about this world
    assert {r["kind"] for r in files["base"]} == {"page", "recall", "reading"}


def test_unrehearsed_known_entities_are_looked_up_by_no_fine_tuning_file(files):
    """A fifth of each type's known entities (world.json's "unrehearsed") is in the base text but no SFT, workflow
    or RL text looks one of them up ("I need X's"), so no fine-tuning text recalls its facts."""
    unrehearsed = files["world"]["unrehearsed"]
    known = [e for e in files["world"]["entities"] if e["known"]]
    for t in {e["type"] for e in known}:
        assert sum(e["name"] in unrehearsed for e in known if e["type"] == t) == \
            round(0.2 * sum(e["type"] == t for e in known))
    assert unrehearsed and all(files["by_name"][n]["known"] for n in unrehearsed)
    base = "\n".join(r["text"] for r in files["base"])
    assert all(n in base for n in unrehearsed)
    texts = [r["prefix"] + r["chosen"] for r in files["stage1"]] + [response(r) for f in ("stage2", "workflow")
                                                                     for r in files[f]]
    needs = re.compile(r"I need (" + "|".join(map(re.escape, unrehearsed)) + r")'s")
    assert not [m.group(0) for t in texts for m in [needs.search(t)] if m]
    lookups = files["world"]["question_lookups"]
    assert files["rl"] and not [r["id"] for r in files["rl"] if any(n in unrehearsed for n, _ in lookups[r["id"]])]


def test_evenly_recalled_takes_the_least_recalled_fact_first():
    """Within a group the next question is the one whose facts were recalled least so far."""
    a, b, c = ("A", "birth year"), ("B", "birth year"), ("C", "birth year")
    q = lambda *lookups: Question(str(lookups), "x", 1, "composition", list(lookups))  # noqa: E731
    groups = {1: [q(a), q(a, b), q(b), q(c)], 2: [q(a, c)]}
    for seed in range(5):
        drawn = evenly_recalled(groups, 3, random.Random(seed))
        counts = [sum(f in d.lookups for d in drawn) for f in (a, b, c)]
        assert drawn[1].lookups == [a, c] and max(counts) - min(counts) <= 1, (seed, [d.lookups for d in drawn])


def test_meta_counts(files):
    meta = files["meta"]
    for name in FILES:
        assert meta["counts"][name] == len(files[name]), name
    assert {s: sum(e["split"] == s for e in files["world"]["entities"]) for s in ("known", "train", "dev", "test")} \
        == meta["entities"]
    assert meta["base_kinds"] == {k: sum(r["kind"] == k for r in files["base"]) for k in ("page", "recall", "reading")}


# --------------------------------------------------------------------------- the world as a rollout saw it

def test_observed_answer_follows_the_rollouts_own_results(files):
    """RL's answer under the rollout's own observations (data/world.observed_answer): the facts its results
    state, and the known entities' facts; a chain through a fact it neither read nor knows has none."""
    world, by_name = files["world"], files["by_name"]
    person = next(e for e in world["entities"] if e["type"] == "person" and not e["known"])
    org = person["facts"]["employer"]
    q = Question(f"What is {person['name']}'s employer's founder?", "", 2, "composition",
                 [(person["name"], "employer"), (org, "founder")])
    page = f"{person['name']}'s employer is {org}."
    founder_page = f"{org}'s founder is {by_name[org]['facts']['founder']}."
    assert observed_answer(world, q, [page, founder_page]) == by_name[org]["facts"]["founder"]
    assert observed_answer(world, q, [page]) == (by_name[org]["facts"]["founder"] if by_name[org]["known"] else None)
    other = next(e for e in world["entities"] if e["type"] == "org" and e["known"])
    # a result that says otherwise is what the rollout saw: the chain goes on from there
    assert observed_answer(world, q, [f"{person['name']}'s employer is {other['name']}."]) == other["facts"]["founder"]
    a, b = [e for e in world["entities"] if e["type"] == "person" and not e["known"]][:2]
    cmp = Question(f"Who was born earlier, {a['name']} or {b['name']}?", "", 2, "comparison",
                   [(a["name"], "birth year"), (b["name"], "birth year")])
    years = [f"{a['name']}'s birth year is 1500.", f"{b['name']}'s birth year is 1499."]
    assert observed_answer(world, cmp, years) == b["name"] and observed_answer(world, cmp, years[:1]) is None
    # its own observation may state a name where a year belongs: no answer, not a crash
    assert observed_answer(world, cmp, [years[0], f"{b['name']}'s birth year is {a['name']}."]) is None


def test_readme_examples_are_rendered_from_the_code():
    """data/README.md's examples are `python -m data.build --examples` for seed 0, verbatim."""
    from data.build import examples
    with open(os.path.join(os.path.dirname(__file__), "..", "data", "README.md"), encoding="utf-8") as f:
        text = f.read()
    block = text.split("<!-- examples: begin -->\n")[1].split("<!-- examples: end -->")[0]
    assert block == examples(0) + "\n"
