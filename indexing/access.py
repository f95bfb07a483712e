"""The access log: which documents searches returned, and when, for last-access and promotion policies.

Searchers count hits in memory and flush them now and then as small Parquet files under
``<index>/access/``; a search never waits on a commit and never rewrites a shared file. The lifecycle
run folds the flushed files into one summary of hourly buckets (``merged-*.parquet``), which names the
files it absorbed, so a crash between writing the summary and deleting those files counts nothing twice.

Example:
    >>> log = AccessLog(Path("tierflow-data/hot"))
    >>> log.record(["doc-1", "doc-7"])
    >>> log.flush()
    >>> read_access(Path("tierflow-data/hot"), now=time.time(), window_s=86400)["doc-1"].hits
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from indexing.durable import atomic_write_bytes

log = logging.getLogger(__name__)

ACCESS_DIR = "access"
BUCKET_S = 3600
HITS_SCHEMA = pa.schema([("doc_id", pa.string()), ("hits", pa.int64()), ("last_hit", pa.float64())])
MERGED_SCHEMA = pa.schema(
    [("doc_id", pa.string()), ("bucket", pa.int64()), ("hits", pa.int64()), ("last_hit", pa.float64())]
)


@dataclass
class Access:
    """One document's access: the last time a search returned it, and its hits inside the window."""

    last_hit: float
    hits: int


class AccessLog:
    """Counts search hits per document and flushes them to the index directory.

    Args:
        root: The hot tier's directory.
        flush_interval_s: Flush on :meth:`record` when the last flush is older than this.
    """

    def __init__(self, root: Path, flush_interval_s: float = 30.0) -> None:
        self.dir = Path(root) / ACCESS_DIR
        self.flush_interval_s = flush_interval_s
        self._pending: dict[str, Access] = {}
        self._last_flush = time.monotonic()
        self._disabled = False

    def record(self, doc_ids: list[str], at: float | None = None) -> None:
        at = time.time() if at is None else at
        for doc_id in doc_ids:
            entry = self._pending.setdefault(doc_id, Access(at, 0))
            entry.hits += 1
            entry.last_hit = max(entry.last_hit, at)
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Write the counted hits as one new file (atomically); a read-only index only logs a warning."""
        self._last_flush = time.monotonic()
        if not self._pending or self._disabled:
            return
        ids = sorted(self._pending)
        table = pa.table(
            {
                "doc_id": ids,
                "hits": [self._pending[d].hits for d in ids],
                "last_hit": [self._pending[d].last_hit for d in ids],
            },
            schema=HITS_SCHEMA,
        )
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(
                self.dir / f"hits-{time.time_ns():020d}-{os.getpid()}.parquet", sink.getvalue()
            )
        except OSError as err:
            self._disabled = True
            log.warning(
                "access log disabled: cannot write %s (%s); access policies will not see hits", self.dir, err
            )
            return
        self._pending.clear()


def _merged_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("merged-*.parquet"))


def _state(folder: Path) -> tuple[pa.Table, list[Path]]:
    """The newest summary (as hourly rows) plus the hit files it has not absorbed."""
    merged = _merged_files(folder)
    absorbed: set[str] = set()
    table = MERGED_SCHEMA.empty_table()
    if merged:
        table = pq.read_table(merged[-1])
        absorbed = set(json.loads((table.schema.metadata or {}).get(b"absorbed", b"[]")))
        table = table.cast(MERGED_SCHEMA)
    pending = [p for p in sorted(folder.glob("hits-*.parquet")) if p.name not in absorbed]
    return table, pending


def _hourly(pending: list[Path]) -> list[dict[str, object]]:
    rows = []
    for path in pending:
        for row in pq.read_table(path).to_pylist():
            rows.append(
                {
                    "doc_id": row["doc_id"],
                    "bucket": int(row["last_hit"] // BUCKET_S),
                    "hits": row["hits"],
                    "last_hit": row["last_hit"],
                }
            )
    return rows


def read_access(root: Path, now: float, window_s: float) -> dict[str, Access]:
    """Per document: the last hit, and the hits whose hour lies within ``window_s`` before ``now``."""
    folder = Path(root) / ACCESS_DIR
    if not folder.exists():
        return {}
    table, pending = _state(folder)
    since = int((now - window_s) // BUCKET_S)
    out: dict[str, Access] = {}
    for row in [*table.to_pylist(), *_hourly(pending)]:
        entry = out.setdefault(str(row["doc_id"]), Access(0.0, 0))
        entry.last_hit = max(entry.last_hit, float(row["last_hit"]))
        if int(row["bucket"]) >= since:
            entry.hits += int(row["hits"])
    return out


def compact_access(root: Path, now: float, retain_s: float) -> int:
    """Fold the hit files into a new summary; buckets older than ``retain_s`` keep only the last hit.

    Returns the number of hit files absorbed.
    """
    folder = Path(root) / ACCESS_DIR
    if not folder.exists():
        return 0
    table, pending = _state(folder)
    if not pending:
        return 0
    oldest = int((now - retain_s) // BUCKET_S)
    buckets: dict[tuple[str, int], list[float]] = {}
    for row in [*table.to_pylist(), *_hourly(pending)]:
        bucket = int(row["bucket"])
        key = (str(row["doc_id"]), bucket if bucket >= oldest else -1)
        hits = int(row["hits"]) if key[1] >= 0 else 0
        entry = buckets.setdefault(key, [0, 0.0])
        entry[0] += hits
        entry[1] = max(entry[1], float(row["last_hit"]))
    keys = sorted(buckets)
    summary = pa.table(
        {
            "doc_id": [k[0] for k in keys],
            "bucket": [k[1] for k in keys],
            "hits": [int(buckets[k][0]) for k in keys],
            "last_hit": [buckets[k][1] for k in keys],
        },
        schema=MERGED_SCHEMA,
    ).replace_schema_metadata({"absorbed": json.dumps([p.name for p in pending])})
    sink = pa.BufferOutputStream()
    pq.write_table(summary, sink, compression="zstd")
    old = _merged_files(folder)
    atomic_write_bytes(folder / f"merged-{time.time_ns():020d}.parquet", sink.getvalue())
    for path in [*pending, *old]:
        path.unlink(missing_ok=True)
    return len(pending)
