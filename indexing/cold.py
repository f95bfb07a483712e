"""The cold tier: one Lance table (through LanceDB) on object storage, holding vectors aged out of flash.

Rows carry everything a hot segment row carries (chunk id, doc id, text, content hash, lineage) plus the
document's metadata and the lifecycle ``batch`` that wrote them. Which rows are live is not the table's
business: the hot manifest's document table names, for each cold document, the batch that holds its
vectors (``DocState.cold_batch``). Rows of any other batch are invisible, which is what lets a move copy
first, verify, and only then commit, and lets a crash leave nothing visible twice.

Vectors are stored as ``float16`` by default (half the bytes of ``float32``; cosine scores change by
about 1e-3, which reorders near-ties only) or ``float32``. Above ``index_min_rows`` rows an IVF_PQ index
can be built (``index = "ivf_pq"``); searches then refine the PQ candidates with the stored vectors.

Example:
    >>> cold = ColdStore(ColdConfig(uri="s3://bucket/tierflow/cold", endpoint_url="http://127.0.0.1:9000"))
    >>> cold.check()  # bucket reachable, credentials usable: before anything moves
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from indexing.segment import CHUNK_SCHEMA
from tierflow.errors import ConfigError, IncompatibleIndex
from tierflow.s3 import (
    Credentials,
    ObjectStoreUnavailable,
    check_prefix,
    is_s3_uri,
    resolved_credentials,
    traversal,
)

DTYPES = {"float16": (pa.float16(), np.float16), "float32": (pa.float32(), np.float32)}
INDEX_KINDS = ("flat", "ivf_pq")
APPEND_ROWS = 20_000  # rows per Lance write: bounded memory, few versions
IN_LIST = 500  # ids per IN (...) predicate


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

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.profile, self.access_key_id, self.secret_access_key, self.session_token)

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
        config: Location, storage format and S3 settings.
    """

    def __init__(self, config: ColdConfig) -> None:
        self.config = config
        self._db: Any = None
        self._table: Any = None
        self._indexed: tuple[int, bool] = (-1, False)  # (table version, has a vector index)

    @property
    def np_dtype(self) -> Any:
        return DTYPES[self.config.vector_dtype][1]

    # ---- connection ----------------------------------------------------------------------------
    def _storage_options(self) -> dict[str, str]:
        if not is_s3_uri(self.config.uri):
            return {}
        return resolved_credentials(
            self.config.endpoint_url or None, self.config.region or None, self.config.credentials
        )

    def check(self) -> None:
        """Fail with a :class:`ConfigError` unless the tier is usable: the bucket exists and is reachable
        with usable credentials, or the local directory can be created and written."""
        if is_s3_uri(self.config.uri):
            self._storage_options()  # raises when there are no credentials at all
            check_prefix(
                self.config.uri,
                self.config.endpoint_url or None,
                self.config.region or None,
                self.config.credentials,
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

    def table(self, min_version: int = 0) -> Any:
        """The table (None before the first move), at ``min_version`` or later."""
        if self._table is None:
            db = self._connect()
            if self.config.table not in db.list_tables().tables:
                return None
            self._table = db.open_table(self.config.table)
        if self._table.version < min_version:
            self._table.checkout_latest()
        return self._table

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
            table = pa.table(columns, schema=schema)
            if self._table is None and existing is None:
                self._table = self._connect().create_table(self.config.table, table)
                existing = self._table
            else:
                self.table().add(table)
        return self.version

    def delete(self, batch: str, doc_ids: list[str] | None = None) -> None:
        """Delete the rows of ``batch`` (only those of ``doc_ids`` when given)."""
        table = self.table()
        if table is None:
            return
        if doc_ids is None:
            table.delete(f"batch = {quote(batch)}")
            return
        for start in range(0, len(doc_ids), IN_LIST):
            ids = ", ".join(quote(d) for d in doc_ids[start : start + IN_LIST])
            table.delete(f"batch = {quote(batch)} AND doc_id IN ({ids})")

    # ---- reading -------------------------------------------------------------------------------
    def scan(self, where: str, columns: list[str]) -> pa.Table:
        """Rows matching ``where`` (a Lance SQL filter), only ``columns``; empty before the first move."""
        table = self.table()
        if table is None:
            return pa.table({c: [] for c in columns})
        return table.search().where(where).select(columns).limit(None).to_arrow()

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
        """
        table = self.table(min_version)
        if table is None or not batches or k <= 0:
            return [[] for _ in queries]
        try:
            return self._search(table, queries, k, batches, visible)
        except (OSError, ValueError, RuntimeError):
            # The version this process holds may have lost files to a cleanup: read the latest once more.
            table.checkout_latest()
        try:
            return self._search(table, queries, k, batches, visible)
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
        table = self.table()
        if table is None:
            return
        rows = table.count_rows()
        if self.config.index == "ivf_pq" and rows >= self.config.index_min_rows and not table.list_indices():
            dim = table.schema.field("vector").type.list_size
            table.create_index(
                metric="dot",
                vector_column_name="vector",
                index_type="IVF_PQ",
                num_partitions=self.config.ivf_partitions or max(1, int(math.sqrt(rows))),
                num_sub_vectors=self.config.pq_sub_vectors or max(1, dim // 8),
            )
        table.optimize(cleanup_older_than=datetime.timedelta(seconds=self.config.version_retention_s))

    def stats(self) -> dict[str, Any]:
        """Rows, bytes (of the live version's files) and the table version."""
        table = self.table()
        if table is None:
            return {"rows": 0, "bytes": 0, "version": 0, "indices": []}
        table.checkout_latest()
        stats = table.stats()
        return {
            "rows": int(stats["num_rows"]),
            "bytes": int(stats["total_bytes"]),
            "version": int(table.version),
            "indices": [str(ix.index_type) for ix in table.list_indices()],
        }
