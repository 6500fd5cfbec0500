"""data/convert.py: the published HotpotQA / 2Wiki / MuSiQue layouts -> questions + one shared corpus, on small
hand-written records (no download here)."""
import json

import pytest

import env
from data.convert import convert, gold_recall, main


def write(path, data, jsonl=False):
    with open(path, "w", encoding="utf-8") as f:
        if jsonl:
            f.writelines(json.dumps(r) + "\n" for r in data)
        else:
            json.dump(data, f)
    return str(path)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


ARTHUR = ["Arthur's Magazine", ["Arthur's Magazine was a magazine.", " It started in 1844."]]
HOTPOT = [
    {"_id": "h1", "question": "Which magazine started first, Arthur's or First for Women?", "answer": "Arthur's",
     "type": "comparison", "level": "medium", "supporting_facts": [["Arthur's Magazine", 0], ["First for Women", 0],
                                                                    ["Arthur's Magazine", 1]],
     "context": [ARTHUR, ["First for Women", ["First for Women is a magazine."]]]},
    {"_id": "h2", "question": "Who founded the magazine that started in 1844?", "answer": "T. S. Arthur",
     "type": "bridge", "level": "hard", "supporting_facts": [], "context": [ARTHUR]},
]
HOTPOT_DEV = [{"_id": "d1", "question": "Who edited Arthur's Magazine?", "answer": "T. S. Arthur", "type": "bridge",
               "level": "easy", "supporting_facts": [["T. S. Arthur", 0]],
               "context": [ARTHUR, ["T. S. Arthur", ["T. S. Arthur edited Arthur's Magazine."]]]}]


def test_convert_hotpotqa(tmp_path):
    assert convert("hotpotqa", write(tmp_path / "h.json", HOTPOT), str(tmp_path / "out")) == (2, 2, 2)
    rows, corpus = read_jsonl(tmp_path / "out/test.jsonl"), read_jsonl(tmp_path / "out/corpus.jsonl")
    assert rows[0] == {"id": "h1", "question": HOTPOT[0]["question"], "answers": ["Arthur's"], "hops": 2,
                       "type": "comparison", "supporting": ["Arthur's Magazine", "First for Women"],
                       "gold_ids": ["hotpotqa-test-0", "hotpotqa-test-1"]}
    assert rows[1]["type"] == "bridge" and rows[1]["supporting"] == [] and rows[1]["gold_ids"] == []
    assert corpus[0] == {"id": "hotpotqa-test-0",
                         "contents": "\"Arthur's Magazine\"\nArthur's Magazine was a magazine. It started in 1844."}
    assert env.BM25Search(corpus).search(["first for women"], topk=1)[0][0]["id"] == "hotpotqa-test-1"


def test_splits_share_one_corpus_with_stable_ids(tmp_path):
    """train then dev into one OUT: the union, deduplicated; ids per dataset and split; a re-run changes nothing."""
    out = str(tmp_path / "out")
    train, dev = write(tmp_path / "train.json", HOTPOT), write(tmp_path / "dev.json", HOTPOT_DEV)
    assert convert("hotpotqa", train, out, split="train") == (2, 2, 2)
    assert convert("hotpotqa", dev, out, split="dev") == (1, 1, 3)  # Arthur's Magazine is already there
    corpus = read_jsonl(tmp_path / "out/corpus.jsonl")
    assert [c["id"] for c in corpus] == ["hotpotqa-train-0", "hotpotqa-train-1", "hotpotqa-dev-1"]
    assert read_jsonl(tmp_path / "out/dev.jsonl")[0]["gold_ids"] == ["hotpotqa-dev-1"]
    assert read_jsonl(tmp_path / "out/train.jsonl")[0]["id"] == "h1"  # both split files stay
    before = (tmp_path / "out/corpus.jsonl").read_bytes()
    assert convert("hotpotqa", train, out, split="train") == (2, 0, 3)
    assert (tmp_path / "out/corpus.jsonl").read_bytes() == before
    wiki = [{"_id": "w1", "type": "compositional", "question": "q?", "answer": "Bo", "supporting_facts": [],
             "context": [ARTHUR, ["Bo", ["Bo was born in 1950."]]], "evidences": []}]
    convert("2wiki", write(tmp_path / "w.json", wiki), out, split="dev")  # another dataset, same split name
    assert [c["id"] for c in read_jsonl(tmp_path / "out/corpus.jsonl")][3:] == ["2wiki-dev-1"]
    with pytest.raises(ValueError, match=r"corpus.jsonl: id hotpotqa-dev-1 already names another paragraph"):
        convert("hotpotqa", write(tmp_path / "other.json", [dict(HOTPOT_DEV[0], context=[ARTHUR, ["X", ["y."]]])]),
                out, split="dev")


def test_gold_recall(tmp_path, capsys):
    out = str(tmp_path / "out")
    convert("hotpotqa", write(tmp_path / "h.json", HOTPOT), out)
    rows, corpus = read_jsonl(tmp_path / "out/test.jsonl"), read_jsonl(tmp_path / "out/corpus.jsonl")
    # h1 has two gold paragraphs; its question names both magazines, so BM25's top 2 finds both, top 1 one
    assert gold_recall(rows, env.BM25Search(corpus), 2) == (1.0, 1)
    assert gold_recall(rows, env.BM25Search(corpus), 1) == (0.5, 1)
    main(["hotpotqa", str(tmp_path / "h.json"), "--out", out, "--recall", "1"])
    assert "top 1 (question as query): 0.500 over 1 questions" in capsys.readouterr().out


def test_convert_2wiki(tmp_path):
    ctx = [["Film A", ["Film A is a film.", "It was directed by Bo."]], ["Bo", ["Bo was born in 1950."]]]
    data = [{"_id": f"w{i}", "type": t, "question": f"q{i}?", "answer": "Bo", "context": ctx,
             "supporting_facts": [["Film A", 1], ["Bo", 0]], "evidences": [["Film A", "director", "Bo"]] * n}
            for i, (t, n) in enumerate([("compositional", 2), ("comparison", 2), ("inference", 2),
                                        ("bridge_comparison", 4), ("new_type", 3)])]
    convert("2wiki", write(tmp_path / "w.json", data), str(tmp_path / "out"), split="dev")
    rows = read_jsonl(tmp_path / "out/dev.jsonl")
    assert [r["hops"] for r in rows] == [2, 2, 2, 4, 3]  # the last from len(evidences)
    assert rows[0]["gold_ids"] == ["2wiki-dev-0", "2wiki-dev-1"]
    assert len(read_jsonl(tmp_path / "out/corpus.jsonl")) == 2  # the shared context deduplicated


def test_convert_musique(tmp_path):
    paragraphs = [{"idx": 0, "title": "Bo", "paragraph_text": "Bo was born in Oslo.", "is_supporting": True},
                  {"idx": 1, "title": "Oslo", "paragraph_text": "Oslo is in Norway.", "is_supporting": True},
                  {"idx": 2, "title": "Oslo", "paragraph_text": "Oslo has a fjord.", "is_supporting": False}]
    decomp = [{"id": 1, "question": "birthplace of Bo", "answer": "Oslo", "paragraph_support_idx": 0},
              {"id": 2, "question": "#1 country", "answer": "Norway", "paragraph_support_idx": 1}]
    data = [{"id": "2hop__1_2", "question": "Which country was Bo born in?", "answer": "Norway",
             "answer_aliases": ["Kingdom of Norway", "Norway"], "answerable": True, "paragraphs": paragraphs,
             "question_decomposition": decomp},
            {"id": "3hop1__1_2_3", "question": "Unanswerable?", "answer": "", "answer_aliases": [],
             "answerable": False, "paragraphs": paragraphs, "question_decomposition": decomp * 2}]
    assert convert("musique", write(tmp_path / "m.jsonl", data, jsonl=True), str(tmp_path / "out")) == (1, 3, 3)
    rows = read_jsonl(tmp_path / "out/test.jsonl")
    assert rows == [{"id": "2hop__1_2", "question": "Which country was Bo born in?",
                     "answers": ["Norway", "Kingdom of Norway"], "hops": 2, "type": "2hop",
                     "supporting": ["Bo", "Oslo"], "gold_ids": ["musique-test-0", "musique-test-1"]}]


def test_convert_malformed_names_file_and_record(tmp_path):
    bad = [HOTPOT[0], {k: v for k, v in HOTPOT[1].items() if k != "question"}]
    path = write(tmp_path / "bad.json", bad)
    with pytest.raises(ValueError, match=r"bad\.json: record 1: missing field 'question'"):
        convert("hotpotqa", path, str(tmp_path / "out"))
    bad_ctx = [dict(HOTPOT[0], context=[["title only"]])]
    with pytest.raises(ValueError, match=r"record 0: context\[0\]"):
        convert("2wiki", write(tmp_path / "bad2.json", [dict(bad_ctx[0], evidences=[])]), str(tmp_path / "o"))
    with pytest.raises(ValueError, match=r"record 0: supporting_facts\[0\]"):
        convert("hotpotqa", write(tmp_path / "bad3.json", [dict(HOTPOT[0], supporting_facts=[3])]), str(tmp_path / "o"))
    with pytest.raises(ValueError, match=r"twice\.json: question 1: id 'h1' used twice"):
        convert("hotpotqa", write(tmp_path / "twice.json", [HOTPOT[0], HOTPOT[0]]), str(tmp_path / "o"))
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON"):
        convert("musique", str(path), str(tmp_path / "out"))
    path.write_bytes(b'{"id": "caf\xe9"}\n')  # latin-1
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not UTF-8"):
        convert("musique", str(path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"bad\.json.*expected a JSON list"):
        convert("hotpotqa", write(tmp_path / "bad.json", {"data": []}), str(tmp_path / "out"))
