"""Immutable hot-tier segments: a FAISS index file plus an Arrow/Parquet table of its chunks, checksummed."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexing.durable import fsync_dir, sha256_file
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
    :meth:`indexing.hot.HotIndex.collect_garbage` removes.
    """
    import faiss

    segment_id = new_segment_id()
    seg_dir = segments_dir / segment_id
    seg_dir.mkdir(parents=True, exist_ok=False)
    ids = np.array([row["vector_id"] for row in rows], dtype=np.int64)
    index = build_index(vectors, ids, spec)
    faiss.write_index(index, str(seg_dir / INDEX_FILE))
    table = pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA)
    pq.write_table(table, seg_dir / CHUNKS_FILE, compression="zstd")
    files = {}
    for name in (INDEX_FILE, CHUNKS_FILE):
        with open(seg_dir / name, "rb+") as handle:
            os.fsync(handle.fileno())
        files[name] = sha256_file(seg_dir / name)
    info = SegmentInfo(
        segment_id=segment_id,
        n_vectors=len(rows),
        dim=int(vectors.shape[1]) if vectors.ndim == 2 else 0,
        index=spec.to_dict(),
        files=files,
        created_at=time.time(),
        writer={"host": socket.gethostname(), "pid": os.getpid()},
    )
    (seg_dir / META_FILE).write_text(json.dumps(info.to_dict(), indent=2))
    fsync_dir(seg_dir)
    fsync_dir(segments_dir)
    return info


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

    def _verified(self, name: str) -> Path:
        path = self.seg_dir / name
        if not path.exists():
            raise IndexCorrupt(f"segment file {path} is missing")
        actual = sha256_file(path)
        if actual != self.info.files[name]:
            raise IndexCorrupt(
                f"segment file {path} failed its checksum (expected {self.info.files[name][:12]}…)"
            )
        return path

    @property
    def index(self) -> Any:
        if self._index is None:
            import faiss

            path = self._verified(INDEX_FILE)
            # IO_FLAG_MMAP_IFC maps the flat codes of Flat and HNSW storage (IO_FLAG_MMAP alone maps only
            # inverted lists and would read a flat segment into RAM).
            flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if self.mmap else 0
            try:
                self._index = faiss.read_index(str(path), flags)
            except RuntimeError as err:
                raise IndexCorrupt(f"segment file {path} cannot be read by faiss: {err}") from err
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
            path = self._verified(CHUNKS_FILE)
            self._chunks = pq.read_table(path)
        return self._chunks

    def rows(self, vector_ids: list[int]) -> list[dict[str, Any]]:
        """The chunk rows for ``vector_ids`` (same order)."""
        if self._row_of is None:
            self._row_of = {vid: i for i, vid in enumerate(self.chunks.column("vector_id").to_pylist())}
        positions = [self._row_of[v] for v in vector_ids]
        return self.chunks.take(pa.array(positions, type=pa.int64())).to_pylist()
