"""The search environment: tags, search tools, observations, answer extraction and rewards.

Everything the sampler, the SFT data builders, GRPO and eval need from "the world outside the model":
  - the tag strings of the trajectory format and the instruction that tells the model about them,
  - two search tools with one interface, `search(queries, topk) -> [[{"id", "contents", "score"}], ...]`:
      BM25Search    an in-process Okapi BM25 index over a JSONL corpus (numpy inverted index),
      RemoteSearch  a client for any Search-R1-compatible `POST /retrieve` server (never raises),
  - `format_observation`: the exact text injected after the model's closing action tag,
  - `extract_query` / `extract_answer`, SQuAD-style EM / F1, and the binary RL `reward`,
  - a Search-R1-compatible retrieval server (stdlib ThreadingHTTPServer) so that several training
    processes can share one index.

Simplified relative to the paper: the paper retrieves from wiki-18 with a dense/BM25 server; we ship a
pure-numpy BM25 (no stemming, no stop words: ranks differ slightly from Pyserini's Lucene analyzer)
sized for corpora of up to a few hundred thousand passages (100k build in ~6 s). For full wiki-18, run Search-R1's server and pass its URL.

Commands:
  python env.py serve --corpus corpus.jsonl --port 8000          # POST http://127.0.0.1:8000/retrieve
  python env.py search --corpus corpus.jsonl "who directed inception"
  python env.py search --corpus http://127.0.0.1:8000 "who directed inception"   # ask a server
  python -m pytest -q tests/test_env.py
  python bench/bench_server.py --docs 100000 --clients 16 --requests 4000
"""
import argparse
import json
import re
import string
import time
import unicodedata
from array import array
from collections import Counter, defaultdict
from dataclasses import astuple, dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import requests

# ----------------------------------------------------------------------------- tags and instruction


@dataclass(frozen=True)
class Tags:
    """Every tag string of the trajectory format, in one place (swap in SEARCH_R1 to change format)."""
    think_open: str = "<think>"
    think_close: str = "</think>"
    search_open: str = "<begin_search>"
    search_close: str = "</end_search>"
    result_open: str = "<search_result>"
    result_close: str = "</search_result>"


AUTOCOA = Tags()
SEARCH_R1 = Tags(search_open="<search>", search_close="</search>",
                 result_open="<information>", result_close="</information>")
TAGS = AUTOCOA


def instruction(tags=TAGS):
    """The instruction placed before each question (REFERENCE.md: `<｜User｜>{instructions}\\n{question}`)."""
    return (f"Answer the question. While you think, you may search a Wikipedia-style corpus whenever a fact "
            f"is missing by writing {tags.search_open} your query {tags.search_close}. The results will be "
            f"given to you between {tags.result_open} and {tags.result_close}. You may search several times. "
            f"After {tags.think_close}, give the final short answer in \\boxed{{}}, e.g. \\boxed{{Paris}}.")


INSTRUCTION = instruction(TAGS)

# ----------------------------------------------------------------------------- corpus and BM25


def load_corpus(path):
    """Read wiki-18 style JSONL rows {"id": str, "contents": '"Title"\\ntext'}; blank lines are skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
            if not (isinstance(row, dict) and isinstance(row.get("id"), (str, int))
                    and isinstance(row.get("contents"), str)):
                raise ValueError(f'{path}:{lineno}: expected {{"id": str, "contents": str}}, got {line[:80]!r}')
            rows.append({"id": str(row["id"]), "contents": row["contents"]})
    return rows


TOKEN_RE = re.compile(r"\w+")  # lower-cased unicode words; no stemming, no stop words


def tokenize(text):
    return TOKEN_RE.findall(text.lower())


class BM25Search:
    """Okapi BM25 over an inverted index held in numpy arrays.

    score(q, d) = sum over distinct query terms t in d of
                  idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl)),   idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))
    This is Lucene's BM25Similarity (what Pyserini runs), k1=0.9, b=0.4 as Pyserini's defaults. Lucene
    drops textbook Okapi's (k1 + 1) numerator factor: a constant, so rankings are the same.
    Ties are broken by corpus order (lower index first), so results are deterministic.
    Searches only read the arrays, so one index can serve many threads at once.
    """

    def __init__(self, rows, k1=0.9, b=0.4):
        if not rows:
            raise ValueError("BM25Search needs at least one document")
        self.ids = [str(r["id"]) for r in rows]
        self.contents = [r["contents"] for r in rows]
        N = len(rows)
        # A term's id is its first-seen order: a missing key calls default_factory = len(vocab).
        vocab = defaultdict()
        vocab.default_factory = vocab.__len__
        flat, doc_len = array("i"), np.empty(N, dtype=np.int64)
        for i, text in enumerate(self.contents):
            toks = tokenize(text)
            doc_len[i] = len(toks)
            flat.extend(map(vocab.__getitem__, toks))  # map/extend run in C: ~1 s per 10M tokens
        self.vocab = dict(vocab)  # a plain dict: a query must never insert new terms
        term = np.frombuffer(flat, dtype=np.int32).astype(np.int64)  # (total_tokens,)
        doc = np.repeat(np.arange(N, dtype=np.int64), doc_len)       # (total_tokens,)
        # One posting per distinct (term, doc) pair, sorted by term then doc; counts are the tf.
        keys, tf = np.unique(term * N + doc, return_counts=True)     # (P,), (P,)
        post_term, self.post_doc = keys // N, (keys % N).astype(np.int32)
        df = np.bincount(post_term, minlength=len(self.vocab))       # (V,)
        self.offsets = np.concatenate([[0], np.cumsum(df)])          # postings of t: offsets[t]:offsets[t+1]
        idf = np.log1p((N - df + 0.5) / (df + 0.5))                  # (V,) always > 0
        norm = k1 * (1 - b + b * doc_len / doc_len.mean())           # (N,)
        # The whole BM25 term weight is precomputed per posting: a query is then gather + sum.
        self.post_weight = (idf[post_term] * tf / (tf + norm[self.post_doc])).astype(np.float32)  # (P,)
        self.k1, self.b = k1, b

    @classmethod
    def from_jsonl(cls, path, **kwargs):
        return cls(load_corpus(path), **kwargs)

    def __len__(self):
        return len(self.ids)

    def search(self, queries, topk=3):
        """Top-k documents per query. Only documents sharing a term with the query are returned, so a
        query of unknown words gets an empty list."""
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        return [self._search_one(q, topk) for q in queries]

    def _search_one(self, query, topk):
        # sorted: the float summation order (hence the last bits of a score) must not depend on str hashing
        terms = [self.vocab[t] for t in sorted(set(tokenize(query))) if t in self.vocab]
        if not terms:
            return []
        spans = [slice(self.offsets[t], self.offsets[t + 1]) for t in terms]
        docs = np.concatenate([self.post_doc[s] for s in spans])
        weights = np.concatenate([self.post_weight[s] for s in spans])
        scores = np.bincount(docs, weights=weights, minlength=len(self))  # (N,) float64
        hits = np.flatnonzero(scores)  # every matched doc has score > 0 because idf > 0
        if len(hits) > topk:  # keep everything tied with the k-th best, then sort exactly
            kth = np.partition(scores[hits], len(hits) - topk)[len(hits) - topk]
            hits = hits[scores[hits] >= kth]
        hits = hits[np.lexsort((hits, -scores[hits]))][:topk]  # score desc, then corpus order
        return [{"id": self.ids[i], "contents": self.contents[i], "score": float(scores[i])} for i in hits]

# ----------------------------------------------------------------------------- remote search client


class RemoteSearch:
    """Client for a Search-R1-compatible server (ours below, or Search-R1's retrieval_server.py).

    `search` never raises: if the server is down, hangs, answers non-2xx, invalid JSON or the wrong
    shape, every query of the batch gets None (the sampler turns that into "Retrieval failed.").
    Time is bounded: retries + 1 attempts, each at most ~timeout (~3x timeout if the server trickles
    bytes), with backoff * 2**i seconds of sleep between them. `last_error` keeps the latest failure.
    """

    def __init__(self, url, timeout=10.0, retries=2, backoff=0.5):
        url = url.rstrip("/")
        self.url = url if url.endswith("/retrieve") else url + "/retrieve"
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.last_error = None

    def search(self, queries, topk=3):
        queries = list(queries)
        if not queries:
            return []
        payload = {"queries": queries, "topk": topk, "return_scores": True}
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._post(payload, len(queries))
            except Exception as e:  # deliberately broad: a flaky tool must not kill a training run
                self.last_error = f"{type(e).__name__}: {e}"
        return [None] * len(queries)

    def _post(self, payload, n):
        deadline = time.monotonic() + self.timeout
        # requests' timeout bounds each socket wait, not the whole body: stream it against a deadline.
        with requests.post(self.url, json=payload, timeout=self.timeout, stream=True) as r:
            r.raise_for_status()
            body = bytearray()
            for chunk in r.iter_content(1 << 16):
                body += chunk
                if time.monotonic() > deadline:
                    raise TimeoutError(f"response not complete after {self.timeout}s")
        result = json.loads(body).get("result")  # AttributeError if not an object: caught above
        if not isinstance(result, list) or len(result) != n:
            raise ValueError(f"expected 'result' to be a list of {n} lists")
        return [[_parse_hit(hit) for hit in hits] for hits in result]


def _parse_hit(hit):
    """{"document": {...}, "score": s} (return_scores) or a bare document -> {"id", "contents", "score"}."""
    doc, score = (hit["document"], hit.get("score")) if "document" in hit else (hit, None)
    if not isinstance(doc.get("contents"), str) or not isinstance(score, (int, float, type(None))):
        raise ValueError(f"malformed hit {str(hit)[:80]}")
    return {"id": str(doc.get("id", "")), "contents": doc["contents"], "score": score}


def make_search_tool(spec):
    """An http(s) URL -> RemoteSearch; anything else is a corpus JSONL path -> BM25Search."""
    if spec.startswith(("http://", "https://")):
        return RemoteSearch(spec)
    return BM25Search.from_jsonl(spec)

# ----------------------------------------------------------------------------- observations and actions

# Strings a retrieved document must never contain verbatim: the tags of both formats and of TAGS,
# chat-template special tokens (anything shaped <｜...｜> or <|...|>, e.g. <｜User｜>, <|im_end|>) and \boxed.
# Rule: in every occurrence, '<' '>' '\' become '(' ')' '/': '</think>' -> '(/think)', '\boxed{x}' ->
# '/boxed{x}'. It cannot create a new protected string: no tag holds '(' or ')', and a created '/' is
# always followed by 'boxed' (tests/test_env.py checks this on random concatenations of tag fragments).
DEFANG = str.maketrans("<>\\", "()/")


@lru_cache(maxsize=None)
def _protected_re(tags):
    literals = {*astuple(AUTOCOA), *astuple(SEARCH_R1), *astuple(tags), "\\boxed"}
    literals = sorted(literals, key=len, reverse=True)  # longest first at a shared start position
    return re.compile("|".join(map(re.escape, literals)) + r"|<[|｜][^<>\n]{0,40}?[|｜]>")


def sanitize(text, tags=TAGS):
    """Neutralise every tag / special token / \\boxed in a document (see DEFANG above)."""
    return _protected_re(tags).sub(lambda m: m.group().translate(DEFANG), text)


def format_observation(docs, limit_reached=False, tags=TAGS):
    """The exact text the sampler appends after the model's closing action tag.

    docs: a search result (list of {"contents": ...}), None for a failed retrieval, [] for no match.
    """
    if limit_reached:
        body = "Reach the limit of search times."  # upstream's wording
    elif docs is None:
        body = "Retrieval failed."
    elif not docs:
        body = "No results."
    else:  # flatten whitespace first, then sanitize (flattening cannot create a tag: tags hold no spaces)
        body = "\n".join(f"result {i}: {sanitize(' '.join(d['contents'].split()), tags)}"
                         for i, d in enumerate(docs, 1))
    return f"\n\n{tags.result_open} {body} {tags.result_close}\n\n"


def extract_query(text, tags=TAGS):
    """The stripped query of the last complete action, or None. Pass the completion (the instruction in
    the prompt shows an example action); the sampler calls this when generation stops at search_close."""
    end = text.rfind(tags.search_close)
    start = text.rfind(tags.search_open, 0, max(end, 0))
    if end < 0 or start < 0:
        return None
    return text[start + len(tags.search_open):end].strip()


def extract_answer(text, tags=TAGS):
    """Content of the last \\boxed{...} after the last think_close (nested braces balanced), or None.
    A last \\boxed whose braces never close (a cut-off answer) gives None. \\text{x} is unwrapped to x."""
    _, sep, tail = text.rpartition(tags.think_close)
    start = tail.rfind("\\boxed{")
    if not sep or start < 0:
        return None
    start += len("\\boxed{")
    depth = 1
    for j in range(start, len(tail)):
        depth += {"{": 1, "}": -1}.get(tail[j], 0)
        if depth == 0:
            return re.sub(r"\\text\{([^{}]*)\}", r"\1", tail[start:j]).strip()
    return None

# ----------------------------------------------------------------------------- EM, F1 and the reward


def normalize_answer(s):
    """SQuAD normalisation (lower-case, drop punctuation, drop a/an/the, squeeze spaces), identical to the
    official script on ASCII text. For unicode we go further: NFKD folds width/ligature variants
    ('Ｐａｒｉｓ', 'ﬁ') and splits accents, which are then dropped ('Beyoncé' == 'Beyonce'); every unicode
    punctuation character (category P*, e.g. '–' '“' '’') is dropped like ASCII punctuation."""
    s = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c)).lower()
    s = "".join(c for c in s if c not in string.punctuation and not unicodedata.category(c).startswith("P"))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _golds(golds):
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(pred, golds):
    """1.0 if the normalised prediction equals any normalised gold. A None prediction, or one that is
    empty after normalisation (e.g. '' or 'the'), scores 0.0 whatever the golds; no golds -> 0.0."""
    p = normalize_answer(pred) if pred is not None else ""
    return float(bool(p) and any(p == normalize_answer(g) for g in _golds(golds)))


def f1_score(pred, golds):
    """SQuAD token F1 (bag of normalised words), max over golds; empty prediction -> 0.0 as in EM."""
    p = normalize_answer(pred).split() if pred is not None else []
    best = 0.0
    for g in _golds(golds) if p else []:
        g = normalize_answer(g).split()
        common = sum((Counter(p) & Counter(g)).values())
        best = max(best, 2 * common / (len(p) + len(g)))  # = 2PR / (P + R)
    return best


def actions_closed(text, tags=TAGS):
    """Action tags alternate open, close, open, close, ... and end closed (no nested or stray tags)."""
    marks = re.findall(f"{re.escape(tags.search_open)}|{re.escape(tags.search_close)}", text)
    return len(marks) % 2 == 0 and all(m == (tags.search_open, tags.search_close)[i % 2]
                                       for i, m in enumerate(marks))


def reward(completion, golds, tags=TAGS):
    """The binary RL reward (REFERENCE.md, "Reward upstream": EM of the last \\boxed{} after </think>).

    `completion` is the generated text only (the prompt holds example tags). It scores 0.0 unless
      1. think_close occurs exactly once,
      2. actions_closed(): every search_open is closed by search_close before the next one,
      3. extract_answer() finds a balanced \\boxed{...} after that think_close;
    then it is exact_match(answer, golds) in {0.0, 1.0}.
    """
    if completion.count(tags.think_close) != 1 or not actions_closed(completion, tags):
        return 0.0
    answer = extract_answer(completion, tags)
    return exact_match(answer, golds) if answer is not None else 0.0

# ----------------------------------------------------------------------------- retrieval server


class BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class RetrievalServer(ThreadingHTTPServer):
    """Search-R1-compatible `POST /retrieve`, one thread per connection, sharing one read-only index.

    request  {"queries": [str, ...], "topk": int, "return_scores": bool (optional, default false)}
    response {"result": [[{"document": {"id", "contents"}, "score": float}, ...], ...]}   return_scores
             {"result": [[{"id", "contents"}, ...], ...]}                                  otherwise
    Bad requests get a 4xx with {"error": "..."}; `GET /health` answers {"status": "ok", "documents": N}.
    """
    daemon_threads = True

    def __init__(self, search, host="127.0.0.1", port=0, topk_max=50, max_queries=512, max_body=1 << 20):
        super().__init__((host, port), RetrieveHandler)
        self.search, self.topk_max, self.max_queries, self.max_body = search, topk_max, max_queries, max_body

    @property
    def url(self):
        return f"http://{self.server_address[0]}:{self.server_address[1]}/retrieve"


class RetrieveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a training loop reuses its connection
    timeout = 30  # seconds a connection may sit idle or stall mid-request before its thread gives up

    def log_request(self, code="-", size="-"):  # no access log line per request; errors still print
        pass

    def do_GET(self):
        if self.path == "/health":
            self._send(200, {"status": "ok", "documents": len(self.server.search)})
        else:
            self._send(404, {"error": f"no such path {self.path!r}; use POST /retrieve"})

    def do_POST(self):
        try:
            self._send(200, self._retrieve())
        except BadRequest as e:
            self._send(e.status, {"error": str(e)})
        except Exception as e:  # a bug in search: answer 500 and keep serving
            self.log_error("search failed: %r", e)
            self._send(500, {"error": f"internal error: {type(e).__name__}"})

    def _retrieve(self):
        srv = self.server
        if self.path.rstrip("/") != "/retrieve":
            raise BadRequest(404, f"no such path {self.path!r}; use POST /retrieve")
        try:
            length = int(self.headers["Content-Length"])
        except (TypeError, ValueError):
            raise BadRequest(411, "a numeric Content-Length header is required") from None
        if not 0 <= length <= srv.max_body:
            self.close_connection = True  # the unread body must not be parsed as the next request
            raise BadRequest(413, f"body must be at most {srv.max_body} bytes, got {length}")
        try:
            req = json.loads(self.rfile.read(length))
        except ValueError:
            raise BadRequest(400, "body is not valid JSON") from None
        if not isinstance(req, dict):
            raise BadRequest(400, "body must be a JSON object")
        queries, topk, return_scores = req.get("queries"), req.get("topk"), req.get("return_scores", False)
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise BadRequest(400, '"queries" must be a list of strings')
        if len(queries) > srv.max_queries:
            raise BadRequest(413, f"at most {srv.max_queries} queries per request, got {len(queries)}")
        if type(topk) is not int or not 1 <= topk <= srv.topk_max:  # type(): a bool is an int in Python
            raise BadRequest(400, f'"topk" must be an integer in [1, {srv.topk_max}], got {topk!r}')
        if not isinstance(return_scores, bool):
            raise BadRequest(400, '"return_scores" must be a boolean')
        results = srv.search.search(queries, topk)
        if return_scores:
            return {"result": [[{"document": {"id": h["id"], "contents": h["contents"]}, "score": h["score"]}
                                for h in hits] for hits in results]}
        return {"result": [[{"id": h["id"], "contents": h["contents"]} for h in hits] for hits in results]}

    def _send(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

# ----------------------------------------------------------------------------- command line


def main(argv=None):
    parser = argparse.ArgumentParser(description="Search tools for AutoCoA: a BM25 retrieval server and a query CLI.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a JSONL corpus with BM25 at POST /retrieve (Search-R1 schema)")
    serve.add_argument("--corpus", required=True, help='JSONL corpus, one {"id", "contents"} per line')
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (0 picks a free one)")
    serve.add_argument("--topk-max", type=int, default=50, help="largest topk a request may ask for")
    search = sub.add_parser("search", help="run one query and print the hits and the observation text")
    search.add_argument("--corpus", required=True, help="JSONL corpus, or the http(s) URL of a running server")
    search.add_argument("--topk", type=int, default=3, help="number of documents to retrieve")
    search.add_argument("query", help="the search query")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    tool = make_search_tool(args.corpus) if args.command == "search" else BM25Search.from_jsonl(args.corpus)
    if isinstance(tool, BM25Search):
        print(f"indexed {len(tool)} documents, {len(tool.vocab)} terms in {time.perf_counter() - t0:.1f}s", flush=True)
    if args.command == "serve":
        server = RetrievalServer(tool, args.host, args.port, topk_max=args.topk_max)
        print(f"serving on {server.url}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            server.server_close()
        return
    hits = tool.search([args.query], args.topk)[0]
    if hits is None:
        print(f"retrieval failed: {tool.last_error}")
    for h in hits or []:
        score = "-" if h["score"] is None else f"{h['score']:.3f}"
        print(f"{score:>8}  {h['id']:>10}  {' '.join(h['contents'].split())[:100]}")
    print(f"\nobservation the model would see:{format_observation(hits)}", end="")


if __name__ == "__main__":
    main()
