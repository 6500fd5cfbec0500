"""The real path, end to end, on realistic stand-ins (tests/qwen_standin.py: a tiny random Qwen2 with the real
Qwen BPE, R1-Distill's tokens and template; and a ChatML one): a HotpotQA-format file -> data/convert.py ->
data/distill.py (the stand-in as a checkpoint teacher, and a scripted OpenAI-compatible teacher that acts
correctly) -> SFT-1/2/3 -> GRPO (a simulated step, then a real one against `python env.py serve`) -> eval ->
the result loads in transformers (in its own process: tests/hf_oracle.py) with the same chat template. One
step of each: what is checked is the plumbing (formats, files, ids), not learning."""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import torch

import checkpoints
import common
import env
import eval as eval_script
import grpo
import hf_oracle
import sample
import sft_coa
import sft_contrastive
from data import convert, distill
from model import Qwen2
from tokenizer import EMBEDDED_TEMPLATE, Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", AUTOCOA_KERNELS="torch")
ARTHUR = ["Arthur's Magazine", ["Arthur's Magazine was an American literary periodical.", " It started in 1844.",
                                " It was edited by T. S. Arthur."]]
WOMEN = ["First for Women", ["First for Women is a woman's magazine.", " It started in 1989."]]
TSA = ["T. S. Arthur", ["Timothy Shay Arthur was an American writer.", " He edited Arthur's Magazine."]]
HOTPOT = [
    {"_id": "5a7a06935542990198eaf050", "question": "Which magazine was started first, Arthur's Magazine or First "
     "for Women?", "answer": "Arthur's Magazine", "type": "comparison", "level": "medium",
     "supporting_facts": [["Arthur's Magazine", 1], ["First for Women", 1]], "context": [ARTHUR, WOMEN]},
    {"_id": "5a879ab05542996e4f30887e", "question": "Who edited the periodical that started in 1844?",
     "answer": "T. S. Arthur", "type": "bridge", "level": "hard",
     "supporting_facts": [["Arthur's Magazine", 2], ["T. S. Arthur", 0]], "context": [ARTHUR, TSA, WOMEN]},
]
BAUER = ["Bauer Media Group", ["Bauer Media Group is a German media company.", " It publishes First for Women."]]
MORE = [  # two more, for files of four questions (tests/test_real_docs.py)
    {"_id": "5ab3b0bf5542992ade7c6e39", "question": "Which German company publishes First for Women?",
     "answer": "Bauer Media Group", "type": "bridge", "level": "easy",
     "supporting_facts": [["Bauer Media Group", 1], ["First for Women", 0]], "context": [WOMEN, BAUER, ARTHUR]},
    {"_id": "5a8b57f25542995d1e6f1371", "question": "Which magazine was started later, Arthur's Magazine or First "
     "for Women?", "answer": "First for Women", "type": "comparison", "level": "medium",
     "supporting_facts": [["First for Women", 1], ["Arthur's Magazine", 1]], "context": [ARTHUR, WOMEN]},
]
QUERY = {r["question"]: r["supporting_facts"][0][0] for r in HOTPOT + MORE}
ANSWER = {r["question"]: r["answer"] for r in HOTPOT + MORE}


class ScriptedTeacher(BaseHTTPRequestHandler):
    """/v1/chat/completions that acts correctly on even seeds (searches the gold paragraph's title, then answers
    right once it has read the result) and recalls a wrong answer on odd ones. It continues a partial assistant
    message (continue_final_message) and never writes the stop string, as a real server."""
    requests = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ScriptedTeacher.requests.append(body)
        question = body["messages"][0]["content"].split("\n")[-1]
        partial = body["messages"][-1]["content"] if body.get("continue_final_message") else ""
        assert body["stop"] == [env.TAGS.search_close] and (not partial or partial.startswith("<think>\n"))
        if env.TAGS.result_close in partial:
            a = ANSWER[question]
            text = f"The result names {a}.\nSo the answer is {a}.\n</think>\n\n\\boxed{{{a}}}"
        elif body["seed"] % 2 == 0:
            text = f"Let me search. {env.TAGS.search_open} {QUERY[question]} "
        else:
            text = "I recall that the answer is Paris.\n</think>\n\n\\boxed{Paris}"
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": text},
                                       "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    data = tmp_path_factory.mktemp("hotpotqa")
    src = data / "hotpot_train.json"
    src.write_text(json.dumps(HOTPOT))
    for split in ("train", "rl", "dev", "test"):
        convert.main(["hotpotqa", str(src), "--out", str(data), "--split", split])
    teacher = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedTeacher)
    threading.Thread(target=teacher.serve_forever, daemon=True).start()
    search = subprocess.Popen([sys.executable, "env.py", "serve", "--corpus", str(data / "corpus.jsonl"),
                               "--port", "0"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    line = ""
    while "serving on" not in line:
        line = search.stdout.readline()
        assert line, "env.py serve exited"
    yield data, f"http://127.0.0.1:{teacher.server_address[1]}", line.split("serving on ")[1].strip()
    teacher.shutdown()
    search.terminate()
    search.wait()


@pytest.fixture(scope="module")
def r1(standins):  # standins: tests/conftest.py
    return standins["r1"]


def test_convert_keeps_one_corpus(servers):
    data, _, _ = servers
    corpus = [json.loads(line) for line in open(data / "corpus.jsonl")]
    assert [c["id"] for c in corpus] == ["hotpotqa-train-0", "hotpotqa-train-1", "hotpotqa-train-2"]
    test = [json.loads(line) for line in open(data / "test.jsonl")]
    assert test[1]["gold_ids"] == ["hotpotqa-train-0", "hotpotqa-train-2"]


@pytest.fixture(scope="module")
def distilled(servers, r1):
    """data/distill.py sample on train.jsonl from both teachers, the stand-in (a checkpoint teacher) and the scripted
    one (a URL): the SFT files of the stages below."""
    data, teacher, _ = servers
    out = data / "distilled"
    distill.main(["sample", "--questions", str(data / "train.jsonl"), "--teacher", r1, "--teacher", teacher,
                  "--search", str(data / "corpus.jsonl"), "--out", str(out), "--samples", "2", "--branches", "1",
                  "--max-new-tokens", "12", "--temperature", "1.0", "--pairs-per-question", "4"])
    return out


def test_distill_and_import(servers, distilled):
    """Sampling from both teachers: the scripted one's right trajectory is kept with the real tool's exact
    observation; stage-1 pairs oppose its search to the wrong recalls (its own and the stand-in's) from the
    same (empty) prefix. Importing the kept rows as chat messages gives the same segments back."""
    data, out = servers[0], distilled
    stage2 = [json.loads(line) for line in open(out / "stage2.jsonl")]
    stage1 = [json.loads(line) for line in open(out / "stage1.jsonl")]
    meta = json.load(open(out / "distill.json"))
    assert meta["samples"] == 2 * 2 * 2 and meta["right"] == 2 and (meta["tool"], meta["cot"]) == (2, 0)
    bm25 = env.BM25Search.from_jsonl(str(data / "corpus.jsonl"))
    for row, q in zip(stage2, HOTPOT):
        assert row["kind"] == "tool" and row["answers"] == [q["answer"]] and row["question"] == q["question"]
        model1, obs, model2 = row["segments"]
        assert model1 == {"text": f"Let me search. <begin_search> {QUERY[q['question']]} </end_search>", "tool": False}
        assert obs == {"text": env.format_observation(bm25.search([QUERY[q["question"]]], 3)[0]), "tool": True}
        assert model2["text"].endswith(f"\\boxed{{{q['answer']}}}")
        assert env.reward("".join(s["text"] for s in row["segments"]), row["answers"]) == 1.0
    assert len(stage1) >= 4 and {p["direction"] for p in stage1} == {"search"}
    for p in stage1:  # chosen: the scripted search; rejected: a recall that failed (the stand-in's count too)
        assert p["prefix"] == "" and p["chosen"].startswith("Let me search. <begin_search>")
        assert env.TAGS.search_open not in p["rejected"]
    recalls = [p["question"] for p in stage1 if p["rejected"] == "I recall that the answer is Paris.\n"]
    assert sorted(recalls) == sorted(q["question"] for q in HOTPOT)  # once per question: the same failed step is not paired twice
    # import: the kept trajectories written as chat messages, once with the observation inside the assistant text
    # and once as a tool message, read back to the same segments
    chat = out / "chat.jsonl"
    with open(chat, "w") as f:
        for row in stage2:
            user = {"role": "user", "content": f"{env.INSTRUCTION}\n{row['question']}"}
            s = row["segments"]
            f.write(json.dumps({"messages": [user, {"role": "assistant", "content": "<think>\n" +
                                                    "".join(x["text"] for x in s)}]}) + "\n")
            f.write(json.dumps({"messages": [user, {"role": "assistant", "content": s[0]["text"]},
                                             {"role": "tool", "content": s[1]["text"]},
                                             {"role": "assistant", "content": s[2]["text"]}]}) + "\n")
    distill.main(["import", str(chat), "--out", str(out), "--name", "imported.jsonl"])
    imported = [json.loads(line) for line in open(out / "imported.jsonl")]
    for i, row in enumerate(imported):
        want = stage2[i // 2]
        assert {k: row[k] for k in ("question", "answers", "kind", "segments")} == \
            {k: want[k] for k in ("question", "answers", "kind", "segments")}
    chat.write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(ValueError, match=r"chat.jsonl:1: needs a user message followed by"):
        distill.import_chat(str(chat))


@pytest.fixture(scope="module")
def trained(servers, standins, distilled, tmp_path_factory):
    """One step of each stage on the stand-ins, each as its main() in this process (a Python start would cost more
    than the step; tests/test_real_docs.py, in the slow set, runs them as processes): the R1 one through SFT-1 ->
    SFT-2 -> SFT-3 -> GRPO (sim, then real) -> eval -> sample.py, the ChatML one through SFT-2 alone. Then what
    transformers reads of both results, in one oracle process (ordinary_jobs).
    -> {"dir": the runs' folder, "out": {step: what it printed}, "r1" and "chatml": (checkpoint, oracle results)}."""
    data, teacher, search = servers
    d, tmp = distilled, tmp_path_factory.mktemp("trained")
    for f in ("rl", "dev", "test", "corpus"):
        (d / f"{f}.jsonl").write_bytes((data / f"{f}.jsonl").read_bytes())
    tiny = ["--steps", 1, "--batch-size", 2, "--warmup", 1, "--threads", 1, "--max-len", 256, "--data", d]
    out = {}

    def run(name, module, *args):
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()) as printed:
            stage(module, mp, *args)
        out[name] = printed.getvalue()
    run("sft1", sft_contrastive, "--init", standins["r1"], "--out", tmp / "sft1", *tiny)
    run("sft2", sft_coa, "--mask-obs", "--init", tmp / "sft1", "--out", tmp / "sft2", *tiny)
    run("sft3", sft_coa, "--init", tmp / "sft2", "--out", tmp / "sft3", *tiny)
    run("rl", grpo, "--init", tmp / "sft3", "--out", tmp / "rl", "--sim-ratio", 1, "--group-size", 2,
        "--max-new-tokens", 16, "--val-prompts", 0, "--search", search, "--trainable", ".", "--lr", "1e-4",
        "--steps", 2, "--batch-size", 2, "--threads", 1, "--data", d)
    run("eval", eval_script, "--ckpt", tmp / "rl", "--data", d, "--search", search, "--limit", 2,
        "--max-new-tokens", 16, "--out", tmp / "eval.jsonl")
    run("sample", sample, "--ckpt", tmp / "rl", "--prompt", HOTPOT[0]["question"], "--search-url", search,
        "--max-new-tokens", 4)  # --ckpt follows the `latest` pointer, as the stages do
    run("chatml", sft_coa, "--mask-obs", "--init", standins["chatml"], "--data", d, "--out", tmp / "chatml-sft2",
        "--steps", 1, "--batch-size", 2, "--warmup", 1, "--threads", 1, "--max-len", 256)
    ckpts = {"r1": checkpoints.latest_checkpoint(str(tmp / "rl")),
             "chatml": checkpoints.latest_checkpoint(str(tmp / "chatml-sft2"))}
    jobs = {k: ordinary_jobs(ckpt, standins[k]) for k, ckpt in ckpts.items()}
    results = iter(hf_oracle.batch([job for k in jobs for job in jobs[k]]))
    return {"dir": tmp, "out": out, **{k: (ckpt, [next(results) for _ in jobs[k]]) for k, ckpt in ckpts.items()}}


def test_r1_pipeline_to_transformers(trained, distilled, r1):
    """SFT-1 -> SFT-2 -> SFT-3 -> GRPO (sim, then real) -> eval on the R1 stand-in (trained); the result is an
    ordinary HF checkpoint: AutoModelForCausalLM and AutoTokenizer read it, and its chat template renders our prompt."""
    n = len(open(distilled / "stage1.jsonl").readlines())
    assert f"{n} pairs: search {n}, answer 0" in trained["out"]["sft1"]
    metrics = [json.loads(line) for line in open(trained["dir"] / "rl" / "metrics.jsonl")]
    assert [m["mode"] for m in metrics if "mode" in m] == ["sim", "real"]
    assert len(open(trained["dir"] / "eval.jsonl").readlines()) == 2
    assert "=== " + HOTPOT[0]["question"] in trained["out"]["sample"]
    assert_ordinary_checkpoint(*trained["r1"], r1)


def ordinary_jobs(ckpt, source):
    """What assert_ordinary_checkpoint asks transformers: AutoModelForCausalLM's logits on our agent prompt for ckpt,
    and AutoTokenizer's reading of ckpt (rendering that prompt's messages) and of `source`."""
    ours = Tokenizer.from_pretrained(ckpt)
    prompt = ours.encode(ours.agent_prompt(HOTPOT[0]["question"], env.INSTRUCTION))
    messages = [{"role": "user", "content": f"{env.INSTRUCTION}\n{HOTPOT[0]['question']}"}]
    return [dict(task="logits", path=ckpt, ids=[[prompt]], dtype="float32"),
            dict(task="tokenizer", path=ckpt, conversations={"agent": messages}),
            dict(task="tokenizer", path=source)]


def assert_ordinary_checkpoint(ckpt, results, source):
    """transformers reads ckpt with the ids, special tokens and template of `source`, and our prompt is its own;
    AutoModelForCausalLM loads it and its logits on that prompt are ours (results: of ordinary_jobs(ckpt, source))."""
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert os.path.isfile(os.path.join(ckpt, name)), name
    ours = Tokenizer.from_pretrained(ckpt)
    prompt = ours.encode(ours.agent_prompt(HOTPOT[0]["question"], env.INSTRUCTION))
    model, theirs, orig = results
    with torch.no_grad():
        logits = Qwen2.from_pretrained(ckpt, dtype=torch.float32).eval()(torch.tensor([prompt]))
    assert (logits - model["logits"][0]).abs().max().item() <= 1e-4
    keys = ("len", "bos_token_id", "eos_token_id", "pad_token_id", "chat_template")
    assert [theirs[k] for k in keys] == [orig[k] for k in keys]
    ids = theirs["ids"]["agent"]
    assert prompt == ids or prompt == ids + ours.encode("<think>\n")
    with open(os.path.join(source, "generation_config.json")) as f, \
            open(os.path.join(ckpt, "generation_config.json")) as g:
        assert json.load(f) == json.load(g)


def test_chatml_sft_to_transformers(trained, distilled, standins):
    """A ChatML (Qwen2.5-Instruct) stand-in through SFT-2 (trained): trajectories end with its eos, <|im_end|>, and
    the saved checkpoint keeps its template for transformers."""
    src = standins["chatml"]
    tok = Tokenizer.from_pretrained(src)
    row = json.loads(open(distilled / "stage2.jsonl").readline())
    ids, mask = sft_coa.encode_trajectory(tok, row, mask_obs=True, max_len=10_000)
    assert ids[-1] == tok.token_id("<|im_end|>") == 151645 and mask[-1] == 1
    assert tok.decode(ids).startswith("<|im_start|>system\nYou are Qwen")
    assert_ordinary_checkpoint(*trained["chatml"], src)


def test_init_without_data_is_an_error(r1, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="^" + re.escape(f"--init {r1} needs --data")):
        stage(sft_coa, monkeypatch, "--init", r1, "--out", tmp_path / "x")
    assert not os.path.exists(tmp_path / "x")


# ============================================================================= real data, as a new user gives it
# Each stage decides from what --data and --init ARE whether it runs on the embedded world (its tuned settings,
# its default checkpoints built on demand) or on real data (the paper's settings, every start given).

@pytest.fixture
def real(tmp_path):
    """A directory of real-data files (none of the world's): question splits, a corpus, SFT files."""
    d = tmp_path / "hotpotqa"
    d.mkdir()
    src = tmp_path / "hotpot.json"
    src.write_text(json.dumps(HOTPOT + MORE))
    for split in ("rl", "dev", "test"):
        convert.main(["hotpotqa", str(src), "--out", str(d), "--split", split])
    obs = env.format_observation([{"id": "1", "contents": '"T"\nA text.'}])
    traj = [{"question": q["question"], "answers": [q["answer"]], "kind": "tool",
             "segments": [{"text": "Let me search. <begin_search> T </end_search>", "tool": False},
                          {"text": obs, "tool": True},
                          {"text": f"So the answer is {q['answer']}.\n</think>\n\n\\boxed{{{q['answer']}}}",
                           "tool": False}]}
            for q in HOTPOT]
    (d / "stage2.jsonl").write_text("".join(json.dumps(t) + "\n" for t in traj))
    return d


@pytest.fixture
def no_build(monkeypatch):
    """pipeline.py --build (checkpoints.ensure's subprocess) and any model load fail the test."""
    def refuse(*a, **k):
        raise AssertionError(f"started {a[:1]}: nothing may be built or loaded here")
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(common, "load_model", refuse)
    monkeypatch.setattr(common.Qwen2, "from_pretrained", refuse)


def stage(module, monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", [module.__name__ + ".py", *map(str, args)])
    return module.main()


def test_only_the_worlds_default_outputs_are_built(monkeypatch, tmp_path):
    """checkpoints.ensure builds a default output of the embedded world by what the path IS (the repository's
    runs/world, runs/base, ...), never a relative `runs/...` of the user's (the reported CalledProcessError)."""
    import pipeline
    assert checkpoints.DEFAULT_OUTPUTS == tuple(pipeline.DEFAULT_CHAIN)  # what `pipeline.py --build` can make
    built = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: built.append((cmd[1:], k["cwd"])))
    run_ = types.SimpleNamespace(distributed=False, print=lambda *a: None)
    monkeypatch.chdir(ROOT)
    assert checkpoints.default_output("runs/world") == "runs/world" == checkpoints.default_output(ROOT + "/runs/world/")
    for path in ("runs/hotpotqa", "runs/sft1x", str(tmp_path / "runs/world"), str(tmp_path / "runs/base")):
        assert checkpoints.default_output(path) is None
        checkpoints.ensure(path, run_)
    assert built == []
    monkeypatch.chdir(tmp_path)  # elsewhere, runs/world is another folder; the defaults are the repository's
    assert checkpoints.default_output("runs/world") is None
    assert checkpoints.default_path("runs/sft1") == os.path.relpath(os.path.join(ROOT, "runs/sft1"))
    monkeypatch.setattr(checkpoints, "have", lambda path: False)
    checkpoints.ensure(checkpoints.default_path("runs/sft1"), run_)
    assert built == [(["pipeline.py", "--build", "runs/sft1"], ROOT)]


@pytest.mark.parametrize("script, extra", [(sft_contrastive, []), (sft_coa, ["--mask-obs"]), (grpo, [])])
def test_real_data_without_init_is_refused_not_built(script, extra, real, tmp_path, monkeypatch, capsys, no_build):
    """--data on real data without --init: one line naming --init, before anything starts (the reported pretraining
    of the toy base model on real data); a copy of the world elsewhere is no default either."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^--data hotpotqa is not the embedded world: pass --init with the checkpoint "
                                         r"to start from \(the embedded world's runs/base, runs/sft1, runs/sft2, "
                                         r"runs/sft3 are only the defaults on runs/world\)$"):
        stage(script, monkeypatch, *extra, "--data", "hotpotqa", "--out", "out")
    (real / "world.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"^--data hotpotqa is not the embedded world's runs/world: pass --init"):
        stage(script, monkeypatch, *extra, "--data", "hotpotqa", "--out", "out")
    assert not (tmp_path / "out").exists() and "[prerequisite]" not in capsys.readouterr().out


def test_eval_needs_data_for_a_real_checkpoint(r1, real, tmp_path, monkeypatch, no_build):
    """eval.py --ckpt REAL without --data: one line asking for it (it was scored on the embedded world, or failed
    on runs/world/test.jsonl); a checkpoint of the world's (its tokenizer has the world's chat format) still
    defaults to runs/world."""
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit, match=rf"^--ckpt {r1} is not a checkpoint of the embedded world .*: pass --data, "
                                         r"the directory of the questions .*--split test`\)$"):
        eval_script.main(["--ckpt", r1])
    assert not common.world_checkpoint(r1)
    world = tmp_path / "world-ckpt"
    world.mkdir()
    (world / "config.json").write_text("{}")
    assert common.world_checkpoint(str(world))  # no tokenizer_config.json: the world's (tokenizer.py)
    (world / "tokenizer_config.json").write_text(json.dumps({"chat_template": EMBEDDED_TEMPLATE}))
    assert common.world_checkpoint(str(world))
    seen = []
    monkeypatch.setattr(common, "load_for_sampling", lambda args, *a: seen.append(args.data) or sys.exit(0))
    with pytest.raises(SystemExit):
        eval_script.main(["--ckpt", str(world), "--policy", "none", "--out", str(tmp_path / "e.jsonl")])
    assert seen == ["runs/world"]
    with pytest.raises(SystemExit):
        eval_script.main(["--ckpt", r1, "--data", str(real), "--policy", "none", "--out", str(tmp_path / "e.jsonl")])
    assert seen[-1] == str(real)


@pytest.mark.parametrize("script, args, file, how", [
    (grpo, [], "dev.jsonl", r"python -m data.convert DATASET FILE --out {d} --split dev`.*; or --val-prompts 0 to "
                            r"train without validation"),
    (grpo, ["--val-prompts", 0], "corpus.jsonl", r"python -m data.convert DATASET FILE --out {d} --split SPLIT`"),
    (grpo, [], "rl.jsonl", r"python -m data.convert DATASET FILE --out {d} --split rl`"),
    (sft_contrastive, [], "stage1.jsonl", r"python -m data.distill sample --questions {d}/train.jsonl --search "
                                          r"{d}/corpus.jsonl --teacher CHECKPOINT_OR_URL --out {d}`"),
    (sft_coa, ["--file", "workflow.jsonl"], "workflow.jsonl", r"the workflow baseline's trajectories, which only the "
                                                              r"embedded world has"),
])
def test_a_missing_file_names_the_command_that_makes_it(script, args, file, how, r1, real, monkeypatch, tmp_path,
                                                        no_build):
    """The reported FileNotFoundError traceback: now one line naming the file and its command, before any model."""
    if (real / file).exists():
        (real / file).unlink()
    d = re.escape(str(real))
    with pytest.raises(SystemExit, match=rf"^{d}/{re.escape(file)} is missing: .*{how.format(d=d)}"):
        stage(script, monkeypatch, "--init", r1, "--data", real, "--out", tmp_path / "out", *args)
    (real / "test.jsonl").unlink()
    with pytest.raises(SystemExit, match=rf"^{d}/test.jsonl is missing: .*--out {d} --split test`"):
        eval_script.main(["--ckpt", r1, "--data", str(real), "--policy", "none", "--out", str(tmp_path / "e.jsonl")])


@pytest.mark.parametrize("script, names", [(sft_contrastive, ["stage1.jsonl"]), (sft_coa, ["stage2.jsonl", "--file"]),
                                           (grpo, ["rl.jsonl", "dev.jsonl", "--val-prompts 0"]),
                                           (eval_script, ["test.jsonl", "<split>.jsonl"])])
def test_help_names_the_files_and_shows_the_defaults_that_run(script, names, r1, real, monkeypatch, capsys):
    """--help says which files a stage reads, and its defaults are the ones that will run for the --data and --init
    given: the embedded world's (lr 0.0003 for SFT-1) without them, the paper's (5e-06) with real data."""
    monkeypatch.chdir(ROOT)

    def helptext(*args):
        with pytest.raises(SystemExit):
            if script is eval_script:
                script.main(["--help", *map(str, args)])
            else:
                stage(script, monkeypatch, "--help", *args)
        return " ".join(capsys.readouterr().out.split())
    text = helptext()
    assert all(n in text for n in names), names
    if script is sft_contrastive:
        assert "--lr LR peak learning rate (default: 0.0003)" in text and "(default: 56)" in text
        text = helptext("--data", real, "--init", r1)
        assert "--lr LR peak learning rate (default: 5e-06)" in text
        assert "--steps STEPS optimizer steps (None: from --epochs) (default: None)" in text
        assert "(default: 2)" in text


def test_steps_from_epochs_and_warmup_within_them(capsys):
    """Real data: --steps is --epochs passes over the file (the paper's 2 epochs of 1.5k pairs at 16 = 188, of 6k
    trajectories at 32 = 375); a warm-up longer than the run is cut to it, saying so."""
    run_ = types.SimpleNamespace(print=print)
    for rows, batch, steps in ((1500, 16, 188), (6000, 32, 375), (4608, 48, 96), (3, 16, 1)):
        args = types.SimpleNamespace(steps=None, epochs=2 if batch != 48 else 1, batch_size=batch, warmup=10)
        common.settle_schedule(args, rows, "rows", run_)
        assert (args.steps, args.warmup) == (steps, min(10, steps))
    out = capsys.readouterr().out
    assert "[schedule] --steps 188: 2 epochs of 1500 rows at --batch-size 16, ceil(2 x 1500 / 16)" in out
    assert "[schedule] --warmup 10 is more than --steps 1: warming up over 1 steps instead" in out
    args = types.SimpleNamespace(steps=5, epochs=2, batch_size=4, warmup=0)
    common.settle_schedule(args, 1000, "rows", run_)
    assert args.steps == 5  # --steps given: kept


def test_a_real_run_trains_its_epochs(r1, real, tmp_path, monkeypatch, capsys):
    """sft_coa.py on real data with no --steps: 1 epoch of 2 trajectories at batch 2 is 1 step, printed and saved
    (args.json), the warm-up cut to it; --steps with --epochs is refused. (Its main() in this process: one step.)"""
    stage(sft_coa, monkeypatch, "--mask-obs", "--init", r1, "--data", real, "--out", tmp_path / "s2", "--epochs", 1,
          "--batch-size", 2, "--threads", 1, "--max-len", 256)
    out = capsys.readouterr().out
    assert "[schedule] --steps 1: 1 epochs of 2 trajectories at --batch-size 2" in out
    saved = json.load(open(os.path.join(checkpoints.latest_checkpoint(str(tmp_path / "s2")), "args.json")))
    assert (saved["steps"], saved["warmup"], saved["lr"]) == (1, 1, 5e-5)
    with pytest.raises(SystemExit) as stop:  # argparse's error: refused before anything starts
        stage(sft_coa, monkeypatch, "--init", r1, "--data", real, "--steps", 3, "--epochs", 1)
    assert stop.value.code == 2 and "--steps and --epochs both set the run's length: pass one of them" in \
        capsys.readouterr().err
