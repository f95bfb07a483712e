"""Prometheus metrics: the names tierflow exports, and how Beam's metrics become them.

Pipeline stages run wherever the Beam runner puts them (threads of this process on the direct runner,
task managers on Flink, workers on Dataflow), so they count with Beam's own metrics API
(:func:`count`, :func:`observe`), which every runner collects. The driver — ``tierflow ingest``,
``tierflow stream``, ``tierflow lifecycle`` — reads a finished pipeline's metrics (:func:`publish`)
into this process's Prometheus registry, which ``/metrics`` serves (:func:`start_server`) or a file
for node_exporter's textfile collector receives (:func:`write_textfile`). Histograms cross the runner
as one Beam counter per bucket, so they arrive as real Prometheus histograms, not just sums.

Names follow Prometheus conventions: ``tierflow_`` prefix, base units (seconds, bytes), ``_total`` on
counters. ``infra/grafana/tierflow-dashboard.json`` charts them.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
    write_to_textfile,
)
from prometheus_client.core import HistogramMetricFamily

LOG = logging.getLogger(__name__)
NAMESPACE = "tierflow"  # the Beam metrics namespace publish() reads

REGISTRY = CollectorRegistry(auto_describe=True)

# Bucket bounds (seconds). Embedding and commit latencies span milliseconds to minutes; freshness spans
# a streaming second to a nightly batch.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
FRESHNESS_BUCKETS = (
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4 * 3600.0,
    86400.0,
    7 * 86400.0,
)
SEARCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
OVERLAP_BUCKETS = tuple(i / 10 for i in range(11))  # 0, 0.1, ..., 1.0: a share of the top-k
SHADOW_OUTCOMES = ("compared", "dropped", "failed")

STAGES = ("source", "parse", "validate", "dedup", "chunk", "embed", "write")

STAGE_DOCUMENTS = Counter(
    "tierflow_stage_documents",
    "Documents into (outcome=in) and out of (outcome=out) each pipeline stage.",
    ["stage", "outcome"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "tierflow_dead_letters",
    "Records dead-lettered, by stage and reason.",
    ["stage", "reason"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "tierflow_duplicates",
    "Documents found to duplicate a canonical one (kind=exact|near).",
    ["kind"],
    registry=REGISTRY,
)
EMBEDDED_CHUNKS = Counter("tierflow_embedded_chunks", "Chunks embedded.", registry=REGISTRY)
COMMITS = Counter("tierflow_commits", "Index generations committed.", registry=REGISTRY)
KAFKA_CONSUMER_LAG = Gauge(
    "tierflow_kafka_consumer_lag_messages",
    "Messages between the committed offset and the end of a partition.",
    ["topic", "partition"],
    registry=REGISTRY,
)
CDC_SLOT_LAG = Gauge(
    "tierflow_cdc_slot_lag_bytes",
    "WAL bytes between the replication slot's confirmed position and the server's.",
    ["slot"],
    registry=REGISTRY,
)
TIER_VECTORS = Gauge("tierflow_tier_vectors", "Live vectors per storage tier.", ["tier"], registry=REGISTRY)
TIER_BYTES = Gauge(
    "tierflow_tier_bytes",
    "Bytes per storage tier and medium (ram, flash, object).",
    ["tier", "medium"],
    registry=REGISTRY,
)
SEARCH_SECONDS = Histogram(
    "tierflow_search_seconds",
    "Search latency, by the tiers searched.",
    ["tiers"],
    buckets=SEARCH_BUCKETS,
    registry=REGISTRY,
)
SEARCH_REQUESTS = Counter(
    "tierflow_search_requests", "Search API requests by HTTP status.", ["status"], registry=REGISTRY
)
SHADOW_SEARCHES = Counter(
    "tierflow_shadow_searches",
    "Shadow reads of a candidate index version (indexing.shadow) by outcome: compared, dropped (the "
    "shadow queue was full) or failed (the candidate's search raised).",
    ["outcome"],
    registry=REGISTRY,
)
SHADOW_OVERLAP = Histogram(
    "tierflow_shadow_overlap_ratio",
    "Share of a live search's top-k documents that the candidate index version also returned.",
    buckets=OVERLAP_BUCKETS,
    registry=REGISTRY,
)
LIFECYCLE_MOVES = Counter(
    "tierflow_lifecycle_moves",
    "Documents moved between tiers by lifecycle runs.",
    ["from_tier", "to_tier"],
    registry=REGISTRY,
)
WEBHOOK_REQUESTS = Counter(
    "tierflow_webhook_requests", "Webhook deliveries by HTTP status.", ["status"], registry=REGISTRY
)


class BucketHistogram:
    """A histogram fed whole bucket counts (from Beam counters), exported through a collector."""

    def __init__(self, name: str, documentation: str, bounds: Sequence[float]) -> None:
        self.name, self.documentation, self.bounds = name, documentation, tuple(bounds)
        self._lock = threading.Lock()
        self._buckets = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0

    def add(self, buckets: Mapping[int, int], total: float) -> None:
        with self._lock:
            for i, hits in buckets.items():
                self._buckets[min(i, len(self.bounds))] += hits
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative, running = [], 0
            for bound, hits in zip((*self.bounds, math.inf), self._buckets, strict=True):
                running += hits
                cumulative.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
            total = self._sum
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], cumulative, total)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)


EMBEDDING_BATCH_SECONDS = BucketHistogram(
    "tierflow_embedding_batch_seconds", "Time to embed one batch of chunks.", LATENCY_BUCKETS
)
COMMIT_SECONDS = BucketHistogram(
    "tierflow_commit_seconds",
    "Time to commit one index generation (manifest swap included).",
    LATENCY_BUCKETS,
)
FRESHNESS_SECONDS = BucketHistogram(
    "tierflow_freshness_seconds",
    "Source event time to the commit that made the document searchable.",
    FRESHNESS_BUCKETS,
)
for _histogram in (EMBEDDING_BATCH_SECONDS, COMMIT_SECONDS, FRESHNESS_SECONDS):
    REGISTRY.register(_histogram)

# Beam metric name -> (Prometheus metric, label names). Beam names carry label values after "|":
# "stage_documents|validate|in".
_COUNTERS: dict[str, tuple[Counter, tuple[str, ...]]] = {
    "stage_documents": (STAGE_DOCUMENTS, ("stage", "outcome")),
    "dead_letters": (DEAD_LETTERS, ("stage", "reason")),
    "duplicates": (DUPLICATES, ("kind",)),
    "embedded_chunks": (EMBEDDED_CHUNKS, ()),
    "commits": (COMMITS, ()),
    "lifecycle_moves": (LIFECYCLE_MOVES, ("from_tier", "to_tier")),
}
_HISTOGRAMS: dict[str, BucketHistogram] = {
    "embedding_batch_seconds": EMBEDDING_BATCH_SECONDS,
    "commit_seconds": COMMIT_SECONDS,
    "freshness_seconds": FRESHNESS_SECONDS,
}
_SEP = "|"
_SUM_SCALE = 1_000_000  # histogram sums cross Beam as integer microseconds


def _in_beam() -> bool:
    """Whether this thread runs a Beam bundle (whose counters :func:`publish` reads after the run)."""
    from apache_beam.metrics.execution import MetricsEnvironment

    return MetricsEnvironment.current_container() is not None


def count(name: str, *labels: str, value: int = 1) -> None:
    """Count ``value`` on a Beam counter that :func:`publish` turns into Prometheus counter ``name``; outside
    a pipeline (the driver settling a run itself) on the Prometheus counter directly."""
    from apache_beam.metrics import Metrics

    if name not in _COUNTERS or len(labels) != len(_COUNTERS[name][1]):
        raise ValueError(f"unknown metric {name!r} with labels {labels!r}")
    if not value:
        return
    if _in_beam():
        Metrics.counter(NAMESPACE, _SEP.join((name, *labels))).inc(value)
    else:
        metric = _COUNTERS[name][0]
        (metric.labels(*labels) if labels else metric).inc(value)


def observe(name: str, values: Iterable[float]) -> None:
    """Observe ``values`` on histogram ``name``: one Beam counter per bucket, plus count and sum (outside a
    pipeline: on the histogram directly)."""
    from apache_beam.metrics import Metrics

    bounds = _HISTOGRAMS[name].bounds
    buckets = [0] * (len(bounds) + 1)
    total, number = 0.0, 0
    for value in values:
        if not math.isfinite(value):
            continue
        buckets[bisect.bisect_left(bounds, value)] += 1
        total += value
        number += 1
    if not number:
        return
    if not _in_beam():
        _HISTOGRAMS[name].add({i: hits for i, hits in enumerate(buckets) if hits}, total)
        return
    for i, hits in enumerate(buckets):
        if hits:
            Metrics.counter(NAMESPACE, f"{name}{_SEP}bucket{_SEP}{i}").inc(hits)
    Metrics.counter(NAMESPACE, f"{name}{_SEP}count").inc(number)
    Metrics.counter(NAMESPACE, f"{name}{_SEP}sum").inc(round(total * _SUM_SCALE))


def publish(result: Any) -> dict[str, int]:
    """Add a finished Beam pipeline's tierflow metrics to the Prometheus registry.

    Args:
        result: The ``PipelineResult`` (after ``wait_until_finish``).

    Returns:
        The Beam counters read, by Beam name (for run summaries and tests).
    """
    from apache_beam.metrics.metric import MetricsFilter

    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except (NotImplementedError, AttributeError, KeyError) as err:  # a runner without metrics
        LOG.warning("metrics: the runner reports no metrics (%s)", err)
        return {}
    values: dict[str, int] = {}
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        name = counter.key.metric.name
        values[name] = values.get(name, 0) + int(value or 0)
    histograms: dict[str, dict[str, int]] = {}
    for name, value in values.items():
        base, _, rest = name.partition(_SEP)
        if base in _COUNTERS:
            metric, label_names = _COUNTERS[base]
            labels = rest.split(_SEP) if rest else []
            if len(labels) != len(label_names):
                continue
            (metric.labels(*labels) if labels else metric).inc(value)
        elif base in _HISTOGRAMS:
            histograms.setdefault(base, {})[rest] = value
    for base, parts in histograms.items():
        _merge_histogram(base, parts)
    return values


def _merge_histogram(base: str, parts: Mapping[str, int]) -> None:
    buckets = {
        int(key.rsplit(_SEP, 1)[1]): hits for key, hits in parts.items() if key.startswith(f"bucket{_SEP}")
    }
    _HISTOGRAMS[base].add(buckets, parts.get("sum", 0) / _SUM_SCALE)


def set_tiers(tiers: Mapping[str, Mapping[str, Any]]) -> None:
    """Set the tier gauges from ``lifecycle.stats.tier_stats(...)["tiers"]``."""
    for tier, entry in tiers.items():
        TIER_VECTORS.labels(tier).set(entry.get("vectors", 0))
        for medium in ("ram", "flash", "object"):
            TIER_BYTES.labels(tier, medium).set(entry.get(f"{medium}_bytes", 0))


def exposition() -> bytes:
    """The registry in Prometheus text format."""
    return bytes(generate_latest(REGISTRY))


_server_lock = threading.Lock()
_server_port: int | None = None


def start_server(port: int, host: str = "127.0.0.1") -> int:
    """Serve ``/metrics`` on ``host:port`` (loopback unless configured) from a daemon thread; returns
    the bound port (``port=0`` picks a free one). Idempotent within a process."""
    global _server_port
    with _server_lock:
        if _server_port is None:
            server, _ = start_http_server(port, addr=host, registry=REGISTRY)
            _server_port = int(server.server_address[1])
            LOG.info("metrics: serving http://%s:%d/metrics", host, _server_port)
        return _server_port


def write_textfile(path: str | Path) -> None:
    """Write the registry for node_exporter's textfile collector (atomically, as it requires)."""
    write_to_textfile(str(path), REGISTRY)
