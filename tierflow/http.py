"""HTTP plumbing shared by tierflow's JSON servers (the webhook receiver and the search service).

Both are the standard library's threading HTTP server answering JSON. What they share lives here:

- :class:`JsonServer`: daemon request threads, a deep accept queue, IPv6 when the host is an IPv6
  address;
- :class:`JsonRequestHandler`: HTTP/1.1 keep-alive, JSON answers (:meth:`~JsonRequestHandler.send_json`),
  refusals that close the connection without reading the body and then drain what the client still
  sends (:meth:`~JsonRequestHandler.send_refusal`), ``Expect: 100-continue`` refused for oversized
  bodies, access lines logged at debug;
- :func:`content_length`: a strict ``Content-Length`` parser;
- :class:`Admission`: at most N requests admitted at once, the rest turned away (not queued);
- :class:`BackgroundServer`: serve in a daemon thread, stop with a bounded drain of the requests in
  flight; :func:`stop_on_signals` for a foreground ``serve()``.

Example:
    >>> class Handler(JsonRequestHandler):
    ...     max_body_bytes = 1 << 10
    ...
    ...     def do_GET(self) -> None:
    ...         self.send_json(200, {"status": "ok"})
    >>> server = JsonServer.create("127.0.0.1", 0, Handler, timeout_s=10)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = [
    "Admission",
    "BackgroundServer",
    "JsonRequestHandler",
    "JsonServer",
    "content_length",
    "stop_on_signals",
]

log = logging.getLogger(__name__)

_DIGITS = re.compile(r"[0-9]+")
_MAX_LENGTH_DIGITS = 18  # a longer Content-Length is over every body limit


def content_length(value: str) -> int | None:
    """A ``Content-Length`` value, or None when it is not one.

    ASCII digits only, as RFC 9110 says (``str.isdigit`` also takes ``²``, which ``int`` refuses). Over
    18 significant digits is over every body limit, and comes back as ``sys.maxsize``.
    """
    text = value.strip()
    if not _DIGITS.fullmatch(text):
        return None
    significant = text.lstrip("0") or "0"
    return int(significant) if len(significant) <= _MAX_LENGTH_DIGITS else sys.maxsize


class JsonServer(ThreadingHTTPServer):
    """A threading HTTP server that binds IPv6 when its host is an IPv6 address (it holds a ``:``).

    Example:
        >>> server = JsonServer.create("::1", 0, Handler, timeout_s=10)  # doctest: +SKIP
    """

    daemon_threads = True  # a client that never finishes its request does not keep the process alive
    request_queue_size = 128

    def __init__(
        self,
        server_address: tuple[str, int],
        handler_class: type[BaseHTTPRequestHandler],
        bind_and_activate: bool = True,
    ) -> None:
        if ":" in server_address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(server_address, handler_class, bind_and_activate)

    @classmethod
    def create(
        cls, host: str, port: int, handler_class: type[BaseHTTPRequestHandler], timeout_s: float
    ) -> Self:
        """Bind ``host:port`` (port 0 picks a free one) with ``timeout_s`` as every connection's socket
        timeout: reading a request, writing its answer, and how long an idle keep-alive connection stays.
        """
        handler = type(handler_class.__name__, (handler_class,), {"timeout": timeout_s})
        return cls((host, port), handler)


class JsonRequestHandler(BaseHTTPRequestHandler):
    """A request handler answering JSON over HTTP/1.1 keep-alive connections.

    Subclasses give :attr:`max_body_bytes` (a class attribute or a property) and set :attr:`logger` to
    their module's logger, which gets one debug line per request.

    Example:
        >>> class Handler(JsonRequestHandler):
        ...     max_body_bytes = 1 << 10
        ...
        ...     def do_GET(self) -> None:
        ...         self.send_json(200, {"status": "ok"})
    """

    protocol_version = "HTTP/1.1"
    sys_version = ""
    # Headers and body go out in two writes; with Nagle's algorithm the second waits for the client's
    # delayed ACK of the first, about 40 ms on every answer of a keep-alive connection.
    disable_nagle_algorithm = True
    logger: logging.Logger = log

    @property
    def max_body_bytes(self) -> int:
        """The largest request body accepted: larger ones are refused (413) before they are read."""
        raise NotImplementedError

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        self.logger.debug("%s %s", self.client_address[0], format % args)

    def handle_expect_100(self) -> bool:
        # An oversized body is refused before the client sends it: no "100 Continue", the route answers 413.
        length = content_length(self.headers.get("Content-Length", ""))
        if length is not None and length > self.max_body_bytes:
            return True
        return super().handle_expect_100()

    def send_json(
        self, status: int, payload: Mapping[str, Any], extra_headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer ``payload`` as JSON; ``Connection: close`` goes with it when the connection closes after."""
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_refusal(
        self,
        status: int,
        payload: Mapping[str, Any],
        extra_headers: Mapping[str, str] | None = None,
        *,
        unread: bool = False,
    ) -> None:
        """Answer an error, quietly giving up when the client has gone away.

        Args:
            status: The HTTP status.
            payload: The JSON answer.
            extra_headers: More headers (``Retry-After``, ``Allow``).
            unread: The request body was not (all) read: close the connection after the answer, and
                :meth:`linger` so that the client gets to read it.
        """
        if unread:
            self.close_connection = True
        try:
            self.send_json(status, payload, extra_headers)
        except OSError:
            return
        if unread:
            self.linger()

    def linger(self) -> None:
        """After refusing an unread body: stop writing, discard what the client still sends (bounded).

        Closing with unread data makes the kernel send a reset, which can destroy the answer before
        the client reads it.
        """
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            deadline, drained = time.monotonic() + 2.0, 0
            while drained < 4 * self.max_body_bytes and time.monotonic() < deadline:
                chunk = self.connection.recv(1 << 16)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass


class Admission:
    """At most ``limit`` requests admitted at once; one more is refused at once instead of queueing.

    Example:
        >>> slots = Admission(1)
        >>> slots.try_enter(), slots.try_enter(), slots.in_use
        (True, False, 1)
        >>> slots.leave(); slots.in_use
        0
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._in_use = 0

    @property
    def in_use(self) -> int:
        """Requests admitted now."""
        with self._lock:
            return self._in_use

    def try_enter(self) -> bool:
        """Take a slot; False (and nothing taken) when all ``limit`` are in use."""
        with self._lock:
            if self._in_use >= self.limit:
                return False
            self._in_use += 1
            return True

    def leave(self) -> None:
        """Give back a slot taken by :meth:`try_enter`."""
        with self._lock:
            if self._in_use <= 0:
                raise RuntimeError("Admission.leave() without a matching try_enter()")
            self._in_use -= 1


class BackgroundServer:
    """A :class:`JsonServer` served in a daemon thread, stopped with a bounded drain.

    Subclasses implement :meth:`start` (check :meth:`_check_startable`, bind with
    :meth:`JsonServer.create`, then :meth:`_serve_in_thread`) and :meth:`stop` (:meth:`_stop_serving`,
    then release what they hold). Request handlers bracket their work with :meth:`_enter` (False once
    stopping: refuse the request) and :meth:`_leave`, so that a stop waits for it.

    Example:
        >>> class Service(BackgroundServer):
        ...     def start(self) -> Service:
        ...         self._check_startable()
        ...         self._serve_in_thread(JsonServer.create("127.0.0.1", 0, Handler, 10), "service-http")
        ...         return self
        ...
        ...     def stop(self, drain_s: float = 10.0) -> None:
        ...         self._stop_serving(drain_s)
    """

    def __init__(self) -> None:
        self._server: JsonServer | None = None
        self._thread: threading.Thread | None = None
        self._flight = threading.Condition()
        self._inflight = 0
        self._stopping = False

    def start(self) -> Self:
        """Bind and serve in a background thread; returns self."""
        raise NotImplementedError

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop taking requests and let those in flight finish (up to ``drain_s``)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the server is bound to (the real port when configured with 0)."""
        if self._server is None:
            raise RuntimeError(f"the {type(self).__name__} is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def _check_startable(self) -> None:
        if self._server is not None or self._stopping:
            raise RuntimeError(f"a {type(self).__name__} starts once")

    def _serve_in_thread(self, server: JsonServer, thread_name: str) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.1,), name=thread_name, daemon=True
        )
        self._thread.start()

    def _stop_serving(self, drain_s: float) -> None:
        """Refuse new requests, close the listening socket, wait up to ``drain_s`` for those in flight."""
        with self._flight:
            self._stopping = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=drain_s)
        with self._flight:
            deadline = time.monotonic() + drain_s
            while self._inflight and time.monotonic() < deadline:
                self._flight.wait(deadline - time.monotonic())

    def _enter(self) -> bool:
        with self._flight:
            if self._stopping:
                return False
            self._inflight += 1
            return True

    def _leave(self) -> None:
        with self._flight:
            self._inflight -= 1
            self._flight.notify_all()


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event | None = None) -> Iterator[threading.Event]:
    """An event (``stop``, or a new one) that SIGINT and SIGTERM set while the block runs.

    The handlers are installed only in the main thread (elsewhere the event is just returned), and the
    previous ones are restored when the block ends.

    Example:
        >>> with stop_on_signals() as stop:  # doctest: +SKIP
        ...     while not stop.wait(0.5):
        ...         pass
    """
    event = stop or threading.Event()
    previous: dict[signal.Signals, Any] = {}
    try:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, lambda *_: event.set())
        yield event
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
