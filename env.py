"""The search environment: tags, search tools, observations, answer extraction and rewards.

Everything the sampler, the SFT data builders, GRPO and eval need from "the world outside the model":
  - the tag strings of the trajectory format and the instruction that tells the model about them,
  - two search tools with one interface, `search(queries, topk) -> [[{"id", "contents", "score"}], ...]`,
    `check()` (the start-up check a run makes: raises SearchError if the tool does not answer) and the
    counters `calls`, `failed_calls`, `last_error`:
      BM25Search    an in-process Okapi BM25 index over a JSONL corpus (numpy inverted index),
      RemoteSearch  a client for any Search-R1-compatible `POST /retrieve` server (never raises, never hangs,
                    never holds more than its max_bytes of an answer),
  - `check_failures`: the rule that stops a run when too many searches failed,
  - `format_observation`: the exact text injected after the model's closing action tag,
  - `extract_query` / `extract_answer`, SQuAD-style EM / F1, and the binary RL `reward`,
  - `python env.py serve`: the Search-R1-compatible retrieval server of server.py over a BM25 index, so
    that several training processes can share one index.

Simplified relative to the paper: the paper retrieves from wiki-18 with a dense/BM25 server; we ship a
pure-numpy BM25 (no stemming, no stop words: ranks differ slightly from Pyserini's Lucene analyzer)
sized for corpora of up to a few hundred thousand passages (bench/bench_server.py times the build). For
full wiki-18, run Search-R1's server and pass its URL.

Commands:
  python env.py serve --corpus corpus.jsonl --port 8000          # POST http://127.0.0.1:8000/retrieve
  python env.py search --corpus corpus.jsonl "who directed inception"
  python env.py search --corpus http://127.0.0.1:8000 "who directed inception"   # ask a server
  python -m pytest -q tests/test_env.py
  python bench/bench_server.py        # the server: 16 clients x 200 requests, alone and beside 300 slow ones
"""
import argparse
import json
import re
import socket
import ssl
import string
import time
import unicodedata
import urllib.parse
from array import array
from collections import Counter, defaultdict
from dataclasses import astuple, dataclass
from functools import lru_cache

import numpy as np

import jsonl
from server import RetrievalServer  # noqa: F401  (env.RetrievalServer: the server lives in server.py)

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
    """The instruction placed before each question: the user turn is `{instructions}\\n{question}`, as in the
    paper's code (docs/paper.md, the trajectory)."""
    return (f"Answer the question. While you think, you may search a Wikipedia-style corpus whenever a fact "
            f"is missing by writing {tags.search_open} your query {tags.search_close}. The results will be "
            f"given to you between {tags.result_open} and {tags.result_close}. You may search several times. "
            f"After {tags.think_close}, give the final short answer in \\boxed{{}}, e.g. \\boxed{{Paris}}.")


INSTRUCTION = instruction(TAGS)

# ----------------------------------------------------------------------------- corpus and BM25


CORPUS_ROWS = {"id": (str, int), "contents": str}


def load_corpus(path):
    """Read wiki-18 style JSONL rows {"id": str, "contents": '"Title"\\ntext'} (jsonl.read: blank lines skipped,
    a bad line or an empty corpus is a ValueError naming the file and line); ids become strings."""
    return [{"id": str(row["id"]), "contents": row["contents"]} for row in jsonl.read(path, CORPUS_ROWS)]


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
            flat.extend(map(vocab.__getitem__, toks))  # map/extend run in C, not a Python loop per token
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
        # RemoteSearch's counters, for one interface: in-process, a failure is an exception, never a None
        self.calls = self.failed_calls = 0
        self.last_error = None

    @classmethod
    def from_jsonl(cls, path, **kwargs):
        return cls(load_corpus(path), **kwargs)

    def __len__(self):
        return len(self.ids)

    def check(self):
        """The start-up check (one query), as RemoteSearch's; returns what the tool is."""
        self._search_one("start-up check", 1)
        return f"BM25Search over {len(self)} documents"

    def search(self, queries, topk=3):
        """Top-k documents per query. Only documents sharing a term with the query are returned, so a
        query of unknown words gets an empty list."""
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        queries = list(queries)
        self.calls += len(queries)  # unsynchronised: exact for one caller (a run), approximate in the server
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


class SearchError(RuntimeError):
    """A search tool failed its start-up check, or more of a run's searches failed than it allows."""


class ResponseTooLarge(ValueError):
    """A response beyond RemoteSearch's max_bytes."""


class HTTPStatusError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
        self.status = status


class RemoteSearch:
    """Client for a Search-R1-compatible server (server.py, or Search-R1's retrieval_server.py).

    `search` never raises: when the server is down, hangs, trickles, answers non-2xx, invalid JSON or the
    wrong shape, every query of the batch gets None (the sampler turns that into "Retrieval failed.").
    `calls` counts the queries asked, `failed_calls` those answered None, `last_error` keeps the latest
    failure; the caller decides when too many failed (check_failures). check() raises instead.
    Time is bounded whatever the server does: at most retries + 1 attempts of at most `timeout` seconds
    of wall clock each, with backoff * 2**i seconds of sleep between them. A 4xx is not retried: the
    request is at fault, and sending it again cannot help. Memory is bounded too: a response larger than
    `max_bytes` (by its Content-Length, or by the bytes read when it has none) is a failed search, not
    retried (it would be as large again).
    """

    # 64 MiB: far above any real answer (a batch of hundreds of queries x tens of passages of a few kB each
    # is a few MB of JSON), and a size that a run holds as bytes and then as parsed objects without trouble.
    # Without a cap a server that sends fast can fill memory before the deadline ends the read.
    MAX_BYTES = 64 << 20

    def __init__(self, url, timeout=10.0, retries=2, backoff=0.5, max_bytes=MAX_BYTES):
        parts = urllib.parse.urlsplit(url)
        path = parts.path.rstrip("/")
        path = path if path.endswith("/retrieve") else path + "/retrieve"
        self.url = f"{parts.scheme}://{parts.netloc}{path}"
        self.host, self.netloc, self.path, self.tls = parts.hostname, parts.netloc, path, parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.timeout, self.retries, self.backoff, self.max_bytes = timeout, retries, backoff, max_bytes
        self.calls = self.failed_calls = 0
        self.last_error = None

    def check(self):
        """The start-up check: one query, answered; raises SearchError naming the server and the error."""
        try:
            self._request(["start-up check"], 1)
        except Exception as e:
            raise SearchError(f"search server {self.url} failed its start-up check: {type(e).__name__}: {e}") from None
        return f"RemoteSearch {self.url}"

    def search(self, queries, topk=3):
        queries = list(queries)
        if not queries:
            return []
        self.calls += len(queries)
        try:
            return self._request(queries, topk)
        except Exception as e:  # deliberately broad: a flaky tool must not crash a run; it is counted instead
            self.failed_calls += len(queries)
            self.last_error = f"{type(e).__name__}: {e}"
            return [None] * len(queries)

    def _request(self, queries, topk):
        """The parsed result of one request, retried; raises the last attempt's error."""
        body = json.dumps({"queries": queries, "topk": topk, "return_scores": True}).encode()
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status, data = self._post(body)
                if not 200 <= status < 300:
                    raise HTTPStatusError(status, data)
                result = json.loads(data).get("result")  # AttributeError if not an object: an error like the rest
                if not isinstance(result, list) or len(result) != len(queries):
                    raise ValueError(f"expected 'result' to be a list of {len(queries)} lists")
                return [[_parse_hit(hit) for hit in hits] for hits in result]
            except Exception as e:
                error = e
                if isinstance(e, HTTPStatusError) and 400 <= e.status < 500 or isinstance(e, ResponseTooLarge):
                    break
        raise error

    def _post(self, body):
        """One POST on a fresh connection -> (status, body bytes), in at most self.timeout seconds.

        Why raw sockets: requests' and http.client's timeouts bound each socket read, not the whole
        answer, so a server that sends a byte every few seconds keeps them waiting forever. Here every
        blocking socket call gets the time left until the deadline as its timeout. The request is
        HTTP/1.0 with Connection: close, so the answer has a Content-Length or ends when the server
        closes, never in chunks. (A TLS handshake is bounded per step, not as a whole.)
        """
        deadline = time.monotonic() + self.timeout

        def left():
            t = deadline - time.monotonic()
            if t <= 0:
                raise TimeoutError(f"no complete answer within {self.timeout}s")
            return t
        head = (f"POST {self.path} HTTP/1.0\r\nHost: {self.netloc}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        data, end, status, length = bytearray(), -1, None, None
        try:
            sock = socket.create_connection((self.host, self.port), timeout=left())
            if self.tls:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
            with sock:
                sock.settimeout(left())
                sock.sendall(head + body)  # one timeout for the whole sendall (Python >= 3.5)
                while length is None or len(data) < end + 4 + length:  # until Content-Length bytes, or EOF
                    sock.settimeout(left())
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
                    if end < 0 and (end := data.find(b"\r\n\r\n")) >= 0:
                        status, length = _http_head(bytes(data[:end]))
                        if length is not None and length > self.max_bytes:  # refused before its body is read
                            raise ResponseTooLarge(f"response of {length} bytes (its Content-Length), more than "
                                                   f"max_bytes {self.max_bytes}")
                    if length is None and len(data) - (end + 4 if end >= 0 else 0) > self.max_bytes:  # counted as
                        raise ResponseTooLarge(f"response longer than max_bytes {self.max_bytes} "  # it comes
                                               f"({len(data)} bytes read, headers included)")
        except TimeoutError:  # socket.timeout, from a wait that was given what was left
            raise TimeoutError(f"no complete answer within {self.timeout}s ({len(data)} bytes came)") from None
        if status is None:
            raise ConnectionError("connection closed before the response headers ended")
        if length is not None and len(data) < end + 4 + length:
            raise ConnectionError(f"body shorter than its Content-Length ({len(data) - end - 4} of {length} bytes)")
        return status, bytes(data[end + 4:])


def _http_head(head):
    """The status line and headers of a response -> (status, Content-Length or None)."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status = (status_line.split(" ") + [""])[:2]
    if not version.startswith("HTTP/") or not status.isdigit():
        raise ValueError(f"not an HTTP response: {status_line[:80]!r}")
    fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    if "transfer-encoding" in fields:
        raise ValueError(f"Transfer-Encoding {fields['transfer-encoding']!r} in an answer to HTTP/1.0")
    length = fields.get("content-length")
    return int(status), int(length) if length is not None else None


def _parse_hit(hit):
    """{"document": {...}, "score": s} (return_scores) or a bare document -> {"id", "contents", "score"}."""
    doc, score = (hit["document"], hit.get("score")) if "document" in hit else (hit, None)
    if not isinstance(doc.get("contents"), str) or not isinstance(score, (int, float, type(None))):
        raise ValueError(f"malformed hit {str(hit)[:80]}")
    return {"id": str(doc.get("id", "")), "contents": doc["contents"], "score": score}


def check_failures(failed, calls, max_fraction, where, last_error=None):
    """Stop a run (SearchError) when more than max_fraction of `calls` searches failed: it must not go on
    scoring or training on "Retrieval failed." as if the tool had answered."""
    if calls and failed > max_fraction * calls:
        raise SearchError(f"{where}: {failed} of {calls} searches failed, more than --max-search-failures "
                          f"{max_fraction}; last error: {last_error}. Is the retrieval server up?")


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
        body = "Reach the limit of search times."  # the paper's code's wording (docs/paper.md)
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


def observations(text, tags=TAGS):
    """The texts between the result tags in a completion, in order: what the tool (or, simulated, the model)
    returned for each action."""
    return re.findall(re.escape(tags.result_open) + r"(.*?)" + re.escape(tags.result_close), text, re.S)


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
    """The binary RL reward (docs/paper.md, reward): EM of the last \\boxed{} after </think>.

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

# ----------------------------------------------------------------------------- command line


def main(argv=None):
    parser = argparse.ArgumentParser(description="Search tools for AutoCoA: a BM25 retrieval server and a query CLI.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a JSONL corpus with BM25 at POST /retrieve (Search-R1 schema)")
    serve.add_argument("--corpus", required=True, help='JSONL corpus, one {"id", "contents"} per line')
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (0 picks a free one)")
    serve.add_argument("--topk-max", type=int, default=50, help="largest topk a request may ask for")
    serve.add_argument("--topk-default", type=int, default=3,
                       help="topk of a request that gives none (3, as Search-R1's retriever)")
    serve.add_argument("--workers", type=int, default=8, help="threads that search (requests beyond wait their turn)")
    serve.add_argument("--max-connections", type=int, default=1024, help="connections held at once (more get 503)")
    serve.add_argument("--request-timeout", type=float, default=10.0,
                       help="seconds a request has, from its first byte, to arrive whole (then 408)")
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
        server = RetrievalServer(tool, args.host, args.port, topk_max=args.topk_max, default_topk=args.topk_default,
                                 workers=args.workers, max_connections=args.max_connections,
                                 request_timeout=args.request_timeout)
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
