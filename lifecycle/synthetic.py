"""Synthetic hot indexes for lifecycle benchmarks and tests: clustered unit vectors, no model needed.

Documents are committed through :meth:`indexing.hot.HotIndex.commit` exactly as a pipeline commits them,
with chosen ingest times, so policies see ages without waiting for them.

Example:
    >>> vectors = build_synthetic_index(Path("/tmp/hot"), n_docs=1000, chunks_per_doc=2, dim=64)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from indexing.docs_table import CANONICAL, DocState
from indexing.faiss_index import IndexSpec
from indexing.hot import CommitRequest, HotIndex
from indexing.segment import write_segment
from tierflow.records import chunk_id, vector_id

SYNTHETIC_MODEL = {"model": "synthetic", "dim": 0}


def clustered_vectors(n: int, dim: int, seed: int, clusters: int = 256, spread: float = 0.35) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` random centres (so that neighbours are meaningful)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    picks = rng.integers(0, clusters, size=n)
    vectors = centres[picks] + spread * rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def doc_name(i: int) -> str:
    return f"doc-{i:07d}"


def build_synthetic_index(
    root: Path,
    n_docs: int,
    chunks_per_doc: int = 2,
    dim: int = 64,
    seed: int = 7,
    ingest_time: Callable[[int], float] | None = None,
    segment_docs: int = 50_000,
    source_system: Callable[[int], str] | None = None,
    metadata: Callable[[int], dict[str, str]] | None = None,
    spec: IndexSpec | None = None,
) -> dict[int, np.ndarray]:
    """Commit ``n_docs`` documents of ``chunks_per_doc`` chunks each; returns vector id -> vector.

    Args:
        root: The hot tier's directory (created).
        ingest_time: Per document index, its ingest time (default: 0, i.e. very old).
        segment_docs: Documents per segment (one commit each).
        source_system, metadata: Per document index, what rules can match on.
        spec: How segments are indexed (default: exact, on the CPU).
    """
    index = HotIndex(root)
    vectors = clustered_vectors(n_docs * chunks_per_doc, dim, seed)
    out: dict[int, np.ndarray] = {}
    for start in range(0, n_docs, segment_docs):
        docs = range(start, min(n_docs, start + segment_docs))
        rows, picks, states = [], [], []
        for i in docs:
            name = doc_name(i)
            for ordinal in range(chunks_per_doc):
                cid = chunk_id(name, ordinal)
                vid = vector_id(cid)
                row = i * chunks_per_doc + ordinal
                rows.append(
                    {
                        "vector_id": vid,
                        "chunk_id": cid,
                        "doc_id": name,
                        "ordinal": ordinal,
                        "text": f"synthetic document {i} chunk {ordinal}",
                        "content_hash": f"hash-{i}",
                        "lineage": json.dumps({"source": "synthetic", "doc": i}),
                    }
                )
                picks.append(row)
                out[vid] = vectors[row]
        info = write_segment(
            index.segments_dir, rows, vectors[picks], spec or IndexSpec(type="flat", use_gpu="never")
        )
        for i in docs:
            states.append(
                DocState(
                    doc_id=doc_name(i),
                    version=1,
                    status=CANONICAL,
                    content_hash=f"hash-{i}",
                    segment_id=info.segment_id,
                    n_chunks=chunks_per_doc,
                    source_system=source_system(i) if source_system else "synthetic",
                    source_uri=f"synthetic://{i % 10}",
                    ingest_time=ingest_time(i) if ingest_time else 0.0,
                    metadata=json.dumps(metadata(i) if metadata else {}, sort_keys=True),
                )
            )
        index.commit(
            CommitRequest(
                run_id=f"synthetic-{start}",
                segments=[info],
                updates=states,
                embedding={**SYNTHETIC_MODEL, "dim": dim},
            )
        )
    return out
