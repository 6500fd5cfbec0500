"""data/distill.py on real tokenizers and scripted teachers, no model: a continuation cut inside a character,
--pairs-per-question per direction, and the /v1/completions endpoint with the prompt rendered here (checked
against tokenizer.Tokenizer.agent_prompt on the real Qwen BPE; tests/qwen_standin.py)."""
import json
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import env
import sample
from data import distill
from qwen_standin import tokenizer_dir
from tokenizer import Tokenizer

QUESTION = "Which magazine was started first, Arthur's Magazine or First for Women?"
ANSWER = "Arthur's Magazine"
CORPUS = [{"id": "a", "contents": "\"Arthur's Magazine\"\nArthur's Magazine was started in 1844."},
          {"id": "b", "contents": "\"First for Women\"\nFirst for Women was started in 1989."}]


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Tokenizer folders (tokenizer.json, tokenizer_config.json, generation_config.json) of R1-Distill and of
    Qwen2.5-Instruct, with the real Qwen BPE."""
    return {f: tokenizer_dir(tmp_path_factory.mktemp(f), f) for f in ("r1", "chatml")}


def args(**kw):
    base = dict(samples=2, branches=1, per_question=1, cot_per_question=1, cot_ratio=5, pairs_per_question=2, seed=0,
                batch_size=16, max_new_tokens=8, max_actions=3, temperature=1.0, topk=1, teacher_model="t",
                teacher_template=None, timeout=30)
    return types.SimpleNamespace(**{**base, **kw})


def test_a_cut_continuation_ends_on_a_whole_character(templates, monkeypatch):
    """The sampler's budget may stop inside a character whose UTF-8 bytes span several byte-level tokens: the
    checkpoint teacher's text ends on the last whole one, never in U+FFFD (the reported rejected continuation)."""
    tok = Tokenizer.from_pretrained(templates["r1"])
    text = "I remember that it is 東京 🦜"
    ids = tok.encode(text)
    cuts = [k for k in range(1, len(ids) + 1) if tok.decode(ids[:k]).endswith("\ufffd")]
    assert cuts, "the test needs a character split over tokens"
    for k in cuts:
        kept = distill.whole_chars(tok, ids[:k])
        assert text.startswith(tok.decode(kept)) and "\ufffd" not in tok.decode(kept)
        assert len(tok.decode(kept)) >= len(tok.decode(ids[:k])) - 2  # only the split character goes
    assert distill.whole_chars(tok, ids) == ids
    k = cuts[-1]

    def fake_sample(model, tok_, prompts, **kw):  # a rollout stopped by its budget at token k
        return [types.SimpleNamespace(completion=ids[:k], policy_mask=[1] * k, finish="length") for _ in prompts]
    monkeypatch.setattr(sample, "sample", fake_sample)
    teacher = distill.CheckpointTeacher.__new__(distill.CheckpointTeacher)
    teacher.tok, teacher.tool, teacher.args, teacher.model = tok, None, args(), None
    (segs,) = teacher.continue_([(QUESTION, "")], seed=0)
    assert "".join(s["text"] for s in segs) == tok.decode(distill.whole_chars(tok, ids[:k]))
    assert not "".join(s["text"] for s in segs).endswith("\ufffd")


class Teacher:
    """A scripted teacher: from the root, even samples search (each in its own words) and answer right, odd ones
    recall a wrong answer; from a right trajectory's concluding line it searches needlessly and answers wrong (a
    decision point of direction "answer"); from any other prefix it recalls wrongly (a "search" point's
    rejected step)."""

    def __init__(self):
        self.calls = []

    def continue_(self, items, seed):
        out, obs = [], env.format_observation(CORPUS[:1])
        model = lambda text: {"text": text, "tool": False}  # noqa: E731
        for n, (question, prefix) in enumerate(items):
            self.calls.append(prefix)
            if prefix.endswith("The result names it.\n"):
                out.append([model(f"Let me check {seed % 97}-{n}. <begin_search> Women </end_search>"),
                            {"text": obs, "tool": True}, model("So it is Paris.\n</think>\n\n\\boxed{Paris}")])
            elif prefix or (seed + n) % 2:
                out.append([model(f"I recall it is Paris {seed % 97}-{n}.\n</think>\n\n\\boxed{{Paris}}")])
            else:
                out.append([model(f"Let me search {n}. <begin_search> Arthur's Magazine </end_search>"),
                            {"text": obs, "tool": True},
                            model(f"The result names it.\nSo the answer is {ANSWER}.\n</think>\n\n"
                                  f"\\boxed{{{ANSWER}}}")])
        return out


@pytest.mark.parametrize("n", [1, 2])
def test_pairs_per_question_leaves_room_for_answer_pairs(n):
    """--pairs-per-question N keeps up to N pairs of each direction: the first step (a search) no longer fills the
    quota, so the concluding line's needless search is paired too; a full direction samples no more branches."""
    questions = [{"id": "q", "question": QUESTION, "answers": [ANSWER]}]
    teacher = Teacher()
    stage2, pairs, counts = distill.distill(questions, [teacher], args(samples=4, branches=2, pairs_per_question=n))
    assert [r["kind"] for r in stage2] == ["tool"] and counts["right"] == 2
    assert (counts["pairs_search"], counts["pairs_answer"]) == (n, n)
    for p in pairs:
        if p["direction"] == "answer":
            assert p["chosen"] == f"So the answer is {ANSWER}.\n" and p["rejected"].startswith("Let me check")
            assert p["prefix"].startswith("Let me search 0.") and p["prefix"].endswith("The result names it.\n")
        else:
            assert p["prefix"] == "" and p["chosen"].startswith("Let me search 0.") and "Paris" in p["rejected"]
    # 4 root samples, then 2 branches at the first right trajectory's root; its concluding line 2 more. The second
    # right trajectory's decision points find both directions full: no branch is sampled for them
    assert len(teacher.calls) == 4 + 2 + 2 and teacher.calls.count("") == 6


class CompletionsTeacher(BaseHTTPRequestHandler):
    """/v1/completions: raw continuation of `prompt`, which must be our rendered prompt + the text so far. Searches
    first, answers right once the prompt holds a result; never writes the stop string, as a real server."""
    prompts = []
    expected = None

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/completions" and "messages" not in body and body["stop"] == [env.TAGS.search_close]
        prompt = body["prompt"]
        CompletionsTeacher.prompts.append(prompt)
        assert prompt.startswith(CompletionsTeacher.expected)
        if env.TAGS.result_close in prompt[len(CompletionsTeacher.expected):]:  # the instruction names the tags too
            text = f"So the answer is {ANSWER}.\n</think>\n\n\\boxed{{{ANSWER}}}"
        else:
            text = f"Let me search. {env.TAGS.search_open} Arthur's Magazine "
        out = json.dumps({"choices": [{"text": text, "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.mark.parametrize("flavour", ["r1", "chatml"])
def test_completions_endpoint_renders_the_prompt_itself(flavour, templates, tmp_path):
    """A teacher URL ending /v1/completions: the prompt is the checkpoint's own agent prompt (Tokenizer.agent_prompt
    from the same tokenizer_config.json), less the bos the server's tokenizer adds (R1-Distill's add_bos_token),
    and the trajectory comes back as segments with the tool's exact observation."""
    tok = Tokenizer.from_pretrained(templates[flavour])
    ours = tok.agent_prompt(QUESTION, env.INSTRUCTION)
    want = ours[len("<｜begin▁of▁sentence｜>"):] if flavour == "r1" else ours
    assert ours.startswith("<｜begin▁of▁sentence｜>") == (flavour == "r1") and ours.endswith("<think>\n")
    config = json.load(open(f"{templates[flavour]}/tokenizer_config.json"))
    assert distill.completion_prompt(config, QUESTION) == want
    (tmp_path / "q.jsonl").write_text(json.dumps({"id": "q", "question": QUESTION, "answers": [ANSWER]}) + "\n")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CORPUS))
    server = ThreadingHTTPServer(("127.0.0.1", 0), CompletionsTeacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/completions"
    CompletionsTeacher.expected, CompletionsTeacher.prompts = want, []
    common = ["sample", "--questions", str(tmp_path / "q.jsonl"), "--search", str(tmp_path / "corpus.jsonl"),
              "--teacher", url, "--out", str(tmp_path / "out"), "--samples", "1", "--branches", "1", "--topk", "1"]
    try:
        with pytest.raises(SystemExit, match="pass --teacher-template DIR, a directory with the teacher's "
                                             "tokenizer_config.json"):
            distill.main(common)
        distill.main(common + ["--teacher-template", templates[flavour]])
    finally:
        server.shutdown()
    (row,) = [json.loads(x) for x in open(tmp_path / "out" / "stage2.jsonl")]
    obs = env.format_observation(env.BM25Search(CORPUS).search(["Arthur's Magazine"], 1)[0])
    assert row["segments"] == [
        {"text": "Let me search. <begin_search> Arthur's Magazine </end_search>", "tool": False},
        {"text": obs, "tool": True},
        {"text": f"So the answer is {ANSWER}.\n</think>\n\n\\boxed{{{ANSWER}}}", "tool": False}]
    assert CompletionsTeacher.prompts[:2] == [want, want + row["segments"][0]["text"] + obs]
