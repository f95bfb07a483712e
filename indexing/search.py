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
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from itertools import repeat
from operator import gt
from pathlib import Path
from typing import Any, cast

import numpy as np
from opentelemetry import trace

from indexing import versions
from indexing.access import AccessLog
from indexing.cold import ColdConfig, ColdStore
from indexing.docs_table import CANONICAL, DUPLICATE, DocState
from indexing.embedder import Embedder
from indexing.hot import COLD, TIERS, Candidate, HotIndex, SearchedSegment, chunk_order, search_segments
from indexing.manifest import Manifest
from indexing.segment import Entry
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


ALL_TIERS = frozenset(TIERS)


def _tier_set(tiers: Collection[str] | None) -> frozenset[str]:
    if tiers is None:
        return ALL_TIERS
    unknown = sorted(set(tiers) - set(TIERS))
    if unknown or not tiers:
        raise ValueError(f"tiers must be a non-empty subset of {list(TIERS)}, got {sorted(tiers)}")
    return frozenset(tiers)


class _MetadataCache(dict[str, dict[str, Any]]):
    """Document id -> its metadata, parsed from the document table on first use (an absent document has
    none). Looked up as ``cache[doc_id]``: a hit stays in C. Search hands out copies: documents without
    metadata share one empty dict."""

    def __init__(self, docs: Mapping[str, DocState]) -> None:
        super().__init__()
        self.docs = docs

    def __missing__(self, doc_id: str) -> dict[str, Any]:
        state = self.docs.get(doc_id)
        found: dict[str, Any] = json.loads(state.metadata or "{}") if state is not None else {}
        self[doc_id] = found = found or _NO_METADATA
        return found


_NO_METADATA: dict[str, Any] = {}


@dataclass
class _DocView:
    """What search derives from one document table: duplicate links, the cold tier's live batches, and
    each document's metadata."""

    docs_file: str | None
    linked: dict[str, list[str]]
    cold: dict[str, str]  # doc id -> batch
    metadata: _MetadataCache

    @property
    def batches(self) -> list[str]:
        return sorted(set(self.cold.values()))


class _Empty:
    """The default of a :class:`SearchResult` field that starts empty (a dataclass default must be
    immutable): setting it stores a new empty list or dict."""

    def __repr__(self) -> str:
        return "<empty>"


_EMPTY: Any = _Empty()


class _ReadLater:
    """A :class:`SearchResult` field that a search fills with what the value is made from (the chunk's
    lineage as JSON text, the document table's view for metadata and duplicates), made into the value the
    first time the field is read and kept. Most callers read a result's ids and scores only: making ten
    results' lineage, metadata and duplicate lists took a query some 10 µs. Each result makes its own copy,
    so a caller may change it.

    Args:
        source: The type of what a search stores; a value of another type is the field's value.
        make: ``make(result, stored)``: the value.
        empty: Makes the field's default (None: the field is required).
    """

    def __init__(
        self, source: type, make: Callable[[SearchResult, Any], Any], empty: Callable[[], Any] | None = None
    ) -> None:
        self.source = source
        self.make = make
        self.empty = empty

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.slot = f"_{name}"

    def __get__(self, obj: SearchResult | None, owner: type | None = None) -> Any:
        if obj is None:
            if self.empty is None:
                raise AttributeError(self.name)  # no default: dataclasses make the field a required argument
            return _EMPTY
        value = getattr(obj, self.slot)
        if isinstance(value, self.source):
            value = self.make(obj, value)
            setattr(obj, self.slot, value)
        return value

    def __set__(self, obj: SearchResult, value: Any) -> None:
        setattr(obj, self.slot, self.empty() if value is _EMPTY and self.empty is not None else value)


@dataclass
class SearchResult:
    """One document hit: its best chunk, score (cosine), lineage, and linked duplicates.

    A result made by a search reads its lineage, metadata and duplicates when they are first read, from
    what the search found (the chunk's row, the document table of the manifest searched): the values are
    those of the manifest it was searched under, whatever was committed since.

    Example:
        >>> [result] = searcher.search("fever", k=1)
        >>> result.doc_id, result.score, result.metadata.get("lang")
    """

    __slots__ = (
        "doc_id",
        "score",
        "text",
        "chunk_id",
        "vector_id",
        "tier",
        "_lineage",
        "_duplicates",
        "_metadata",
    )

    doc_id: str
    score: float
    text: str
    chunk_id: str
    vector_id: int
    tier: str
    lineage: dict[str, Any] = _ReadLater(str, lambda _, text: json.loads(text))  # type: ignore[assignment]
    duplicates: list[str] = _ReadLater(  # type: ignore[assignment]
        _DocView, lambda result, view: list(view.linked.get(result.doc_id, ())), list
    )
    metadata: dict[str, Any] = _ReadLater(  # type: ignore[assignment]
        _DocView, lambda result, view: dict(view.metadata[result.doc_id]), dict
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __reduce__(self) -> tuple[type[SearchResult], tuple[Any, ...]]:
        # Copies and pickles carry the values, not the document table a search's result reads them from.
        return SearchResult, tuple(getattr(self, f.name) for f in fields(self))


_new_result = object.__new__

Picked = tuple[Entry, float, str]
"""A document's best chunk as search returns it: what it reads of the chunk's row (a segment's
:attr:`~indexing.segment.ChunkColumns.entries`: doc id, vector id, chunk id, text, lineage), its score and
its tier."""


@dataclass(frozen=True)
class ChunkHit:
    """A chunk found in any tier, with its row."""

    score: float
    vector_id: int
    tier: str
    row: dict[str, Any]


class Searcher:
    """Document search over all tiers.

    Args:
        index: The hot tier (its manifest also says where the cold tier lives).
        embedding: How queries are embedded; must match the index's model identity.
        cold: S3 endpoint/region (and format) for the cold tier; its location comes from the manifest.
            None uses the defaults (credentials and endpoint from the AWS environment).
        track_access: Record which documents searches return (for last-access and promotion policies).
        observed: Count searches in the search latency metric and trace them (off for shadow reads of a
            candidate version, which are not the service's answers).
    """

    def __init__(
        self,
        index: HotIndex,
        embedding: EmbeddingConfig,
        cold: ColdConfig | None = None,
        track_access: bool = False,
        observed: bool = True,
    ) -> None:
        self.index = index
        self.observed = observed
        self.embedder = Embedder(embedding)
        self._embedders: dict[str, Embedder] = {}  # other index versions' models (see embedder_for)
        self.cold_config = cold or ColdConfig()
        self.access = AccessLog(Path(index.root)) if track_access else None
        self._view: _DocView | None = None
        self._cold: ColdStore | None = None
        # The hot and warm segments last searched: (manifest, tiers, efSearch, segments prepared).
        self._searched: tuple[Manifest, frozenset[str], int, list[SearchedSegment]] | None = None

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
            docs = self.index.docs(manifest)
            for state in docs.values():
                if state.status == DUPLICATE and state.canonical_id:
                    linked.setdefault(state.canonical_id, []).append(state.doc_id)
                elif state.status == CANONICAL and state.cold_batch:
                    cold[state.doc_id] = state.cold_batch
            self._view = _DocView(
                manifest.docs_file, {k: sorted(v) for k, v in linked.items()}, cold, _MetadataCache(docs)
            )
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
        found, searched = self._candidates(vectors, k, manifest, self._doc_view(manifest), _tier_set(tiers))
        return [
            [
                ChunkHit(score, vid, searched[source].tier, searched[source].columns.row(row))
                if source >= 0
                else ChunkHit(score, vid, COLD, row)
                for score, vid, source, row in hits
            ]
            for hits in found
        ]

    def _searched_segments(
        self, manifest: Manifest, wanted: frozenset[str], ef_search: int
    ) -> list[SearchedSegment]:
        """The live segments of ``manifest`` in the ``wanted`` tiers, prepared for searches of at least
        ``ef_search`` (the last ones asked for are kept: a manifest is shared and read-only)."""
        last = self._searched
        if last is not None and last[0] is manifest and last[1] == wanted and last[2] == ef_search:
            return last[3]
        searched = [
            self.index.searched_segment(live, ef_search) for live in manifest.segments if live.tier in wanted
        ]
        self._searched = (manifest, wanted, ef_search, searched)
        return searched

    def _candidates(
        self, vectors: np.ndarray, k: int, manifest: Manifest, view: _DocView, wanted: frozenset[str]
    ) -> tuple[list[list[Candidate]], list[SearchedSegment]]:
        """The top-``k`` chunks per query vector over the ``wanted`` tiers, merged by score (ties: vector
        id), and the hot and warm segments searched (what the chunks' sources point at)."""
        searched = self._searched_segments(manifest, wanted, k)
        found = search_segments(searched, vectors, k) if searched else [[] for _ in range(len(vectors))]
        if COLD in wanted and view.cold:
            for q, cold in enumerate(self._cold_hits(vectors, k, manifest, view)):
                if cold:
                    merged = [*found[q], *((hit.score, hit.vector_id, -1, hit.row) for hit in cold)]
                    found[q] = sorted(merged, key=chunk_order)[:k]
        return found, searched

    def embed_queries(self, queries: list[str], manifest: Manifest) -> np.ndarray:
        return self.embedder_for(manifest).embed(queries)

    def embedder_for(self, manifest: Manifest) -> Embedder:
        """The embedder for queries on ``manifest``: the configured one, or, when the live index version
        was made with another model (a promotion or rollback switched it), that version's model, as its
        registry entry says (``indexing.versions``), loaded once.

        Raises:
            IncompatibleIndex: No kept version says how its vectors were made.
        """
        identity = self.embedder.identity()
        if not manifest.embedding or manifest.embedding == identity:
            return self.embedder
        key = json.dumps(manifest.embedding, sort_keys=True)
        found = self._embedders.get(key)
        if found is None:
            settings = versions.query_settings(Path(self.index.root), manifest.embedding)
            candidate = Embedder(replace(self.embedder.config, **settings)) if settings else None
            if candidate is None or candidate.identity() != manifest.embedding:
                raise IncompatibleIndex(
                    f"index at {self.index.root} was built with {manifest.embedding}; queries would be "
                    f"embedded with {identity}. Search it with the model it was built with."
                )
            found = self._embedders.setdefault(key, candidate)
        return found

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
        searched = _SEARCHED_ALL if tiers is None else ",".join(t for t in TIERS if t in _tier_set(tiers))
        started = time.perf_counter()
        if not self.observed:
            return self._search_documents(n_queries, embed, k, tiers, where, manifest)
        if _tracing_off(started):  # a span that nothing records still costs a search some 10 µs
            results = self._search_documents(n_queries, embed, k, tiers, where, manifest)
        else:
            attributes = {"tierflow.queries": n_queries, "tierflow.k": k, "tierflow.tiers": searched}
            with tracing.span("tierflow.search", attributes) as span:
                results = self._search_documents(n_queries, embed, k, tiers, where, manifest)
                span.set_attribute("tierflow.results", sum(len(found) for found in results))
        _search_seconds(searched).observe(time.perf_counter() - started)
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
        wanted = _tier_set(tiers)
        vectors = embed(manifest)
        results: list[list[SearchResult] | None] = [None] * n_queries
        fetch = k * CHUNK_FANOUT
        if k > 0 and k + 1 < fetch and not where and not (COLD in wanted and view.cold):
            searched = self._searched_segments(manifest, wanted, fetch)
            if len(searched) == 1:
                self._first_chunks(vectors, k, searched[0], view, results)
            elif searched:
                self._first_candidates(vectors, k, searched, view, results)
        pending = [q for q, found in enumerate(results) if found is None] if None in results else []
        while pending:
            batch = vectors if len(pending) == n_queries else vectors[pending]
            found, searched = self._candidates(batch, fetch, manifest, view, wanted)
            short = []
            for q, hits in zip(pending, found, strict=True):
                documents, _ = self._best_documents(hits, k, view, where, searched)
                results[q] = self._results(documents, view)
                # Fewer chunks than asked for means every tier is exhausted.
                if where and len(documents) < k and len(hits) >= fetch and fetch < FILTER_MAX_CHUNKS:
                    short.append(q)
            pending, fetch = short, min(fetch * FILTER_GROWTH, FILTER_MAX_CHUNKS)
        # Every query has its results now (the type as text: list[...] would build two aliases a search).
        done = cast("list[list[SearchResult]]", results)
        if self.access is not None:
            self.access.record([r.doc_id for found in done for r in found])
        return done

    def _first_chunks(
        self,
        vectors: np.ndarray,
        k: int,
        segment: SearchedSegment,
        view: _DocView,
        results: list[list[SearchResult] | None],
    ) -> None:
        """Answer from one segment's ``k + 1`` best chunks the queries they settle; the others stay None.

        ``segment`` is prepared with the efSearch of the full fetch (``k`` × :data:`CHUNK_FANOUT`
        chunks), so these are its first ``k + 1``. When their scores all differ and the first ``k`` are
        chunks of ``k`` documents, those are the answer: every other chunk of the fetch scores below the
        ``k``-th document's, and the order by score is the order of results. Most queries end here,
        without an object per chunk.
        """
        scores, positions = segment.prepared.search(vectors, k + 1)
        if positions.shape[1] <= k:  # the segment holds k chunks or fewer
            return
        entries, tier = segment.columns.entries, repeat(segment.tier)
        for q, (found, rows) in enumerate(
            zip(scores.tolist(), segment.rows(positions).tolist(), strict=True)
        ):
            if -1 in rows or not all(map(gt, found, found[1:])):
                continue  # fewer than k + 1 chunks, or equal scores: the full path orders them
            # None when a document holds two of the first k: the full path ranks documents.
            chosen = map(entries.__getitem__, rows[:k])
            results[q] = self._results(zip(chosen, found, tier, strict=False), view, distinct=True)

    def _first_candidates(
        self,
        vectors: np.ndarray,
        k: int,
        searched: list[SearchedSegment],
        view: _DocView,
        results: list[list[SearchResult] | None],
    ) -> None:
        """:meth:`_first_chunks` over several segments (hot and warm ones, before a compaction): the
        ``k + 1`` best chunks of each, merged, settle a query when the ``k`` best documents are found
        ahead of a lower score; and when fewer came, every segment gave all it had."""
        for q, hits in enumerate(search_segments(searched, vectors, k + 1)):
            documents, settled = self._best_documents(hits, k, view, None, searched)
            if settled or len(hits) <= k:
                results[q] = self._results(documents, view)

    @staticmethod
    def _results(
        documents: Iterable[Picked], view: _DocView, distinct: bool = False
    ) -> list[SearchResult] | None:
        """The search results of ``documents``: each one's best chunk, its score and its tier; lineage,
        metadata and duplicates are made when read (:class:`_ReadLater`). With ``distinct``, None when two
        of them are chunks of one document (checked here: a second pass over the rows would cost a query
        some 3 µs, each row a trip to memory)."""
        results: list[SearchResult] = []
        seen: set[str] = set()
        for (doc_id, vid, chunk_id, text, lineage), score, tier in documents:
            if distinct:
                if doc_id in seen:
                    return None
                seen.add(doc_id)
            # Slots set directly: the dataclass __init__ would run the fields' descriptors.
            result = _new_result(SearchResult)
            result.doc_id, result.score, result.text, result.chunk_id = doc_id, score, text, chunk_id
            result.vector_id, result.tier = vid, tier
            # The slots of the _ReadLater fields (not attributes mypy knows).
            result._lineage = lineage  # type: ignore[attr-defined]
            result._duplicates = result._metadata = view  # type: ignore[attr-defined]
            results.append(result)
        return results

    @staticmethod
    def _best_documents(
        hits: list[Candidate],
        k: int,
        view: _DocView,
        where: MetadataFilter | None,
        searched: list[SearchedSegment],
    ) -> tuple[list[Picked], bool]:
        """The ``k`` best documents of ``hits`` (each by its best chunk) that pass ``where``, by score (ties:
        document id), and whether more chunks could not change them.

        ``hits`` are in score order (ties: vector id); once ``k`` documents are found, a chunk scoring
        below the ``k``-th of them cannot change the answer: one that comes up settles it.
        """
        if k <= 0:
            return [], True
        entries = [segment.columns.entries for segment in searched]
        tiers = [segment.tier for segment in searched]
        best: dict[str, Picked] = {}
        kth_score = -math.inf
        last_score, tied, settled = math.inf, False, False
        for score, vid, source, row in hits:
            if len(best) >= k and score < kth_score:
                settled = True
                break
            if source >= 0:
                entry, tier = entries[source][row], tiers[source]
            else:
                entry, tier = (row["doc_id"], vid, row["chunk_id"], row["text"], row["lineage"]), COLD
            doc_id = entry[0]
            if doc_id in best or (where and not metadata_matches(view.metadata[doc_id], where)):
                continue
            best[doc_id] = (entry, score, tier)
            tied = tied or score == last_score
            last_score = score
            if len(best) == k:
                kth_score = score
        if not tied and len(best) <= k:  # found in score order: already in the order results take
            return list(best.values()), settled
        return sorted(best.values(), key=lambda found: (-found[1], found[0][0]))[:k], settled


_SEARCHED_ALL = ",".join(TIERS)
_SEARCH_SECONDS: dict[str, Any] = {}


def _search_seconds(searched: str) -> Any:
    """The search latency histogram of these tiers (its labelled child, looked up once)."""
    found = _SEARCH_SECONDS.get(searched)
    if found is None:
        found = _SEARCH_SECONDS[searched] = metrics.SEARCH_SECONDS.labels(searched)
    return found


TRACING_RECHECK_S = 1.0  # how long search trusts that no tracer provider is installed
_NO_TRACER_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_tracing_off_until = -math.inf  # time.perf_counter() until which tracing is known to be off


def _tracing_off(now: float) -> bool:
    """No tracer provider is installed (OpenTelemetry's no-op API is in place): a span would record
    nothing.

    Once found off, that is trusted for :data:`TRACING_RECHECK_S` from ``now`` (a ``perf_counter`` time):
    looking (:func:`tracing.configure`, OpenTelemetry's global provider) cost a search up to 10 µs after
    FAISS has evicted the CPU caches. A provider installed later records the searches from the next look
    on; once installed it stays (OpenTelemetry sets the global provider once per process), so tracing
    found on is looked up on every search.
    """
    global _tracing_off_until
    if now < _tracing_off_until:
        return True
    tracing.configure()
    if isinstance(trace.get_tracer_provider(), _NO_TRACER_PROVIDERS):
        _tracing_off_until = now + TRACING_RECHECK_S
        return True
    return False
