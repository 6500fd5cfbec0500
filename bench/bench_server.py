"""Benchmark the BM25 retrieval server (server.py): index build time, then the latency of well-behaved
clients, alone and while hundreds of slow connections are open.

A synthetic corpus (seeded random words with Zipf-like frequencies, ~100 words a passage like wiki-18)
is generated in-process, indexed, and served from a forked child process on loopback, so the server
and the client threads do not share a GIL. One client sends --requests Search-R1 requests, one after
the other, on a keep-alive connection (the latency of a request itself); then each of --clients
threads does the same at once (latency with queueing, and throughput). Then the same again while --slow
connections trickle the bytes of a request that never ends, one byte each per --slow-interval seconds
(a slowloris attack, or a crowd of stuck clients); when the server closes one at its per-request
deadline, it is opened again, so that --slow of them are open all the time.

  python bench/bench_server.py                          # 100k docs, 16 clients x 200 requests, 300 slow
  python bench/bench_server.py --docs 20000 --clients 4 --requests 100 --batch 8 --slow 0
"""
import argparse
import http.client
import json
import multiprocessing as mp
import os
import socket
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


class SlowConnections:
    """n connections that each send one byte of an endless request every `interval` seconds, in a thread.
    A connection the server closes (its request deadline) is replaced by a new one at once."""

    def __init__(self, port, n, interval):
        self.port, self.n, self.interval = port, n, interval
        self.opened = self.closed_by_server = 0
        self.stop = threading.Event()
        # a request that never ends: its headers never close with an empty line
        self.request = b"POST /retrieve HTTP/1.1\r\nHost: bench\r\n" + b"X-Slow: " + b"x" * 100_000
        self.socks = [self._open() for _ in range(n)]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _open(self):
        self.opened += 1
        return [socket.create_connection(("127.0.0.1", self.port), timeout=5), 0]  # [socket, bytes sent]

    def _run(self):
        while not self.stop.wait(self.interval):
            for i, (sock, sent) in enumerate(self.socks):
                try:
                    sock.send(self.request[sent % len(self.request):][:1])
                    self.socks[i][1] += 1
                except OSError:  # the server closed it
                    sock.close()
                    self.closed_by_server += 1
                    self.socks[i] = self._open()

    def close(self):
        self.stop.set()
        self.thread.join()
        for sock, _ in self.socks:
            sock.close()


def run_clients(port, bodies, n_clients):
    """n_clients threads, each sending its share of `bodies` in turn -> (wall seconds, latencies, errors)."""
    latencies, errors = [], []
    threads = [threading.Thread(target=client, args=(port, bodies[i::n_clients], latencies, errors))
               for i in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies, errors


def report(label, wall, latencies, errors, queries_per_request):
    ms = np.percentile(np.array(latencies) * 1e3, [50, 90, 99])
    print(f"{label}: {len(latencies)} requests in {wall:.1f}s, {len(latencies) * queries_per_request / wall:.0f} "
          f"queries/s; latency ms p50 {ms[0]:.1f}  p90 {ms[1]:.1f}  p99 {ms[2]:.1f}  max "
          f"{max(latencies) * 1e3:.0f}; errors {len(errors)}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000, help="number of synthetic documents")
    parser.add_argument("--doc-words", type=int, default=100, help="words per document")
    parser.add_argument("--vocab", type=int, default=50_000, help="distinct words in the synthetic language")
    parser.add_argument("--clients", type=int, default=16, help="concurrent well-behaved client threads")
    parser.add_argument("--requests", type=int, default=200, help="requests per client, one after the other")
    parser.add_argument("--batch", type=int, default=1, help="queries per request")
    parser.add_argument("--topk", type=int, default=3, help="documents per query")
    parser.add_argument("--slow", type=int, default=300,
                        help="slow connections open at once in the second run (0: skip it)")
    parser.add_argument("--slow-interval", type=float, default=1.0,
                        help="seconds between two bytes of a slow connection")
    parser.add_argument("--workers", type=int, default=8, help="server: search threads")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="server: per-request deadline in seconds")
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

    server = RetrievalServer(index, port=0, topk_max=50, workers=args.workers, request_timeout=args.request_timeout)
    port = server.server_address[1]
    child = mp.get_context("fork").Process(target=server.serve_forever, daemon=True)  # shares the index pages
    child.start()

    rng = np.random.default_rng(args.seed + 1)
    bodies = []
    for _ in range(args.clients * args.requests):
        queries = [" ".join(vocab[w] for w in zipf_words(vocab, rng.integers(3, 8), rng)) for _ in range(args.batch)]
        bodies.append(json.dumps({"queries": queries, "topk": args.topk, "return_scores": True}))
    run_clients(port, bodies, args.clients)  # warm-up: the forked server's first touch of the index pages
    # one client alone: the latency of a request itself, without waiting behind other clients' requests
    report(f"1 client x {args.requests} requests", *run_clients(port, bodies[:args.requests], 1), args.batch)
    report(f"{args.clients} clients x {args.requests} requests", *run_clients(port, bodies, args.clients), args.batch)
    if args.slow:
        slow = SlowConnections(port, args.slow, args.slow_interval)
        # start measuring as the first slow connections reach their deadline: from then on the server also
        # answers 408s, closes connections and accepts their replacements while the clients run
        time.sleep(args.request_timeout - 1)
        result = run_clients(port, bodies, args.clients)
        slow.close()
        report(f"the same beside {args.slow} slow connections", *result, args.batch)
        print(f"slow connections: {slow.opened} opened, {slow.closed_by_server} closed by the server "
              f"(at its {args.request_timeout:g}s request deadline)")
    child.terminate()
    child.join()
    print(f"machine: {os.cpu_count()} CPU cores; build {build_s:.2f}s for {args.docs} docs")


if __name__ == "__main__":
    main()
