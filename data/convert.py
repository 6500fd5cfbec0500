"""Convert the published multi-hop QA datasets to this project's question and corpus formats.

    python -m data.convert hotpotqa hotpot_dev_distractor_v1.json --out runs/hotpotqa
    python -m data.convert 2wiki    2wiki_dev.json                --out runs/2wiki
    python -m data.convert musique  musique_ans_v1.0_dev.jsonl    --out runs/musique

Each writes OUT/<split>.jsonl (default split "test") with rows {"id", "question", "answers", "hops",
"type"}, the same format as the embedded world's dev/test files, and OUT/corpus.jsonl with rows
{"id", "contents": '"Title"\\ntext'}: every paragraph of every record's context, deduplicated by
contents, so questions can be evaluated against a small local BM25 corpus (the paper retrieves from
all of wiki-18 instead; point the search tool at a wiki-18 server for that).

Published layouts read here:
- HotpotQA: one JSON list of {_id, question, answer, type, level, supporting_facts,
  context: [[title, [sentence, ...]], ...]}. Every question is 2-hop ("bridge" or "comparison").
- 2WikiMultiHopQA: one JSON list of {_id, type, question, answer, context (as HotpotQA),
  supporting_facts, evidences: [[subject, relation, object], ...]}. Hops by type: compositional 2,
  comparison 2, inference 2 (e.g. a paternal grandfather = father of the father), bridge_comparison 4
  (two bridges, then a comparison). These are the dataset paper's templates and equal the number of
  evidence triples; an unlisted type falls back to len(evidences).
- MuSiQue: JSONL of {id, question, answer, answer_aliases, answerable, paragraphs: [{idx, title,
  paragraph_text, is_supporting}], question_decomposition: [...]}. hops = len(question_decomposition),
  type = the id's prefix ("2hop", "3hop1", "4hop3", ...); answers = answer + answer_aliases.
  Unanswerable records (MuSiQue-Full) are skipped: they have no gold answer to score.

A malformed file raises ValueError naming the file and the record index (or line, for JSONL).
Sentences are joined with one space after stripping (HotpotQA keeps leading spaces, 2Wiki does not).
"""
import argparse
import json
import os

HOPS_2WIKI = {"compositional": 2, "comparison": 2, "inference": 2, "bridge_comparison": 4}


class Malformed(ValueError):
    def __init__(self, path, where, msg):
        super().__init__(f"{path}: {where}: {msg}")


def load_json_list(path):
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except ValueError as e:
            raise Malformed(path, "file", f"not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise Malformed(path, "file", f"expected a JSON list of records, got {type(data).__name__}")
    return data


def load_jsonl(path):
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as e:
                    raise Malformed(path, f"line {lineno} (record {len(records)})", f"not valid JSON ({e})") from None
    return records


def field(path, i, rec, name, kind):
    """rec[name], checked to be of `kind`; errors name the file and the record index."""
    if not isinstance(rec, dict):
        raise Malformed(path, f"record {i}", f"expected an object, got {type(rec).__name__}")
    if name not in rec:
        raise Malformed(path, f"record {i}", f"missing field {name!r}")
    if not isinstance(rec[name], kind):
        raise Malformed(path, f"record {i}", f"field {name!r} should be {kind}, got {type(rec[name]).__name__}")
    return rec[name]


def context_paragraphs(path, i, rec):
    """HotpotQA / 2Wiki context [[title, [sentence, ...]], ...] -> [(title, text), ...]."""
    out = []
    for j, item in enumerate(field(path, i, rec, "context", list)):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], list) and all(isinstance(s, str) for s in item[1])):
            raise Malformed(path, f"record {i}", f"context[{j}] should be [title, [sentence, ...]]")
        out.append((item[0], " ".join(s.strip() for s in item[1] if s.strip())))
    return out


def convert_hotpotqa(path):
    rows, paragraphs = [], []
    for i, rec in enumerate(load_json_list(path)):
        rows.append({"id": str(field(path, i, rec, "_id", (str, int))),
                     "question": field(path, i, rec, "question", str),
                     "answers": [field(path, i, rec, "answer", str)],
                     "hops": 2, "type": field(path, i, rec, "type", str)})
        paragraphs += context_paragraphs(path, i, rec)
    return rows, paragraphs


def convert_2wiki(path):
    rows, paragraphs = [], []
    for i, rec in enumerate(load_json_list(path)):
        type_ = field(path, i, rec, "type", str)
        hops = HOPS_2WIKI.get(type_) or len(field(path, i, rec, "evidences", list))
        if hops < 1:
            raise Malformed(path, f"record {i}", f"unknown type {type_!r} and no evidences to count hops")
        rows.append({"id": str(field(path, i, rec, "_id", (str, int))),
                     "question": field(path, i, rec, "question", str),
                     "answers": [field(path, i, rec, "answer", str)], "hops": hops, "type": type_})
        paragraphs += context_paragraphs(path, i, rec)
    return rows, paragraphs


def convert_musique(path):
    rows, paragraphs = [], []
    for i, rec in enumerate(load_jsonl(path)):
        id_ = str(field(path, i, rec, "id", (str, int)))
        for j, p in enumerate(field(path, i, rec, "paragraphs", list)):
            if not (isinstance(p, dict) and isinstance(p.get("title"), str)
                    and isinstance(p.get("paragraph_text"), str)):
                raise Malformed(path, f"record {i}", f"paragraphs[{j}] needs string 'title' and 'paragraph_text'")
            paragraphs.append((p["title"], p["paragraph_text"].strip()))
        if not rec.get("answerable", True):
            continue
        hops = len(field(path, i, rec, "question_decomposition", list))
        if hops < 1:
            raise Malformed(path, f"record {i}", "empty question_decomposition")
        answers = [field(path, i, rec, "answer", str)]
        answers += [a for a in rec.get("answer_aliases") or [] if isinstance(a, str) and a not in answers]
        rows.append({"id": id_, "question": field(path, i, rec, "question", str), "answers": answers,
                     "hops": hops, "type": id_.split("__")[0] if "__" in id_ else f"{hops}hop"})
    return rows, paragraphs


CONVERTERS = {"hotpotqa": convert_hotpotqa, "2wiki": convert_2wiki, "musique": convert_musique}


def convert(dataset, path, out_dir, split="test"):
    """Write out_dir/<split>.jsonl and out_dir/corpus.jsonl; returns (n questions, n paragraphs)."""
    rows, paragraphs = CONVERTERS[dataset](path)
    corpus, seen = [], set()
    for title, text in paragraphs:
        contents = f'"{title}"\n{text}'
        if contents not in seen:
            seen.add(contents)
            corpus.append({"id": f"{dataset}-{len(corpus)}", "contents": contents})
    os.makedirs(out_dir, exist_ok=True)
    for name, data in ((split, rows), ("corpus", corpus)):
        with open(os.path.join(out_dir, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in data)
    return len(rows), len(corpus)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(CONVERTERS), help="which published layout INPUT has")
    ap.add_argument("input", help="the dataset file (JSON list, or JSONL for musique)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--split", default="test", help="name of the questions file: OUT/<split>.jsonl")
    args = ap.parse_args()
    n_rows, n_docs = convert(args.dataset, args.input, args.out, args.split)
    print(f"{args.dataset}: {n_rows} questions -> {args.out}/{args.split}.jsonl, "
          f"{n_docs} paragraphs -> {args.out}/corpus.jsonl")


if __name__ == "__main__":
    main()
