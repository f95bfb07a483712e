"""The cold tier: one Lance table (through LanceDB) on object storage, holding vectors aged out of flash.

Rows carry everything a hot segment row carries (chunk id, doc id, text, content hash, lineage) plus the
document's metadata and the lifecycle ``batch`` that wrote them. Which rows are live is not the table's
business: the hot manifest's document table names, for each cold document, the batch that holds its
vectors (``DocState.cold_batch``). Rows of any other batch are invisible, which is what lets a move copy
first, verify, and only then commit, and lets a crash leave nothing visible twice.

Vectors are stored as ``float16`` by default (half the bytes of ``float32``; cosine scores change by
about 1e-3, which reorders near-ties only) or ``float32``. Above ``index_min_rows`` rows an IVF_PQ index
can be built (``index = "ivf_pq"``); searches then refine the PQ candidates with the stored vectors.

On S3 every request is retried with backoff per ``[cold]``'s ``max_attempts`` / ``timeout_s`` /
``connect_timeout_s`` / ``retry_timeout_s`` (:class:`tierflow.s3.RetryPolicy`, given to boto3 and to
LanceDB's object store). A Lance operation that still fails with a transient error (LanceDB does not
retry a commit whose conditional PUT timed out, since it cannot know whether it landed) is tried again
whole, up to ``operation_attempts`` times, on the latest table version; an append first checks whether the
failed try's commit landed after all, so rows are never written twice. What a retry cannot fix (403
AccessDenied, a missing bucket) raises :class:`~tierflow.errors.ConfigError` at once; a store still failing
after the retries raises :class:`~tierflow.s3.ObjectStoreUnavailable`, naming the operation and the cause.

Example:
    >>> cold = ColdStore(ColdConfig(uri="s3://bucket/tierflow/cold", endpoint_url="http://127.0.0.1:9000"))
    >>> cold.check()  # bucket reachable, credentials usable: before anything moves
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from indexing.segment import CHUNK_SCHEMA
from tierflow.errors import ConfigError, IncompatibleIndex, Transient
from tierflow.s3 import (
    Credentials,
    ObjectStoreUnavailable,
    RetryPolicy,
    check_prefix,
    is_s3_uri,
    resolved_credentials,
    translate_object_store_error,
    traversal,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DTYPES = {"float16": (pa.float16(), np.float16), "float32": (pa.float32(), np.float32)}
INDEX_KINDS = ("flat", "ivf_pq")
APPEND_ROWS = 20_000  # rows per Lance write: bounded memory, few versions
IN_LIST = 500  # ids per IN (...) predicate
RETRY_BACKOFF_S = 0.5  # before the second try of a whole Lance operation; doubled for each one after


@dataclass(frozen=True)
class ColdConfig:
    """Where the cold tier lives and how it stores vectors (``[cold]`` in tierflow.toml).

    Args:
        uri: A local directory (the embedded default) or ``s3://bucket/prefix``.
        table: The Lance table's name under ``uri``.
        vector_dtype: ``float16`` (default; half the bytes) or ``float32``.
        index: ``flat`` (exact scan of the stored vectors) or ``ivf_pq`` (built once the table has
            ``index_min_rows`` rows; searched with ``nprobes`` and refined by ``refine_factor``).
        index_min_rows: Rows below which the table is scanned even when ``index = "ivf_pq"``.
        ivf_partitions: IVF partitions; 0 picks ``sqrt(rows)``.
        pq_sub_vectors: PQ sub-vectors; 0 picks ``dim / 8``.
        nprobes: IVF partitions searched per query.
        refine_factor: PQ candidates re-scored with the stored vectors, as a multiple of the ones wanted
            (10 kept only 0.74 of the exact top 10 on the lifecycle benchmark's clustered vectors; 50: 0.998).
        endpoint_url: S3 API endpoint (MinIO, moto ...); empty for AWS or ``AWS_ENDPOINT_URL``. An
            ``https://`` one is verified (see :mod:`tierflow.s3`: ``AWS_CA_BUNDLE`` for a private CA).
        region: S3 region; empty takes it from the AWS environment/config.
        version_retention_s: Old table versions younger than this are kept, so that searches holding
            them finish; older ones are removed by the lifecycle run's cleanup.
        profile: A named AWS profile (empty: the usual chain).
        access_key_id, secret_access_key, session_token: Keys (prefer ``TIERFLOW__COLD__...`` variables
            to a file); empty: the usual chain.
        max_attempts: Tries of one S3 request in all, with exponential backoff between them (boto3's
            ``retries.max_attempts``; LanceDB's ``client_max_retries`` is one less). Only 5xx, throttling,
            timeouts and dropped connections are retried.
        retry_mode: boto3's retry mode, ``standard`` or ``adaptive`` (client-side rate limiting when
            throttled).
        timeout_s: Seconds one S3 request may take (boto3's ``read_timeout``; LanceDB's ``timeout``, the
            whole request); a slower one is retried.
        connect_timeout_s: Seconds to open a connection to S3.
        retry_timeout_s: LanceDB's ``client_retry_timeout``: no retry of a request starts after this long.
        operation_attempts: Tries of one whole Lance operation (an append, delete, scan, search, compaction)
            that failed transiently after the request retries: LanceDB does not retry a commit whose PUT
            timed out. 1 disables it.

    Credentials come from the configuration when given, else from the usual AWS chain
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role), resolved by
    boto3 and handed to LanceDB's object store.
    """

    uri: str = "tierflow-data/cold"
    table: str = "chunks"
    vector_dtype: str = "float16"
    index: str = "flat"
    index_min_rows: int = 100_000
    ivf_partitions: int = 0
    pq_sub_vectors: int = 0
    nprobes: int = 32
    refine_factor: int = 50
    endpoint_url: str = ""
    region: str = ""
    version_retention_s: float = 3600.0
    profile: str = ""
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    max_attempts: int = 5
    retry_mode: str = "standard"
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    retry_timeout_s: float = 60.0
    operation_attempts: int = 3

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.profile, self.access_key_id, self.secret_access_key, self.session_token)

    @property
    def retry(self) -> RetryPolicy:
        """The per-request retry policy given to boto3 and LanceDB's object store."""
        return RetryPolicy(
            self.max_attempts, self.retry_mode, self.timeout_s, self.connect_timeout_s, self.retry_timeout_s
        )

    def __post_init__(self) -> None:
        if self.vector_dtype not in DTYPES:
            raise ConfigError(f"cold.vector_dtype must be one of {sorted(DTYPES)}, got {self.vector_dtype!r}")
        if self.index not in INDEX_KINDS:
            raise ConfigError(f"cold.index must be one of {INDEX_KINDS}, got {self.index!r}")
        if not self.uri:
            raise ConfigError("cold.uri is empty: give a local directory or s3://bucket/prefix")
        if is_s3_uri(self.uri) and not self.uri[len("s3://") :].split("/")[0]:
            raise ConfigError(f"cold.uri {self.uri!r} names no bucket: write it as s3://bucket/prefix")
        if is_s3_uri(self.uri) and (reason := traversal(self.uri)):
            raise ConfigError(f"cold.uri: {reason}")
        if self.nprobes < 1 or self.refine_factor < 1:
            raise ConfigError("cold.nprobes and cold.refine_factor must be >= 1")
        self.retry.validate("cold.")
        if self.operation_attempts < 1:
            raise ConfigError(f"cold.operation_attempts must be >= 1, got {self.operation_attempts}")

    @property
    def location(self) -> dict[str, Any]:
        """What a manifest records about the cold tier (no endpoint or credentials: those are per host)."""
        return {"uri": self.uri, "table": self.table, "vector_dtype": self.vector_dtype}


@dataclass(frozen=True)
class ColdHit:
    """A chunk found in the cold tier, with its row (text, doc id, lineage ...)."""

    score: float
    vector_id: int
    batch: str
    row: dict[str, Any]


def cold_schema(dim: int, dtype: str) -> pa.Schema:
    """A hot segment's chunk columns, the document's metadata and lineage, the batch, and the vector."""
    return pa.schema(
        [
            *CHUNK_SCHEMA,
            ("metadata", pa.string()),
            ("doc_lineage", pa.string()),
            ("batch", pa.string()),
            ("moved_at", pa.float64()),
            ("vector", pa.list_(DTYPES[dtype][0], dim)),
        ]
    )


ROW_COLUMNS = tuple(CHUNK_SCHEMA.names)


def quote(value: str) -> str:
    """A SQL string literal for a Lance filter."""
    return "'" + value.replace("'", "''") + "'"


def digest(rows: list[dict[str, Any]], vectors: np.ndarray) -> str:
    """Checksum of a set of chunk rows and their stored vectors, independent of row order: what a copy to
    the cold tier must reproduce exactly before the hot tier lets go of the originals."""
    order = sorted(range(len(rows)), key=lambda i: rows[i]["vector_id"])
    h = hashlib.sha256()
    for i in order:
        row = rows[i]
        h.update(int(row["vector_id"]).to_bytes(8, "little", signed=True))
        h.update(row["chunk_id"].encode())
        h.update(row["content_hash"].encode())
        h.update(np.ascontiguousarray(vectors[i]).tobytes())
    return h.hexdigest()


class ColdStore:
    """Reads and writes the cold tier's Lance table.

    Args:
        config: Location, storage format, S3 settings and retries.
    """

    def __init__(self, config: ColdConfig) -> None:
        self.config = config
        self._db: Any = None
        self._table: Any = None
        self._indexed: tuple[int, bool] = (-1, False)  # (table version, has a vector index)
        self._written: dict[str, int] = {}  # batch -> rows this store appended to it

    @property
    def np_dtype(self) -> Any:
        return DTYPES[self.config.vector_dtype][1]

    # ---- connection ----------------------------------------------------------------------------
    def _storage_options(self) -> dict[str, str]:
        if not is_s3_uri(self.config.uri):
            return {}
        credentials = resolved_credentials(
            self.config.endpoint_url or None, self.config.region or None, self.config.credentials
        )
        return {**credentials, **self.config.retry.object_store_options()}

    def check(self) -> None:
        """Fail with a :class:`ConfigError` unless the tier is usable: the bucket exists and is reachable
        with usable credentials, or the local directory can be created and written.

        Raises:
            ConfigError: As above.
            ObjectStoreUnavailable: S3 answered 5xx/throttling on every try.
        """
        if is_s3_uri(self.config.uri):
            self._storage_options()  # raises when there are no credentials at all
            check_prefix(
                self.config.uri,
                self.config.endpoint_url or None,
                self.config.region or None,
                self.config.credentials,
                self.config.retry,
            )
            return
        path = Path(self.config.uri)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cold.uri {path} cannot be created: {err.strerror}") from None
        if not os.access(path, os.W_OK):
            raise ConfigError(f"cold.uri {path} is not writable")

    def _connect(self) -> Any:
        if self._db is None:
            import lancedb

            if not is_s3_uri(self.config.uri):
                Path(self.config.uri).mkdir(parents=True, exist_ok=True)
            self._db = lancedb.connect(self.config.uri, storage_options=self._storage_options())
        return self._db

    def _attempt(self, what: str, op: Callable[[], T]) -> T:
        """Run ``op`` (Lance calls). On S3 its errors are translated (:func:`translate_object_store_error`)
        and a transient one is retried, up to ``operation_attempts`` tries in all, with backoff and on the
        latest table version; a local directory's errors are raised as they are."""
        if not is_s3_uri(self.config.uri):
            return op()
        attempts = self.config.operation_attempts
        for attempt in range(1, attempts + 1):
            try:
                return op()
            except (OSError, ValueError, RuntimeError) as err:
                translated = translate_object_store_error(
                    err, self.config.uri, self.config.endpoint_url or None
                )
                if translated is None:
                    raise
                if not isinstance(translated, Transient):
                    raise translated from err
                if attempt == attempts:
                    cause = getattr(translated, "message", str(translated))
                    raise ObjectStoreUnavailable(
                        self.config.uri, f"cold tier {what} failed after {attempts} attempt(s): {cause}"
                    ) from err
                log.warning("cold tier %s failed (try %d of %d), retrying: %s", what, attempt, attempts, err)
                time.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))
                self._table = None  # the next try opens the latest version
        raise AssertionError("unreachable")

    def _open(self, min_version: int = 0) -> Any:
        if self._table is None:
            db = self._connect()
            if self.config.table not in db.list_tables().tables:
                return None
            try:
                self._table = db.open_table(self.config.table)
            except ValueError as err:
                if "was not found" not in str(err):
                    raise
                return None  # listed for the files of a create whose commit never landed; no version yet
        if self._table.version < min_version:
            self._table.checkout_latest()
        return self._table

    def table(self, min_version: int = 0) -> Any:
        """The table (None before the first move), at ``min_version`` or later."""
        return self._attempt("open", lambda: self._open(min_version))

    @property
    def version(self) -> int:
        table = self.table()
        return int(table.version) if table is not None else 0

    # ---- writing -------------------------------------------------------------------------------
    def append(
        self,
        rows: list[dict[str, Any]],
        vectors: np.ndarray,
        batch: str,
        doc_fields: dict[str, dict[str, str]],
    ) -> int:
        """Append chunk rows and their vectors under ``batch``; returns the table version after it.

        Each part is one Lance commit. A part whose commit failed transiently is tried again only after
        checking that the failed try did not land (the rows of ``batch`` are counted): a batch is written
        by one store, which knows how many rows it holds so far.

        Args:
            rows: Hot chunk rows (:data:`ROW_COLUMNS`).
            vectors: Their vectors (float32; stored as the configured dtype).
            batch: The lifecycle batch writing them.
            doc_fields: Per doc id, its ``metadata`` and ``doc_lineage`` JSON.
        """
        if not rows:
            return self.version
        dim = int(vectors.shape[1])
        schema = cold_schema(dim, self.config.vector_dtype)
        existing = self.table()
        if existing is not None and existing.schema.field("vector").type != schema.field("vector").type:
            raise IncompatibleIndex(
                f"cold table {self.config.uri}/{self.config.table} stores {existing.schema.field('vector').type}"
                f"; this index has {dim}-d vectors stored as {self.config.vector_dtype}"
            )
        moved_at = datetime.datetime.now(datetime.UTC).timestamp()
        for start in range(0, len(rows), APPEND_ROWS):
            part = rows[start : start + APPEND_ROWS]
            stored = np.ascontiguousarray(vectors[start : start + APPEND_ROWS], dtype=self.np_dtype)
            columns: dict[str, Any] = {name: [r[name] for r in part] for name in ROW_COLUMNS}
            columns["metadata"] = [doc_fields[r["doc_id"]]["metadata"] for r in part]
            columns["doc_lineage"] = [doc_fields[r["doc_id"]]["doc_lineage"] for r in part]
            columns["batch"] = [batch] * len(part)
            columns["moved_at"] = [moved_at] * len(part)
            columns["vector"] = pa.FixedSizeListArray.from_arrays(
                pa.array(stored.ravel(), type=DTYPES[self.config.vector_dtype][0]), dim
            )
            self._add(pa.table(columns, schema=schema), batch)
        return self.version

    def _add(self, data: pa.Table, batch: str) -> None:
        before = self._written.get(batch, 0)
        tries = 0

        def add() -> None:
            nonlocal tries
            tries += 1
            table = self._open()
            if tries > 1 and table is not None:
                landed = table.count_rows(f"batch = {quote(batch)}")
                if landed == before + data.num_rows:
                    log.info(
                        "cold append of %d rows to %s had landed before its try failed", data.num_rows, batch
                    )
                    return
            if table is None:
                self._table = self._connect().create_table(self.config.table, data)
            else:
                table.add(data)

        self._attempt("append", add)
        self._written[batch] = before + data.num_rows

    def delete(self, batch: str, doc_ids: list[str] | None = None) -> None:
        """Delete the rows of ``batch`` (only those of ``doc_ids`` when given). Idempotent."""

        def delete() -> None:
            table = self._open()
            if table is None:
                return
            if doc_ids is None:
                table.delete(f"batch = {quote(batch)}")
                return
            for start in range(0, len(doc_ids), IN_LIST):
                ids = ", ".join(quote(d) for d in doc_ids[start : start + IN_LIST])
                table.delete(f"batch = {quote(batch)} AND doc_id IN ({ids})")

        self._attempt("delete", delete)
        self._written.pop(batch, None)

    # ---- reading -------------------------------------------------------------------------------
    def scan(self, where: str, columns: list[str]) -> pa.Table:
        """Rows matching ``where`` (a Lance SQL filter), only ``columns``; empty before the first move."""

        def scan() -> pa.Table:
            table = self._open()
            if table is None:
                return pa.table({c: [] for c in columns})
            return table.search().where(where).select(columns).limit(None).to_arrow()

        return self._attempt("scan", scan)

    def batch_digest(self, batch: str) -> tuple[int, str]:
        """Row count and :func:`digest` of what the table holds under ``batch``."""
        found = self.scan(f"batch = {quote(batch)}", ["vector_id", "chunk_id", "content_hash", "vector"])
        rows = found.select(["vector_id", "chunk_id", "content_hash"]).to_pylist()
        return len(rows), digest(rows, self._vectors(found))

    def _vectors(self, table: pa.Table) -> np.ndarray:
        column = table.column("vector").combine_chunks()
        dim = column.type.list_size
        return np.asarray(column.values.to_numpy(zero_copy_only=False), dtype=self.np_dtype).reshape(-1, dim)

    def rows(self, batch: str, doc_ids: list[str]) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The chunk rows (hot-segment columns) and float32 vectors of ``doc_ids`` in ``batch``."""
        parts = []
        for start in range(0, len(doc_ids), IN_LIST):
            ids = ", ".join(quote(d) for d in doc_ids[start : start + IN_LIST])
            parts.append(self.scan(f"batch = {quote(batch)} AND doc_id IN ({ids})", [*ROW_COLUMNS, "vector"]))
        if not parts:
            return [], np.zeros((0, 0), np.float32)
        found = pa.concat_tables(parts).sort_by([("doc_id", "ascending"), ("ordinal", "ascending")])
        return found.select(list(ROW_COLUMNS)).to_pylist(), self._vectors(found).astype(np.float32)

    def placements(self) -> dict[str, set[str]]:
        """Batch -> doc ids of every row in the table (what cleanup compares with the manifests)."""
        found = self.scan("true", ["batch", "doc_id"])
        out: dict[str, set[str]] = {}
        for batch, doc_id in zip(
            found.column("batch").to_pylist(), found.column("doc_id").to_pylist(), strict=True
        ):
            out.setdefault(batch, set()).add(doc_id)
        return out

    def search(
        self, queries: np.ndarray, k: int, batches: list[str], visible: Any, min_version: int = 0
    ) -> list[list[ColdHit]]:
        """Top-``k`` visible chunks per query by inner product (cosine of normalised vectors).

        Args:
            queries: float32 query vectors.
            k: Chunks wanted per query.
            batches: The live batches (a prefilter).
            visible: ``visible(doc_id, batch) -> bool``; the document table decides what is live.
            min_version: The table version the manifest's last move produced (read at least that one).

        Raises:
            ObjectStoreUnavailable: The tier could not be read (after the retries, and once more on the
                latest version, which a cleanup may have left the version read without some files).
                Never an empty or partial answer in its place: a federated search is all tiers or none.
            ConfigError: S3 refused access (403) or the bucket is gone; not retried.
        """
        if not batches or k <= 0:
            return [[] for _ in queries]

        def search() -> list[list[ColdHit]]:
            table = self._open(min_version)
            if table is None:
                return [[] for _ in queries]
            return self._search(table, queries, k, batches, visible)

        try:
            return self._attempt("search", search)
        except (OSError, ValueError, RuntimeError):
            # The version this process holds may have lost files to a cleanup: read the latest once more.
            self._table = None
        try:
            return search()
        except (OSError, ValueError, RuntimeError) as err:
            raise ObjectStoreUnavailable(self.config.uri, f"cold tier search failed: {err}") from err

    def _search(
        self, table: Any, queries: np.ndarray, k: int, batches: list[str], visible: Any
    ) -> list[list[ColdHit]]:
        where = "batch IN (" + ", ".join(quote(b) for b in sorted(batches)) + ")"
        total = None
        results = []
        for query in np.asarray(queries, dtype=np.float32):
            want = k
            while True:
                found = self._query(table, query, want, where)
                hits = [
                    ColdHit(1.0 - float(d), int(row["vector_id"]), row["batch"], row)
                    for row, d in zip(
                        found.select([*ROW_COLUMNS, "batch"]).to_pylist(),
                        found.column("_distance").to_pylist(),
                        strict=True,
                    )
                    if visible(row["doc_id"], row["batch"])
                ]
                if len(hits) >= k or found.num_rows < want:
                    break
                total = total if total is not None else table.count_rows()
                if want >= total:
                    break
                want = min(total, want * 4)
            results.append(sorted(hits, key=lambda h: (-h.score, h.vector_id))[:k])
        return results

    def _has_index(self, table: Any) -> bool:
        if self._indexed[0] != table.version:
            self._indexed = (int(table.version), bool(table.list_indices()))
        return self._indexed[1]

    def _query(self, table: Any, query: np.ndarray, limit: int, where: str) -> pa.Table:
        search = table.search(query).distance_type("dot").where(where, prefilter=True).limit(limit)
        if self.config.index == "ivf_pq" and self._has_index(table):
            search = search.nprobes(self.config.nprobes).refine_factor(self.config.refine_factor)
        return search.to_arrow()

    # ---- maintenance ---------------------------------------------------------------------------
    def optimize(self) -> None:
        """Merge small files, drop versions older than the retention, and build or extend the IVF_PQ
        index when one is configured and the table is big enough."""

        def optimize() -> None:
            table = self._open()
            if table is None:
                return
            rows = table.count_rows()
            if (
                self.config.index == "ivf_pq"
                and rows >= self.config.index_min_rows
                and not table.list_indices()
            ):
                dim = table.schema.field("vector").type.list_size
                table.create_index(
                    metric="dot",
                    vector_column_name="vector",
                    index_type="IVF_PQ",
                    num_partitions=self.config.ivf_partitions or max(1, int(math.sqrt(rows))),
                    num_sub_vectors=self.config.pq_sub_vectors or max(1, dim // 8),
                )
            table.optimize(cleanup_older_than=datetime.timedelta(seconds=self.config.version_retention_s))

        self._attempt("optimize", optimize)

    def stats(self) -> dict[str, Any]:
        """Rows, bytes (of the live version's files) and the table version."""

        def stats() -> dict[str, Any]:
            table = self._open()
            if table is None:
                return {"rows": 0, "bytes": 0, "version": 0, "indices": []}
            table.checkout_latest()
            found = table.stats()
            return {
                "rows": int(found["num_rows"]),
                "bytes": int(found["total_bytes"]),
                "version": int(table.version),
                "indices": [str(ix.index_type) for ix in table.list_indices()],
            }

        return self._attempt("stats", stats)
