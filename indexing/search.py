"""Search: embed a query, search every tier, rank documents by their best chunk, expand duplicates.

One query covers the hot and warm segments and the cold tier's Lance table; chunks are merged by score
(inner product of normalised vectors in every tier) and each result says which tier it came from. The
hot manifest's document table decides what is live in the cold tier, so a document deleted, updated or
promoted since it was aged out is never returned from there.

A search may be limited to some tiers (``tiers=("hot", "warm")``) and to documents whose metadata matches
a filter (``where={"lang": "en", "team": ["search", "infra"]}``). Filters apply to the document table's
metadata after the vector search, so a filtered search over-fetches: it asks every tier for four times
more chunks each round until ``k`` documents match, the tiers have no more chunks, or
:data:`FILTER_MAX_CHUNKS` chunks were examined for the query.

Example:
    >>> searcher = Searcher(HotIndex("tierflow-data/hot"), EmbeddingConfig())
    >>> for result in searcher.search("what causes fever", k=5):
    ...     print(result.score, result.doc_id, result.text[:80])
    >>> searcher.search_many(["fever"], k=5, tiers=("hot",), where={"lang": ["en", "de"]})
    >>> searcher.search_vectors(query_vectors, k=5)  # queries embedded already (a benchmark, a cache)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from indexing.access import AccessLog
from indexing.cold import ColdConfig, ColdStore
from indexing.docs_table import CANONICAL, DUPLICATE
from indexing.embedder import Embedder
from indexing.hot import TIERS, Hit, HotIndex
from indexing.manifest import Manifest
from tierflow import metrics, tracing
from tierflow.config import EmbeddingConfig
from tierflow.errors import IncompatibleIndex

CHUNK_FANOUT = 4  # chunks fetched per wanted document, so documents with several good chunks don't crowd
FILTER_GROWTH = 4  # a filtered search asks for this many times more chunks each round
FILTER_MAX_CHUNKS = 100_000  # chunks a filtered search examines per query at most (a rare value's cost)

MetadataFilter = Mapping[str, Any]
"""Metadata key -> the accepted value, or a list of accepted values (see :func:`metadata_matches`)."""


def metadata_matches(metadata: Mapping[str, Any], where: MetadataFilter) -> bool:
    """True when every key of ``where`` is in ``metadata`` with an accepted value.

    A list in ``where`` accepts any of its items; a list in ``metadata`` matches when any of its items is
    accepted. Values compare as JSON values: ``true`` is not ``1``, ``1`` is ``1.0``.

    Example:
        >>> metadata_matches({"lang": "en", "tags": ["a", "b"]}, {"lang": ["en", "de"], "tags": "b"})
        True
    """
    for key, wanted in where.items():
        if key not in metadata:
            return False
        accepted = wanted if isinstance(wanted, list) else [wanted]
        value = metadata[key]
        present = value if isinstance(value, list) else [value]
        if not any(_same_json(v, a) for v in present for a in accepted):
            return False
    return True


def _same_json(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _tier_set(tiers: Collection[str] | None) -> frozenset[str]:
    if tiers is None:
        return frozenset(TIERS)
    unknown = sorted(set(tiers) - set(TIERS))
    if unknown or not tiers:
        raise ValueError(f"tiers must be a non-empty subset of {list(TIERS)}, got {sorted(tiers)}")
    return frozenset(tiers)


@dataclass
class SearchResult:
    """One document hit: its best chunk, score (cosine), lineage, and linked duplicates."""

    doc_id: str
    score: float
    text: str
    chunk_id: str
    vector_id: int
    tier: str
    lineage: dict[str, Any]
    duplicates: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ChunkHit:
    """A chunk found in any tier, with its row."""

    score: float
    vector_id: int
    tier: str
    row: dict[str, Any]


@dataclass
class _DocView:
    """What search derives from one document table: duplicate links and the cold tier's live batches."""

    docs_file: str | None
    linked: dict[str, list[str]]
    cold: dict[str, str]  # doc id -> batch
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)  # parsed on first use, per doc

    @property
    def batches(self) -> list[str]:
        return sorted(set(self.cold.values()))


class Searcher:
    """Document search over all tiers.

    Args:
        index: The hot tier (its manifest also says where the cold tier lives).
        embedding: How queries are embedded; must match the index's model identity.
        cold: S3 endpoint/region (and format) for the cold tier; its location comes from the manifest.
            None uses the defaults (credentials and endpoint from the AWS environment).
        track_access: Record which documents searches return (for last-access and promotion policies).
    """

    def __init__(
        self,
        index: HotIndex,
        embedding: EmbeddingConfig,
        cold: ColdConfig | None = None,
        track_access: bool = False,
    ) -> None:
        self.index = index
        self.embedder = Embedder(embedding)
        self.cold_config = cold or ColdConfig()
        self.access = AccessLog(Path(index.root)) if track_access else None
        self._view: _DocView | None = None
        self._cold: ColdStore | None = None

    def warm_up(self) -> None:
        self.embedder.warm_up()

    def close(self) -> None:
        """Flush the access log."""
        if self.access is not None:
            self.access.flush()

    def _doc_view(self, manifest: Manifest) -> _DocView:
        if self._view is None or self._view.docs_file != manifest.docs_file:
            linked: dict[str, list[str]] = {}
            cold: dict[str, str] = {}
            for state in self.index.docs(manifest).values():
                if state.status == DUPLICATE and state.canonical_id:
                    linked.setdefault(state.canonical_id, []).append(state.doc_id)
                elif state.status == CANONICAL and state.cold_batch:
                    cold[state.doc_id] = state.cold_batch
            self._view = _DocView(manifest.docs_file, {k: sorted(v) for k, v in linked.items()}, cold)
        return self._view

    def cold_store(self, manifest: Manifest) -> ColdStore | None:
        """The cold tier this manifest's documents live in (None when nothing was ever aged out)."""
        if not manifest.cold:
            return None
        location = {k: manifest.cold[k] for k in ("uri", "table", "vector_dtype")}
        if self._cold is None or self._cold.config.location != location:
            self._cold = ColdStore(replace(self.cold_config, **location))
        return self._cold

    def _cold_hits(
        self, vectors: np.ndarray, k: int, manifest: Manifest, view: _DocView
    ) -> list[list[ChunkHit]]:
        store = self.cold_store(manifest) if view.cold else None
        if store is None:
            return [[] for _ in vectors]
        found = store.search(
            vectors,
            k,
            view.batches,
            lambda doc_id, batch: view.cold.get(doc_id) == batch,
            int(manifest.cold.get("version", 0)),
        )
        return [[ChunkHit(h.score, h.vector_id, "cold", h.row) for h in hits] for hits in found]

    def _with_rows(self, hits: Sequence[Hit | ChunkHit], manifest: Manifest) -> list[ChunkHit]:
        """``hits`` with their rows: hot and warm ones read from their segments (in one read per segment),
        cold ones have theirs."""
        hot = [hit for hit in hits if isinstance(hit, Hit)]
        rows = iter(self.index.chunk_rows(hot, manifest) if hot else [])
        return [
            hit if isinstance(hit, ChunkHit) else ChunkHit(hit.score, hit.vector_id, hit.tier, next(rows))
            for hit in hits
        ]

    def _metadata(self, manifest: Manifest, view: _DocView, doc_id: str) -> dict[str, Any]:
        if doc_id not in view.metadata:
            state = self.index.docs(manifest).get(doc_id)
            view.metadata[doc_id] = json.loads(state.metadata or "{}") if state is not None else {}
        return view.metadata[doc_id]

    def chunk_search(
        self,
        vectors: np.ndarray,
        k: int,
        manifest: Manifest | None = None,
        tiers: Collection[str] | None = None,
    ) -> list[list[ChunkHit]]:
        """Top-``k`` chunks per query vector over hot, warm and cold (or only ``tiers``), merged by score
        (ties: vector id)."""
        manifest = manifest or self.index.manifest()
        return [self._with_rows(hits, manifest) for hits in self._chunk_hits(vectors, k, manifest, tiers)]

    def _chunk_hits(
        self, vectors: np.ndarray, k: int, manifest: Manifest, tiers: Collection[str] | None
    ) -> list[list[Hit | ChunkHit]]:
        """:meth:`chunk_search` without reading the rows of hot and warm hits."""
        wanted = _tier_set(tiers)
        view = self._doc_view(manifest)
        segments = [live for live in manifest.segments if live.tier in wanted]
        searched = (
            manifest if len(segments) == len(manifest.segments) else replace(manifest, segments=segments)
        )
        hot = self.index.search(vectors, k, searched) if searched.segments else [[] for _ in vectors]
        cold: list[list[ChunkHit]] = (
            self._cold_hits(vectors, k, manifest, view) if "cold" in wanted else [[] for _ in vectors]
        )
        return [_merged(h, c, k) for h, c in zip(hot, cold, strict=True)]

    def embed_queries(self, queries: list[str], manifest: Manifest) -> np.ndarray:
        identity = self.embedder.identity()
        if manifest.embedding and manifest.embedding != identity:
            raise IncompatibleIndex(
                f"index at {self.index.root} was built with {manifest.embedding}; queries would be embedded "
                f"with {identity}. Search it with the model it was built with."
            )
        return self.embedder.embed(queries)

    def search(
        self,
        query: str,
        k: int = 10,
        tiers: Collection[str] | None = None,
        where: MetadataFilter | None = None,
    ) -> list[SearchResult]:
        return self.search_many([query], k, tiers, where)[0]

    def search_many(
        self,
        queries: list[str],
        k: int = 10,
        tiers: Collection[str] | None = None,
        where: MetadataFilter | None = None,
        manifest: Manifest | None = None,
    ) -> list[list[SearchResult]]:
        """Top-``k`` documents per query (duplicates are listed on their canonical hit).

        Args:
            queries: Query texts, embedded in one batch.
            k: Documents per query.
            tiers: Search only these of :data:`TIERS` (default: all).
            where: Return only documents whose metadata matches (:func:`metadata_matches`).
            manifest: The committed state to search (default: the current one).

        Raises:
            ValueError: ``tiers`` names a tier that does not exist, or none.
            IncompatibleIndex: The index holds vectors of another model.
        """
        return self._search(
            len(queries), lambda found: self.embed_queries(queries, found), k, tiers, where, manifest
        )

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        tiers: Collection[str] | None = None,
        where: MetadataFilter | None = None,
        manifest: Manifest | None = None,
    ) -> list[list[SearchResult]]:
        """:meth:`search_many` for queries embedded already: the same search, ranking and results.

        Args:
            vectors: One normalised query vector per row, made by the index's model (not checked: the
                caller embedded them, e.g. with :meth:`embed_queries`).
            k, tiers, where, manifest: As for :meth:`search_many`.

        Example:
            >>> [hits] = searcher.search_vectors(searcher.embed_queries(["fever"], manifest), k=5)
        """
        return self._search(len(vectors), lambda _: vectors, k, tiers, where, manifest)

    def _search(
        self,
        n_queries: int,
        embed: Callable[[Manifest], np.ndarray],
        k: int,
        tiers: Collection[str] | None,
        where: MetadataFilter | None,
        manifest: Manifest | None,
    ) -> list[list[SearchResult]]:
        """One traced, timed search of ``n_queries`` queries whose vectors ``embed`` makes (called only
        when there is something to search)."""
        searched = ",".join(t for t in TIERS if t in _tier_set(tiers))
        attributes = {"tierflow.queries": n_queries, "tierflow.k": k, "tierflow.tiers": searched}
        started = time.perf_counter()
        with tracing.span("tierflow.search", attributes) as span:
            results = self._search_documents(n_queries, embed, k, tiers, where, manifest)
            span.set_attribute("tierflow.results", sum(len(found) for found in results))
        metrics.SEARCH_SECONDS.labels(searched).observe(time.perf_counter() - started)
        return results

    def _search_documents(
        self,
        n_queries: int,
        embed: Callable[[Manifest], np.ndarray],
        k: int,
        tiers: Collection[str] | None,
        where: MetadataFilter | None,
        manifest: Manifest | None,
    ) -> list[list[SearchResult]]:
        manifest = manifest or self.index.manifest()
        view = self._doc_view(manifest)
        if not manifest.segments and not view.cold:
            return [[] for _ in range(n_queries)]
        vectors = embed(manifest)
        ranked: list[list[tuple[str, ChunkHit]]] = [[] for _ in range(n_queries)]
        pending, fetch = list(range(n_queries)), k * CHUNK_FANOUT
        while pending:
            found = self._chunk_hits(vectors[pending], fetch, manifest, tiers)
            short = []
            for q, hits in zip(pending, found, strict=True):
                ranked[q] = self._best_documents(hits, k, manifest, view, where)
                # Fewer chunks than asked for means every tier is exhausted.
                if where and len(ranked[q]) < k and len(hits) >= fetch and fetch < FILTER_MAX_CHUNKS:
                    short.append(q)
            pending, fetch = short, min(fetch * FILTER_GROWTH, FILTER_MAX_CHUNKS)
        results = [
            [
                SearchResult(
                    doc_id=doc_id,
                    score=hit.score,
                    text=hit.row["text"],
                    chunk_id=hit.row["chunk_id"],
                    vector_id=hit.vector_id,
                    tier=hit.tier,
                    lineage=json.loads(hit.row["lineage"]),
                    duplicates=view.linked.get(doc_id, []),
                    metadata=dict(self._metadata(manifest, view, doc_id)),
                )
                for doc_id, hit in documents
            ]
            for documents in ranked
        ]
        if self.access is not None:
            self.access.record([r.doc_id for found in results for r in found])
        return results

    def _best_documents(
        self,
        hits: Sequence[Hit | ChunkHit],
        k: int,
        manifest: Manifest,
        view: _DocView,
        where: MetadataFilter | None,
    ) -> list[tuple[str, ChunkHit]]:
        """The ``k`` best documents of ``hits`` (each by its best chunk) that pass ``where``.

        ``hits`` are in score order. Their rows are read only until the answer is settled (once ``k``
        documents are found, a chunk scoring below the ``k``-th of them cannot change it): those of the
        first ``k`` hits, then, if need be, those of the others. Most searches read ``k`` rows, not all.
        """
        if k <= 0:
            return []
        best: dict[str, ChunkHit] = {}
        read: list[ChunkHit] = []
        kth_score = -math.inf
        for position, found in enumerate(hits):
            if len(best) >= k and found.score < kth_score:
                break
            if position == len(read):
                read.extend(self._with_rows(hits[position : k if not read else None], manifest))
            hit = read[position]
            doc_id = hit.row["doc_id"]
            if doc_id in best or (
                where and not metadata_matches(self._metadata(manifest, view, doc_id), where)
            ):
                continue
            best[doc_id] = hit
            if len(best) == k:
                kth_score = hit.score
        return sorted(best.items(), key=lambda item: (-item[1].score, item[0]))[:k]


def _rank(hit: Hit | ChunkHit) -> tuple[float, int]:
    """Merge order of chunk hits: by score, best first; ties by vector id."""
    return -hit.score, hit.vector_id


def _merged(hot: list[Hit], cold: list[ChunkHit], k: int) -> list[Hit | ChunkHit]:
    """The top ``k`` of both tiers' hits in :func:`_rank` order (hot hits come in that order already)."""
    merged: list[Hit | ChunkHit] = [*hot, *cold]
    return sorted(merged, key=_rank)[:k] if cold else merged
