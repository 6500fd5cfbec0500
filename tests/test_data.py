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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["corpus.jsonl", "base.jsonl", "stage1.jsonl", "stage2.jsonl", "workflow.jsonl", "rl.jsonl", "dev.jsonl",
         "test.jsonl", "world.json", "meta.json"]
T = env.TAGS
NAME = r"[A-Z][a-z]+ [A-Z][a-z]+"  # every world name is two capitalised invented words
FACT_RE = re.compile(rf"\b[Tt]he ([a-z]+(?: [a-z]+)?) of ({NAME}) is ({NAME}|\d+)\.")  # relations: 1-2 words


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


def assert_true_facts(text, by_name):
    """Every 'the <relation> of <Name> is <value>.' stated in text is a fact of the world."""
    found = FACT_RE.findall(text)
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
    build(str(tmp_path), seed=1, n_test=50, n_dev=50, n_rl=50, n_tool=50, n_cot=10, n_pairs=20, n_traces=20)
    for f in ("corpus.jsonl", "test.jsonl", "world.json"):
        assert (world_dir / f).read_bytes() != (tmp_path / f).read_bytes(), f


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
    for q in held:
        assert q not in training, q
    assert "What is the" in training  # the check above is looking at real question text


def test_question_rows_and_hops(files):
    for split in ("rl", "dev", "test"):
        rows = files[split]
        assert rows and all(set(r) == {"id", "question", "answers", "hops", "type"} for r in rows)
        assert {r["hops"] for r in rows} == {1, 2, 3, 4}, split
        assert {r["type"] for r in rows} == {"composition", "comparison"}
        by_stratum = {}
        for r in rows:  # stratified: every (type, hops) stratum gets the same share
            by_stratum[(r["type"], r["hops"])] = by_stratum.get((r["type"], r["hops"]), 0) + 1
        assert len(set(by_stratum.values())) == 1, (split, by_stratum)
    assert {r["hops"] for r in files["stage2"]} == {1, 2, 3, 4}
    assert {r["hops"] for r in files["stage1"]} == {1, 2, 3, 4}


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
    search = env.BM25Search(files["corpus"])  # a fresh index over the written corpus
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
    assert n_checked == files["meta"]["retrieval"]["stage2_searches"] > 1000


def test_stage2_tags_answers_and_facts(files):
    by_name = files["by_name"]
    kinds, n_facts = {"tool": 0, "cot": 0}, 0
    for r in files["stage2"]:
        kinds[r["kind"]] += 1
        text = "".join(s["text"] for s in r["segments"])
        for s in r["segments"]:
            if not s["tool"]:
                assert T.result_open not in s["text"] and T.result_close not in s["text"]
                n_facts += assert_true_facts(s["text"], by_name)
        assert text.count(T.think_close) == 1 and T.think_open not in text
        assert text.endswith("}") and env.extract_answer(text) in r["answers"]
        assert env.reward(text, r["answers"]) == 1.0
        searched = re.findall(f"{re.escape(T.search_open)} (.+?) {re.escape(T.search_close)}", text)
        recalled = re.findall(rf"I remember that the ([a-z ]+?) of ({NAME}) is", text)
        # when to act: search exactly the unknown entities' facts, recall exactly the known ones'
        for query in searched:
            assert not by_name[" ".join(query.split()[:2])]["known"], query
        for _, subject in recalled:
            assert by_name[subject]["known"], subject
        if r["kind"] == "cot":
            assert not searched and len(r["segments"]) == 1
        else:
            assert searched
    assert kinds["tool"] == 5 * kinds["cot"] > 0  # the paper's 5k : 1k mix
    assert n_facts > 2 * len(files["stage2"])  # the fact regex does see the reasoning


# --------------------------------------------------------------------------- stage 1 and base

def test_workflow_file_is_stage2_in_the_controllers_format(files):
    """workflow.jsonl: stage 2's questions; every decision sentence is followed by the tool's result for that
    very sentence as the query (what eval.py's workflow controller injects), the fact read out of it;
    never an action tag. Tool segments are exactly the observations, so --mask-obs masks them."""
    assert sorted(r["question"] for r in files["workflow"]) == sorted(r["question"] for r in files["stage2"])
    search, topk, by_name = env.BM25Search(files["corpus"]), files["meta"]["topk"], files["by_name"]
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
    by_name = files["by_name"]
    directions = set()
    for r in files["stage1"]:
        directions.add(r["direction"])
        rel, subject = re.search(rf"I need the ([a-z ]+?) of ({NAME})\.$", r["prefix"]).groups()
        search, recall = (r["chosen"], r["rejected"]) if r["direction"] == "search" else (r["rejected"], r["chosen"])
        assert by_name[subject]["known"] == (r["direction"] == "answer")
        assert search.endswith(f"{T.search_open} {subject} {rel} {T.search_close}")
        stated = FACT_RE.findall(recall)
        assert len(stated) == 1 and stated[0][:2] == (rel, subject)
        truth = str(by_name[subject]["facts"][rel])
        assert (stated[0][2] == truth) == (r["direction"] == "answer")  # rejected recall is wrong
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
    assert T.search_open not in text and T.search_close not in text  # the base model never sees an action
    reading = [r for r in files["base"] if r["kind"] == "reading"]
    own = "\n".join(r["text"] for r in files["base"] if r["kind"] != "reading")
    assert T.result_open not in own  # result blocks only in the parallel world's reading traces
    assert reading and all(r["response"].count(T.result_open) == r["response"].count("I need the ") for r in reading)
    reading_text = "\n".join(r["text"] for r in reading)
    for e in files["world"]["entities"]:  # the parallel world teaches reading, nothing about this world
        assert f"{e['name']} is" not in reading_text and f"{e['name']}." not in reading_text, e["name"]
    traces = [r for r in files["base"] if r["kind"] == "trace"]
    assert traces and sum(assert_true_facts(r["text"], files["by_name"]) for r in traces) > len(traces)
    assert all(r["text"] == f"{r['question']}\n{T.think_open}\n{r['response']}" for r in traces)


def test_meta_counts_and_retrieval(files):
    meta = files["meta"]
    for name in ("corpus", "base", "stage1", "stage2", "workflow", "rl", "dev", "test"):
        assert meta["counts"][name] == len(files[name])
    assert meta["retrieval"]["top1"] >= 0.95 and meta["retrieval"]["top3"] >= meta["retrieval"]["top1"]
    world = files["world"]
    assert 0.4 < sum(e["known"] for e in world["entities"] if not e["distractor"]) / 230 < 0.6
    assert len(files["corpus"]) == len(world["entities"])
