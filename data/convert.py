"""Convert the published multi-hop QA datasets to this project's question and corpus formats.

    python -m data.convert hotpotqa hotpot_train_v1.1.json           --out runs/hotpotqa --split train --limit 6000
    python -m data.convert hotpotqa hotpot_train_v1.1.json           --out runs/hotpotqa --split rl --skip 6000 --limit 4608
    python -m data.convert hotpotqa hotpot_dev_distractor_v1.json    --out runs/hotpotqa --split test --recall 5
    python -m data.convert 2wiki    2wiki_dev.json                   --out runs/2wiki
    python -m data.convert musique  musique_ans_v1.0_dev.jsonl       --out runs/musique

Which split each stage reads (data/README.md, "A real checkpoint, end to end"): data/distill.py samples the
train split into stage1.jsonl and stage2.jsonl (SFT); grpo.py reads rl.jsonl (its prompts) and dev.jsonl
(validation); eval.py reads test.jsonl (--split). --skip N leaves out the file's first N questions and
--limit N keeps at most N of the rest, with their paragraphs only, so that one published file gives disjoint
splits (HotpotQA publishes no test answers: its dev file gives dev and test). MuSiQue's unanswerable records
are no questions: they are skipped before --skip counts.

Each writes OUT/<split>.jsonl (default split "test") with rows {"id", "question", "answers", "hops",
"type", "supporting", "gold_ids"}: the embedded world's dev/test format plus the gold paragraphs (titles,
and their ids in the corpus), and merges every paragraph of every record's context into OUT/corpus.jsonl
({"id", "contents": '"Title"\\ntext'}). Converting several splits into one OUT keeps one corpus: the union,
deduplicated by title and text; a paragraph keeps the id it got first, `<dataset>-<split>-<n>` (n = its
place among the distinct paragraphs converted), so ids are stable and unique across datasets and splits and
re-running a conversion changes nothing. Questions can then be evaluated against this small local BM25
corpus (the paper retrieves from all of wiki-18 instead; point the search tool at a wiki-18 server for
that). --recall K prints how often BM25 with the question as the query finds each gold paragraph in its
top K: how much of a question the first search can answer.

Published layouts read here:
- HotpotQA: one JSON list of {_id, question, answer, type, level, supporting_facts: [[title, sentence
  index], ...], context: [[title, [sentence, ...]], ...]}. Every question is 2-hop ("bridge" or "comparison").
- 2WikiMultiHopQA: one JSON list of {_id, type, question, answer, context (as HotpotQA),
  supporting_facts (as HotpotQA), evidences: [[subject, relation, object], ...]}. Hops by type:
  compositional 2, comparison 2, inference 2 (e.g. a paternal grandfather = father of the father),
  bridge_comparison 4 (two bridges, then a comparison). These are the dataset paper's templates and equal
  the number of evidence triples; an unlisted type falls back to len(evidences).
- MuSiQue: JSONL of {id, question, answer, answer_aliases, answerable, paragraphs: [{idx, title,
  paragraph_text, is_supporting}], question_decomposition: [...]}. hops = len(question_decomposition),
  type = the id's prefix ("2hop", "3hop1", "4hop3", ...); answers = answer + answer_aliases.
  Unanswerable records (MuSiQue-Full) are skipped: they have no gold answer to score.
Gold paragraphs: the context paragraphs whose titles supporting_facts names (HotpotQA, 2Wiki), the
paragraphs marked is_supporting (MuSiQue).

A malformed file raises ValueError naming the file and the record index (or line, for JSONL); so does a
question id used twice in one file.
Sentences are joined with one space after stripping (HotpotQA keeps leading spaces, 2Wiki does not).
"""
import argparse
import json
import os

import jsonl
from env import BM25Search, load_corpus

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


def supporting_titles(path, i, rec):
    """The distinct titles that supporting_facts [[title, sentence index], ...] names, in order."""
    titles = []
    for j, item in enumerate(rec.get("supporting_facts") or []):
        if not (isinstance(item, list) and item and isinstance(item[0], str)):
            raise Malformed(path, f"record {i}", f"supporting_facts[{j}] should be [title, sentence index]")
        titles += [item[0]] if item[0] not in titles else []
    return titles


def convert_hotpotqa(path):
    rows, paragraphs = [], []
    for i, rec in enumerate(load_json_list(path)):
        rows.append({"id": str(field(path, i, rec, "_id", (str, int))),
                     "question": field(path, i, rec, "question", str),
                     "answers": [field(path, i, rec, "answer", str)],
                     "hops": 2, "type": field(path, i, rec, "type", str),
                     "supporting": supporting_titles(path, i, rec), "context": context_paragraphs(path, i, rec)})
        paragraphs += rows[-1]["context"]
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
                     "answers": [field(path, i, rec, "answer", str)], "hops": hops, "type": type_,
                     "supporting": supporting_titles(path, i, rec), "context": context_paragraphs(path, i, rec)})
        paragraphs += rows[-1]["context"]
    return rows, paragraphs


def convert_musique(path):
    rows, paragraphs = [], []
    for i, rec in enumerate(jsonl.read(path)):  # each line an object, or an error naming it
        id_ = str(field(path, i, rec, "id", (str, int)))
        gold, context = [], []
        for j, p in enumerate(field(path, i, rec, "paragraphs", list)):
            if not (isinstance(p, dict) and isinstance(p.get("title"), str)
                    and isinstance(p.get("paragraph_text"), str)):
                raise Malformed(path, f"record {i}", f"paragraphs[{j}] needs string 'title' and 'paragraph_text'")
            context.append((p["title"], p["paragraph_text"].strip()))
            gold += [context[-1]] if p.get("is_supporting") else []
        paragraphs += context
        if not rec.get("answerable", True):
            continue
        hops = len(field(path, i, rec, "question_decomposition", list))
        if hops < 1:
            raise Malformed(path, f"record {i}", "empty question_decomposition")
        answers = [field(path, i, rec, "answer", str)]
        answers += [a for a in rec.get("answer_aliases") or [] if isinstance(a, str) and a not in answers]
        rows.append({"id": id_, "question": field(path, i, rec, "question", str), "answers": answers,
                     "hops": hops, "type": id_.split("__")[0] if "__" in id_ else f"{hops}hop",
                     "supporting": [t for t, _ in gold], "gold": gold, "context": context})
    return rows, paragraphs


CONVERTERS = {"hotpotqa": convert_hotpotqa, "2wiki": convert_2wiki, "musique": convert_musique}


def contents_of(title, text):
    return f'"{title}"\n{text}'


def convert(dataset, path, out_dir, split="test", skip=0, limit=0):
    """Write out_dir/<split>.jsonl and merge the paragraphs into out_dir/corpus.jsonl (module docstring): the
    file's questions after the first `skip`, at most `limit` of them (0: all), and their paragraphs.
    Returns (n questions, n paragraphs added, corpus size)."""
    rows, paragraphs = CONVERTERS[dataset](path)  # each row holds its record's paragraphs ("context")
    if skip or limit:  # the questions kept, and only their paragraphs
        rows = rows[skip:skip + limit if limit else None]
        paragraphs = [p for r in rows for p in r["context"]]
    for r in rows:
        del r["context"]
    seen_ids = set()
    for i, r in enumerate(rows):
        if r["id"] in seen_ids:
            raise Malformed(path, f"question {i}", f"id {r['id']!r} used twice")
        seen_ids.add(r["id"])
    corpus_path = os.path.join(out_dir, "corpus.jsonl")
    corpus = load_corpus(corpus_path) if os.path.isfile(corpus_path) else []
    id_of = {row["contents"]: row["id"] for row in corpus}
    taken, added = set(id_of.values()), 0
    distinct = list(dict.fromkeys(contents_of(t, x) for t, x in paragraphs))
    for n, contents in enumerate(distinct):
        if contents in id_of:
            continue
        id_ = f"{dataset}-{split}-{n}"
        if id_ in taken:
            raise ValueError(f"{corpus_path}: id {id_} already names another paragraph: was split {split!r} "
                             f"converted from a different file before? Use another --split or --out")
        corpus.append({"id": id_, "contents": contents})
        id_of[contents], added = id_, added + 1
        taken.add(id_)
    by_title = {}
    for t, x in paragraphs:
        by_title.setdefault(t, id_of[contents_of(t, x)])
    for r in rows:
        gold = r.pop("gold", None)  # MuSiQue names the paragraphs themselves, the others their titles
        r["gold_ids"] = ([id_of[contents_of(t, x)] for t, x in gold] if gold is not None else
                         [by_title[t] for t in r["supporting"] if t in by_title])
    os.makedirs(out_dir, exist_ok=True)
    for name, data in ((split, rows), ("corpus", corpus)):
        jsonl.write(os.path.join(out_dir, f"{name}.jsonl"), data)
    return len(rows), added, len(corpus)


def gold_recall(rows, search, k):
    """Mean over questions with gold paragraphs of the share of them that BM25 (the question as the query)
    returns in its top k; and the number of such questions."""
    rows = [r for r in rows if r.get("gold_ids")]
    hits = search.search([r["question"] for r in rows], k) if rows else []
    shares = [len(set(r["gold_ids"]) & {h["id"] for h in hs}) / len(set(r["gold_ids"])) for r, hs in zip(rows, hits)]
    return (sum(shares) / len(shares) if shares else 0.0), len(shares)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(CONVERTERS), help="which published layout INPUT has")
    ap.add_argument("input", help="the dataset file (JSON list, or JSONL for musique)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--split", default="test", help="name of the questions file: OUT/<split>.jsonl")
    ap.add_argument("--skip", type=int, default=0, help="leave out the file's first N questions")
    ap.add_argument("--limit", type=int, default=0, help="then keep at most N questions (0 = all)")
    ap.add_argument("--recall", type=int, default=0, metavar="K",
                    help="also print the gold paragraphs' recall in BM25's top K for the question (0 = off)")
    args = ap.parse_args(argv)
    n_rows, n_added, n_docs = convert(args.dataset, args.input, args.out, args.split, args.skip, args.limit)
    print(f"{args.dataset}: {n_rows} questions -> {args.out}/{args.split}.jsonl, {n_added} new paragraphs "
          f"-> {args.out}/corpus.jsonl ({n_docs} in all)")
    if args.recall:
        rows = jsonl.read(os.path.join(args.out, f"{args.split}.jsonl"))
        recall, n = gold_recall(rows, BM25Search.from_jsonl(os.path.join(args.out, "corpus.jsonl")), args.recall)
        print(f"gold paragraphs in BM25's top {args.recall} (question as query): {recall:.3f} over {n} questions")


if __name__ == "__main__":
    main()
