"""Shadow reads: answer from the live index version, repeat each search on a candidate, log how they agree.

Before a candidate index version (``indexing.versions``: another embedding model, chunking or FAISS index
type) is promoted, a team can compare it with the live version on real traffic. The search service
answers every search from the live version as always; once the answer is sent it hands the query and the
live doc ids to :class:`ShadowReads` (:meth:`ShadowReads.submit`: never blocks, never raises), whose one
background worker runs the same search (``k``, tiers, filter) on the candidate and records, per search,
one JSON line:

.. code-block:: json

    {"time": 1718000000.1, "version": "v2", "outcome": "compared", "k": 5, "query_sha256": "9f2c...",
     "tiers": null, "filtered": false, "live": ["a", "b"], "candidate": ["a", "c"], "overlap": 0.5,
     "live_ms": 7.1, "candidate_ms": 9.8}

``overlap`` is ``|live top-k ∩ candidate top-k| / k'`` with ``k' = min(k, max(len(live), len(candidate)))``:
1.0 when the candidate returns the same documents (in any order, or both none), 0.0 when it returns none
of them.
The query itself is logged only with ``log_queries=True`` (otherwise only its SHA-256). A candidate search
that raises is a line with ``"outcome": "failed"`` and its ``error``; the live answer never depends on the
candidate. When the queue (``queue_size``) is full, a search is not shadowed: it is counted as dropped, so
a slow candidate sheds load instead of queueing without bound.

Prometheus: ``tierflow_shadow_searches_total{outcome="compared|dropped|failed"}`` and the histogram
``tierflow_shadow_overlap_ratio`` (buckets 0, 0.1, ..., 1.0), charted in the dashboard's Search row.

The candidate's Searcher records no document access (lifecycle policies see live traffic only), and its
searches are neither timed in ``tierflow_search_seconds`` nor traced (``Searcher(observed=False)``): the
service's latency is the live answers'.

Example:
    >>> shadow = open_shadow("tierflow-data/hot", "v2", EmbeddingConfig(), log_path="shadow.jsonl")
    >>> live = Searcher(HotIndex("tierflow-data/hot"), EmbeddingConfig(), track_access=True)
    >>> with SearchService(live, ServeConfig(), shadow=shadow) as service:  # doctest: +SKIP
    ...     service.wait_ready(60)
    >>> shadow.summary()
    {'version': 'v2', 'compared': 120, 'dropped': 0, 'failed': 0, 'mean_overlap': 0.87, 'queued': 0}
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from indexing import versions
from indexing.cold import ColdConfig
from indexing.hot import HotIndex
from indexing.search import Searcher
from tierflow import metrics
from tierflow.config import EmbeddingConfig
from tierflow.errors import ConfigError, VersionError

__all__ = ["DEFAULT_QUEUE_SIZE", "ShadowReads", "candidate_searcher", "open_shadow", "overlap"]

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 64
POLL_S = 0.1  # how often an idle worker looks whether it is asked to stop
ERROR_CHARS = 500  # an error's message in a log line is cut to this


def overlap(live: Sequence[str], candidate: Sequence[str], k: int) -> float:
    """``|live top-k ∩ candidate top-k| / k'``, ``k' = min(k, max(len(live), len(candidate)))``; 1.0 when
    both are empty.

    Example:
        >>> overlap(["a", "b", "c"], ["c", "a", "x"], 3), overlap(["a"], ["a"], 10), overlap([], [], 5)
        (0.6666666666666666, 1.0, 1.0)
    """
    live_top, candidate_top = list(live)[:k], list(candidate)[:k]
    if not live_top and not candidate_top:
        return 1.0  # both found nothing: they agree
    denominator = max(min(k, max(len(live_top), len(candidate_top), 1)), 1)
    return len(set(live_top) & set(candidate_top)) / denominator


def candidate_searcher(
    root: Path | str, version: str, embedding: EmbeddingConfig, cold: ColdConfig | None = None
) -> Searcher:
    """A Searcher of index version ``version`` of the index at ``root``, embedding queries with the
    model that version was built with (``embedding`` with that version's model settings).

    Raises:
        VersionError: No such version is kept, or it is the live one (shadowing it is no comparison).
    """
    root = Path(root)
    registry = versions.load_registry(root)
    registry.entry(version)  # a VersionError naming the kept versions
    if version == registry.live:
        raise VersionError(f"index version {version!r} is the live one; shadow a candidate instead")
    settings = replace(embedding, **versions.version_query_settings(root, version))
    return Searcher(HotIndex(root, version=version), settings, cold, observed=False)


def open_shadow(
    root: Path | str,
    version: str,
    embedding: EmbeddingConfig,
    *,
    cold: ColdConfig | None = None,
    log_path: Path | str | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    log_queries: bool = False,
) -> ShadowReads:
    """:class:`ShadowReads` of candidate ``version`` of the index at ``root`` (:func:`candidate_searcher`).

    Raises:
        VersionError: As :func:`candidate_searcher`.
        ConfigError: A ``queue_size`` below 1.
        OSError: The log file cannot be opened.
    """
    searcher = candidate_searcher(root, version, embedding, cold)
    return ShadowReads(searcher, version, log_path, queue_size, log_queries=log_queries)


@dataclass(frozen=True)
class _Shadowed:
    """A live search to repeat on the candidate."""

    at: float  # time.time() the live answer was sent
    query: str
    k: int
    tiers: tuple[str, ...] | None
    where: dict[str, Any] | None
    live: tuple[str, ...]
    live_ms: float | None


class ShadowReads:
    """Repeat live searches on a candidate index version in one background thread, and log the overlap.

    Args:
        searcher: The candidate version's Searcher (:func:`candidate_searcher`); only the worker thread
            uses it, and :meth:`close` closes it.
        version: The candidate's version name (for the log and :meth:`summary`).
        log_path: A JSON-lines file to append one line per shadowed search to (parents are created);
            None: no log, only counts and metrics.
        queue_size: Searches waiting for the worker at most; more are dropped (and counted).
        log_queries: Log the query text too (otherwise only its SHA-256).

    :meth:`start` starts the worker (a :class:`~indexing.service.SearchService` does, once its own model
    is loaded); searches submitted before wait in the queue. Use as a context manager to start and close.

    Raises:
        ConfigError: ``queue_size`` below 1.
        OSError: The log file cannot be opened.
    """

    def __init__(
        self,
        searcher: Searcher,
        version: str,
        log_path: Path | str | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        *,
        log_queries: bool = False,
    ) -> None:
        if queue_size < 1:
            raise ConfigError(f"the shadow queue size must be >= 1, got {queue_size}")
        self.searcher = searcher
        self.version = version
        self.log_path = Path(log_path) if log_path is not None else None
        self.queue_size = queue_size
        self.log_queries = log_queries
        self._queue: queue.Queue[_Shadowed] = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._compared = self._dropped = self._failed = 0
        self._overlap_sum = 0.0
        self._started = self._closed = False
        self._stop = threading.Event()
        self._deadline = float("inf")  # time.monotonic() after which a stopping worker drops what is left
        self._worker: threading.Thread | None = None
        self._log: IO[str] | None = None
        self._log_failed = False
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("a", encoding="utf-8")
        self._outcomes = {name: metrics.SHADOW_SEARCHES.labels(name) for name in metrics.SHADOW_OUTCOMES}

    # lifecycle

    def start(self) -> Self:
        """Start the worker (idempotent; nothing once closed). It loads the candidate's model and opens
        its index first, so the first comparison's latency is a search's."""
        with self._lock:
            if self._started or self._closed:
                return self
            self._started = True
            self._worker = threading.Thread(target=self._run, name=f"shadow-{self.version}", daemon=True)
        self._worker.start()
        return self

    def close(self, drain_s: float = 5.0) -> None:
        """Take no more searches, let the worker finish those queued (up to ``drain_s``; what is left
        then is dropped), stop it and close the candidate's searcher and the log. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
        self._deadline = time.monotonic() + max(drain_s, 0.0)
        self._stop.set()
        if worker is None:  # never started: nothing drains the queue
            self._drop_queued()
            self._finish()
            return
        worker.join(max(drain_s, 0.0) + 2 * POLL_S)
        if worker.is_alive():
            log.warning(
                "shadow reads of %s: a candidate search is still running after %g s; leaving it",
                self.version,
                drain_s,
            )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # the live side

    def submit(
        self,
        query: str,
        k: int,
        tiers: Collection[str] | None,
        where: Mapping[str, Any] | None,
        live_ids: Sequence[str],
        *,
        live_ms: float | None = None,
    ) -> bool:
        """Queue a live search (its query, ``k``, tiers, filter and the doc ids it answered, best first)
        to repeat on the candidate. Never blocks, never raises: False when it was dropped (the queue is
        full, or this is closed)."""
        try:
            item = _Shadowed(
                time.time(),
                query,
                k,
                tuple(tiers) if tiers is not None else None,
                dict(where) if where else None,
                tuple(live_ids),
                live_ms,
            )
            with self._lock:  # close() sets _closed under it: a search queued before is drained
                if not self._closed:
                    self._queue.put_nowait(item)
                    return True
        except queue.Full:
            pass
        except Exception:  # a bad argument must not fail the live answer
            log.debug("shadow reads of %s: a search was not queued", self.version, exc_info=True)
        self._count_dropped(1)
        return False

    def summary(self) -> dict[str, Any]:
        """Counts so far: searches ``compared``, ``dropped`` and ``failed``, the ``mean_overlap`` of those
        compared (None before the first), and how many are ``queued``."""
        with self._lock:
            compared = self._compared
            return {
                "version": self.version,
                "compared": compared,
                "dropped": self._dropped,
                "failed": self._failed,
                "mean_overlap": self._overlap_sum / compared if compared else None,
                "queued": self._queue.qsize(),
            }

    # the worker

    def _run(self) -> None:
        try:
            self._warm_up()
            while True:
                try:
                    item = self._queue.get(timeout=POLL_S)
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
                if self._stop.is_set() and time.monotonic() > self._deadline:
                    self._count_dropped(1)
                    self._drop_queued()
                    return
                self._compare(item)
        except Exception:  # the worker must not die silently; the live side goes on regardless
            log.exception("shadow reads of %s: the worker stopped", self.version)
            self._drop_queued()
        finally:
            self._finish()

    def _warm_up(self) -> None:
        try:
            self.searcher.warm_up()
            manifest = self.searcher.index.manifest()
            if manifest.generation:  # open the segments now (a chunk search records no access)
                vectors = self.searcher.embed_queries(["warm up"], manifest)
                self.searcher.chunk_search(vectors, 1, manifest)
        except Exception as err:  # every search will say so (failed, with its error)
            log.warning("shadow reads of %s: warming up the candidate failed: %s", self.version, err)

    def _compare(self, item: _Shadowed) -> None:
        line: dict[str, Any] = {
            "time": round(item.at, 6),
            "version": self.version,
            "outcome": "compared",
            "k": item.k,
            "query_sha256": hashlib.sha256(item.query.encode("utf-8", "surrogatepass")).hexdigest(),
        }
        if self.log_queries:
            line["query"] = item.query
        line.update(tiers=list(item.tiers) if item.tiers is not None else None, filtered=bool(item.where))
        line["live"] = list(item.live)
        started = time.perf_counter()
        try:
            [results] = self.searcher.search_many([item.query], item.k, item.tiers, item.where)
        except Exception as err:
            line.update(outcome="failed", candidate=None, overlap=None)
            line["error"] = f"{type(err).__name__}: {err}"[:ERROR_CHARS]
            share = None
        else:
            candidate = [result.doc_id for result in results]
            share = overlap(item.live, candidate, item.k)
            line.update(candidate=candidate, overlap=round(share, 6))
        if item.live_ms is not None:
            line["live_ms"] = item.live_ms
        line["candidate_ms"] = round((time.perf_counter() - started) * 1000, 3)
        with self._lock:
            if share is None:
                self._failed += 1
            else:
                self._compared += 1
                self._overlap_sum += share
        if share is None:
            self._outcomes["failed"].inc()
        else:
            self._outcomes["compared"].inc()
            metrics.SHADOW_OVERLAP.observe(share)
        self._write(line)

    def _write(self, line: dict[str, Any]) -> None:
        if self._log is None:
            return
        try:
            self._log.write(json.dumps(line, default=str) + "\n")
            self._log.flush()
        except (OSError, ValueError) as err:  # a full disk must not stop the comparisons (nor the live side)
            if not self._log_failed:
                log.warning("shadow reads of %s: writing %s failed: %s", self.version, self.log_path, err)
                self._log_failed = True

    # bookkeeping

    def _count_dropped(self, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            self._dropped += n
        self._outcomes["dropped"].inc(n)

    def _drop_queued(self) -> None:
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            dropped += 1
        self._count_dropped(dropped)

    def _finish(self) -> None:
        """Close the candidate's searcher and the log (the worker, as it ends; or close())."""
        try:
            self.searcher.close()
        except Exception as err:
            log.warning("shadow reads of %s: closing the candidate's searcher failed: %s", self.version, err)
        if self._log is not None:
            try:
                self._log.close()
            except OSError as err:
                log.warning("shadow reads of %s: closing %s failed: %s", self.version, self.log_path, err)
