"""eval.py: scoring by hops and type on hand-made records, every policy end to end on a tiny random model, the
controller of the workflow and RAG baselines, the world-model probe, and the files the CLI writes.

A random model writes garbage, so a logits processor (`Script`) makes it write planned text: segment j is
forced after the j-th observation of the response (whoever injected it), then eos. That lets a test say
exactly what a competent agent or workflow would do on a tiny world built with data.build.
"""
import importlib.util
import json
import os

import pytest
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

import env
import eval as ev
from data.build import build
from data.trajectories import miss, need, query_for, read, recall, year_check
from data.trajectories import recall as recall_line
from data.world import fact_sentence
from env import TAGS
from model import Qwen2, Qwen2Config
from tokenizer import ASSISTANT, BOS, END_THINK, EOS, THINK, USER, Tokenizer, bytes_to_unicode

OBS_END = f"{TAGS.result_close}\n\n"


@pytest.fixture(scope="module")
def tok():
    """Byte-level (one token per byte), with the chat tokens and the tags as single added tokens."""
    b2u = bytes_to_unicode()
    tk = HFTokenizer(models.BPE(vocab={b2u[b]: b for b in range(256)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (EOS, BOS, USER, ASSISTANT)])
    tk.add_tokens([AddedToken(t, normalized=False) for t in (THINK, END_THINK, TAGS.search_open, TAGS.search_close,
                                                             TAGS.result_open, TAGS.result_close)])
    return Tokenizer(tk)


@pytest.fixture(scope="module")
def model(tok):
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, rope_theta=1e4)
    return Qwen2(cfg).init_weights(seed=0).eval()


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    build(str(out), seed=0, sizes={"person": 12, "org": 6, "city": 6, "country": 3, "book": 6},
          n_test=10, n_dev=10, n_rl=5, n_tool=10, n_cot=4, n_pairs=4, n_recall=4, n_reading=4, page_repeats=2)
    return str(out)


@pytest.fixture(scope="module")
def world(world_dir):
    with open(os.path.join(world_dir, "world.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def rows(world_dir):
    return [row for s in ("dev", "test") for row in ev.common.read_jsonl(os.path.join(world_dir, f"{s}.jsonl"))]


def chain(world, row):
    """[(name, relation, value, known)] of a question, in lookup order."""
    ents = {e["name"]: e for e in world["entities"]}
    return [(n, rel, ents[n]["facts"][rel], ents[n]["known"]) for n, rel in world["question_lookups"][row["id"]]]


def question(rows, world, hops, unknown_first=True):
    return next(r for r in rows if r["type"] == "composition" and r["hops"] == hops
                and (not chain(world, r)[0][3]) == unknown_first)


def said(name, rel, value):
    s = fact_sentence(name, rel, value)
    return s[0].lower() + s[1:]


def ending(answer):
    return f"So the answer is {answer}.\n{END_THINK}\n\nThe answer is \\boxed{{{answer}}}"


class Script:
    """Logits processor: plans[i] = [segment 0, segment 1, ...]; the response of prompt i after its j-th
    observation block is forced to be segment j, then eos. Prompts are told apart by their question."""

    def __init__(self, tok, plans):
        self.tok, self.plans = tok, plans

    def __call__(self, logits, rollouts):
        for row, r in enumerate(rollouts):
            if r.phase == "observation":  # sim mode: the model writes its own observation freely
                continue
            text = self.tok.decode(r.prompt + r.completion)
            plan = next(p for q, p in self.plans.items() if f"\n{q}{ASSISTANT}" in text)
            response = text.split(f"{THINK}\n", 1)[1]
            j, current = response.count(OBS_END), response.rsplit(OBS_END, 1)[-1]
            target = self.tok.encode(plan[j]) if j < len(plan) else []
            n = len(self.tok.encode(current))
            logits[row] = float("-inf")
            logits[row, target[n] if n < len(target) else self.tok.eos_id] = 0.0
        return logits


class RecordingTool:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def search(self, queries, topk=3):
        self.calls.append(list(queries))
        return self.inner.search(queries, topk)


@pytest.fixture(scope="module")
def bm25(world_dir):
    return env.BM25Search.from_jsonl(os.path.join(world_dir, "corpus.jsonl"))


# ----------------------------------------------------------------------------- scoring


def test_score_by_hops_and_type_on_hand_made_records():
    def rec(hops, type_, em, f1, acts, calls):
        return {"hops": hops, "type": type_, "em": em, "f1": f1, "n_actions": acts, "n_tool_calls": calls}
    records = [rec(1, "composition", 1.0, 1.0, 1, 1), rec(1, "composition", 0.0, 0.5, 3, 2),
               rec(2, "comparison", 1.0, 1.0, 2, 2), rec(2, "composition", 0.0, 0.0, 0, 0),
               rec(4, "composition", 0.0, 0.25, 5, 4)]
    s = ev.score(records, "m")
    lo, hi = s["overall"].pop("em_ci")
    assert s["overall"] == {"n": 5, "em": 0.4, "f1": 0.55, "actions": 2.2, "searches": 1.8}
    assert 0.0 <= lo < 0.4 < hi <= 1.0  # EMs of 0/1: the interval is wide around the mean and inside [0, 1]
    one = s["by_hops"]["1"]
    assert one.pop("em_ci") is not None and one == {"n": 2, "em": 0.5, "f1": 0.75, "actions": 2.0, "searches": 1.5}
    # hops count compositions only: the comparison (2 lookups) has its own column, not "2 hops"
    assert s["by_hops"]["2"]["n"] == 1 and s["by_hops"]["2"]["em"] == 0.0 and s["by_hops"]["2"]["f1"] == 0.0
    assert s["by_hops"]["3"] == {"n": 0, "em": None, "em_ci": None, "f1": None, "actions": None, "searches": None}
    assert s["by_hops"]["4"]["f1"] == 0.25 and list(s["by_hops"]) == ["1", "2", "3", "4"]
    assert s["by_type"]["comparison"]["n"] == 1 and s["by_type"]["composition"]["em"] == 0.25
    table = ev.format_table([s, ev.score(records[:2], "other")])
    lines = table.split("\n")
    em = lines.index("EM %")
    assert lines[em + 1].split() == ["method", "all", "1-hop", "2-hop", "3-hop", "4-hop", "comparison", "composition"]
    assert lines[em + 2].split() == ["m", "40.0", "50.0", "0.0", "-", "0.0", "100.0", "25.0"]
    assert lines[em + 3].split() == ["other", "50.0", "50.0", "-", "-", "-", "-", "50.0"]
    assert "other" in table and "3-hop" in table


def test_bootstrap_paired_and_follows_by_hand():
    """The interval of a constant is that constant; a paired difference is taken per question (joined by id,
    a question only one side has is left out); follows() counts only the questions solved with the real corpus."""
    assert ev.bootstrap_ci([1.0] * 7) == [1.0, 1.0] and ev.bootstrap_ci([]) is None
    assert ev.bootstrap_ci([0.0, 1.0] * 50) == ev.bootstrap_ci([0.0, 1.0] * 50)  # seeded
    a = [{"id": i, "em": e} for i, e in enumerate([1, 1, 0, 1, 0])] + [{"id": 99, "em": 1}]
    b = [{"id": i, "em": e} for i, e in enumerate([0, 1, 0, 0, 1])]
    p = ev.paired(a, b)
    assert p["n"] == 5 and p["diff"] == pytest.approx(0.2) and p["ci"][0] <= 0.2 <= p["ci"][1]
    assert ev.paired(b, b) == {"n": 5, "diff": 0.0, "ci": [0.0, 0.0]}
    real = [{"id": i, "em": e} for i, e in enumerate([1, 1, 1, 0])]
    cf = [{"id": 0, "em": 1, "em_original": 0}, {"id": 1, "em": 0, "em_original": 1},
          {"id": 2, "em": 0, "em_original": 0}, {"id": 3, "em": 1, "em_original": 0}]  # id 3 was not solved
    assert ev.follows(real, cf) == {"n_solved": 3, "follows_corpus": 1 / 3, "follows_memory": 1 / 3}


def test_when_to_act_by_hand():
    class R:
        n_actions = n_tool_calls = 0
        finish, queries = "eos", []

        def __init__(self, text):
            self.text = text

    def rec(text, known, name="Lopi Fiben"):
        first = None if known is None else (name, known)
        return ev.record({"question": "q", "answers": ["a"], "hops": 1}, "agent", R(text), first)
    search = need("Lopi Fiben", "country") + miss("Lopi Fiben", "country")
    recall = need("Lopi Fiben", "country") + recall_line("Lopi Fiben", "country", "Farut") + f"{env.TAGS.search_open} x"
    records = [rec(search, False), rec(search, False, "Dule Mumo"), rec(recall, False),  # unknown: searched 2 of 3
               rec(recall, True), rec(search, True),                                    # known: searched 1 of 2
               rec(search, None)]                                                       # not judged
    assert [r["first_step_search"] for r in records] == [True, True, False, False, True, True]
    assert [r["first_step_names"] for r in records] == [True, False, True, True, True, None]
    w = ev.score(records)["when_to_act"]
    assert w == {"n_known": 2, "search_known": 0.5, "n_unknown": 3, "search_unknown": pytest.approx(2 / 3),
                 "accuracy": 0.6,  # right: the 2 searches on unknown + the 1 recall on known, of 5
                 "names_known": 1.0, "names_unknown": pytest.approx(2 / 3)}
    assert ev.score(records[-1:])["when_to_act"] is None
    table = ev.format_table([ev.score(records, "m"), ev.score(records[3:5], "known only")])
    assert table.split("\n")[-2].split() == ["known", "only", "50.0%", "-", "50.0%", "100.0%", "-"]


def test_comparison_steps_by_hand():
    """eval.comparison_steps on hand-written decision lines in data/trajectories.py's format."""
    q = "Who was born earlier, Lopi Fiben or Dule Mumo?"
    read_a = read("Lopi Fiben", "birth year", 1850)
    recall_b = need("Dule Mumo", "birth year") + recall("Dule Mumo", "birth year", 1862)
    read_b = read("Dule Mumo", "birth year", 1862)

    def rec(text, question=q, type_="comparison"):
        return {"question": question, "type": type_, "text": text}
    records = [
        # all right, both years read: Is 1850 earlier than 1862? Yes -> the first name
        rec(read_a + read_b + f"{year_check(1850, 1862)}, so it is Lopi Fiben.\n"),
        # B recalled, not read; the rest right
        rec(read_a + recall_b + f"{year_check(1850, 1862)}, so it is Lopi Fiben.\n"),
        # A's year miscopied (1875): the years are wrong, Yes is wrong for the line, the name follows Yes
        rec(read_a + read_b + "Is 1875 earlier than 1862? 1 = 1, 8 = 8, 7 > 6: Yes, so it is Lopi Fiben.\n"),
        # the right decision, then the other name
        rec(read_a + read_b + f"{year_check(1850, 1862)}, so it is Dule Mumo.\n"),
        rec(read_a + "So the answer is \\boxed{Dule Mumo}."),          # no decision line: not counted
        rec(f"{year_check(1, 2)}, so it is x.\n", "What is Lopi Fiben's birthplace?", "composition"),
    ]
    assert year_check(1850, 1862) == "Is 1850 earlier than 1862? 1 = 1, 8 = 8, 5 < 6: Yes"
    steps = ev.comparison_steps(records)
    assert steps == {"n": 4, "years": 0.75, "decision": 0.75, "name": 0.75, "searched": 0.75}
    assert ev.comparison_steps(records[4:]) is None
    # each step on its own
    assert ev.comparison_steps(records[1:2]) == {"n": 1, "years": 1.0, "decision": 1.0, "name": 1.0, "searched": 0.0}
    assert ev.comparison_steps(records[2:3]) == {"n": 1, "years": 0.0, "decision": 0.0, "name": 1.0, "searched": 1.0}
    assert ev.comparison_steps(records[3:4]) == {"n": 1, "years": 1.0, "decision": 1.0, "name": 0.0, "searched": 1.0}


def test_chain_steps_by_hand():
    """eval.chain_steps on hand-written chains in data/trajectories.py's format: the need lines' relations
    against the question's, and each need's subject against the value stated for the need before."""
    q = "What is Lopi Fiben's birthplace's mayor's birth year?"
    first = need("Lopi Fiben", "birthplace") + recall("Lopi Fiben", "birthplace", "Dule Mumo")
    mayor = need("Dule Mumo", "mayor") + read("Dule Mumo", "mayor", "Tazik Kunos")
    year = need("Tazik Kunos", "birth year") + read("Tazik Kunos", "birth year", 1850)

    def rec(text, question=q, type_="composition"):
        return {"question": question, "type": type_, "text": text}
    records = [
        rec(first + mayor + year),                                                       # right
        rec(first + need("Dule Mumo", "country") + read("Dule Mumo", "country", "Tapin Lifar")),  # wrong relation
        rec(first + need("Tapin Lifar", "mayor") + read("Tapin Lifar", "mayor", "Tazik Kunos") + year),  # other subject
        rec(first + mayor + year + need("Tazik Kunos", "employer")),  # one lookup too many, not about 1850 either
        rec(first, "What is Lopi Fiben's birthplace?"),                                  # one hop: not counted
        rec(first, "Who was born earlier, Lopi Fiben or Dule Mumo?", "comparison"),       # not counted
    ]
    assert ev.chain_steps(records) == {"n": 4, "relations": 0.5, "subjects": 0.5}
    assert ev.chain_steps(records[:1]) == {"n": 1, "relations": 1.0, "subjects": 1.0}
    assert ev.chain_steps(records[2:3]) == {"n": 1, "relations": 1.0, "subjects": 0.0}
    assert ev.chain_steps(records[4:]) is None


def test_reading_by_hand():
    """eval.reading: a reading line counts when the whole result above it states its entity's relation; it
    copies when the value is the result's."""
    page = fact_sentence("Lopi Fiben", "birthplace", "Dule Mumo") + " " + fact_sentence("Lopi Fiben", "birth year", 1850)
    result = f"\n\n<search_result> result 1: \"Lopi Fiben\" {page} </search_result>\n\n"

    def line(rel, name, value):
        return read(name, rel, value)  # data/trajectories.py: "The search result says that ...\n"
    records = [
        {"text": result + line("birthplace", "Lopi Fiben", "Dule Mumo")},           # copied
        {"text": result + line("birth year", "Lopi Fiben", "1805")},                # miscopied
        {"text": result + line("employer", "Lopi Fiben", "Kabim Fegil")},           # not in the result
        {"text": line("birthplace", "Lopi Fiben", "Dule Mumo")},                    # no result above
        {"text": result.replace(" </search_result>", "") + line("birthplace", "Lopi Fiben", "Dule Mumo")},
        {"text": result + line("birth year", "Lopi Fiben", "1850") + result
         + line("birthplace", "Lopi Fiben", "Dule Mum")},                           # copied, then not
    ]
    assert ev.reading(records) == {"n": 4, "copied": 0.5}
    assert ev.reading(records[2:5]) is None
    summary = ev.score([{**r, "question": "q?", "type": "composition", "em": 0.0, "f1": 0.0, "hops": 1,
                         "n_actions": 1, "n_tool_calls": 1} for r in records], "m")
    assert ev.format_table([summary]).split("\n")[-2].split() == ["m", "4", "50.0%"]


def test_record_scores_the_boxed_answer_after_think_and_zero_without_one():
    class R:
        n_actions, n_tool_calls, finish, queries = 1, 1, "eos", ["q"]
    row = {"id": "x", "question": "q?", "answers": ["Dorin Kalvet"], "hops": 1, "type": "composition"}
    R.text = f"I need it.\n{END_THINK}\n\nThe answer is \\boxed{{dorin kalvet}}{EOS}"
    assert ev.record(row, "agent", R)["em"] == 1.0
    R.text = f"I need it.\n{END_THINK}\n\nThe answer is \\boxed{{Dorin}}"
    assert ev.record(row, "agent", R)["em"] == 0.0 and ev.record(row, "agent", R)["f1"] == pytest.approx(2 / 3)
    R.text = "\\boxed{Dorin Kalvet} but thinking never ended"
    r = ev.record(row, "agent", R)
    assert r["prediction"] is None and r["em"] == r["f1"] == 0.0


def test_workflow_trigger_matches_a_whole_decision_sentence_only():
    import re
    t = re.compile(ev.WORKFLOW_TRIGGER)
    assert t.search(need("Dorin Kalvet", "birth year")) and t.search(f" {need('Lo Ba', 'mayor')}\n")
    assert not t.search(need("Lo Ba", "mayor") + " From memory")
    assert not t.search("So " + need("Lo Ba", "mayor")) and not t.search(need("Lo Ba", "mayor")[:-4])


# ----------------------------------------------------------------------------- policies end to end


def test_agent_policy_scripted_search_is_scored(tok, model, rows, world, bm25):
    row = question(rows, world, hops=1)
    (name, rel, value, _), = chain(world, row)
    plan = [f"{need(name, rel)} I will search for it. {TAGS.search_open} {query_for(name, rel)} {TAGS.search_close}",
            f"The search result says that {said(name, rel, value)}\n{ending(value)}"]
    tool = RecordingTool(bm25)
    s, recs = ev.evaluate(model, tok, [row], "agent", tool, max_new_tokens=600, topk=1, world=world,
                          logits_processor=Script(tok, {row["question"]: plan}))
    assert tool.calls == [[query_for(name, rel)]]
    known = next(e["known"] for e in world["entities"] if e["name"] == name)
    assert recs[0]["first_step_search"] and recs[0]["first_step_names"] and recs[0]["first_known"] == known
    assert s["when_to_act"]["accuracy"] == (0.0 if known else 1.0)
    assert recs[0]["prediction"] == str(value) and recs[0]["em"] == 1.0 and recs[0]["n_tool_calls"] == 1
    assert s["overall"]["em"] == 1.0 and s["by_hops"]["1"]["searches"] == 1.0
    assert fact_sentence(name, rel, value) in recs[0]["text"]  # the real page came back
    # sim mode: the same action, but the model writes the observation itself and no search is made
    s, recs = ev.evaluate(model, tok, [row], "agent", None, mode="sim", max_new_tokens=600, obs_max_tokens=30,
                          logits_processor=Script(tok, {row["question"]: plan}))
    assert recs[0]["n_actions"] == 1 and recs[0]["n_tool_calls"] == 0 and recs[0]["em"] == 1.0
    assert s["mode"] == "sim" and fact_sentence(name, rel, value) not in recs[0]["text"]


def test_workflow_searches_once_per_decision_sentence(tok, model, rows, world, bm25):
    one, two = question(rows, world, hops=1), question(rows, world, hops=2)
    (x, r0, y, _), = chain(world, one)
    (a, r1, b, _), (_, r2, c, _) = chain(world, two)
    plans = {one["question"]: [f"{need(x, r0)}",
                               f"The search result says that {said(x, r0, y)}\n{ending(y)}"],
             two["question"]: [f"{need(a, r1)} This never gets written: the controller acts at the period",
                               f"The search result says that {said(a, r1, b)}\n{need(b, r2)}",
                               f"The search result says that {said(b, r2, c)}\n{ending(c)}"]}
    tool = RecordingTool(bm25)
    prompts = [ev.common.encode_prompt(tok, q["question"]) for q in (one, two)]
    questions = [one["question"], two["question"]]
    kw = dict(max_new_tokens=900, topk=1, logits_processor=Script(tok, plans))
    r_one, r_two = ev.run_policy("workflow", model, tok, prompts, questions, tool, **kw)
    decisions = [f"{need(a, r1)}", f"{need(b, r2)}"]
    # one search per decision sentence, the sentence as the query; rows whose sentences end at the same
    # step (as many tokens) share the sampler's one batched call of that step
    first = sorted([f"{need(x, r0)}", decisions[0]], key=lambda q: len(tok.encode(q)))
    same_step = len(tok.encode(first[0])) == len(tok.encode(first[1]))
    assert tool.calls == ([first] if same_step else [first[:1], first[1:]]) + [decisions[1:]]
    assert r_one.n_actions == r_one.n_tool_calls == 1 and env.extract_answer(r_one.text) == str(y)
    assert r_two.n_actions == r_two.n_tool_calls == 2 and r_two.queries == decisions
    plan = plans[two["question"]]
    obs = [env.format_observation(bm25.search([q], 1)[0]) for q in decisions]
    assert r_two.text == decisions[0] + obs[0] + plan[1] + obs[1] + plan[2] + EOS
    mask0 = [t for t, m in zip(r_two.completion, r_two.policy_mask) if m == 0]
    assert tok.decode(mask0) == obs[0] + obs[1] and env.extract_answer(r_two.text) == str(c)
    # bounded by max actions: after one search the controller stops acting, the model goes on alone
    _, r_two = ev.run_policy("workflow", model, tok, prompts, questions, bm25, max_actions=1, **kw)
    assert r_two.n_tool_calls == 1 and r_two.text == decisions[0] + obs[0] + plan[1] + EOS
    # and by the token budget, observations included
    for r in ev.run_policy("workflow", model, tok, prompts, questions, bm25, **{**kw, "max_new_tokens": 60}):
        assert len(r.completion) == 60 and r.finish == "length" and r.n_tool_calls == 1


def test_rag_injects_one_observation_for_the_question(tok, model, rows, bm25):
    batch = rows[:3]
    tool = RecordingTool(bm25)
    s, recs = ev.evaluate(model, tok, batch, "rag", tool, max_new_tokens=400, topk=1)
    assert tool.calls == [[r["question"] for r in batch]] and s["overall"]["searches"] == 1.0
    prompts = [ev.common.encode_prompt(tok, r["question"]) for r in batch]
    rolls = ev.run_policy("rag", model, tok, prompts, [r["question"] for r in batch], bm25, max_new_tokens=400, topk=1)
    for row, rec, r in zip(batch, recs, rolls):
        obs = tok.encode(env.format_observation(bm25.search([row["question"]], 1)[0]).lstrip("\n"))  # no blank line
        assert r.completion[:len(obs)] == obs and r.policy_mask[:len(obs)] == [0] * len(obs)  # the context
        assert set(r.policy_mask[len(obs):]) <= {1} and rec["text"] == r.text
        assert r.text.startswith(f"{TAGS.result_open} result 1: ") and len(r.completion) <= 400
        assert rec["n_tool_calls"] == rec["n_actions"] == 1


def test_none_policy_never_searches_and_records_every_field(tok, model, rows):
    s, recs = ev.evaluate(model, tok, rows[:4], "none", None, batch_size=3, max_new_tokens=12)
    assert len(recs) == 4 and s["overall"]["n"] == 4 and s["overall"]["searches"] == 0.0
    for rec, row in zip(recs, rows):
        assert {"id", "question", "answers", "hops", "prediction", "em", "f1", "n_actions", "n_tool_calls",
                "text"} <= set(rec) and rec["id"] == row["id"] and rec["n_tool_calls"] == 0


# ----------------------------------------------------------------------------- the command line


def test_cli_writes_trajectories_summary_and_plot(tmp_path, tok, model, world_dir):
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(str(ckpt))
    tok.save(str(ckpt))
    out = tmp_path / "eval" / "run.jsonl"
    ev.main(["--ckpt", str(ckpt), "--policy", "none", "rag", "workflow", "--data", world_dir, "--limit", "3",
             "--max-new-tokens", "10", "--topk", "1", "--out", str(out), "--device", "cpu",
             "--html", str(tmp_path / "eval" / "run.html")])
    recs = [json.loads(line) for line in open(out)]
    assert [r["policy"] for r in recs] == ["none"] * 3 + ["rag"] * 3 + ["workflow"] * 3
    assert all(len(r["completion_ids"]) == len(ev.viewer.expand(r["writers"])) <= 10 for r in recs)
    page = (tmp_path / "eval" / "run.html").read_text()
    assert page.count("<section>") == 9 and '<span class="t"' in page  # rag's observations
    assert len({r["id"] for r in recs}) == 3  # evenly spaced over the split
    summary = json.load(open(tmp_path / "eval" / "run.summary.json"))
    assert [s["name"] for s in summary["summaries"]] == ["ckpt:none", "ckpt:rag", "ckpt:workflow"]
    assert summary["summaries"][1]["overall"]["searches"] == 1.0
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "eval" / "run.png").stat().st_size > 0
    else:
        assert not (tmp_path / "eval" / "run.png").exists()
    ev.main(["--report", str(tmp_path / "eval" / "run.summary.json"), "--out", str(tmp_path / "all.jsonl")])


def test_no_tool_prompt_leaves_out_the_tools_instruction(tok):
    """policy none prompts as the paper's direct inference: the question without the tool's instruction;
    every other policy with it."""
    q = "What is the capital of Nowhere?"
    with_tool, without = (tok.decode(ev.common.encode_prompt(tok, q, tool=t)) for t in (True, False))
    assert env.INSTRUCTION in with_tool and env.INSTRUCTION not in without
    assert q in without and without.endswith(f"{env.TAGS.think_open}\n")
