"""Immutable hot-tier segments: a FAISS index file plus an Arrow/Parquet table of its chunks, checksummed.

A segment is written whole or not at all: a failed write (a full disk is :class:`~tierflow.errors.DiskFull`)
removes its directory. A reader checks each file against the SHA-256 the manifest holds before it serves
anything from it, and hashes the very bytes it loads (a file corrupted or truncated on flash is
:class:`~tierflow.errors.IndexCorrupt`, naming the segment and how to recover, never a wrong answer).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexing.durable import disk_guard, fsync_dir, sha256_file, write_durably
from indexing.faiss_index import IndexSpec, build_index, to_search_device
from tierflow.errors import IndexCorrupt

INDEX_FILE = "index.faiss"
CHUNKS_FILE = "chunks.parquet"
META_FILE = "segment.json"

CHUNK_ROW_GROUP_ROWS = 1024
"""Rows per Parquet row group of a chunk table: a few rows are read by decoding only the groups that hold
them (:meth:`SegmentReader.read_rows`); a whole table reads as fast as in one group, and the file is some
2 % larger."""

ENTRY_FIELDS = ("doc_id", "vector_id", "chunk_id", "text", "lineage")
"""What :attr:`ChunkColumns.entries` holds of each row, in this order (an :data:`Entry`)."""
Entry = tuple[str, int, str, str, str]

CHUNK_SCHEMA = pa.schema(
    [
        ("vector_id", pa.int64()),
        ("chunk_id", pa.string()),
        ("doc_id", pa.string()),
        ("ordinal", pa.int32()),
        ("text", pa.string()),
        ("content_hash", pa.string()),
        ("lineage", pa.string()),
    ]
)


@dataclass
class SegmentInfo:
    """What the manifest records about a segment: identity, size and the checksums of its files."""

    segment_id: str
    n_vectors: int
    dim: int
    index: dict[str, Any]
    files: dict[str, str]
    created_at: float
    writer: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment_id": self.segment_id,
            "n_vectors": self.n_vectors,
            "dim": self.dim,
            "index": self.index,
            "files": self.files,
            "created_at": self.created_at,
            "writer": self.writer,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentInfo:
        return cls(**data)


def new_segment_id() -> str:
    """Time-ordered, collision-free segment id (several workers write segments at once)."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"


def write_segment(
    segments_dir: Path, rows: list[dict[str, Any]], vectors: np.ndarray, spec: IndexSpec
) -> SegmentInfo:
    """Write one segment durably (files fsynced, directory fsynced) and return its manifest entry.

    The segment is invisible until a manifest names it; a crash before that leaves an orphan that
    :meth:`indexing.hot.HotIndex.collect_garbage` removes. A failure (a full disk is
    :class:`~tierflow.errors.DiskFull`) removes the segment's directory before it is raised.
    """
    segment_id = new_segment_id()
    seg_dir = segments_dir / segment_id
    with disk_guard(seg_dir, f"writing segment {segment_id}"):
        seg_dir.mkdir(parents=True, exist_ok=False)
        try:
            return _write_segment_files(seg_dir, segment_id, rows, vectors, spec)
        except BaseException:
            shutil.rmtree(seg_dir, ignore_errors=True)
            raise


def _write_segment_files(
    seg_dir: Path, segment_id: str, rows: list[dict[str, Any]], vectors: np.ndarray, spec: IndexSpec
) -> SegmentInfo:
    import faiss

    ids = np.array([row["vector_id"] for row in rows], dtype=np.int64)
    index = build_index(vectors, ids, spec)
    # Through a Python file: a write error (a full disk) is raised, also one that only shows when the file
    # is closed (faiss's own writer reports that on stderr and carries on).
    with open(seg_dir / INDEX_FILE, "wb") as handle:
        faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))  # type: ignore[attr-defined]
        handle.flush()
        os.fsync(handle.fileno())
    table = pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA)
    pq.write_table(table, seg_dir / CHUNKS_FILE, compression="zstd", row_group_size=CHUNK_ROW_GROUP_ROWS)
    with open(seg_dir / CHUNKS_FILE, "rb+") as handle:
        os.fsync(handle.fileno())
    files = {name: sha256_file(seg_dir / name) for name in (INDEX_FILE, CHUNKS_FILE)}
    info = SegmentInfo(
        segment_id=segment_id,
        n_vectors=len(rows),
        dim=int(vectors.shape[1]) if vectors.ndim == 2 else 0,
        index=spec.to_dict(),
        files=files,
        created_at=time.time(),
        writer={"host": socket.gethostname(), "pid": os.getpid()},
    )
    write_durably(seg_dir / META_FILE, json.dumps(info.to_dict(), indent=2).encode())
    fsync_dir(seg_dir)
    fsync_dir(seg_dir.parent)
    return info


def corrupt_segment_error(seg_dir: Path, problem: str) -> IndexCorrupt:
    """:class:`IndexCorrupt` for a file of the segment in ``seg_dir``: what is wrong, that the segment is
    refused, and how to recover (see :func:`indexing.manifest.recovery_advice`)."""
    from indexing.manifest import recovery_advice

    segment_id = seg_dir.name
    return IndexCorrupt(
        f"segment {segment_id}: {problem}. The segment is refused, not served. "
        f"{recovery_advice(seg_dir.parent.parent, segment_id)}"
    )


class SegmentReader:
    """Read access to one committed segment; files are checksummed before they are served.

    Args:
        seg_dir: The segment's directory.
        info: Its manifest entry (carries the expected checksums).
        mmap: Memory-map the FAISS file instead of reading it into RAM (warm tier): the vectors (and an
            HNSW graph) stay in the page cache, which the kernel evicts under memory pressure.
    """

    def __init__(self, seg_dir: Path, info: SegmentInfo, mmap: bool = False) -> None:
        self.seg_dir = seg_dir
        self.info = info
        self.mmap = mmap
        self._index: Any = None
        self._search_index: Any = None
        self._chunks: pa.Table | None = None
        self._columns: ChunkColumns | None = None
        self._label_rows: tuple[np.ndarray | None] | None = None  # (label_rows(),) once worked out

    def _check(self, name: str, digest: str, size: int) -> None:
        expected = self.info.files[name]
        if digest != expected:
            raise corrupt_segment_error(
                self.seg_dir,
                f"file {self.seg_dir / name} failed its checksum (sha256 {digest[:12]}…, {size} bytes; "
                f"the manifest expects {expected[:12]}…): it is corrupt or truncated",
            )

    def _verified(self, name: str) -> Path:
        """The file's path, after checking the file on disk (for memory-mapped reads)."""
        path = self.seg_dir / name
        if not path.exists():
            raise corrupt_segment_error(self.seg_dir, f"file {path} is missing")
        self._check(name, sha256_file(path), path.stat().st_size)
        return path

    def _verified_bytes(self, name: str) -> bytes:
        """The file's bytes, checked: what is served is exactly what was hashed."""
        path = self.seg_dir / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise corrupt_segment_error(self.seg_dir, f"file {path} is missing") from None
        except OSError as err:
            raise corrupt_segment_error(self.seg_dir, f"file {path} cannot be read: {err}") from err
        self._check(name, hashlib.sha256(data).hexdigest(), len(data))
        return data

    @property
    def index(self) -> Any:
        if self._index is None:
            import faiss

            try:
                if self.mmap:
                    path = self._verified(INDEX_FILE)
                    # IO_FLAG_MMAP_IFC maps the flat codes of Flat and HNSW storage (IO_FLAG_MMAP alone maps
                    # only inverted lists and would read a flat segment into RAM).
                    self._index = faiss.read_index(
                        str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
                    )
                else:
                    data = self._verified_bytes(INDEX_FILE)
                    self._index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
            except RuntimeError as err:
                raise corrupt_segment_error(
                    self.seg_dir, f"file {self.seg_dir / INDEX_FILE} cannot be read by faiss: {err}"
                ) from err
        return self._index

    @property
    def search_index(self) -> Any:
        """The index to search: on the GPU when the segment's spec allows it and one is present."""
        if self._search_index is None:
            self._search_index = to_search_device(self.index, IndexSpec.from_dict(self.info.index))
        return self._search_index

    @property
    def chunks(self) -> pa.Table:
        """The chunk table as Arrow (read, checked, and kept on first use). Searches use :attr:`columns`."""
        if self._chunks is None:
            self._chunks = self._read_chunks()
        return self._chunks

    def _read_chunks(self) -> pa.Table:
        data = self._verified_bytes(CHUNKS_FILE)
        try:
            return pq.read_table(pa.BufferReader(data))
        except (OSError, pa.ArrowException) as err:
            raise corrupt_segment_error(
                self.seg_dir, f"file {self.seg_dir / CHUNKS_FILE} cannot be read: {err}"
            ) from err

    @property
    def columns(self) -> ChunkColumns:
        """The chunk table as Python objects by row position, built on first use (see :class:`ChunkColumns`).

        The Arrow table is not kept for it (unless :attr:`chunks` was read already), so a searched segment
        holds its chunks once, as Python objects.
        """
        if self._columns is None:
            self._columns = ChunkColumns(self._chunks if self._chunks is not None else self._read_chunks())
        return self._columns

    def label_rows(self) -> np.ndarray | None:
        """The chunk row of each position of the FAISS index (the order vectors were added in, what an
        ``IndexIDMap`` search of its inner index returns); None when they are the same, as in every
        segment :func:`write_segment` writes. Worked out once per reader.

        Raises:
            IndexCorrupt: The FAISS file holds a vector id the chunk table lacks.
        """
        if self._label_rows is None:
            import faiss

            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            try:
                rows = None if np.array_equal(ids, self.columns.vector_ids) else self.columns.rows_of(ids)
            except KeyError as err:
                raise corrupt_segment_error(
                    self.seg_dir, f"{INDEX_FILE} holds vector id {err} and {CHUNKS_FILE} has no row for it"
                ) from err
            self._label_rows = (rows,)
        return self._label_rows[0]

    def rows(self, vector_ids: list[int]) -> list[dict[str, Any]]:
        """The chunk rows for ``vector_ids`` (same order).

        Raises:
            KeyError: A vector id the segment does not hold.
        """
        columns = self.columns
        return [columns.row(columns.row_of(v)) for v in vector_ids]

    def read_rows(self, vector_ids: list[int]) -> list[dict[str, Any]]:
        """The chunk rows for ``vector_ids`` (same order; as :meth:`rows` gives them), read from the checked
        chunk file without building :attr:`columns` or keeping the table: for a few rows of a segment read
        once, such as the windows of one document a re-ingest may reuse (building the columns turns every
        row of the segment into Python objects). Only the ``vector_id`` column and the row groups that hold
        the rows are decoded (:data:`CHUNK_ROW_GROUP_ROWS`; a segment written as one group is decoded
        whole). Uses the columns or the table when this reader holds them already.

        Raises:
            KeyError: A vector id the segment does not hold.
            IndexCorrupt: The chunk file fails its checksum or cannot be read.
        """
        if self._columns is not None:
            return self.rows(vector_ids)
        if self._chunks is not None:
            return _take(self._chunks, vector_ids)
        data = self._verified_bytes(CHUNKS_FILE)
        try:
            parquet = pq.ParquetFile(pa.BufferReader(data))
            stored = parquet.read(columns=["vector_id"]).column("vector_id").to_numpy()
            sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
            starts = np.cumsum([0, *sizes])
            rows = np.flatnonzero(np.isin(stored, np.asarray(vector_ids, dtype=np.int64)))
            groups = sorted(set((np.searchsorted(starts, rows, side="right") - 1).tolist()))
            table = parquet.read_row_groups(groups)
        except (OSError, pa.ArrowException) as err:
            raise corrupt_segment_error(
                self.seg_dir, f"file {self.seg_dir / CHUNKS_FILE} cannot be read: {err}"
            ) from err
        return _take(table, vector_ids)


def _take(table: pa.Table, vector_ids: list[int]) -> list[dict[str, Any]]:
    """The rows of ``table`` (some of a chunk table) for ``vector_ids``, in that order.

    Raises:
        KeyError: A vector id ``table`` does not hold.
    """
    stored = table.column("vector_id").to_numpy()
    found = np.flatnonzero(np.isin(stored, np.asarray(vector_ids, dtype=np.int64)))
    position = dict(zip(stored[found].tolist(), found.tolist(), strict=True))
    return table.take(pa.array([position[v] for v in vector_ids], pa.int64())).to_pylist()


class ChunkColumns:
    """A segment's chunk table as plain Python objects indexed by row position, for searches that read a
    few rows per query: a tuple lookup instead of an Arrow ``take`` (about 0.3 ms a query).

    :attr:`entries` holds what a document search reads of a row in one tuple (:data:`ENTRY_FIELDS`), so
    that a row costs it one lookup: after a FAISS search has evicted the CPU caches, each object touched
    is a trip to memory.

    A segment is immutable once published, so the columns never change; a reader builds them once. They
    take about what the chunk table's strings take as Python objects (each text, chunk id, doc id, hash
    and lineage: its bytes plus some 50), plus some 150 bytes of tuples per row: about 100 MiB for
    100,000 chunks of 400 characters with 300 bytes of lineage each. The hot tier keeps its chunks in
    memory, as it keeps its vectors; the Arrow table they are built from is not kept.

    Args:
        table: The segment's chunk table (:data:`CHUNK_SCHEMA`).

    Example:
        >>> columns = SegmentReader(seg_dir, info).columns
        >>> doc_id, vector_id, chunk_id, text, lineage = columns.entries[columns.row_of(vid)]
    """

    __slots__ = ("names", "values", "vector_id_values", "vector_ids", "entries", "_row_of", "_sorted")

    def __init__(self, table: pa.Table) -> None:
        self.names: list[str] = list(table.column_names)
        # Tuples, not lists: the garbage collector stops tracking a tuple of strings and numbers, while
        # every full collection would walk each list's items.
        self.values: tuple[tuple[Any, ...], ...] = tuple(
            tuple(column.to_pylist()) for column in table.columns
        )
        by_name = dict(zip(self.names, self.values, strict=True))
        self.vector_id_values: tuple[int, ...] = by_name["vector_id"]
        self.vector_ids = np.asarray(self.vector_id_values, dtype=np.int64)
        self.entries: tuple[Entry, ...] = tuple(zip(*(by_name[name] for name in ENTRY_FIELDS), strict=True))
        self._row_of: dict[int, int] | None = None
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # vector ids sorted, and their rows

    def __len__(self) -> int:
        return len(self.vector_id_values)

    def row_of(self, vid: int) -> int:
        """The row position of vector id ``vid``.

        Raises:
            KeyError: The segment does not hold ``vid``.
        """
        if self._row_of is None:
            self._row_of = {v: i for i, v in enumerate(self.vector_id_values)}
        return self._row_of[vid]

    def rows_of(self, vector_ids: np.ndarray) -> np.ndarray:
        """The row positions of ``vector_ids`` (an array of any shape; -1 stays -1).

        Raises:
            KeyError: The segment does not hold one of them.
        """
        wanted = np.asarray(vector_ids, dtype=np.int64)
        if not len(self.vector_ids):
            if np.any(wanted != -1):
                raise KeyError(int(wanted[wanted != -1][0]))
            return wanted.copy()
        if self._sorted is None:
            order = np.argsort(self.vector_ids, kind="stable")
            self._sorted = (self.vector_ids[order], order)
        keys, order = self._sorted
        at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        found = keys[at] == wanted
        missing = ~found & (wanted != -1)
        if missing.any():
            raise KeyError(int(wanted[missing].flat[0]))
        return np.where(found, order[at], -1)

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a dict, as Arrow's ``to_pylist`` gives it (a new dict each call)."""
        return {name: values[i] for name, values in zip(self.names, self.values, strict=True)}
