"""A fault-injecting S3 proxy for tests: a threaded HTTP/1.1 reverse proxy on loopback in front of moto.

boto3 and LanceDB's object store are pointed at the proxy's endpoint instead of moto's. Every request is
either forwarded byte-for-byte (request line, headers, a ``Content-Length`` or chunked / ``aws-chunked``
body, and the response the same way, over kept-alive connections) or, following a seeded plan, answered
with a fault:

- ``slowdown``: ``503 Slow Down`` with an S3 ``<Error><Code>SlowDown</Code>`` body (throttling);
- ``internal``: ``500 Internal Server Error`` with ``<Code>InternalError</Code>`` (a 5xx);
- ``timeout``: the request is read and never answered; the connection is held past the client's read
  timeout (``stall_s``) and then closed. The request never reaches the server;
- ``partial``: part of a PUT/POST body (a PutObject or UploadPart upload) is read, then the connection is
  closed (a partial upload: the server never sees the object);
- ``lost``: the request is forwarded and the server carries it out, but its response is never delivered
  (the connection is closed instead): what a client sees when a connection drops after a write landed;
- ``hang``: the request is forwarded and carried out, and its response is held past the client's read
  timeout (``stall_s``), then the connection is closed: a write that landed but timed out;
- ``deny``: ``403 Forbidden`` with ``<Code>AccessDenied</Code>`` (non-transient);
- ``down``: the outage starts here: the proxy switches to :attr:`S3FaultProxy.outage_mode` and this
  request is its first victim (a persistent outage that begins mid-operation, at a chosen request).

Modes: ``up`` (the plan applies), ``503`` (every request answered ``503 Service Unavailable``) and
``refuse`` (the listening socket is closed and open connections are cut: connection refused), for a
persistent outage. Counters: :attr:`S3FaultProxy.faults` (kind, or ``503`` for a request answered by
that mode -> count) and :attr:`S3FaultProxy.requests` (every request seen: method, target, what was
done). Connections refused in ``refuse`` mode never reach the proxy and are not counted.

``Expect: 100-continue`` is answered by the proxy itself (and not forwarded), so that a fault can be
answered before the body is sent, as S3 does.

Example:
    >>> with S3FaultProxy(moto_endpoint, FaultPlan([Fault("slowdown", 0.2)], seed=1)) as proxy:
    ...     boto3.client("s3", endpoint_url=proxy.endpoint).list_buckets()
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

KINDS = ("slowdown", "internal", "timeout", "partial", "lost", "hang", "deny", "down")
MODES = ("up", "503", "refuse")
_ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (500, "Internal Server Error", "InternalError", "We encountered an internal error."),
    "deny": (403, "Forbidden", "AccessDenied", "Access Denied"),
    "unavailable": (503, "Service Unavailable", "ServiceUnavailable", "Service is unable to handle request."),
}
_BODY_METHODS = ("PUT", "POST")


@dataclass(frozen=True)
class Fault:
    """One rule of a plan: requests matching ``methods`` and ``path`` get fault ``kind`` with probability
    ``rate``, at most ``limit`` times (0: no limit), and never before ``after`` matching requests were seen.

    Args:
        kind: One of :data:`KINDS`.
        rate: Probability per matching request (1.0: every one).
        methods: HTTP methods matched (empty: any). ``partial`` only ever applies to requests with a body.
        path: A regular expression searched in the request target (path and query), e.g. ``r"\\.lance$"``
            or ``"uploadId="``; empty matches any.
        limit: At most this many faults of this rule (0: unlimited).
        after: Matching requests let through before the rule starts.
    """

    kind: str
    rate: float = 1.0
    methods: tuple[str, ...] = ()
    path: str = ""
    limit: int = 0
    after: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"fault kind must be one of {KINDS}, got {self.kind!r}")

    def matches(self, method: str, target: str, has_body: bool) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.kind == "partial" and not has_body:
            return False
        return not self.path or re.search(self.path, target) is not None


@dataclass
class FaultPlan:
    """Rules tried in order for each request; the first that fires decides. Decisions come from one
    seeded generator, so a run with the same requests in the same order gets the same faults."""

    rules: list[Fault] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._seen: Counter[int] = Counter()
        self._fired: Counter[int] = Counter()
        self._lock = threading.Lock()

    def decide(self, method: str, target: str, has_body: bool) -> str | None:
        with self._lock:
            for i, rule in enumerate(self.rules):
                if not rule.matches(method, target, has_body):
                    continue
                self._seen[i] += 1
                if self._seen[i] <= rule.after or (rule.limit and self._fired[i] >= rule.limit):
                    continue
                if self._rng.random() < rule.rate:
                    self._fired[i] += 1
                    return rule.kind
            return None


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it, and what it did with it (``forwarded`` or a fault or mode)."""

    method: str
    target: str
    action: str
    at: float


class _Closed(Exception):
    """The peer closed the connection (or sent something that is not HTTP/1.1)."""


def _read_head(reader: Any) -> bytes:
    head = b""
    while True:
        line = reader.readline(65537)
        if not line:
            raise _Closed()
        if not head and line in (b"\r\n", b"\n"):
            continue  # stray CRLF between kept-alive requests
        head += line
        if line in (b"\r\n", b"\n"):
            return head
        if len(head) > 1 << 20:
            raise _Closed()


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    out: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            out[name.strip().lower()] = value.strip()
    return lines[0], out


def _read_chunked(reader: Any) -> bytes:
    """A chunked body, raw (sizes, extensions, data, trailers), to forward as it came."""
    raw = b""
    while True:
        line = reader.readline(65537)
        if not line:
            raise _Closed()
        raw += line
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, then the empty line
                trailer = reader.readline(65537)
                if not trailer:
                    raise _Closed()
                raw += trailer
                if trailer in (b"\r\n", b"\n"):
                    return raw
        data = reader.read(size + 2)
        if len(data) < size + 2:
            raise _Closed()
        raw += data


def _read_exact(reader: Any, n: int) -> bytes:
    data = reader.read(n)
    if len(data) < n:
        raise _Closed()
    return bytes(data)


def _error_response(kind: str, target: str, close: bool) -> bytes:
    status, reason, code, message = _ERRORS[kind]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{target.split('?')[0]}</Resource><RequestId>fault-proxy</RequestId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
        f"x-amz-request-id: fault-proxy\r\n{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
    )
    return head.encode() + body


class S3FaultProxy:
    """The proxy. Start it (or use it as a context manager), point clients at :attr:`endpoint`.

    Args:
        upstream: The S3 server's endpoint (``http://127.0.0.1:PORT``).
        plan: The faults to inject (default: none; change it with :meth:`set_plan`).
        stall_s: How long a ``timeout`` fault holds the connection; more than the client's read timeout.
    """

    def __init__(self, upstream: str, plan: FaultPlan | None = None, stall_s: float = 5.0) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.plan = plan or FaultPlan()
        self.stall_s = stall_s
        self.mode = "up"
        self.outage_mode = "503"  # what a ``down`` fault switches to
        self.faults: Counter[str] = Counter()
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._clients: set[socket.socket] = set()
        self.port = 0

    # ---- control ---------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> S3FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> str:
        self._listen()
        return self.endpoint

    def stop(self) -> None:
        self._stop.set()
        self._close_listener()
        self._cut_clients()

    def set_plan(self, plan: FaultPlan) -> None:
        self.plan = plan

    def set_mode(self, mode: str) -> None:
        """``up``, ``503`` (every request answered 503) or ``refuse`` (nothing listens on the port)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        with self._lock:
            previous, self.mode = self.mode, mode
        if mode == "refuse" and previous != "refuse":
            self._close_listener()
            self._cut_clients()
        elif mode != "refuse" and previous == "refuse":
            self._listen()

    def reset_counts(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    def seen(self, method: str | None = None, path: str = "") -> list[Seen]:
        """Requests seen, optionally only of ``method`` and with ``path`` searched in their target."""
        with self._lock:
            found = list(self.requests)
        return [
            r
            for r in found
            if (method is None or r.method == method) and (not path or re.search(path, r.target))
        ]

    # ---- plumbing --------------------------------------------------------------------------------
    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._accepting = threading.Thread(target=self._accept, args=(sock,), daemon=True)
        self._accepting.start()

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._accepting is not None:
            self._accepting.join(timeout=5)

    def _cut_clients(self) -> None:
        with self._lock:
            clients = list(self._clients)
        for conn in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with self._lock:
                self._clients.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _record(self, method: str, target: str, action: str) -> None:
        with self._lock:
            self.requests.append(Seen(method, target, action, time.time()))
            if action != "forwarded":
                self.faults[action] += 1

    def _serve(self, conn: socket.socket) -> None:
        upstream: socket.socket | None = None
        up_reader: Any = None
        reader = conn.makefile("rb")
        try:
            while not self._stop.is_set():
                try:
                    head = _read_head(reader)
                except (_Closed, OSError, ValueError):
                    return
                request_line, headers = _headers(head)
                method, target = (request_line.split(" ") + ["", ""])[:2]
                chunked = "chunked" in headers.get("transfer-encoding", "").lower()
                length = int(headers.get("content-length", "0") or 0)
                has_body = chunked or length > 0
                expect = headers.get("expect", "").lower() == "100-continue"
                if expect:  # answered here, not forwarded: the proxy decides before the body is sent
                    head = re.sub(rb"(?im)^expect:[^\r\n]*\r\n", b"", head)
                close = headers.get("connection", "").lower() == "close"

                kind = None
                if self.mode == "up":
                    kind = self.plan.decide(method, target, has_body and method in _BODY_METHODS)
                if kind == "down":
                    self._record(method, target, kind)
                    self.set_mode(self.outage_mode)
                    if self.mode == "refuse":
                        return
                if self.mode == "503":
                    self._record(method, target, "503")
                    conn.sendall(_error_response("unavailable", target, close=True))
                    return
                if kind in ("slowdown", "internal", "deny"):
                    self._record(method, target, kind)
                    if expect:  # as S3 does: the error instead of 100 Continue; the body is never sent
                        conn.sendall(_error_response(kind, target, close=True))
                        return
                    self._skip_body(reader, chunked, length)
                    conn.sendall(_error_response(kind, target, close=close))
                    if close:
                        return
                    continue
                if expect:
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                if kind == "partial":
                    self._record(method, target, kind)
                    want = max(1, (length or 2) // 2)
                    reader.read(want) if not chunked else reader.readline(65537)
                    return  # the connection is closed with the upload half read
                body = _read_chunked(reader) if chunked else _read_exact(reader, length)
                if kind == "timeout":
                    self._record(method, target, kind)
                    self._stop.wait(self.stall_s)
                    return
                # forward
                for attempt in range(2):
                    if upstream is None:
                        upstream = socket.create_connection(self.upstream, timeout=120)
                        up_reader = upstream.makefile("rb")
                    try:
                        upstream.sendall(head + body)
                        response, response_close = self._read_response(up_reader, method)
                        break
                    except (_Closed, OSError):
                        upstream.close()
                        upstream, up_reader = None, None
                        if attempt:
                            raise
                if kind in ("lost", "hang"):
                    self._record(method, target, kind)
                    if kind == "hang":
                        self._stop.wait(self.stall_s)
                    return  # the server did it; the client never hears
                self._record(method, target, "forwarded")
                conn.sendall(response)
                if response_close and upstream is not None:
                    upstream.close()
                    upstream, up_reader = None, None
                if close:
                    return
        except (_Closed, OSError, ValueError):
            return
        finally:
            with self._lock:
                self._clients.discard(conn)
            for sock in (conn, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()

    @staticmethod
    def _skip_body(reader: Any, chunked: bool, length: int) -> None:
        if chunked:
            _read_chunked(reader)
        elif length:
            _read_exact(reader, length)

    @staticmethod
    def _read_response(reader: Any, method: str) -> tuple[bytes, bool]:
        """One response from the server, raw; and whether the server closes the connection after it."""
        while True:
            head = _read_head(reader)
            status_line, headers = _headers(head)
            status = int(status_line.split(" ")[1])
            if 100 <= status < 200:
                continue  # an interim response the client never asked for (Expect was not forwarded)
            break
        close = headers.get("connection", "").lower() == "close"
        if method == "HEAD" or status in (204, 304):
            return head, close
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return head + _read_chunked(reader), close
        if "content-length" in headers:
            return head + _read_exact(reader, int(headers["content-length"])), close
        return head + reader.read(), True  # delimited by the close
