"""Benchmark the BM25 retrieval server: index build time, queries/second and request latency.

A synthetic corpus (seeded random words with Zipf-like frequencies, ~100 words a passage like wiki-18)
is generated in-process, indexed, and served from a forked child process on loopback, so the server
and the client threads do not share a GIL. N client threads, each with its own keep-alive connection,
send Search-R1 requests until the fixed total is reached.

  python bench/bench_server.py                                   # 100k docs, 16 clients, 4000 requests
  python bench/bench_server.py --docs 20000 --clients 4 --requests 500 --batch 8
"""
import argparse
import http.client
import json
import multiprocessing as mp
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from env import BM25Search, RetrievalServer  # noqa: E402


def make_vocabulary(n_words, rng):
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(n_words)]


def zipf_words(vocab, n, rng):
    # rank r drawn with p ~ 1 / r: a few very common words with long postings, as in real text
    p = 1.0 / np.arange(1, len(vocab) + 1)
    return rng.choice(len(vocab), size=n, p=p / p.sum())


def make_corpus(n_docs, doc_words, n_vocab, seed):
    rng = np.random.default_rng(seed)
    vocab = make_vocabulary(n_vocab, rng)
    words = zipf_words(vocab, n_docs * doc_words, rng).reshape(n_docs, doc_words)
    return vocab, [{"id": str(i), "contents": f'"{vocab[row[0]]}"\n' + " ".join(vocab[w] for w in row[1:])}
                   for i, row in enumerate(words)]


def client(port, bodies, latencies, errors):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for body in bodies:
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/retrieve", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read())
            if resp.status != 200 or "result" not in data:
                errors.append(resp.status)
        except Exception as e:  # count it, reconnect, carry on
            errors.append(repr(e))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        latencies.append(time.perf_counter() - t0)
    conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000, help="number of synthetic documents")
    parser.add_argument("--doc-words", type=int, default=100, help="words per document")
    parser.add_argument("--vocab", type=int, default=50_000, help="distinct words in the synthetic language")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    parser.add_argument("--requests", type=int, default=4000, help="total requests over all clients")
    parser.add_argument("--batch", type=int, default=1, help="queries per request")
    parser.add_argument("--topk", type=int, default=3, help="documents per query")
    parser.add_argument("--seed", type=int, default=0, help="seed for corpus and queries")
    args = parser.parse_args()
    print(vars(args))

    t0 = time.perf_counter()
    vocab, rows = make_corpus(args.docs, args.doc_words, args.vocab, args.seed)
    print(f"generated {len(rows)} docs in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    index = BM25Search(rows)
    build_s = time.perf_counter() - t0
    print(f"index build: {build_s:.2f}s ({len(index.vocab)} terms, {len(index.post_doc)} postings)")

    server = RetrievalServer(index, port=0, topk_max=50)
    port = server.server_address[1]
    child = mp.get_context("fork").Process(target=server.serve_forever, daemon=True)  # shares the index pages
    child.start()

    rng = np.random.default_rng(args.seed + 1)
    bodies = []
    for _ in range(args.requests):
        queries = [" ".join(vocab[w] for w in zipf_words(vocab, rng.integers(3, 8), rng)) for _ in range(args.batch)]
        bodies.append(json.dumps({"queries": queries, "topk": args.topk, "return_scores": True}))
    latencies, errors = [], []
    threads = [threading.Thread(target=client, args=(port, bodies[i::args.clients], latencies, errors))
               for i in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    child.terminate()
    child.join()

    ms = np.percentile(np.array(latencies) * 1e3, [50, 90, 99])
    print(f"{args.requests} requests x {args.batch} queries, {args.clients} clients: {wall:.1f}s, "
          f"{args.requests * args.batch / wall:.0f} queries/s, {args.requests / wall:.0f} requests/s")
    print(f"latency per request ms: p50 {ms[0]:.1f}  p90 {ms[1]:.1f}  p99 {ms[2]:.1f}   errors: {len(errors)}")
    print(f"machine: {os.cpu_count()} CPU cores; build {build_s:.2f}s for {args.docs} docs")


if __name__ == "__main__":
    main()
