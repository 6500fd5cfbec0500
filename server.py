"""A Search-R1-compatible retrieval server that slow or malformed clients cannot starve.

    request  POST /retrieve {"queries": [str, ...], "topk": int (optional, default `default_topk`, 3),
                             "return_scores": bool (optional, default false)}
    response {"result": [[{"document": {"id", "contents"}, "score": float}, ...], ...]}   return_scores
             {"result": [[{"id", "contents"}, ...], ...]}                                  otherwise
    GET /health -> {"status": "ok", "documents": N}. Every error is a 4xx/5xx with {"error": "..."}.
    As in Search-R1's retrieval_server.py, a request without "topk" (or with null) gets the server's default;
    3 is its retriever's default (`python env.py serve --topk-default`).

How it is built, and why:
  - Network I/O and searching are apart. One asyncio event loop holds every connection, so an idle or
    trickling client costs a coroutine, not a thread. Only a complete request goes to the fixed pool
    of `workers` threads that parse, validate and search (numpy's BM25 releases the GIL in its
    gathers and sums, so workers overlap). A thread-per-connection server has no such line: a few
    hundred clients that each send one byte every few seconds hold every thread.
  - A deadline per request, not per read: from its first byte, a request has `request_timeout`
    seconds to arrive whole, or it gets 408 and the connection is closed. A per-read timeout never
    fires on a client that sends one byte just before it would. A new connection must start its first
    request within `request_timeout`; a kept-alive one may wait `idle_timeout` for its next.
  - At most `max_connections` connections at once (more get 503); the listen backlog is as large (up to
    the kernel's net.core.somaxconn), so a burst of connects waits in the kernel instead of being dropped
    and retried a second later.
  - One write per response, headers and body together, on a TCP_NODELAY socket (asyncio sets it):
    written in two pieces, the second waits for the client's delayed ACK (Nagle's algorithm), tens
    of milliseconds per request on a keep-alive connection.
  - Framing is strict, so that no bytes of one request are read as the next (request smuggling): a
    POST needs a numeric Content-Length (411 otherwise, Transfer-Encoding is refused), at most
    `max_body` bytes (413); after any such framing error the connection is closed. A body that ends
    early (the client closed) is a 400. A body that was read whole keeps the connection whatever the
    answer: 404, 405, 415 (a Content-Type that is not JSON), 400 (bad JSON, too deep a nesting, bad
    fields), 500 (a bug in search, logged).

    python env.py serve --corpus corpus.jsonl --port 8000 --workers 8
    python -m pytest -q tests/test_env.py
    python bench/bench_server.py          # latency, alone and beside 300 slow connections
"""
import asyncio
import json
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           411: "Length Required", 413: "Content Too Large", 415: "Unsupported Media Type",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class BadRequest(Exception):
    """An error answer. close: the connection cannot be trusted any more (its framing is unknown)."""

    def __init__(self, status, message, close=False):
        super().__init__(message)
        self.status, self.close = status, close


def response(status, payload, keep_alive=True):
    """The whole HTTP response as one bytes object (one write: see Nagle above)."""
    body = json.dumps(payload).encode()
    close = "" if keep_alive else "Connection: close\r\n"
    head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{close}\r\n")
    return head.encode() + body


class RetrievalServer:
    """Serves `search` (anything with .search(queries, topk) and len()) at POST /retrieve.

    The socket is bound at construction (so `url` is known, also with port=0); serve_forever() runs the
    event loop in the calling thread until shutdown() is called from another one.
    """

    def __init__(self, search, host="127.0.0.1", port=0, topk_max=50, default_topk=3, max_queries=512,
                 max_body=1 << 20, workers=8, max_connections=1024, request_timeout=10.0, idle_timeout=300.0,
                 max_header=16384):
        if type(default_topk) is not int or not 1 <= default_topk <= topk_max:
            raise ValueError(f"default_topk must be an integer in [1, topk_max {topk_max}], got {default_topk!r}")
        self.search, self.topk_max, self.max_queries, self.max_body = search, topk_max, max_queries, max_body
        self.default_topk = default_topk
        self.workers, self.max_connections, self.max_header = workers, max_connections, max_header
        self.request_timeout, self.idle_timeout = request_timeout, idle_timeout
        self.socket = socket.create_server((host, port), backlog=max_connections)
        self.server_address = self.socket.getsockname()[:2]
        self.connections = 0
        self._ready, self._done = threading.Event(), threading.Event()

    @property
    def url(self):
        return f"http://{self.server_address[0]}:{self.server_address[1]}/retrieve"

    # ---- life cycle (the names of socketserver's, so it drops in where ThreadingHTTPServer was)

    def serve_forever(self, poll_interval=None):
        """Serve until shutdown(). poll_interval is ignored (socketserver's signature)."""
        try:
            asyncio.run(self._serve())
        finally:
            self._done.set()

    def shutdown(self):
        """From another thread: stop serve_forever and wait until it has returned."""
        self._ready.wait()
        self._loop.call_soon_threadsafe(self._stop.set)
        self._done.wait()

    def server_close(self):
        self.socket.close()

    async def _serve(self):
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="search") as self._pool:
            # limit: the most bytes readuntil() looks through for the end of the headers
            # backlog again: given a bound socket, start_server calls listen() once more, with its own default
            # (100), which would replace the one the socket was created with
            server = await asyncio.start_server(self._connection, sock=self.socket, limit=self.max_header,
                                                backlog=self.max_connections)
            async with server:
                self._ready.set()
                await self._stop.wait()

    # ---- one connection: requests one after the other (keep-alive) until one says close

    async def _connection(self, reader, writer):
        if self.connections >= self.max_connections:
            writer.write(response(503, {"error": f"more than {self.max_connections} connections"}, False))
            await self._close(reader, writer)
            return
        self.connections += 1
        try:
            if await self._exchange(reader, writer, self.request_timeout):  # a new connection has no idle time
                while await self._exchange(reader, writer, self.idle_timeout):
                    pass
        except (ConnectionError, asyncio.TimeoutError):  # the client went away, or would not read our answer
            pass
        finally:
            self.connections -= 1
            await self._close(reader, writer)

    @staticmethod
    async def _close(reader, writer):
        """Close without losing the last answer: closing a socket that holds unread input makes the kernel
        send a reset, which can overtake the answer still in flight. So end our side first, discard what
        the client still sends (for at most a second), then close."""
        async def discard():
            while await reader.read(1 << 16):
                pass
        try:
            writer.write_eof()
            await asyncio.wait_for(discard(), 1.0)
        except (OSError, asyncio.TimeoutError):
            pass
        writer.close()

    async def _exchange(self, reader, writer, idle_timeout):
        """Read one request, answer it; False when the connection is to be closed. idle_timeout: how long
        to wait for the request's first byte (between keep-alive requests, a connection costs nothing)."""
        try:
            first = await asyncio.wait_for(reader.read(1), idle_timeout)
        except asyncio.TimeoutError:  # (an alias of TimeoutError from Python 3.11)
            return False
        if not first:
            return False  # closed by the client between requests
        try:
            request = await asyncio.wait_for(self._read(first, reader, writer), self.request_timeout)
            method, path, headers, body, keep_alive = request
            status, payload = await self._loop.run_in_executor(self._pool, self._answer, method, path, headers, body)
        except BadRequest as e:
            status, payload, keep_alive = e.status, {"error": str(e)}, not e.close
        except asyncio.TimeoutError:
            status, payload, keep_alive = 408, {"error": f"request not complete {self.request_timeout}s after "
                                                         "its first byte"}, False
        except asyncio.IncompleteReadError as e:  # the client closed its side mid-request
            said = "body shorter than its Content-Length" if e.expected else "connection closed inside the headers"
            status, payload, keep_alive = 400, {"error": said}, False
        writer.write(response(status, payload, keep_alive))
        await asyncio.wait_for(writer.drain(), self.request_timeout)
        return keep_alive

    async def _read(self, first, reader, writer):
        """Request line, headers and body -> (method, path, headers, body, keep_alive)."""
        try:
            head = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise BadRequest(431, f"request line and headers must fit in {self.max_header} bytes", True) from None
        request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
            raise BadRequest(400, f"malformed request line {request_line[:100]!r}", True)
        method, path, version = parts
        headers = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise BadRequest(400, f"malformed header line {line[:100]!r}", True)
            name, value = name.lower(), value.strip()
            if name in headers and name in ("content-length", "transfer-encoding"):  # two framings: which one?
                raise BadRequest(400, f"more than one {name} header", True)
            headers[name] = value
        connection = headers.get("connection", "").lower()
        keep_alive = connection == "keep-alive" if version == "HTTP/1.0" else connection != "close"
        if "transfer-encoding" in headers:
            raise BadRequest(411, "Transfer-Encoding is not supported: send a Content-Length", True)
        length = headers.get("content-length")
        if length is None and method == "POST" or length is not None and not (length.isascii() and length.isdigit()):
            raise BadRequest(411, "a numeric Content-Length header is required", True)
        length = int(length or 0)
        if length > self.max_body:
            raise BadRequest(413, f"body must be at most {self.max_body} bytes, got {length}", True)
        if length and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(length)
        return method, path, headers, body, keep_alive

    # ---- in a worker thread: a complete request -> (status, payload)

    def _answer(self, method, path, headers, body):
        try:
            if path == "/health":
                if method != "GET":
                    raise BadRequest(405, "use GET /health")
                return 200, {"status": "ok", "documents": len(self.search)}
            if path.rstrip("/") != "/retrieve":
                raise BadRequest(404, f"no such path {path!r}; use POST /retrieve")
            if method != "POST":
                raise BadRequest(405, f"use POST /retrieve, not {method}")
            mime = headers.get("content-type", "application/json").split(";")[0].strip().lower()
            if not (mime == "application/json" or mime.endswith("+json")):  # no header: JSON is assumed
                raise BadRequest(415, f"Content-Type must be application/json, got {headers['content-type']!r}")
            return 200, self._retrieve(body)
        except BadRequest as e:
            return e.status, {"error": str(e)}
        except Exception as e:  # a bug in search: answer 500 and keep serving
            print(f"[server] search failed: {e!r}", file=sys.stderr, flush=True)
            return 500, {"error": f"internal error: {type(e).__name__}"}

    def _retrieve(self, body):
        try:
            req = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: arrays nested deeper than the parser's stack
            raise BadRequest(400, "body is not valid JSON (or nests too deep)") from None
        if not isinstance(req, dict):
            raise BadRequest(400, "body must be a JSON object")
        queries, return_scores = req.get("queries"), req.get("return_scores", False)
        topk = req.get("topk")
        topk = self.default_topk if topk is None else topk  # absent or null: optional, as in Search-R1's server
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise BadRequest(400, '"queries" must be a list of strings')
        if len(queries) > self.max_queries:
            raise BadRequest(413, f"at most {self.max_queries} queries per request, got {len(queries)}")
        if type(topk) is not int or not 1 <= topk <= self.topk_max:  # type(): a bool is an int in Python
            raise BadRequest(400, f'"topk" must be an integer in [1, {self.topk_max}], got {topk!r}')
        if not isinstance(return_scores, bool):
            raise BadRequest(400, '"return_scores" must be a boolean')
        results = self.search.search(queries, topk)
        if return_scores:
            return {"result": [[{"document": {"id": h["id"], "contents": h["contents"]}, "score": h["score"]}
                                for h in hits] for hits in results]}
        return {"result": [[{"id": h["id"], "contents": h["contents"]} for h in hits] for hits in results]}
