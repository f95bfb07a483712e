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
    pq.write_table(table, seg_dir / CHUNKS_FILE, compression="zstd")
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
        self._row_of: dict[int, int] | None = None

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
        if self._chunks is None:
            data = self._verified_bytes(CHUNKS_FILE)
            try:
                self._chunks = pq.read_table(pa.BufferReader(data))
            except (OSError, pa.ArrowException) as err:
                raise corrupt_segment_error(
                    self.seg_dir, f"file {self.seg_dir / CHUNKS_FILE} cannot be read: {err}"
                ) from err
        return self._chunks

    def rows(self, vector_ids: list[int]) -> list[dict[str, Any]]:
        """The chunk rows for ``vector_ids`` (same order)."""
        if self._row_of is None:
            self._row_of = {vid: i for i, vid in enumerate(self.chunks.column("vector_id").to_pylist())}
        positions = [self._row_of[v] for v in vector_ids]
        return self.chunks.take(pa.array(positions, type=pa.int64())).to_pylist()
