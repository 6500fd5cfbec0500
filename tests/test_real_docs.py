"""data/README.md's "A real checkpoint, end to end", run as written, once per kind of stand-in checkpoint.

The fenced block between `<!-- real-path: begin -->` and `<!-- real-path: end -->` is read from data/README.md
and each of its lines is run in order by bash. The only changes, and nothing else:
- the doc's placeholders are environment variables: $CKPT, a stand-in checkpoint (tests/qwen_standin.py: the real
  Qwen BPE and template with a tiny random Qwen2; R1-Distill's kind, then Qwen2.5-Instruct's), and $TEACHER, the
  scripted OpenAI-compatible teacher of tests/test_real_path.py (it searches and answers right on even seeds; a
  random model's trajectories are never right, so distillation would keep nothing from it);
- tiny sizes, as flags appended to a line (TINY, by the command's script): argparse keeps a flag's last value, so
  an appended `--limit 2` stands for the doc's `--limit 6000`.
Where it runs: the doc's paths are relative to the repository root (runs/..., the downloaded HotpotQA files), so
the working directory is a temporary folder holding a symbolic link to each of the repository's top-level files
and folders but no runs/: a fresh clone as a new user has it, whose runs/ is the test's own (the repository's is
never touched). Python resolves the link of the script it runs, so the modules imported are the repository's.
The HotpotQA files the doc converts are written there: four questions each, from tests/test_real_path.py.
"""
import json
import os
import re
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer

import pytest

import checkpoints
from test_real_path import ENV, HOTPOT, MORE, ROOT, ScriptedTeacher

TINY = {  # appended to each line of the doc, by what it runs
    "data.convert": lambda line: ["--skip", "2"] * ("--skip" in line) + ["--limit", "2"] * ("--limit" in line),
    "data.distill": lambda line: ["--samples", "2", "--branches", "1"],
    "sft_contrastive.py": lambda line: ["--steps", "1", "--batch-size", "2", "--max-len", "256", "--threads", "1"],
    "sft_coa.py": lambda line: ["--steps", "1", "--batch-size", "2", "--max-len", "256", "--threads", "1"],
    "grpo.py": lambda line: ["--steps", "2", "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "16",
                             "--val-prompts", "1", "--val-samples", "1", "--threads", "1"],
    "eval.py": lambda line: ["--limit", "2", "--batch-size", "2", "--max-new-tokens", "16"],
}


def doc_block():
    """The lines of data/README.md's fenced block between the real-path markers, exactly as written."""
    with open(os.path.join(ROOT, "data", "README.md"), encoding="utf-8") as f:
        text = f.read()
    block = re.search(r"<!-- real-path: begin -->\n```bash\n(.*?)\n```\n<!-- real-path: end -->", text, re.S)
    assert block, "data/README.md: no fenced bash block between the real-path markers"
    return block.group(1).split("\n")


def tiny(line):
    script = next(k for k in TINY if re.search(rf"python (-m )?{re.escape(k)}\b", line))
    return TINY[script](line)


@pytest.fixture(scope="module")
def teacher():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedTeacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def clone(tmp_path):
    """A folder that looks like a fresh clone: the repository's top-level entries linked, no runs/ (module doc)."""
    for name in os.listdir(ROOT):
        if name not in ("runs", ".git") and not name.startswith(".pytest"):
            os.symlink(os.path.join(ROOT, name), tmp_path / name)
    (tmp_path / "hotpot_train_v1.1.json").write_text(json.dumps(HOTPOT + MORE))
    (tmp_path / "hotpot_dev_distractor_v1.json").write_text(json.dumps(MORE + HOTPOT))
    return tmp_path


def test_doc_lines_are_whole_commands():
    """Every line of the block is one command of the project's, with placeholders only where the doc says."""
    lines = doc_block()
    assert [line.split()[:3] for line in lines if "data." in line] == \
        [["python", "-m", "data.convert"]] * 4 + [["python", "-m", "data.distill"]]
    assert all(line.startswith("python ") and "\\" not in line for line in lines)
    assert set(re.findall(r"\$\w+", " ".join(lines))) == {"$CKPT", "$TEACHER"}
    assert [s for line in lines for s in re.findall(r"--split (\w+)", line)] == ["train", "rl", "dev", "test"]
    assert all(tiny(line) is not None for line in lines)


@pytest.mark.slow  # ~11 Python starts with the real 152k-token vocabulary, per kind: ~30 s each
@pytest.mark.parametrize("kind", ["r1", "chatml"])
def test_doc_sequence_runs(kind, standins, teacher, tmp_path):
    """The whole sequence from a fresh clone; then what each stage made is where the doc says, the embedded world
    was never built, and no line needed more than the files the lines before it made. In the slow set
    (pytest.ini): tests/test_real_path.py runs the same stages on the same stand-ins in the default set; this
    checks that the doc's lines, as written, still make that sequence."""
    cwd = clone(tmp_path)
    env = dict(ENV, CKPT=standins[kind], TEACHER=teacher, PATH=os.path.dirname(sys.executable) + os.pathsep +
               ENV["PATH"])
    for line in doc_block():
        command = line + " " + " ".join(tiny(line))
        p = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"{command}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        assert "[prerequisite]" not in p.stdout + p.stderr, command
    runs = cwd / "runs"
    assert sorted(os.listdir(runs)) == ["eval", "hotpotqa", "hotpotqa-rl", "hotpotqa-sft1", "hotpotqa-sft2",
                                        "hotpotqa-sft3"]  # no world, no base
    data = runs / "hotpotqa"
    for split, questions in (("train", HOTPOT), ("rl", MORE), ("dev", MORE), ("test", HOTPOT)):
        rows = [json.loads(x) for x in open(data / f"{split}.jsonl")]
        assert [r["question"] for r in rows] == [q["question"] for q in questions], split
    assert all(os.path.getsize(data / f) for f in ("corpus.jsonl", "stage1.jsonl", "stage2.jsonl"))
    for out in ("hotpotqa-sft1", "hotpotqa-sft2", "hotpotqa-sft3", "hotpotqa-rl", "hotpotqa-rl/rl1"):
        assert checkpoints.latest_checkpoint(str(runs / out)), out
    modes = [m["mode"] for m in map(json.loads, open(runs / "hotpotqa-rl" / "metrics.jsonl")) if "mode" in m]
    assert modes == ["sim", "real"]
    assert len(open(runs / "eval" / "hotpotqa-rl-test.jsonl").readlines()) == 2
    assert (runs / "eval" / "hotpotqa-rl.html").is_file()
    with open(checkpoints.latest_checkpoint(str(runs / "hotpotqa-rl")) + "/tokenizer_config.json") as f, \
            open(os.path.join(standins[kind], "tokenizer_config.json")) as g:
        assert json.load(f)["chat_template"] == json.load(g)["chat_template"]  # the checkpoint's own format
