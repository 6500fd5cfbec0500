"""Every stage checks its data before the model loads: each JSONL row's required fields and types (file,
line and field named), questions that do not fit the model's context, and rows that --max-len would cut
down to nothing to train.

    python -m pytest -q tests/test_validation.py

The stage scripts run in-process (main() with sys.argv set), with the model loader replaced by one that
fails the test: a check that passes must have run before the model was loaded. Their data is the tiny
world of tests/conftest.py (copied) with one row made bad.
"""
import json
import os
import re
import shutil
import sys

import pytest

import checkpoints
import common
import eval as ev
import grpo
import jsonl
import pretrain
import sft_coa
import sft_contrastive
from tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def ckpt(base):
    """The session's tiny base model (tests/conftest.py): its tokenizer and config are what the checks read."""
    return checkpoints.latest_checkpoint(base)


@pytest.fixture
def data(world, tmp_path):
    """data({file: edit, ...}) -> a fresh copy of the world whose files have their rows passed through edit(rows)."""
    copies = []

    def make(edits):
        out = tmp_path / f"data{len(copies)}"
        copies.append(out)
        shutil.copytree(world, out)
        for file, edit in edits.items():
            with open(out / file) as f:
                rows = [json.loads(line) for line in f]
            with open(out / file, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in edit(rows))
        return str(out)
    return make


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: whatever the stage reports must come from the checks before it."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the data was checked")
    monkeypatch.setattr(common, "load_model", refuse)
    monkeypatch.setattr(common.Qwen2, "from_pretrained", refuse)  # eval.py and probe.py load through common
    monkeypatch.setattr(pretrain, "train_tokenizer", refuse)


def run_main(module, monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", [module.__name__ + ".py", *map(str, args)])
    module.main()


def replace(i, **fields):
    """An edit of the rows: row i updated with `fields` (None removes a field)."""
    def edit(rows):
        rows[i] = {k: v for k, v in {**rows[i], **fields}.items() if v is not None}
        return rows
    return edit


# ============================================================================= the schema helper

GOOD = {"QUESTION_ROWS": {"id": "q0", "question": "Who?", "answers": ["Ada"], "hops": None},  # null: absent
        "TRAJECTORY_ROWS": {"question": "Who?", "segments": [{"text": "a", "tool": True}]},
        "PAIR_ROWS": {"question": "Who?", "prefix": "", "chosen": "a", "rejected": "b", "extra": [1]},
        "BASE_ROWS": {"text": "Ada is a person."}}


@pytest.mark.parametrize("schema, row, said", [
    ("QUESTION_ROWS", {"id": "q1", "question": "Who?"}, "missing field 'answers'"),
    ("QUESTION_ROWS", {"id": "q1", "question": "Who?", "answers": None}, "missing field 'answers'"),
    ("QUESTION_ROWS", {"id": "q1", "question": "Who?", "answers": "Ada"},
     "field 'answers' should be a non-empty list, got \"Ada\""),
    ("QUESTION_ROWS", {"id": "q1", "question": "Who?", "answers": []}, "field 'answers' should be a non-empty list"),
    ("QUESTION_ROWS", {"id": "q1", "question": "Who?", "answers": ["Ada", 7]},
     "field 'answers[1]' should be str, got int"),
    ("QUESTION_ROWS", {"id": True, "question": "Who?", "answers": ["Ada"]}, "field 'id' should be str or int, got bool"),
    ("QUESTION_ROWS", {"id": 3, "question": "Who?", "answers": ["Ada"], "hops": "2"}, "field 'hops' should be int, got str"),
    ("QUESTION_ROWS", ["Who?", ["Ada"]], "the row should be an object, got list"),
    ("TRAJECTORY_ROWS", {"question": "Who?", "segments": [{"text": "a", "tool": False}, {"text": "b", "tool": "yes"}]},
     "field 'segments[1].tool' should be bool, got str"),
    ("TRAJECTORY_ROWS", {"question": "Who?", "segments": [{"tool": False}]}, "missing field 'segments[0].text'"),
    ("TRAJECTORY_ROWS", {"question": "Who?", "segments": [[]]}, "field 'segments[0]' should be an object, got list"),
    ("PAIR_ROWS", {"question": "Who?", "prefix": "", "chosen": "a", "rejected": 1}, "field 'rejected' should be str"),
    ("BASE_ROWS", {"kind": "doc"}, "missing field 'text'"),
])
def test_a_bad_row_names_file_line_and_field(tmp_path, schema, row, said):
    path, good = tmp_path / "rows.jsonl", GOOD[schema]
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")  # the blank line counts: line 3
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}:3: {said}")):
        common.read_jsonl(str(path), getattr(common, schema))
    if isinstance(row, dict):
        rows = common.read_jsonl(str(path))  # no schema: any object; the good row alone passes its schema
        assert rows.where(1) == f"{path}:3" and rows[0] == good
    else:  # without a schema too: every JSONL row of the project is an object
        with pytest.raises(ValueError, match="^" + re.escape(f"{path}:3: {said}")):
            common.read_jsonl(str(path))
    path.write_text(json.dumps(good) + "\n")
    assert common.read_jsonl(str(path), getattr(common, schema)) == [good]


def test_invalid_json_and_empty_files_name_the_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(ValueError, match=f"^{path}:2: invalid JSON"):
        common.read_jsonl(str(path), common.BASE_ROWS)
    path.write_text("\n\n")
    with pytest.raises(ValueError, match=f"^{path}: no rows"):
        common.read_jsonl(str(path), common.BASE_ROWS)


def test_bytes_that_are_not_utf8_name_file_and_line(tmp_path):
    """The reported fault: a bare UnicodeDecodeError with an offset into a buffer, no file, no line."""
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"text": "a"}\n\n{"text": "caf\xe9"}\n')  # latin-1, not UTF-8
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}:3: not UTF-8 (byte 0xe9, the line's byte 14)")):
        common.read_jsonl(str(path), common.BASE_ROWS)
    path.write_bytes('\ufeff{"text": "café"}\n'.encode())  # UTF-8 with a byte-order mark, as some editors save it
    assert jsonl.read(path) == [{"text": "café"}]


def test_empty_files_are_refused_unless_allowed(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n \n")
    with pytest.raises(ValueError, match=f"^{path}: no rows"):
        jsonl.read(path)
    assert jsonl.read(path, empty_ok=True) == []


def test_write_is_atomic_and_keeps_unicode(tmp_path):
    path = tmp_path / "rows.jsonl"
    jsonl.write(path, [{"text": "Zoë Ångström"}, {"n": 1}])
    assert path.read_bytes() == '{"text": "Zoë Ångström"}\n{"n": 1}\n'.encode()  # not \u escapes
    assert jsonl.read(path).lines.tolist() == [1, 2]
    with pytest.raises(TypeError):  # a row that cannot be written: the old file stays whole, no debris
        jsonl.write(path, [{"text": "new"}, {"bad": object()}])
    assert jsonl.read(path) == [{"text": "Zoë Ångström"}, {"n": 1}]
    assert sorted(os.listdir(tmp_path)) == ["rows.jsonl"]


def test_distill_reads_through_the_same_checks(tmp_path):
    """data/distill.py's questions and chat files: the shared reader's file:line errors, the question schema."""
    from data import distill
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "Who?", "answers": ["Ada"]}) + "\n" +
                         json.dumps({"question": "Who?", "answers": "Ada"}) + "\n")
    with pytest.raises(ValueError, match=f"^{questions}:2: field 'answers' should be a non-empty list"):
        distill.main(["sample", "--questions", str(questions), "--teacher", "unused", "--search", "unused",
                      "--out", str(tmp_path / "out")])
    chat = tmp_path / "chat.jsonl"
    chat.write_bytes(b'{"messages": []}\n{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    with pytest.raises(ValueError, match=f"^{chat}:2: not UTF-8"):
        distill.import_chat(str(chat))


def test_a_stage_names_the_bad_byte_before_its_model_loads(tmp_path, data, monkeypatch, capsys):
    """sft_coa.py on a stage2.jsonl with a latin-1 byte on line 4: a one-line error naming file and line, long
    before any model or tokenizer is read (--init names no checkpoint: the error comes before the stage looks
    for one)."""
    ckpt = str(tmp_path / "never-read")
    d = data({})
    path = os.path.join(d, "stage2.jsonl")
    with open(path, "rb") as f:
        lines = f.readlines()
    lines[3] = lines[3].replace(b'"question": "', b'"question": "\xe9', 1)
    with open(path, "wb") as f:
        f.writelines(lines)
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}:4: not UTF-8 (byte 0xe9")):
        run_main(sft_coa, monkeypatch, "--mask-obs", "--data", d, "--init", ckpt, "--out", tmp_path / "s2")
    assert "[model]" not in capsys.readouterr().out  # common.load_model prints it: the model was never loaded


def test_check_prompts_allows_exactly_what_leaves_room_to_answer(tmp_path, ckpt):
    """A question's prompt of n tokens needs a context of at least n + 1 (one token to write)."""
    tok = Tokenizer.from_pretrained(ckpt)
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": q, "answers": ["x"]}) + "\n"
                            for i, q in enumerate(["Who is Ada?", "Who is Ada? " * 20])))
    rows = common.read_jsonl(str(path), common.QUESTION_ROWS)
    n = len(common.encode_prompt(tok, rows[1]["question"]))
    for context in (n + 1, n):
        small = tmp_path / f"ctx{context}"
        shutil.copytree(ckpt, small)
        cfg = json.loads((small / "config.json").read_text())
        (small / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": context}))
        if context > n:
            common.check_prompts(rows, str(small))
        else:
            with pytest.raises(ValueError, match=f"^{path}:2: the question's prompt is {n} tokens, and the model's "
                                                 f"context .* is {n}: no room to answer"):
                common.check_prompts(rows, str(small))


# ============================================================================= each stage, before its model loads

def test_grpo_refuses_a_row_without_answers_before_loading(tmp_path, ckpt, data, monkeypatch, no_model):
    """The reported crash: a bare KeyError at the GRPO step that drew the row. Now: file, line, field, at once."""
    d = data({"rl.jsonl": replace(6, answers=None)})
    with pytest.raises(ValueError, match=f"^{d}/rl.jsonl:7: missing field 'answers'$"):
        run_main(grpo, monkeypatch, "--data", d, "--init", ckpt, "--out", tmp_path / "rl")
    assert not os.path.exists(tmp_path / "rl" / "metrics.jsonl")


def test_grpo_and_eval_refuse_a_question_beyond_the_context(tmp_path, ckpt, data, monkeypatch, no_model):
    """The reported allocation: a 1 MB question made eval size a KV cache for it. Now refused by line, from the
    tokenizer and config alone (the model is never loaded)."""
    huge = "Who is Ada? " * 100_000  # ~1.2 MB
    d = data({"test.jsonl": replace(4, question=huge), "dev.jsonl": replace(2, question=huge)})
    with pytest.raises(ValueError, match=f"^{d}/test.jsonl:5: the question's prompt is \\d+ tokens, and the model's "
                                         f"context .* is 4096: no room to answer"):
        ev.main(["--ckpt", ckpt, "--data", d, "--policy", "none", "--out", str(tmp_path / "e.jsonl")])
    with pytest.raises(ValueError, match=f"^{d}/dev.jsonl:3: the question's prompt"):
        run_main(grpo, monkeypatch, "--data", d, "--init", ckpt, "--out", tmp_path / "rl")


def test_eval_refuses_a_question_row_of_the_wrong_shape(tmp_path, ckpt, data, no_model):
    d = data({"test.jsonl": replace(0, answers=["fine", ["nested"]])})
    with pytest.raises(ValueError, match=rf"^{d}/test.jsonl:1: field 'answers\[1\]' should be str, got list$"):
        ev.main(["--ckpt", ckpt, "--data", d, "--policy", "none", "--out", str(tmp_path / "e.jsonl")])


def test_pretrain_checks_base_text_before_the_tokenizer(tmp_path, data, monkeypatch, no_model):
    d = data({"base.jsonl": replace(3, text=None)})
    with pytest.raises(ValueError, match=f"^{d}/base.jsonl:4: missing field 'text'$"):
        run_main(pretrain, monkeypatch, "--data", d, "--out", tmp_path / "base")
    d = data({"base.jsonl": lambda rows: rows + [{"text": "x", "response": "y"}]})
    with pytest.raises(ValueError, match=r"base.jsonl:\d+: a reasoning trace \('response'\) needs its 'question'"):
        run_main(pretrain, monkeypatch, "--data", d, "--out", tmp_path / "base")


def test_plain_text_rows_are_enough_for_pretrain(tmp_path, monkeypatch):
    """base.jsonl rows with only "text" (no kind, no question) pretrain as plain documents."""
    d = tmp_path / "plain"
    d.mkdir()
    (d / "base.jsonl").write_text("".join(json.dumps({"text": f"Ada {i} is a person."}) + "\n" for i in range(40)))
    (d / "corpus.jsonl").write_text(json.dumps({"id": "1", "contents": "Ada is a person."}) + "\n")
    (d / "meta.json").write_text("{}")
    run_main(pretrain, monkeypatch, "--data", d, "--out", tmp_path / "base", "--hidden", 16, "--intermediate", 32,
             "--layers", 1, "--heads", 2, "--kv-heads", 1, "--seq-len", 16, "--vocab-size", 300, "--steps", 1,
             "--batch-size", 2)
    assert checkpoints.step_of(os.path.basename(checkpoints.latest_checkpoint(str(tmp_path / "base")))) == 1


def test_sft_coa_checks_segments_before_loading(tmp_path, ckpt, data, monkeypatch, no_model):
    def bad_tool(rows):
        rows[2]["segments"] = [{"text": "I need it.", "tool": False}, {"text": "<search_result>", "tool": "true"}]
        return rows
    d = data({"stage2.jsonl": bad_tool})
    with pytest.raises(ValueError, match=rf"^{d}/stage2.jsonl:3: field 'segments\[1\]\.tool' should be bool, got str$"):
        run_main(sft_coa, monkeypatch, "--mask-obs", "--data", d, "--init", ckpt, "--out", tmp_path / "s2")


OBS = "\n\n<search_result> result 1: Ada works for Acme. </search_result>\n\n"
ASK = "I need the employer of Ada. <begin_search> Ada employer </end_search>"
ANSWER = "So the answer is \\boxed{Acme}.\n</think>\n\nThe answer is \\boxed{Acme}"


def segs(*parts):
    """segs("model text", OBS, ...): a trajectory's segments, those that start with the observation's blank
    lines or tag being the tool's."""
    return [{"text": t, "tool": t.lstrip().startswith("<search_result>") or t == OBS[:2]} for t in parts]


@pytest.mark.parametrize("segments, kind, said", [
    (segs(ASK, OBS, "The result says Acme. " + ANSWER), "tool", None),
    (segs(ASK, OBS, ASK.replace("Ada", "Acme"), OBS, ANSWER), "tool", None),
    (segs("I remember Ada works for Acme. " + ANSWER), "cot", None),
    (segs("I need the employer of Ada.", OBS, ANSWER), "workflow", None),
    # the reported fault: an action opened and never closed, trained on without a word
    (segs("I need it. <begin_search> Ada employer " + ANSWER), "cot",
     "segments[0] (model): action tags should alternate <begin_search> ... </end_search> and end closed"),
    (segs("<begin_search> a </end_search> </end_search>", OBS, ANSWER), "tool",
     "segments[0] (model): action tags should alternate"),
    (segs("<begin_search> a <begin_search> b </end_search>", OBS, ANSWER), "tool",
     "segments[0] (model): action tags should alternate"),
    (segs(ASK + " and then", OBS, ANSWER), "tool",
     "segments[1] (tool) answers no action: the model segment before it should end with </end_search>, got "),
    (segs(OBS, ANSWER), "tool", "segments[0] (tool) answers no action: the model segment before it should end "
                                "with </end_search>, and there is none"),
    (segs(ASK, OBS, OBS, ANSWER), "tool", "segments[2] (tool) answers no action"),
    (segs(ASK, "\n\n<search_result> result 1: Ada", ANSWER), "tool",
     "segments[1] (tool) should be one whole observation, <search_result> ... </search_result>, got "),
    (segs(ASK, OBS + OBS, ANSWER), "tool", "segments[1] (tool) should be one whole observation"),
    (segs(ASK, OBS[:2], ANSWER), "tool", "segments[1] (tool) should be one whole observation"),
    (segs(ASK + OBS + ANSWER), "tool", "segments[0] (model) holds an observation tag"),
    (segs(ASK, OBS, ANSWER), "workflow", "segments[0] (model) holds an action tag, but in a workflow row"),
])
def test_trajectory_action_format(segments, kind, said):
    err = common.trajectory_error({"question": "Who employs Ada?", "segments": segments, "kind": kind})
    assert err == said if said is None else err.startswith(said), err


@pytest.mark.parametrize("prefix, chosen, rejected, said", [
    ("I need the employer of Ada.", " I will search for it. <begin_search> Ada employer </end_search>",
     " I remember that Ada works for Acme.\n", None),
    (ASK + OBS + "It says Acme.\nI need the founder of Acme.", " I remember Bo founded it.\n",
     " <begin_search> Acme founder </end_search>", None),
    ("I need it. <begin_search> Ada", " employer </end_search>", " employer </end_search>", None),  # split, closed
    ("I need it.", " <begin_search> Ada employer", " I remember.\n",
     "prefix + chosen: action tags should alternate <begin_search> ... </end_search> and end closed, got chosen "
     "' <begin_search> Ada employer'"),
    ("I need it.", " I remember.\n", " </end_search>", "prefix + rejected: action tags should alternate"),
    ("I need it. <begin_search> Ada", " employer", " employer </end_search>", "prefix + chosen"),
])
def test_pair_action_format(prefix, chosen, rejected, said):
    err = common.pair_error({"question": "Who employs Ada?", "prefix": prefix, "chosen": chosen, "rejected": rejected})
    assert err == said if said is None else err.startswith(said), err


def test_the_worlds_own_files_pass_the_action_checks(world):
    for file, error in (("stage2.jsonl", common.trajectory_error), ("workflow.jsonl", common.trajectory_error),
                        ("stage1.jsonl", common.pair_error)):
        common.check_rows(common.read_jsonl(os.path.join(world, file)), error)


def test_sft_stages_refuse_an_unclosed_action_before_loading(tmp_path, data, monkeypatch, no_model):
    """The reported fault: a trajectory with <begin_search> and no </end_search> trained on (exit 0). Now
    refused by file and line before the model loads; so is a stage-1 continuation that never closes. (--init
    names no checkpoint: the check runs before the stage looks for one.)"""
    ckpt = str(tmp_path / "never-read")
    def unclose(rows):
        i = next(i for i, r in enumerate(rows) if any(s["tool"] for s in r["segments"]))
        first = rows[i]["segments"][0]
        first["text"] = first["text"].replace("</end_search>", "")
        return rows
    d = data({"stage2.jsonl": unclose})
    line = next(n for n, l in enumerate(open(os.path.join(d, "stage2.jsonl")), 1) if '"tool": true' in l)
    with pytest.raises(ValueError, match=rf"^{d}/stage2.jsonl:{line}: segments\[0\] \(model\): action tags "
                                         "should alternate"):
        run_main(sft_coa, monkeypatch, "--mask-obs", "--data", d, "--init", ckpt, "--out", tmp_path / "s2")
    d = data({"stage1.jsonl": replace(4, chosen=" I will search for it. <begin_search> Ada employer")})
    with pytest.raises(ValueError, match=rf"^{d}/stage1.jsonl:5: prefix \+ chosen: action tags should alternate"):
        run_main(sft_contrastive, monkeypatch, "--data", d, "--init", ckpt, "--out", tmp_path / "s1")
    assert not os.path.exists(tmp_path / "s1" / "metrics.jsonl") and not os.path.exists(tmp_path / "s2" / "metrics.jsonl")


def test_sft_coa_reports_cut_rows_and_refuses_one_with_nothing_left(tmp_path, ckpt, data, monkeypatch, capsys):
    """--max-len cuts: the count is reported; a row whose trained tokens are all cut away (a question longer
    than --max-len) is refused by line before the first step."""
    tok = Tokenizer.from_pretrained(ckpt)
    d = data({"stage2.jsonl": lambda rows: rows[:3]})
    lengths = [len(sft_coa.encode_trajectory(tok, r, True, None)[0])
               for r in common.read_jsonl(os.path.join(d, "stage2.jsonl"))]
    max_len = sorted(lengths)[1]  # the longest row is cut, the others fit
    args = ["--mask-obs", "--init", ckpt, "--steps", 1, "--batch-size", 3, "--max-len", max_len]
    run_main(sft_coa, monkeypatch, *args, "--data", d, "--out", tmp_path / "ok")
    assert f"; 1 cut to --max-len {max_len}" in capsys.readouterr().out
    d = data({"stage2.jsonl": lambda rows: replace(1, question="Who is Ada? " * 200)(rows[:3])})
    with pytest.raises(ValueError, match=rf"^{d}/stage2.jsonl:2: --max-len {max_len} cuts away every trained token"):
        run_main(sft_coa, monkeypatch, *args, "--data", d, "--out", tmp_path / "cut")
    assert not os.path.exists(tmp_path / "cut" / "metrics.jsonl")  # no step ran


def test_sft_contrastive_refuses_a_pair_whose_continuation_is_cut_away(tmp_path, ckpt, data, monkeypatch, capsys,
                                                                     no_model):
    d = data({"stage1.jsonl": replace(0, rejected=None)})
    with pytest.raises(ValueError, match=f"^{d}/stage1.jsonl:1: missing field 'rejected'$"):
        run_main(sft_contrastive, monkeypatch, "--data", d, "--init", ckpt, "--out", tmp_path / "s1")
    monkeypatch.undo()  # the model may load now: the next check needs its tokenizer
    long_chosen = {"chosen": "I know this one. " * 300}
    d = data({"stage1.jsonl": lambda rows: [rows[0], {**rows[1], **long_chosen},
                                            {**rows[2], "prefix": "Let me think. " * 300}]})
    args = ["--data", d, "--init", ckpt, "--steps", 1, "--batch-size", 2, "--max-len", 1024]
    with pytest.raises(ValueError, match=f"^{d}/stage1.jsonl:3: prompt \\+ prefix are \\d+ tokens, so --max-len "
                                         f"1024 cuts the whole continuation away$"):
        run_main(sft_contrastive, monkeypatch, *args, "--out", tmp_path / "s1")
    assert not os.path.exists(tmp_path / "s1" / "metrics.jsonl")
    d = data({"stage1.jsonl": lambda rows: [rows[0], {**rows[1], **long_chosen}]})  # pair 2 is cut, not refused
    run_main(sft_contrastive, monkeypatch, "--data", d, *args[2:], "--out", tmp_path / "s1")
    assert "; 1 cut to --max-len 1024" in capsys.readouterr().out


# ============================================================================= config.json and the shard index

@pytest.fixture
def tiny_ckpt(tmp_path):
    """A 2-layer Qwen2 saved in the HF layout (in memory, no training): what the config checks load."""
    from model import Qwen2, Qwen2Config
    cfg = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, eos_token_id=3)
    Qwen2(cfg).init_weights(seed=0).save_pretrained(str(tmp_path / "m"))
    return tmp_path / "m"


def edit_json(path, **fields):
    d = json.loads(path.read_text())
    d.update(fields)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("field, value, said", [
    ("num_attention_heads", 0, "is 0: should be a positive integer"),
    ("hidden_size", "32", 'is "32": should be a positive integer'),
    ("hidden_size", None, "is null: should be a positive integer"),
    ("hidden_size", [16], "is [16]: should be a positive integer"),
    ("hidden_size", 16.0, "is 16.0: should be a positive integer"),
    ("num_hidden_layers", True, "is true: should be a positive integer"),
    ("vocab_size", -64, "is -64: should be a positive integer"),
    ("rms_norm_eps", "1e-6", 'is "1e-6": should be a finite positive number'),
    ("rms_norm_eps", 0, "is 0: should be a finite positive number"),
    ("rope_theta", float("inf"), "is Infinity: should be a finite positive number"),
    ("rope_theta", None, "is null: should be a finite positive number"),
    ("initializer_range", "0.02", 'is "0.02": should be a finite number >= 0'),
    ("tie_word_embeddings", "false", 'is "false": should be true or false'),
    ("hidden_size", 15, "is 15: should be a multiple of num_attention_heads (2)"),
    ("hidden_size", 18, "is 18: over num_attention_heads (2) gives an odd head dimension 9; rotary embeddings"),
    ("num_key_value_heads", 3, "is 3: should divide num_attention_heads (2)"),
    ("eos_token_id", 64, "is 64: should be a token id in [0, vocab_size 64), a list of them, or null"),
    ("eos_token_id", [3, "4"], "is [3, \"4\"]: should be a token id"),
    ("bos_token_id", [1], "is [1]: should be a token id in [0, vocab_size 64) or null"),
])
def test_a_bad_config_value_names_file_field_and_value(tiny_ckpt, monkeypatch, field, value, said):
    """The reported configs that loaded (or failed deep inside a layer): each is refused by file, field and value,
    before a tensor is read or a layer is built."""
    import model
    edit_json(tiny_ckpt / "config.json", **{field: value})
    monkeypatch.setattr(model, "checkpoint_files", lambda *a: pytest.fail("the weights were looked at first"))
    with pytest.raises(ValueError, match="^" + re.escape(f"{tiny_ckpt}/config.json: field {field!r} {said}")):
        model.Qwen2.from_pretrained(str(tiny_ckpt))
    with pytest.raises(ValueError, match="^" + re.escape(f"{tiny_ckpt}/config.json: field {field!r}")):
        model.Qwen2Config.from_json(str(tiny_ckpt / "config.json"))  # what check_prompts reads


def test_more_layers_than_the_weights_hold_is_refused_at_once(tiny_ckpt, monkeypatch):
    """The reported 10^6 layers: an error only after 50 s (every layer's tensor names listed). Now from the
    names in the files alone."""
    import model
    edit_json(tiny_ckpt / "config.json", num_hidden_layers=10 ** 6)
    monkeypatch.setattr(model, "expected_tensors", lambda *a: pytest.fail("every layer's tensors were listed"))
    with pytest.raises(model.CheckpointError, match="^" + re.escape(
            f"{tiny_ckpt}/config.json: field 'num_hidden_layers' is 1000000, but the weights hold 2 layer(s)")):
        model.Qwen2.from_pretrained(str(tiny_ckpt))
    edit_json(tiny_ckpt / "config.json", num_hidden_layers=2)
    monkeypatch.undo()
    model.Qwen2.from_pretrained(str(tiny_ckpt))  # the file as it was saved loads


@pytest.mark.parametrize("content, said", [
    ("[1, 2]", "should hold a JSON object, got list"),
    ('{"hidden_size": ', "invalid JSON"),
])
def test_config_json_that_is_no_object(tiny_ckpt, content, said):
    from model import Qwen2
    (tiny_ckpt / "config.json").write_text(content)
    with pytest.raises(ValueError, match="^" + re.escape(f"{tiny_ckpt}/config.json: {said}")):
        Qwen2.from_pretrained(str(tiny_ckpt))


@pytest.mark.parametrize("index, said", [
    ({"weight_map": ["model.safetensors"]}, "'weight_map' should be an object {tensor name: shard file}, got "
                                            '["model.safetensors"]'),
    ({"metadata": {}}, "'weight_map' should be an object {tensor name: shard file}, got null"),
    ([{"weight_map": {}}], "should hold a JSON object, got list"),
    ({"weight_map": {"model.norm.weight": 7}}, "shard path 7 (holding model.norm.weight) is not a relative path"),
    ({"weight_map": {"model.norm.weight": "model-2.safetensors"}}, "shard model-2.safetensors (holding "
                                                                   "model.norm.weight) is missing"),
])
def test_a_bad_safetensors_index_names_the_file(tiny_ckpt, index, said):
    from model import CheckpointError, Qwen2
    (tiny_ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{tiny_ckpt}/model.safetensors.index.json: {said}")):
        Qwen2.from_pretrained(str(tiny_ckpt))
