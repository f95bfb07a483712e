"""HTTP search service: the federated :class:`~indexing.search.Searcher` behind a small JSON API.

``tierflow serve`` runs it. Like the webhook receiver it is the standard library's threading HTTP server,
bound to loopback unless ``[serve] host`` says otherwise (put a TLS-terminating proxy in front to expose it).

=====================  ==========================================================================
endpoint               answer
=====================  ==========================================================================
``POST /v1/search``    ``{"query", "k", "tiers", "filter"}`` -> ``{"results", "took_ms", "generation"}``
``GET /healthz``       200 while the process serves HTTP (liveness)
``GET /readyz``        200 once the model is loaded and the index has a committed generation made with
                       that model; 503 before (readiness)
``GET /openapi.json``  the OpenAPI 3.1 description of all of this, with the configured limits
=====================  ==========================================================================

Errors answer ``{"error": code, "detail": "..."}``:

======  ======================================================================================
status  codes
======  ======================================================================================
400     ``malformed_json``, ``invalid_field`` (the detail names the field), ``bad_framing``,
        ``incomplete_body``, ``bad_request`` (an unparsable request line or header)
404     ``not_found``
405     ``method_not_allowed`` (with ``Allow``)
408     ``request_timeout``: the body did not arrive within ``request_timeout_s``
411     ``length_required``: a search needs ``Content-Length``
413     ``too_large``: from ``Content-Length``, before the body is read
415     ``unsupported_media_type``: only ``application/json``
503     ``overloaded`` (``max_concurrent`` searches are admitted), ``timeout`` (an admitted search
        waited ``request_timeout_s`` for the index), ``not_ready``, ``tier_unavailable`` (the cold
        tier's object store failed), ``stopping``; every 503 carries ``Retry-After``
500     ``internal`` (logged with its traceback)
======  ======================================================================================

Back-pressure: at most ``max_concurrent`` searches are admitted at once (reading their body, waiting for
the index or searching); one more is answered 503 with ``Retry-After`` straight away, its body unread,
instead of queueing without bound, so request bodies in memory stay under ``max_concurrent ×
max_body_bytes``. Admitted searches take the index one at a time: the Searcher's caches, its access log,
the Lance table handle and GPU FAISS indexes are not made for concurrent use.

Shadow reads (optional): with a :class:`~indexing.shadow.ShadowReads`, every search answered 200 is then
(after its answer is sent) queued to be repeated on a candidate index version in a background thread,
which logs how the two top-k agree; the answers, and every endpoint, are those without it.

Freshness: every search reads the index's ``CURRENT`` pointer (one small file) and loads the manifest it
names when that changed, so a commit (or a rollback) is served from the next request on. Each answer
names the generation it searched.

Example:
    >>> searcher = Searcher(HotIndex("tierflow-data/hot"), EmbeddingConfig(), track_access=True)
    >>> with SearchService(searcher, ServeConfig(port=0)) as service:  # doctest: +SKIP
    ...     service.wait_ready(60)
    ...     print(service.url)
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from indexing.hot import TIERS
from indexing.manifest import CURRENT, Manifest
from indexing.search import Searcher
from indexing.shadow import ShadowReads
from tierflow import __version__, jsonparse, metrics
from tierflow.errors import ConfigError, TierflowError, Transient
from tierflow.http import (
    Admission,
    BackgroundServer,
    JsonRequestHandler,
    JsonServer,
    content_length,
    stop_on_signals,
)

__all__ = [
    "HEALTH_PATH",
    "METRICS_PATH",
    "OPENAPI_PATH",
    "READY_PATH",
    "SEARCH_PATH",
    "SearchRequest",
    "SearchService",
    "ServeConfig",
    "load_serve_config",
    "openapi",
    "parse_search_request",
    "serve",
]

log = logging.getLogger(__name__)

SEARCH_PATH = "/v1/search"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
OPENAPI_PATH = "/openapi.json"
METRICS_PATH = "/metrics"
ROUTES = {
    SEARCH_PATH: "POST",
    HEALTH_PATH: "GET",
    READY_PATH: "GET",
    OPENAPI_PATH: "GET",
    METRICS_PATH: "GET",
}
DEFAULT_K = 10
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ServeConfig:
    """The search service's settings: ``[serve]`` in ``tierflow.toml``, ``TIERFLOW__SERVE__*``.

    Args:
        host: Address to bind; loopback by default.
        port: TCP port; 0 picks a free one.
        max_body_bytes: Largest request body (413 above it).
        max_k: Largest ``k`` a request may ask for.
        max_concurrent: Searches admitted at once (reading, waiting for the index or searching); one
            more is answered 503 with ``Retry-After``.
        request_timeout_s: Socket timeout while reading a request or writing its answer (an idle
            keep-alive connection is closed after it), the longest a search body may take to arrive
            (408 after it), and the longest an admitted search waits for the index (503 after it).
    """

    host: str = "127.0.0.1"
    port: int = 8788
    max_body_bytes: int = 64 << 10
    max_k: int = 100
    max_concurrent: int = 16
    request_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve.port must be in [0, 65535], got {self.port}")
        for name in ("max_body_bytes", "max_k", "max_concurrent"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve.{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.request_timeout_s) and self.request_timeout_s > 0):
            raise ConfigError(f"serve.request_timeout_s must be > 0, got {self.request_timeout_s}")


def load_serve_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServeConfig:
    """Resolve the service's settings: overrides > ``TIERFLOW__SERVE__*`` > ``[serve]`` in TOML > defaults.

    Raises:
        ConfigError: A missing or invalid file, an unknown key, or a bad value.
    """
    from tierflow.config import load_settings

    config: ServeConfig = load_settings(
        ServeConfig, "serve", path, dict(overrides or {}), None if environ is None else dict(environ)
    )
    return config


# --- requests ----------------------------------------------------------------------------------------


class RequestRefused(TierflowError):
    """A request is answered with an error: ``status``, a stable ``error`` code, a ``detail`` for the
    client, and for 503s the seconds it should wait (``Retry-After``)."""

    def __init__(self, status: int, error: str, detail: str, retry_after: int | None = None) -> None:
        super().__init__(status, error, detail, retry_after)
        self.status = status
        self.error = error
        self.detail = detail
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.status} {self.error}: {self.detail}"


@dataclass(frozen=True)
class SearchRequest:
    """A parsed ``POST /v1/search`` body."""

    query: str
    k: int = DEFAULT_K
    tiers: tuple[str, ...] | None = None
    filter: dict[str, Any] | None = None


_REQUEST_FIELDS = ("query", "k", "tiers", "filter")


def _invalid(detail: str) -> RequestRefused:
    return RequestRefused(400, "invalid_field", detail)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def parse_search_request(body: bytes, max_k: int) -> SearchRequest:
    """Decode and check a search body (strict JSON: :func:`tierflow.jsonparse.loads`).

    Raises:
        RequestRefused: 400 ``malformed_json`` or ``invalid_field`` (the detail names the field).
    """
    try:
        data = jsonparse.loads(body)
    except jsonparse.JsonRejected as err:  # not_utf8 too: this API has one code for an unreadable body
        raise RequestRefused(400, "malformed_json", err.detail) from None
    if not isinstance(data, dict):
        raise _invalid("the body must be a JSON object")
    unknown = sorted(set(data) - set(_REQUEST_FIELDS))
    if unknown:
        raise _invalid(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(_REQUEST_FIELDS)}")
    query = data.get("query")
    if not isinstance(query, str) or not query.strip():
        raise _invalid("query must be a non-empty string")
    k = data.get("k", min(DEFAULT_K, max_k))
    if isinstance(k, float) and k.is_integer():
        k = int(k)  # JSON Schema's "integer" includes 85.0
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise _invalid(f"k must be an integer in [1, {max_k}], got {json.dumps(k)[:40]}")
    tiers = data.get("tiers")
    if tiers is not None:
        if (
            not isinstance(tiers, list)
            or not tiers
            or not all(isinstance(t, str) and t in TIERS for t in tiers)
            or len(set(tiers)) != len(tiers)
        ):
            raise _invalid(f"tiers must be a non-empty list of distinct tiers out of {', '.join(TIERS)}")
        tiers = tuple(tiers)
    where = data.get("filter")
    if where is not None:
        if not isinstance(where, dict):
            raise _invalid("filter must be an object: metadata key -> a value or a list of values")
        for key, value in where.items():
            if not key:
                raise _invalid("filter keys must be non-empty")
            if isinstance(value, list):
                if not value or not all(_is_scalar(v) for v in value):
                    raise _invalid(
                        f"filter.{key} must be a non-empty list of strings, numbers, booleans or null"
                    )
            elif not _is_scalar(value):
                raise _invalid(f"filter.{key} must be a string, number, boolean, null or a list of them")
    return SearchRequest(query, k, tiers, where or None)


# --- the service --------------------------------------------------------------------------------------


class _Server(JsonServer):
    service: SearchService


class SearchService(BackgroundServer):
    """An HTTP server answering searches over one index with a :class:`~indexing.search.Searcher`.

    Args:
        searcher: The Searcher to serve; :meth:`start` loads its model (once, in the background) and
            opens the index; :meth:`stop` closes it (flushing its access log).
        config: Bind address and limits.
        shadow: Shadow reads of a candidate index version: each answered search is submitted to it once
            its answer is sent. :meth:`start` starts it (once the live model is loaded), :meth:`stop`
            closes it.

    Example:
        >>> searcher = Searcher(HotIndex("tierflow-data/hot"), EmbeddingConfig())
        >>> with SearchService(searcher, ServeConfig(port=0)) as service:  # doctest: +SKIP
        ...     service.wait_ready(60)
        ...     print(service.url)
    """

    def __init__(self, searcher: Searcher, config: ServeConfig, shadow: ShadowReads | None = None) -> None:
        super().__init__()
        self.searcher = searcher
        self.config = config
        self.shadow = shadow
        self.counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self.admission = Admission(config.max_concurrent)
        self._index_lock = threading.Lock()
        self._manifest_lock = threading.Lock()
        self._manifest_name: str | None = None
        self._manifest = Manifest()
        self._identity: dict[str, Any] | None = None
        self._warmed = threading.Event()
        self._warm_error: Exception | None = None

    # lifecycle

    def start(self) -> Self:
        """Bind, serve in a background thread, and load the model and open the index in another."""
        self._check_startable()
        server = _Server.create(self.config.host, self.config.port, _Handler, self.config.request_timeout_s)
        server.service = self
        self._serve_in_thread(server, "search-http")
        threading.Thread(target=self._warm_up, name="search-warm-up", daemon=True).start()
        log.info("search service listening on %s", self.url)
        return self

    def _warm_up(self) -> None:
        try:
            self.searcher.warm_up()
            self._identity = self.searcher.embedder.identity()
        except Exception as err:  # reported by readiness and by serve(); the process stays up
            self._warm_error = err
            log.error("search service: the embedding model did not load: %s", err)
            self._warmed.set()
            return
        try:
            ready, detail, manifest = self.readiness()
            if ready and manifest is not None:
                # Open the index now (segments, document table, cold table) rather than on the first query;
                # a chunk search is not a document hit, so nothing is recorded as accessed.
                with self._index_lock:
                    vectors = self.searcher.embed_queries(["warm up"], manifest)
                    self.searcher.chunk_search(vectors, 1, manifest)
            else:
                log.warning("search service: not ready yet: %s", detail)
        except Exception as err:  # the next request tries again
            log.warning("search service: opening the index failed: %s", err)
        finally:
            self._warmed.set()
            # The candidate's model loads after the live one: readiness first, and the first query
            # embeddings of the (maybe shared) model are not made from two threads at once.
            if self.shadow is not None and not self._stopping:
                self.shadow.start()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the model is loaded, then report whether the service is ready."""
        self._warmed.wait(timeout_s)
        return self.readiness()[0]

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop taking requests, let those in flight finish (up to ``drain_s``), close the searcher, then
        the shadow reads (their queue drained for up to ``drain_s``)."""
        self._stop_serving(drain_s)
        try:
            if not self._index_lock.acquire(timeout=drain_s):
                log.warning("search service: a search is still running; the access log is not flushed")
                return
            try:
                self.searcher.close()
            finally:
                self._index_lock.release()
        finally:
            if self.shadow is not None:
                self.shadow.close(drain_s)

    @property
    def warm_error(self) -> Exception | None:
        """Why the embedding model did not load (None while loading or once loaded)."""
        return self._warm_error

    # the index

    def manifest(self) -> Manifest:
        """The committed manifest to serve: the one ``CURRENT`` names, reloaded when that changes."""
        index = self.searcher.index
        try:
            name = (index.root / CURRENT).read_text().strip()
        except FileNotFoundError:
            name = ""
        with self._manifest_lock:
            if name != self._manifest_name:
                self._manifest = index.store.load(name) if name else Manifest()
                self._manifest_name = name
                log.info("search service: serving generation %d of %s", self._manifest.generation, index.root)
            return self._manifest

    def readiness(self) -> tuple[bool, str, Manifest | None]:
        """``(ready, why not, the manifest to search)``."""
        if self._stopping:
            return False, "the service is stopping", None
        if not self._warmed.is_set() and self._identity is None:
            return False, "loading the embedding model", None
        if self._warm_error is not None:
            return False, f"the embedding model did not load: {self._warm_error}", None
        try:
            manifest = self.manifest()
        except (TierflowError, OSError) as err:
            return False, f"cannot read the index: {err}", None
        if manifest.generation == 0:
            return False, f"{self.searcher.index.root} has no committed generation yet", manifest
        if manifest.embedding and manifest.embedding != self._identity:
            # Another index version went live (a promotion or rollback): its model, from the registry.
            try:
                self.searcher.embedder_for(manifest)
            except TierflowError:
                return (
                    False,
                    f"the index holds vectors of {manifest.embedding}; this service embeds queries with "
                    f"{self._identity}, and no kept index version says how to embed them",
                    manifest,
                )
        return True, "ready", manifest

    def search(self, request: SearchRequest) -> dict[str, Any]:
        """Answer one admitted search (the caller holds an admission slot).

        Raises:
            RequestRefused: 503 ``not_ready``, ``timeout`` or ``tier_unavailable``.
        """
        started = time.perf_counter()
        ready, detail, manifest = self.readiness()
        if not ready or manifest is None:
            raise RequestRefused(503, "not_ready", detail, RETRY_AFTER_S)
        if not self._index_lock.acquire(timeout=self.config.request_timeout_s):
            raise RequestRefused(
                503,
                "timeout",
                f"waited {self.config.request_timeout_s:g} s for the index; retry later",
                RETRY_AFTER_S,
            )
        try:
            [results] = self.searcher.search_many(
                [request.query], request.k, request.tiers, request.filter, manifest
            )
        except TierflowError as err:
            if isinstance(err, Transient):
                raise RequestRefused(503, "tier_unavailable", str(err), RETRY_AFTER_S) from err
            raise
        finally:
            self._index_lock.release()
        return {
            "results": [result.to_dict() for result in results],
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
            "generation": manifest.generation,
        }

    def _submit_shadow(self, request: SearchRequest, answer: Mapping[str, Any]) -> None:
        """Hand an answered search to the shadow reads (after its answer is sent; never raises)."""
        shadow = self.shadow
        if shadow is None:
            return
        try:
            live = [result["doc_id"] for result in answer["results"]]
            shadow.submit(
                request.query, request.k, request.tiers, request.filter, live, live_ms=answer["took_ms"]
            )
        except Exception:
            log.debug("search service: a search was not shadowed", exc_info=True)

    # bookkeeping

    def _count(self, key: str) -> None:
        with self._counts_lock:
            self.counts[key] += 1


class _Handler(JsonRequestHandler):
    server: _Server
    server_version = "tierflow-search"
    logger = log

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        if urlsplit(getattr(self, "path", "")).path == SEARCH_PATH:
            metrics.SEARCH_REQUESTS.labels(str(code)).inc()

    @property
    def service(self) -> SearchService:
        return self.server.service

    @property
    def max_body_bytes(self) -> int:
        return self.service.config.max_body_bytes

    # responses

    def _refuse(self, refusal: RequestRefused, unread: bool = False, allow: str | None = None) -> None:
        """Answer an error; with ``unread``, the body was not read: close, and drain what the client sends."""
        self.service._count(f"refused.{refusal.error}")
        extra = {}
        if refusal.retry_after is not None:
            extra["Retry-After"] = str(refusal.retry_after)
        if allow:
            extra["Allow"] = allow
        self.send_refusal(
            refusal.status, {"error": refusal.error, "detail": refusal.detail}, extra, unread=unread
        )

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's errors (bad request line, headers too long, ...) as JSON, like every other.

        A method the server has no handler for (TRACE, PUT, ...) is 405 with ``Allow`` on a known path
        (RFC 9110), 404 elsewhere.
        """
        self.close_connection = True
        if code == 501:
            self._route_miss(urlsplit(getattr(self, "path", "")).path)
            return
        error = "bad_request" if code == 400 else f"http_{code}"
        detail = message or explain or self.responses.get(code, ("",))[0]
        self.send_refusal(code, {"error": error, "detail": detail})

    # routes

    def _route_miss(self, path: str) -> None:
        allowed = ROUTES.get(path)
        unread = self.command not in ("GET", "HEAD")
        if allowed is None:
            refusal = RequestRefused(404, "not_found", f"no such endpoint; see GET {OPENAPI_PATH}")
            self._refuse(refusal, unread)
        else:
            refusal = RequestRefused(405, "method_not_allowed", f"{allowed} {path}")
            self._refuse(refusal, unread, allow=allowed)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        service = self.service
        if path == HEALTH_PATH:
            self.send_json(200, {"status": "ok"})
        elif path == READY_PATH:
            ready, detail, manifest = service.readiness()
            if ready and manifest is not None:
                self.send_json(200, {"status": "ready", "generation": manifest.generation})
            else:
                self._refuse(RequestRefused(503, "not_ready", detail, RETRY_AFTER_S))
        elif path == OPENAPI_PATH:
            self.send_json(200, openapi(service.config))
        elif path == METRICS_PATH:
            body = metrics.exposition()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self._route_miss(path)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path != SEARCH_PATH:
            self._route_miss(path)
            return
        service = self.service
        try:
            length = self._check_headers()
        except RequestRefused as refusal:
            self._refuse(refusal, unread=True)
            return
        if not service.admission.try_enter():
            detail = f"{service.config.max_concurrent} searches are in progress; retry later"
            self._refuse(RequestRefused(503, "overloaded", detail, RETRY_AFTER_S), unread=True)
            return
        try:
            if not service._enter():
                self._refuse(RequestRefused(503, "stopping", "the service is stopping", 5), unread=True)
                return
            try:
                self._search(length)
            finally:
                service._leave()
        finally:
            service.admission.leave()

    def _check_headers(self) -> int:
        """The body's length, once content type and framing are acceptable."""
        config = self.service.config
        if self.headers.get_content_type() != "application/json":
            shown = (self.headers.get("Content-Type") or "none")[:60]
            raise RequestRefused(
                415, "unsupported_media_type", f"Content-Type is {shown}; send application/json"
            )
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") is not None:
            raise RequestRefused(411, "length_required", "send the body with Content-Length, not chunked")
        if not lengths:
            raise RequestRefused(411, "length_required", "a search needs Content-Length")
        length = content_length(lengths[0]) if len(set(lengths)) == 1 else None
        if length is None:
            raise RequestRefused(400, "bad_framing", "Content-Length is not one integer")
        if length > config.max_body_bytes:
            raise RequestRefused(
                413, "too_large", f"the body is over the limit of {config.max_body_bytes} bytes"
            )
        return length

    def _read_body(self, length: int) -> bytes:
        """The body, read within ``request_timeout_s`` in all (a trickling sender does not keep its
        admission slot for longer), or what arrived before the client stopped sending."""
        timeout_s = self.service.config.request_timeout_s
        deadline = time.monotonic() + timeout_s
        body = bytearray()
        try:
            while len(body) < length:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self.connection.settimeout(remaining)
                chunk = self.rfile.read1(length - len(body))
                if not chunk:
                    break
                body += chunk
        finally:
            self.connection.settimeout(timeout_s)
        return bytes(body)

    def _search(self, length: int) -> None:
        service = self.service
        try:
            body = self._read_body(length)
        except (TimeoutError, ConnectionError) as err:
            refusal = (
                RequestRefused(408, "request_timeout", f"the body did not arrive within {self.timeout:g} s")
                if isinstance(err, TimeoutError)
                else RequestRefused(400, "incomplete_body", f"reading the body failed: {type(err).__name__}")
            )
            self._refuse(refusal, unread=True)
            return
        if len(body) < length:
            self.close_connection = True
            self._refuse(RequestRefused(400, "incomplete_body", f"got {len(body)} of {length} bytes"))
            return
        try:
            request = parse_search_request(body, service.config.max_k)
            answer = service.search(request)
        except RequestRefused as refusal:
            self._refuse(refusal)
            return
        except Exception:
            log.exception("search service: a search failed")
            self._refuse(
                RequestRefused(500, "internal", "the search failed; the service log has the details")
            )
            return
        service._count("searched")
        self.send_json(200, answer)
        service._submit_shadow(request, answer)

    def _not_allowed(self) -> None:
        self._route_miss(urlsplit(self.path).path)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _not_allowed


# --- the OpenAPI document ------------------------------------------------------------------------------


def _error_response(description: str, retry: bool = False, allow: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    headers = {}
    if retry:
        headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    if allow:
        headers["Allow"] = {"$ref": "#/components/headers/Allow"}
    if headers:
        response["headers"] = headers
    return response


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def openapi(config: ServeConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the service, with ``config``'s limits in its schemas."""
    scalar = {"type": ["string", "number", "boolean", "null"]}
    not_allowed = _error_response("Another method is expected on this path.", allow=True)
    schemas: dict[str, Any] = {
        "SearchRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["query"],
            "properties": {
                "query": {"type": "string", "pattern": "\\S", "description": "The query text."},
                "k": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": config.max_k,
                    "default": min(DEFAULT_K, config.max_k),
                    "description": "Documents to return (each ranked by its best chunk).",
                },
                "tiers": {
                    "type": ["array", "null"],
                    "items": {"type": "string", "enum": list(TIERS)},
                    "minItems": 1,
                    "uniqueItems": True,
                    "description": "Search only these tiers (default, or null: all).",
                },
                "filter": {
                    "type": ["object", "null"],
                    "description": (
                        "Return only documents whose metadata has every key with an accepted value: the "
                        "value given, or any item of the list given. A list in a document's metadata "
                        "matches when any of its items is accepted. Absent or null: no filter."
                    ),
                    "propertyNames": {"minLength": 1},
                    "additionalProperties": {
                        "oneOf": [scalar, {"type": "array", "minItems": 1, "items": scalar}]
                    },
                },
            },
        },
        "SearchResult": {
            "type": "object",
            "required": [
                "doc_id",
                "chunk_id",
                "score",
                "tier",
                "text",
                "metadata",
                "vector_id",
                "lineage",
                "duplicates",
            ],
            "properties": {
                "doc_id": {"type": "string"},
                "chunk_id": {"type": "string", "description": "The document's best chunk."},
                "score": {"type": "number", "description": "Cosine similarity of the query and the chunk."},
                "tier": {"type": "string", "enum": list(TIERS)},
                "text": {"type": "string", "description": "The chunk's text."},
                "metadata": {"type": "object", "description": "The document's metadata."},
                "vector_id": {"type": "integer", "description": "The chunk's 64-bit FAISS id."},
                "lineage": {"type": "object", "description": "Where the vector came from."},
                "duplicates": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Documents linked to this one as (near-)duplicates.",
                },
            },
        },
        "SearchResponse": {
            "type": "object",
            "required": ["results", "took_ms", "generation"],
            "properties": {
                "results": {"type": "array", "items": {"$ref": "#/components/schemas/SearchResult"}},
                "took_ms": {"type": "number", "minimum": 0},
                "generation": {"type": "integer", "minimum": 1, "description": "The index commit searched."},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Ready": {
            "type": "object",
            "required": ["status", "generation"],
            "properties": {"status": {"const": "ready"}, "generation": {"type": "integer", "minimum": 1}},
        },
        "Error": {
            "type": "object",
            "required": ["error", "detail"],
            "properties": {
                "error": {"type": "string", "description": "A short stable code."},
                "detail": {"type": "string", "description": "What was wrong, for a person."},
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tierflow search",
            "version": __version__,
            "description": (
                "Federated top-k search over the hot, warm and cold tiers of one tierflow index. "
                f"At most {config.max_concurrent} searches are admitted at once; more are answered 503."
            ),
        },
        "paths": {
            SEARCH_PATH: {
                "post": {
                    "operationId": "search",
                    "summary": "Top-k documents for a query",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}}
                        },
                    },
                    "responses": {
                        "200": _ok("The documents found, best first.", "SearchResponse"),
                        "400": _error_response("Malformed JSON or an invalid field."),
                        "405": not_allowed,
                        "408": _error_response("The body did not arrive within the request timeout."),
                        "411": _error_response("No Content-Length (chunked bodies are not read)."),
                        "413": _error_response(f"The body is over {config.max_body_bytes} bytes."),
                        "415": _error_response("The body is not application/json."),
                        "500": _error_response("The search failed."),
                        "503": _error_response(
                            "Overloaded, not ready, waited too long for the index, a tier unavailable, "
                            "or stopping. Retry after the time given.",
                            retry=True,
                        ),
                    },
                }
            },
            HEALTH_PATH: {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness: the process serves HTTP",
                    "responses": {"200": _ok("Alive.", "Health"), "405": not_allowed},
                }
            },
            READY_PATH: {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness: the model is loaded and the index has a committed generation",
                    "responses": {
                        "200": _ok("Ready; the generation searches see now.", "Ready"),
                        "405": not_allowed,
                        "503": _error_response("Not ready; the detail says why.", retry=True),
                    },
                }
            },
            METRICS_PATH: {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics of this process (text exposition format 0.0.4)",
                    "responses": {
                        "200": {
                            "description": "The metrics.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "405": not_allowed,
                    },
                }
            },
            OPENAPI_PATH: {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "The OpenAPI 3.1 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "405": not_allowed,
                    },
                }
            },
        },
        "components": {
            "schemas": schemas,
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer", "minimum": 1},
                },
                "Allow": {"description": "The method this path takes.", "schema": {"type": "string"}},
            },
        },
    }


# --- running it -----------------------------------------------------------------------------------------


def serve(
    searcher: Searcher,
    config: ServeConfig,
    *,
    stop: threading.Event | None = None,
    shadow: ShadowReads | None = None,
) -> None:
    """Run a :class:`SearchService` until SIGINT/SIGTERM (or until ``stop`` is set).

    Signal handlers are installed only when called from the main thread. With ``shadow``, searches are
    also repeated on a candidate index version (:mod:`indexing.shadow`); it is closed on the way out.

    Raises:
        Exception: What kept the embedding model from loading (the service stops first).
    """
    with stop_on_signals(stop) as stopped:
        service = SearchService(searcher, config, shadow)
        try:
            service.start()
            print(
                f"tierflow serve: listening on {service.url}{SEARCH_PATH} (API: {service.url}{OPENAPI_PATH})",
                flush=True,
            )
            while not service._warmed.wait(0.2):
                if stopped.is_set():
                    return
            if service.warm_error is not None:
                raise service.warm_error
            ready, detail, _ = service.readiness()
            print(f"tierflow serve: {'ready' if ready else f'not ready yet: {detail}'}", flush=True)
            while not stopped.wait(0.5):
                pass
        finally:
            service.stop()
