"""Sinks: embedding + writing hot-tier segments, writing dead letters, and the single commit step.

Writers run on any number of workers, each writing its own immutable segment; one commit step then
publishes all of them (and every document's new state) in a single manifest swap.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.rag.ingestion.base import VectorDatabaseWriteConfig
from apache_beam.ml.rag.types import Chunk, Embedding

from indexing.docs_table import DocState
from indexing.durable import atomic_write_bytes
from indexing.embedder import Embedder
from indexing.faiss_index import IndexSpec
from indexing.hot import CommitRequest, HotIndex
from indexing.segment import SegmentInfo, write_segment
from pipelines.traced import TracedDoFn, traced
from tierflow import metrics, progress
from tierflow.config import EmbeddingConfig
from tierflow.deadletter import DeadLetter
from tierflow.errors import IndexCorrupt
from tierflow.lineage import RunContext

LOG = logging.getLogger(__name__)
LOGGED_IDS = 100  # document ids a log line names at most (the full list is in lineage and the manifest)
EMBED_SLICE = 512  # chunks per encode call: big enough to sort by length, small enough to report progress


@dataclass
class DocChunks:
    """A canonical document's new state and its chunks (Beam RAG ``Chunk``s), on its way to a segment."""

    state: DocState
    chunks: list[Chunk]


PREVIOUS = "previous"  # DocState.extra key: the version a changed document replaces (see reusable_vectors)
REUSED = "reused_from"  # chunk metadata / lineage key: the segment whose stored vector a chunk reuses
RESOLVED = "resolved"  # commit step input: the items decided before the pipeline (see CommitRun)


class EmbedChunks(TracedDoFn):
    """Embeds every chunk of one write shard, longest-first in slices so batches pad little.

    A chunk of a changed document whose text is exactly that of a chunk of the version it replaces keeps
    that chunk's stored vector (:func:`reusable_vectors`) instead of being embedded again: an edit to one
    part of a long document re-embeds only the windows it touched.
    """

    span_name = "tierflow.embed"

    def __init__(
        self, config: EmbeddingConfig, index_dir: str | None = None, version: str | None = None
    ) -> None:
        self.config = config
        self.index_dir = index_dir
        self.version = version
        self._embedder: Embedder | None = None

    def setup(self) -> None:
        self._embedder = Embedder(self.config)
        self._embedder.warm_up()

    def process(self, element: tuple[int, Iterable[DocChunks]]):
        assert self._embedder is not None
        shard, grouped = element
        docs = list(grouped)
        chunks = [chunk for doc in docs for chunk in doc.chunks]
        reused = reusable_vectors(self.index_dir, docs, self.version) if self.index_dir else {}
        for chunk in chunks:
            found = reused.get(chunk.id or "")
            if found is not None:
                segment_id, stored = found
                vector: Any = stored  # a float32 row, like the embedder's (Beam types it list[float])
                chunk.embedding = Embedding(dense_embedding=vector)
                chunk.metadata[REUSED] = segment_id
                lineage = json.loads(chunk.metadata["lineage"])
                lineage["chunk"][REUSED] = segment_id
                chunk.metadata["lineage"] = json.dumps(lineage, sort_keys=True)
        todo = [i for i, chunk in enumerate(chunks) if chunk.embedding is None]
        order = sorted(todo, key=lambda i: -len(chunks[i].content.text or ""))
        started = time.monotonic()
        metrics.count("stage_documents", "embed", "in", value=len(docs))
        shown = progress.bar(len(order), f"embed shard {shard}", unit="chunk")
        for start in range(0, len(order), EMBED_SLICE):
            part = order[start : start + EMBED_SLICE]
            sliced = time.monotonic()
            vectors = self._embedder.embed([chunks[i].content.text or "" for i in part])
            metrics.observe("embedding_batch_seconds", [time.monotonic() - sliced])
            metrics.count("embedded_chunks", value=len(part))
            self.note("chunks", len(part))
            shown.update(len(part))
            for i, vector in zip(part, vectors, strict=True):
                chunks[i].embedding = Embedding(dense_embedding=vector)
            done = min(start + EMBED_SLICE, len(order))
            rate = done / max(time.monotonic() - started, 1e-9)
            LOG.info("embed shard %s: %d/%d chunks (%.1f chunks/s)", shard, done, len(order), rate)
        shown.close()
        if order:  # the shard's embedding time, spread over the chunks it embedded, for the cost counters
            share = (time.monotonic() - started) * 1000 / len(order)
            for i in order:
                chunks[i].metadata["embed_ms"] = share
        metrics.count("stage_documents", "embed", "out", value=len(docs))
        yield shard, docs


def reusable_vectors(
    index_dir: str, docs: list[DocChunks], version: str | None = None
) -> dict[str, tuple[str, np.ndarray]]:
    """Chunk id -> (segment id, stored vector) for the chunks of ``docs`` whose text is exactly the text
    of a chunk of the version they replace, when that version's vectors are live in a hot or warm segment
    and were made the same way (the reconcile stage sets ``extra[PREVIOUS]`` only then). Segments store
    float32 vectors exactly (flat and HNSW), so a reused vector is the one that text was embedded to.
    A previous version that is no longer where its state says (compacted, moved meanwhile) reuses nothing.
    """
    previous = [(doc, doc.state.extra[PREVIOUS]) for doc in docs if doc.state.extra.get(PREVIOUS)]
    if not previous:
        return {}
    # FAISS files memory-mapped (after their checksum) rather than copied whole into memory: a few vectors
    # of each are taken.
    index = HotIndex(index_dir, mmap=True, version=version)
    manifest = index.manifest()
    by_segment: dict[str, list[tuple[DocChunks, DocState]]] = {}
    for doc, before in previous:
        by_segment.setdefault(str(before.segment_id), []).append((doc, before))
    found: dict[str, tuple[str, np.ndarray]] = {}
    for segment_id, group in by_segment.items():
        try:  # only these documents' rows: a segment's whole chunk table is many times what they need
            rows, vectors = index.doc_vectors([before for _, before in group], manifest, whole_tables=False)
        except IndexCorrupt:  # not live any more: embed everything
            continue
        start = 0
        for doc, before in group:
            end = start + before.n_chunks
            by_text = {
                row["text"]: vector for row, vector in zip(rows[start:end], vectors[start:end], strict=True)
            }
            start = end
            for chunk in doc.chunks:
                vector = by_text.get(chunk.content.text or "")
                if vector is not None and chunk.id:
                    found[chunk.id] = (segment_id, vector)
    return found


class HotTierWriteConfig(VectorDatabaseWriteConfig):
    """Beam vector-sink configuration for the FAISS hot tier, like Beam's other vector database sinks.

    Example:
        >>> config = HotTierWriteConfig("tierflow-data/hot", IndexSpec(type="hnsw"))
        >>> shards | config.create_write_transform()
    """

    def __init__(self, index_dir: str, spec: IndexSpec, traceparent: str = "") -> None:
        self.index_dir = index_dir
        self.spec = spec
        self.traceparent = traceparent  # the run's span, parent of the write bundles' spans

    def create_write_transform(self) -> beam.PTransform:
        return WriteToHotTier(self)


class _WriteSegment(TracedDoFn):
    span_name = "tierflow.write"

    def __init__(self, config: HotTierWriteConfig) -> None:
        self.config = config

    def process(self, element: tuple[int, list[DocChunks]]):
        _, docs = element
        rows: list[dict[str, Any]] = []
        vectors: list[Any] = []
        for doc in docs:
            for chunk in doc.chunks:
                assert chunk.embedding is not None
                rows.append(
                    {
                        "vector_id": chunk.metadata["vector_id"],
                        "chunk_id": chunk.id,
                        "doc_id": doc.state.doc_id,
                        "ordinal": chunk.index,
                        "text": chunk.content.text,
                        "content_hash": chunk.metadata["content_hash"],
                        "lineage": chunk.metadata["lineage"],
                    }
                )
                vectors.append(chunk.embedding.dense_embedding)
        if not rows:
            return
        matrix = np.vstack(vectors).astype(np.float32)
        info = write_segment(Path(self.config.index_dir) / "segments", rows, matrix, self.config.spec)
        metrics.count("stage_documents", "write", "in", value=len(docs))
        metrics.count("stage_documents", "write", "out", value=len(docs))
        yield ("segment", info)
        reused = sum(1 for doc in docs for chunk in doc.chunks if REUSED in chunk.metadata)
        yield ("stat", ("chunks_embedded", len(rows) - reused))
        if reused:
            yield ("stat", ("chunks_reused", reused))
        embed_ms = sum(chunk.metadata.get("embed_ms", 0.0) for doc in docs for chunk in doc.chunks)
        yield ("stat", ("embed_ms", round(embed_ms)))
        for doc in docs:
            yield ("doc", replace(doc.state, segment_id=info.segment_id, n_chunks=len(doc.chunks)))


class WriteToHotTier(beam.PTransform):
    """Writes each shard of embedded documents as one immutable segment; emits what the commit needs:
    ``("segment", SegmentInfo)``, ``("doc", DocState)`` and ``("stat", (name, n))`` elements."""

    def __init__(self, config: HotTierWriteConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, shards: beam.PCollection) -> beam.PCollection:
        return shards | "WriteSegments" >> beam.ParDo(
            traced(_WriteSegment(self.config), self.config.traceparent)
        )


class WriteDeadLetters(TracedDoFn):
    """Writes one shard of dead letters as a JSONL file (atomically: a retried bundle rewrites the same
    file) and emits ``("deadletters", {...})`` with its counts by reason."""

    span_name = "tierflow.dead_letters"

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def process(self, element: tuple[int, list[DeadLetter]]):
        shard, letters = element
        letters = sorted(letters, key=lambda d: (d.source.uri, d.source.position, d.reason))
        path = Path(self.directory) / f"part-{shard:05d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, "".join(d.to_json() + "\n" for d in letters).encode("utf-8"))
        for (stage, reason), n in Counter((d.stage, d.reason) for d in letters).items():
            metrics.count("dead_letters", stage, reason, value=n)
        if letters:
            LOG.warning(
                "%d record(s) dead-lettered to %s",
                len(letters),
                path,
                extra={
                    "reasons": dict(Counter(d.reason for d in letters)),
                    "doc_ids": sorted({d.doc_id for d in letters if d.doc_id})[:LOGGED_IDS],
                },
            )
        yield (
            "deadletters",
            {"file": str(path), "count": len(letters), "reasons": dict(Counter(d.reason for d in letters))},
        )


class CommitRun(TracedDoFn):
    """The single commit step: publishes every segment and document state of the run in one manifest.

    Besides the stages' items it takes one ``(RESOLVED, (items, staged file or None))``: the commit items
    decided before the pipeline, given inline and staged by :func:`write_resolved` (read here, by the one
    step that needs them, rather than passed through the pipeline item by item).
    """

    span_name = "tierflow.commit"

    def __init__(
        self, index_dir: str, run: RunContext, sources: dict[str, str], version: str | None = None
    ) -> None:
        self.index_dir = index_dir
        self.run = run
        self.sources = sources
        self.version = version

    def process(self, element: tuple[str, list[tuple[str, Any]]]):
        _, gathered = element
        items: list[tuple[str, Any]] = []
        for kind, value in gathered:
            if kind == RESOLVED:
                decided, staged = value
                items.extend(decided)
                if staged:
                    items.extend(read_resolved(staged))
            else:
                items.append((kind, value))
        yield commit_items(self.index_dir, self.run, self.sources, items, self.version)


def write_resolved(index_dir: str, run: RunContext, items: list[tuple[str, Any]]) -> Path:
    """Stage commit items decided in the driver for the run's commit step (see :class:`CommitRun`)."""
    path = Path(index_dir) / "staging" / f"resolved-{run.run_id}.pickle"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def read_resolved(path: str) -> list[tuple[str, Any]]:
    """The items :func:`write_resolved` staged (the run's own file in its own index directory)."""
    return list(pickle.loads(Path(path).read_bytes()))


def commit_items(
    index_dir: str,
    run: RunContext,
    sources: dict[str, str],
    items: list[tuple[str, Any]],
    version: str | None = None,
) -> str:
    """Commit a run's ``(kind, value)`` items (``segment``, ``doc``, ``stat``, ``deadletters``) as one
    generation with the run's summary; return one JSON line with the new generation.

    The pipeline's commit step, and the driver's when it settled a whole run itself
    (:func:`pipelines.driver.run_items`).
    """
    segments: list[SegmentInfo] = []
    updates: list[DocState] = []
    stats: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    dead_files: list[str] = []
    for kind, value in items:
        if kind == "segment":
            segments.append(value)
        elif kind == "doc":
            updates.append(value)
        elif kind == "stat":
            stats[value[0]] += value[1]
        elif kind == "deadletters":
            dead.update(value["reasons"])
            dead_files.append(value["file"])
    for state in updates:
        stats[f"docs_{state.status}"] += 1
        if state.dedup:
            stats[f"dedup_{state.dedup}"] += 1
    summary = {
        "started_at": run.started_at,
        "code_version": run.code_version,
        "counts": {k: v for k, v in sorted(stats.items()) if not k.endswith("_ms")},
        "timings_ms": {k[: -len("_ms")]: v for k, v in sorted(stats.items()) if k.endswith("_ms")},
        "dead_letters": {
            "total": sum(dead.values()),
            "by_reason": dict(sorted(dead.items())),
            "files": sorted(dead_files),
        },
        "segments_written": len(segments),
    }
    started = time.monotonic()
    result = HotIndex(index_dir, version=version).commit(
        CommitRequest(
            run_id=run.run_id,
            segments=segments,
            updates=updates,
            embedding=run.model,
            chunking=run.chunking,
            sources=sources,
            summary=summary,
        )
    )
    doc_ids = sorted(state.doc_id for state in updates)
    LOG.info(
        "run %s committed generation %d: %d document(s) changed, %d stale",
        run.run_id,
        result.generation,
        result.applied,
        result.stale,
        extra={
            "run_id": run.run_id,
            "generation": result.generation,
            "documents": len(doc_ids),
            "doc_ids": doc_ids[:LOGGED_IDS],
            "sources": sources,
        },
    )
    metrics.observe("commit_seconds", [time.monotonic() - started])
    metrics.count("commits")
    committed_at = time.time()
    metrics.observe(
        "freshness_seconds",
        [committed_at - state.event_time for state in updates if state.event_time is not None],
    )
    return json.dumps({"generation": result.generation, "applied": result.applied, "stale": result.stale})
