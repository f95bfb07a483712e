"""Search: embed a query, search every tier, rank documents by their best chunk, expand duplicates.

One query covers the hot and warm segments and the cold tier's Lance table; chunks are merged by score
(inner product of normalised vectors in every tier) and each result says which tier it came from. The
hot manifest's document table decides what is live in the cold tier, so a document deleted, updated or
promoted since it was aged out is never returned from there.

Example:
    >>> searcher = Searcher(HotIndex("tierflow-data/hot"), EmbeddingConfig())
    >>> for result in searcher.search("what causes fever", k=5):
    ...     print(result.score, result.doc_id, result.text[:80])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from indexing.access import AccessLog
from indexing.cold import ColdConfig, ColdStore
from indexing.docs_table import CANONICAL, DUPLICATE
from indexing.embedder import Embedder
from indexing.hot import HotIndex
from indexing.manifest import Manifest
from tierflow.config import EmbeddingConfig
from tierflow.errors import IncompatibleIndex

CHUNK_FANOUT = 4  # chunks fetched per wanted document, so documents with several good chunks don't crowd


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

    def _hot_hits(self, vectors: np.ndarray, k: int, manifest: Manifest) -> list[list[ChunkHit]]:
        if not manifest.segments:
            return [[] for _ in vectors]
        out = []
        for hits in self.index.search(vectors, k, manifest):
            rows = self.index.chunk_rows(hits, manifest)
            out.append([ChunkHit(h.score, h.vector_id, h.tier, r) for h, r in zip(hits, rows, strict=True)])
        return out

    def chunk_search(
        self, vectors: np.ndarray, k: int, manifest: Manifest | None = None
    ) -> list[list[ChunkHit]]:
        """Top-``k`` chunks per query vector over hot, warm and cold, merged by score (ties: vector id)."""
        manifest = manifest or self.index.manifest()
        view = self._doc_view(manifest)
        hot = self._hot_hits(vectors, k, manifest)
        cold = self._cold_hits(vectors, k, manifest, view)
        return [
            sorted([*h, *c], key=lambda hit: (-hit.score, hit.vector_id))[:k]
            for h, c in zip(hot, cold, strict=True)
        ]

    def embed_queries(self, queries: list[str], manifest: Manifest) -> np.ndarray:
        identity = self.embedder.identity()
        if manifest.embedding and manifest.embedding != identity:
            raise IncompatibleIndex(
                f"index at {self.index.root} was built with {manifest.embedding}; queries would be embedded "
                f"with {identity}. Search it with the model it was built with."
            )
        return self.embedder.embed(queries)

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        return self.search_many([query], k)[0]

    def search_many(self, queries: list[str], k: int = 10) -> list[list[SearchResult]]:
        """Top-``k`` documents per query (duplicates are listed on their canonical hit)."""
        manifest = self.index.manifest()
        view = self._doc_view(manifest)
        if not manifest.segments and not view.cold:
            return [[] for _ in queries]
        vectors = self.embed_queries(queries, manifest)
        results = []
        for hits in self.chunk_search(vectors, k * CHUNK_FANOUT, manifest):
            best: dict[str, ChunkHit] = {}
            for hit in hits:
                best.setdefault(hit.row["doc_id"], hit)
            ranked = sorted(best.items(), key=lambda item: (-item[1].score, item[0]))[:k]
            results.append(
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
                    )
                    for doc_id, hit in ranked
                ]
            )
        if self.access is not None:
            self.access.record([r.doc_id for found in results for r in found])
        return results
