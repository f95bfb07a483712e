"""Search: embed a query, search the hot tier, rank documents by their best chunk, expand duplicates.

Example:
    >>> searcher = Searcher(HotIndex("tierflow-data/hot"), EmbeddingConfig())
    >>> for result in searcher.search("what causes fever", k=5):
    ...     print(result.score, result.doc_id, result.text[:80])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from indexing.docs_table import DUPLICATE
from indexing.embedder import Embedder
from indexing.hot import Hit, HotIndex
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


class Searcher:
    """Document search over the hot tier.

    Args:
        index: The hot tier.
        embedding: How queries are embedded; must match the index's model identity.
    """

    def __init__(self, index: HotIndex, embedding: EmbeddingConfig) -> None:
        self.index = index
        self.embedder = Embedder(embedding)
        self._duplicates: tuple[str | None, dict[str, list[str]]] | None = None

    def warm_up(self) -> None:
        self.embedder.warm_up()

    def _linked(self, manifest: Manifest) -> dict[str, list[str]]:
        if self._duplicates is None or self._duplicates[0] != manifest.docs_file:
            linked: dict[str, list[str]] = {}
            for state in self.index.docs(manifest).values():
                if state.status == DUPLICATE and state.canonical_id:
                    linked.setdefault(state.canonical_id, []).append(state.doc_id)
            self._duplicates = (manifest.docs_file, {k: sorted(v) for k, v in linked.items()})
        return self._duplicates[1]

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
        if not manifest.segments:
            return [[] for _ in queries]
        vectors = self.embed_queries(queries, manifest)
        chunk_hits = self.index.search(vectors, k * CHUNK_FANOUT, manifest)
        linked = self._linked(manifest)
        results = []
        for hits in chunk_hits:
            best: dict[str, Hit] = {}
            rows = self.index.chunk_rows(hits, manifest)
            row_of = {}
            for hit, row in zip(hits, rows, strict=True):
                if row["doc_id"] not in best:
                    best[row["doc_id"]] = hit
                    row_of[row["doc_id"]] = row
            ranked = sorted(best.items(), key=lambda item: (-item[1].score, item[0]))[:k]
            results.append(
                [
                    SearchResult(
                        doc_id=doc_id,
                        score=hit.score,
                        text=row_of[doc_id]["text"],
                        chunk_id=row_of[doc_id]["chunk_id"],
                        vector_id=hit.vector_id,
                        tier="hot",
                        lineage=json.loads(row_of[doc_id]["lineage"]),
                        duplicates=linked.get(doc_id, []),
                    )
                    for doc_id, hit in ranked
                ]
            )
        return results
