"""Tests for data/: the embedded world's files and the dataset converters. ~5 s on one CPU core.

    python -m pytest -q tests/test_data.py

The world's files are checked against independent recomputation: observations against a fresh
BM25Search over corpus.jsonl, every stated fact and every gold answer against world.json's facts,
trajectories against env.reward.
"""
import json
import os
import re
import subprocess
import sys

import pytest

import env
from data.build import build
from data.world import parse_facts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["corpus.jsonl", "base.jsonl", "stage1.jsonl", "stage2.jsonl", "workflow.jsonl", "rl.jsonl", "dev.jsonl",
         "test.jsonl", "test_cf.jsonl", "corpus_cf.jsonl", "world.json", "meta.json"]
TRAINING = ("base", "stage1", "stage2", "workflow", "rl")
T = env.TAGS
NAME = r"[A-Z][a-z]+ [A-Z][a-z]+"  # every world name is two capitalised invented words


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world0")
    build(str(out), seed=0)
    return out


@pytest.fixture(scope="module")
def files(world_dir):
    out = {f[:-6]: read_jsonl(world_dir / f) for f in FILES if f.endswith(".jsonl")}
    out["world"] = json.loads((world_dir / "world.json").read_text())
    out["meta"] = json.loads((world_dir / "meta.json").read_text())
    out["by_name"] = {e["name"]: e for e in out["world"]["entities"]}
    return out


def training_search(files):
    """A fresh BM25 index over the corpus without held-out pages: what training observations come from."""
    held = {e["id"] for e in files["world"]["entities"] if e["split"] in ("dev", "test")}
    return env.BM25Search([r for r in files["corpus"] if r["id"] not in held])


def assert_true_facts(text, by_name):
    """Every fact sentence (data/world.fact_sentence) stated in text is a fact of the world."""
    found = parse_facts(text)
    for rel, subject, value in found:
        assert str(by_name[subject]["facts"][rel]) == value, (rel, subject, value)
    return len(found)


# --------------------------------------------------------------------------- determinism

def test_same_seed_is_byte_identical_across_processes(world_dir, tmp_path):
    # a second process with another hash seed: set/dict-order accidents would show up here
    subprocess.run([sys.executable, "-m", "data.build", "--out", str(tmp_path), "--seed", "0"], cwd=ROOT,
                   check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "7"})
    for f in FILES:
        assert (world_dir / f).read_bytes() == (tmp_path / f).read_bytes(), f


def test_different_seed_differs(world_dir, tmp_path):
    meta = build(str(tmp_path), seed=1, n_test=50, n_dev=50, n_rl=50, n_tool=50, n_cot=10, n_pairs=20, n_traces=20,
                 n_fresh=40, compare_words=("earlier", "later"))
    for f in ("corpus.jsonl", "test.jsonl", "world.json"):
        assert (world_dir / f).read_bytes() != (tmp_path / f).read_bytes(), f
    # --compare-words earlier later: comparisons ask both ways
    asked = {w for r in read_jsonl(tmp_path / "test.jsonl") for w in ("earlier", "later") if f" {w}, " in r["question"]}
    assert asked == {"earlier", "later"} and meta["compare_words"] == ["earlier", "later"]


def test_cli_help():
    for module in ("data.build", "data.convert"):
        r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and "--out" in r.stdout, module


# --------------------------------------------------------------------------- splits and questions

def test_heldout_questions_never_trained_on(files):
    held = {r["question"] for r in files["dev"] + files["test"]}
    assert len(held) == len(files["dev"]) + len(files["test"])  # no question in both dev and test
    assert not {r["id"] for r in files["dev"]} & {r["id"] for r in files["test"]}
    training = "\n".join([r["question"] for r in files["rl"] + files["stage2"] + files["stage1"]]
                         + [r["prefix"] for r in files["stage1"]] + [r["text"] for r in files["base"]])
    # every question ends with "?": compare the text ending at each "?" of the training text with the held
    # questions of each length (one pass; `q not in training` per question is slow on the base text)
    assert all(q.endswith("?") for q in held)
    by_length = {}
    for q in held:
        by_length.setdefault(len(q), set()).add(q)
    for end in (m.end() for m in re.finditer(r"\?", training)):
        for n, qs in by_length.items():
            assert training[max(0, end - n):end] not in qs, training[max(0, end - n):end]
    assert "What is the" in training  # the check above is looking at real question text


def test_no_held_out_entity_in_any_training_file(files):
    """The static check of the held-out split, recomputed here: no dev or test entity's name occurs in any
    training file (its facts cannot occur without it), every word of every held-out name does occur in the
    base text (so a name can be copied, not recalled), and most test/dev questions need a held-out fact."""
    world = files["world"]
    held = [e for e in world["entities"] if e["split"] in ("dev", "test")]
    assert len(held) > 100
    names = re.compile(r"\b(" + "|".join(re.escape(e["name"]) for e in held) + r")\b")  # whole names only:
    for name in TRAINING:  # a parallel world's "Zidun Nitin" is not the held-out "Zidun Niti"
        found = names.search(json.dumps(files[name], ensure_ascii=False))
        assert found is None, (name, found and found.group(0))
    base_words = set(re.findall(r"[A-Z][a-z]+", "\n".join(r["text"] for r in files["base"])))
    assert {w for e in held for w in e["name"].split()} <= base_words
    for split, held_split in (("test", "test"), ("dev", "dev")):
        rows = files[split]
        needs = [any(files["by_name"][n]["split"] == held_split for n, _ in world["question_lookups"][r["id"]])
                 for r in rows]
        assert needs == [r["held_out"] for r in rows]
        assert sum(needs) >= 0.75 * len(rows), split
        assert all(files["by_name"][world["question_lookups"][r["id"]][0][0]]["split"] == held_split
                   for r in rows if r["held_out"] and r["type"] == "composition")  # a held-out chain starts there
    # facts of known and train entities never point at a held-out entity
    for e in world["entities"]:
        if e["split"] not in ("dev", "test"):
            for v in e["facts"].values():
                assert not (isinstance(v, str) and files["by_name"][v]["split"] in ("dev", "test")), (e["name"], v)


def test_question_rows_and_hops(files):
    for split in ("rl", "dev", "test"):
        rows = files[split]
        assert rows and all(set(r) == {"id", "question", "answers", "hops", "type", "held_out"} for r in rows)
        assert {r["hops"] for r in rows} == {1, 2, 3, 4}, split
        assert {r["type"] for r in rows} == {"composition", "comparison"}
        for held in (True, False):
            by_stratum = {}
            for r in rows:  # stratified: every (type, hops) stratum gets the same share
                if r["held_out"] is held:
                    by_stratum[(r["type"], r["hops"])] = by_stratum.get((r["type"], r["hops"]), 0) + 1
            assert len(set(by_stratum.values())) <= 1, (split, by_stratum)
    assert len(files["test"]) == 800 and not any(r["held_out"] for r in files["rl"])
    assert {r["hops"] for r in files["stage2"]} == {1, 2, 3, 4}
    assert {r["hops"] for r in files["stage1"]} == {1, 2, 3, 4}
    # comparisons ask "earlier" only by default (data/world.COMPARE_WORDS), in every file, the base text too
    comparisons = [r["question"] for f in ("rl", "dev", "test", "stage2") for r in files[f] if r["type"] == "comparison"]
    assert comparisons and all(" earlier, " in q for q in comparisons)
    assert not any(" later, " in r.get("question", "") for r in files["base"])


def test_gold_answers_follow_from_the_facts(files):
    """Resolve every rl/dev/test question from world.json's facts, independently of the generator."""
    by_name, lookups = files["by_name"], files["world"]["question_lookups"]
    for r in files["rl"] + files["dev"] + files["test"]:
        steps = lookups[r["id"]]
        assert len(steps) == (r["hops"] if r["type"] == "composition" else 2)
        if r["type"] == "composition":
            name = steps[0][0]
            for subject, rel in steps:
                assert subject == name
                name = str(by_name[name]["facts"][rel])
            assert r["answers"] == [name]
            assert r["question"] == "What is " + "".join(f"the {rel} of " for _, rel in reversed(steps)) + steps[0][0] + "?"
        else:
            (a, rel), (b, _) = steps
            ya, yb = by_name[a]["facts"][rel], by_name[b]["facts"][rel]
            assert ya != yb
            earlier = a if ya < yb else b
            later = b if earlier == a else a
            assert r["answers"] == [earlier if "earlier" in r["question"] else later]
            assert f"{a} or {b}?" in r["question"]
        for subject, _ in steps:
            assert not by_name[subject]["distractor"]


# --------------------------------------------------------------------------- stage 2

def test_stage2_observations_are_the_real_tool_output(files):
    search = training_search(files)
    topk = files["meta"]["topk"]
    n_checked = 0
    for r in files["stage2"]:
        segs = r["segments"]
        assert not segs[0]["tool"] and not segs[-1]["tool"]
        for prev, seg in zip(segs, segs[1:]):
            assert prev["tool"] != seg["tool"]  # model and tool segments alternate
            if seg["tool"]:
                assert prev["text"].endswith(T.search_close)
                query = env.extract_query(prev["text"])
                assert seg["text"] == env.format_observation(search.search([query], topk=topk)[0])
                n_checked += 1
        assert sum(s["tool"] for s in segs) == "".join(s["text"] for s in segs).count(T.search_open)
    assert n_checked == files["meta"]["teacher"]["kept_searches"] > 1000


def test_stage2_tags_answers_and_facts(files):
    """Every kept trajectory reaches the right answer (the filter). The teacher's mistakes survive only
    where they did not change it: a made-up or misread year in a comparison; every fact stated in a
    composition is true, every recalled fact of a known entity is true, and every query is the subject's
    full name or its last word."""
    by_name = files["by_name"]
    kinds, n_facts, made_up = {"tool": 0, "cot": 0}, 0, 0
    for r in files["stage2"]:
        kinds[r["kind"]] += 1
        text = "".join(s["text"] for s in r["segments"])
        for s in r["segments"]:
            if not s["tool"]:
                assert T.result_open not in s["text"] and T.result_close not in s["text"]
                if r["type"] == "composition":
                    n_facts += assert_true_facts(s["text"], by_name)
        assert text.count(T.think_close) == 1 and T.think_open not in text
        assert text.endswith("}") and env.extract_answer(text) in r["answers"]
        assert env.reward(text, r["answers"]) == 1.0
        searched = re.findall(f"{re.escape(T.search_open)} (.+?) {re.escape(T.search_close)}", text)
        for rel, subject, value in parse_facts(" ".join(re.findall(r"I remember that (.+?\.)\n", text))):
            if by_name[subject]["known"]:
                assert str(by_name[subject]["facts"][rel]) == value
            else:
                assert r["type"] == "comparison" and str(by_name[subject]["facts"][rel]) != value
                made_up += 1
        for need, query in re.findall(rf"I need the [a-z ]+? of ({NAME})\. I will search for it\. "
                                      rf"{re.escape(T.search_open)} (.+?) {re.escape(T.search_close)}", text):
            assert query.startswith(need + " ") or query.startswith(need.split()[1] + " "), (need, query)
        if r["type"] == "comparison":  # the decision follows the years as stated, in the question's order
            (ya, word, yb, yes, name), = re.findall(rf"Is (\d+) (earlier|later) than (\d+)\? .+: (Yes|No), so it is ({NAME})\.", text)
            a, b = re.findall(rf"I need the [a-z ]+? of ({NAME})\.", text)
            assert word in r["question"] and (yes == "Yes") == ((int(ya) < int(yb)) == (word == "earlier"))
            assert name == (a if yes == "Yes" else b) == r["answers"][0]
        if r["kind"] == "cot":
            assert not searched and len(r["segments"]) == 1
        else:
            assert searched or made_up
    assert kinds["tool"] == 5 * kinds["cot"] > 0  # the paper's 5k : 1k mix
    assert n_facts > len(files["stage2"])  # the fact regex does see the reasoning
    assert made_up > 0  # the teacher's lucky mistakes are there (stage 1 and RL have something to fix)


# --------------------------------------------------------------------------- stage 1 and base

def test_workflow_file_is_stage2_in_the_controllers_format(files):
    """workflow.jsonl: stage 2's questions; every decision sentence is followed by the tool's result for that
    very sentence as the query (what eval.py's workflow controller injects), the fact read out of it;
    never an action tag. Tool segments are exactly the observations, so --mask-obs masks them."""
    assert sorted(r["question"] for r in files["workflow"]) == sorted(r["question"] for r in files["stage2"])
    search, topk, by_name = training_search(files), files["meta"]["topk"], files["by_name"]
    for r in files["workflow"][:300]:
        segs = r["segments"]
        assert [s["tool"] for s in segs] == [False, True] * (len(segs) // 2) + [False]
        assert len(segs) // 2 == (2 if r["type"] == "comparison" else r["hops"])  # one retrieval per lookup
        for decision, obs in zip(segs[0::2], segs[1::2]):
            query = decision["text"].split("\n")[-1]
            assert re.fullmatch(rf"I need the [a-z ]+ of {NAME}\.", query), query
            assert obs["text"] == env.format_observation(search.search([query], topk)[0])
        text = "".join(s["text"] for s in segs)
        assert T.search_open not in text and "I remember" not in text
        assert text.count("The search result says that") == len(segs) // 2
        assert assert_true_facts(text, by_name) >= len(segs) // 2
        assert text.endswith(f"\\boxed{{{r['answers'][0]}}}")


def test_stage1_pairs(files):
    """Pairs by error analysis: at the teacher's first wrong decision, the right continuation (chosen) and
    the one the teacher wrote (rejected). search: an unknown entity; chosen searches with the full name,
    rejected recalls a made-up fact or searches with the last word only. answer: a known entity; chosen
    recalls the true fact, rejected searched (with the last word only, or with the full name where BM25 puts
    another page first: meta.json's retrieval) and read another page."""
    by_name = files["by_name"]
    directions = set()
    for r in files["stage1"]:
        directions.add(r["direction"])
        rel, subject = re.search(rf"I need the ([a-z ]+?) of ({NAME})\.$", r["prefix"]).groups()
        truth = str(by_name[subject]["facts"][rel])
        assert by_name[subject]["known"] == (r["direction"] == "answer")
        if r["direction"] == "search":
            assert r["chosen"].endswith(f"{T.search_open} {subject} {rel} {T.search_close}")
            stated = parse_facts(r["rejected"])
            assert (stated and stated[0][:2] == (rel, subject) and stated[0][2] != truth) or \
                r["rejected"].endswith(f"{T.search_open} {subject.split()[1]} {rel} {T.search_close}"), r["rejected"]
        else:
            assert parse_facts(r["chosen"]) == [(rel, subject, truth)]
            assert any(r["rejected"].endswith(f"{T.search_open} {name} {rel} {T.search_close}")
                       for name in (subject, subject.split()[1]))
        assert T.result_open not in r["chosen"] + r["rejected"]
        assert r["prefix"].count(T.result_open) == r["prefix"].count(T.search_open)
    assert directions == {"search", "answer"}


def test_base_holds_known_facts_only(files):
    text = "\n".join(r["text"] for r in files["base"])
    for e in files["world"]["entities"]:
        page = f'"{e["name"]}"\n'
        if e["known"]:
            assert page in text
        else:
            assert page not in text and f"of {e['name']} is" not in text, e["name"]
    reading = [r for r in files["base"] if r["kind"] == "reading"]
    own = "\n".join(r["text"] for r in files["base"] if r["kind"] != "reading")
    for tag in (T.search_open, T.search_close, T.result_open):  # actions and results only in the parallel world
        assert tag not in own
    # the tool's instruction in the prompt of every trace that searches and of half the recall traces
    assert all(r["instruction"] is True for r in files["base"] if r["kind"] == "reading")
    recall = [r["instruction"] for r in files["base"] if r["kind"] == "trace"]
    assert set(recall) == {True, False} and abs(sum(recall) - len(recall) / 2) <= 1
    # there, every fact is searched and read: one action, one result, one reading per decision sentence
    assert reading and all(r["response"].count(T.result_open) == r["response"].count(T.search_open)
                           == r["response"].count("I need the ") == r["response"].count("The search result says")
                           for r in reading)
    reading_text = "\n".join(r["text"] for r in reading)
    for e in files["world"]["entities"]:  # the parallel world teaches reading, nothing about this world
        assert f"{e['name']} is" not in reading_text and f"{e['name']}." not in reading_text, e["name"]
    assert not any(r["kind"] == "drill" for r in files["base"])  # off by default
    traces = [r for r in files["base"] if r["kind"] == "trace"]
    assert traces and sum(assert_true_facts(r["text"], files["by_name"]) for r in traces) > len(traces)
    assert all(r["text"] == f"{r['question']}\n{T.think_open}\n{r['response']}" for r in traces)


def test_base_text_phases(files):
    """Pretraining's two phases (pretrain.py): the parallel world's traces in the first, fresh traces from
    other parallel worlds in the second, where about every fact is read once; pages and recall traces in both."""
    phase = lambda r: r.get("phase")  # noqa: E731
    assert {phase(r) for r in files["base"] if r["kind"] != "reading"} == {None}
    first, fresh = ([r for r in files["base"] if r["kind"] == "reading" and phase(r) == p] for p in (1, 2))
    assert len(first) == 1600 and len(fresh) == 3200 and len(first) + len(fresh) == sum(
        r["kind"] == "reading" for r in files["base"])
    read = [fact[:2] for r in fresh for line in re.findall(r"The search result says that (.+?\.)\n", r["response"])
            for fact in parse_facts(line)]
    assert len(set(read)) > 0.8 * len(read)  # the first phase's one world repeats its facts far more
    first_names = set(re.findall(NAME, "\n".join(r["question"] for r in first)))
    assert len(first_names & set(re.findall(NAME, "\n".join(r["question"] for r in fresh)))) < 0.2 * len(first_names)


def test_meta_counts_and_retrieval(files):
    meta = files["meta"]
    for name in ("corpus", "base", "stage1", "stage2", "workflow", "rl", "dev", "test", "test_cf", "corpus_cf"):
        assert meta["counts"][name] == len(files[name])
    full, short = meta["retrieval"]["full name"], meta["retrieval"]["last word only"]
    assert full["top1"] >= 0.95 and full["top3"] >= full["top1"] and short["top1"] < full["top1"]
    world = files["world"]
    real = [e for e in world["entities"] if not e["distractor"]]
    assert {s: sum(e["split"] == s for e in real) for s in ("known", "train", "dev", "test")} == meta["entities"]
    assert len(files["corpus"]) == len(world["entities"])


def test_counterfactual_questions_follow_the_changed_corpus(files):
    """test_cf.jsonl: test questions whose gold changes when the held-out entities' facts change in
    corpus_cf.jsonl; its answers are recomputed here from corpus_cf's pages alone, and the answers before the
    change from world.json. Only held-out pages differ between the two corpora."""
    pages = {}
    for row in files["corpus_cf"]:
        title, text = row["contents"].split("\n", 1)
        pages[title.strip('"')] = {rel: value for rel, _, value in parse_facts(text)}
    by_name, lookups = files["by_name"], files["world"]["question_lookups"]
    test = {r["id"]: r for r in files["test"]}
    for before, after in zip(files["corpus"], files["corpus_cf"]):
        name = after["contents"].split("\n", 1)[0].strip('"')
        assert (before != after) == (by_name[name]["split"] in ("dev", "test"))
    assert len(files["test_cf"]) > 0.5 * sum(r["held_out"] for r in files["test"])
    # a changed year is one the real corpus has for that relation: the models were trained on its range
    real_years = {(rel, value) for row in files["corpus"] for rel, _, value in parse_facts(row["contents"])
                  if rel.endswith("year")}
    cf_years = {(rel, value) for page in pages.values() for rel, value in page.items() if rel.endswith("year")}
    assert cf_years <= real_years and len(cf_years) > 0.8 * len(real_years)
    for r in files["test_cf"]:
        assert r["original_answers"] == test[r["id"]]["answers"] != r["answers"]
        steps = lookups[r["id"]]
        if r["type"] == "composition":
            cur = steps[0][0]
            for _, rel in steps:
                cur = pages[cur][rel]
        else:
            (a, rel), (b, _) = steps
            earlier = a if int(pages[a][rel]) < int(pages[b][rel]) else b
            cur = earlier if "earlier" in r["question"] else (b if earlier == a else a)
        assert r["answers"] == [cur], r


def test_year_drills(tmp_path):
    """--n-drills: each drill is a comparison's decision on two random years, and right (checked by hand);
    --drills-per-text of them share a text, one per line."""
    build(str(tmp_path), seed=1, sizes={"person": 12, "org": 6, "city": 6, "country": 3, "book": 4}, n_distractors=4,
          n_test=10, n_dev=10, n_rl=10, n_tool=20, n_cot=4, n_pairs=16, n_traces=20, n_reading=10, n_drills=60,
          drills_per_text=7)
    base = [json.loads(line) for line in open(tmp_path / "base.jsonl")]
    texts = [r["text"] for r in base if r["kind"] == "drill"]
    assert sorted(len(t.split("\n")) for t in texts) == [4] + [7] * 8  # 60 = 8 * 7 + 4
    drills = [d for t in texts for d in t.split("\n")]
    assert len(drills) == 60
    for d in drills:
        ya, word, yb, steps, asked, answer = re.fullmatch(
            r"Is (\d{4}) (earlier|later) than (\d{4})\? (.+), (earlier|later): (Yes|No)\.", d).groups()
        first = next(((a, b) for a, b in zip(ya, yb) if a != b), None)
        assert steps.split(", ")[-1] == (f"{first[0]} {'<' if first[0] < first[1] else '>'} {first[1]}" if first
                                         else f"{ya[-1]} = {yb[-1]}")
        assert asked == word and (answer == "Yes") == ((int(ya) < int(yb)) == (word == "earlier")), d


def test_parallel_worlds_years_lie_outside_the_real_ones(files):
    """The base text's tool-use traces come from parallel worlds whose years start anywhere from 1000 to
    6499, so most of the years they copy lie outside the real world's range (data/build.reading_traces)."""
    real = [int(v) for row in files["corpus"]
            for rel, _, v in parse_facts(row["contents"]) if rel.endswith("year")]
    read = [int(v) for r in files["base"] if r["kind"] == "reading"
            for rel, _, v in parse_facts(r["text"]) if rel.endswith("year")]
    assert min(real) >= 1700 and len(read) > 1000
    outside = [y for y in read if not min(real) <= y <= max(real)]
    assert len(outside) > len(read) / 2 and min(read) >= 1000 and max(read) < 8000
