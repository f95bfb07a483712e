"""The hot tier: segment search with tombstones, atomic commits of document changes, compaction, GC.

Example:
    >>> hot = HotIndex(Path("tierflow-data/hot"))
    >>> hits = hot.search(query_vectors, k=10)
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from itertools import repeat
from operator import gt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from indexing import audit, versions
from indexing.docs_table import CANONICAL, DELETED, DUPLICATE, RENEWAL, DocState, read_docs, write_docs
from indexing.durable import (
    disk_full_error,
    exclusive_lock,
    fsync_dir,
    fsync_file,
    is_disk_full,
    write_npy_durably,
)
from indexing.faiss_index import IndexSpec, PreparedSearch, excluding, index_vectors
from indexing.manifest import CURRENT, MMAP, LiveSegment, Manifest, ManifestStore
from indexing.segment import ChunkColumns, SegmentInfo, SegmentReader, write_segment
from tierflow.errors import DiskFull, IncompatibleIndex, IndexCorrupt, VersionError
from tierflow.records import chunk_id, vector_id

LOG = logging.getLogger(__name__)

HISTORY_LIMIT = 50
POINTER_SETTLED_NS = 2_000_000_000  # CURRENT older than this when read: one stat tells it is unchanged
MAX_PREPARED_SEARCHES = 256  # prepared segment searches kept (one per segment, tombstone file, efSearch)
HOT, WARM, COLD = "hot", "warm", "cold"
# Index directories whose writer lock a thread of this process holds through HotIndex.writer_lock() (a
# promotion's final catch-up and switch), and that thread: its own commits meanwhile are part of it.
_HELD: dict[str, int] = {}
TIERS = (HOT, WARM, COLD)


@dataclass
class CommitRequest:
    """Everything one commit publishes: new segments and the new state of every document it touched.

    Args:
        run_id: The pipeline run (or stream batch) that produced it.
        segments: Segments already written durably by the writers.
        updates: New state per touched document; canonical ones point at a segment in ``segments``.
        embedding: Identity of the model that made the vectors (refused if it differs from the index's).
        chunking: Chunking settings used.
        sources: Source positions this commit contains (stream key -> position).
        summary: Counts and timings of the run, kept in the manifest history.
    """

    run_id: str
    segments: list[SegmentInfo] = field(default_factory=list)
    updates: list[DocState] = field(default_factory=list)
    embedding: dict[str, Any] = field(default_factory=dict)
    chunking: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class CommitResult:
    generation: int
    applied: int
    stale: int
    tombstoned: int


@dataclass
class Retier:
    """One document's move between tiers (or its expiry): ``new`` replaces the committed state only if that
    is still ``expected``; a document a pipeline changed in the meantime is left as the pipeline made it."""

    expected: DocState
    new: DocState


@dataclass
class RetierRequest:
    """What one lifecycle run publishes in one manifest.

    Args:
        run_id: The lifecycle run.
        segments: New segments (already durable) and the storage each is served from.
        moves: The documents' new states; a new state in one of ``segments`` points at it.
        cold: Where the cold tier lives (recorded in the manifest).
        summary: Counts of the run, kept in the manifest history.
    """

    run_id: str
    segments: list[tuple[SegmentInfo, str]] = field(default_factory=list)
    moves: list[Retier] = field(default_factory=list)
    cold: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class RetierResult:
    generation: int
    applied: list[str]
    skipped: list[str]


@dataclass(frozen=True)
class Hit:
    score: float
    vector_id: int
    segment_id: str
    tier: str = "hot"


Candidate = tuple[float, int, int, Any]
"""A chunk a search found: (score, vector id, source, row). For a hot or warm chunk the source is its
segment's position in the segments searched and the row its row number in that segment's chunk table
(:class:`~indexing.segment.ChunkColumns`); a search over more tiers may add its own (the cold tier: source
-1, the row itself as a dict)."""


@dataclass(frozen=True)
class SearchedSegment:
    """One live segment as searches use it: its reader, and its FAISS search prepared for one tombstone
    file and efSearch (see :meth:`HotIndex.searched_segment`).

    Example:
        >>> segment = hot.searched_segment(hot.manifest().segments[0], ef_search=40)
        >>> scores, positions = segment.prepared.search(queries, 11)
        >>> entries = [segment.columns.entries[row] for row in segment.rows(positions)[0] if row >= 0]
    """

    segment_id: str
    tier: str
    reader: SegmentReader
    prepared: PreparedSearch

    @property
    def columns(self) -> ChunkColumns:
        """The segment's chunk rows (read from its chunk table on first use)."""
        return self.reader.columns

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The chunk rows of the positions a search of :attr:`prepared` returned (-1 stays -1)."""
        if self.prepared.id_map is None:  # not an IndexIDMap: its labels are the vector ids
            return self.reader.columns.rows_of(positions)
        mapping = self.reader.label_rows()
        return positions if mapping is None else np.where(positions >= 0, mapping[positions], -1)


def chunk_order(hit: Candidate) -> tuple[float, int]:
    """Merge order of chunks: by score, best first; ties by vector id."""
    return -hit[0], hit[1]


def _segment_candidates(
    scores: list[float], rows: list[int], vector_ids: tuple[int, ...], source: int
) -> list[Candidate]:
    """One query's chunks from one segment (FAISS's scores and the rows of its labels, -1 where it found
    fewer than asked) in :func:`chunk_order` order."""
    if -1 in rows:
        kept = [i for i, row in enumerate(rows) if row >= 0]
        scores, rows = [scores[i] for i in kept], [rows[i] for i in kept]
    hits = list(zip(scores, map(vector_ids.__getitem__, rows), repeat(source), rows))
    # FAISS gives them best first: only equal scores (or an order it did not keep) need sorting.
    if not all(map(gt, scores, scores[1:])):
        hits.sort(key=chunk_order)
    return hits


def search_segments(searched: list[SearchedSegment], queries: np.ndarray, k: int) -> list[list[Candidate]]:
    """The top-``k`` chunks per query over the segments ``searched`` (prepared by
    :meth:`HotIndex.searched_segment`), merged by score (ties: vector id); sources are positions in
    ``searched``. Reads each segment's chunk table on first use."""
    found: list[list[Candidate]] | None = None
    for g, segment in enumerate(searched):
        scores, positions = segment.prepared.search(queries, k)
        if not positions.shape[1]:
            continue
        vector_ids = segment.columns.vector_id_values
        mine = [
            _segment_candidates(query_scores, rows, vector_ids, g)
            for query_scores, rows in zip(scores.tolist(), segment.rows(positions).tolist(), strict=True)
        ]
        if found is None:
            found = mine
            continue
        for hits, more in zip(found, mine, strict=True):
            hits.extend(more)
            hits.sort(key=chunk_order)  # stable: equal chunks keep the order of the segments
            del hits[k:]
    return found if found is not None else [[] for _ in range(len(queries))]


@dataclass(frozen=True)
class _Current:
    """The manifest :meth:`HotIndex.manifest` returned last: its file as (name, inode, size, mtime), the
    ``CURRENT`` pointer it was read through (:func:`_stat_key`), and when that was (``time.time_ns``)."""

    key: tuple[str, int, int, int]
    pointer: tuple[int, int, int, int, int] | None
    checked_at: int
    manifest: Manifest


def _stat_key(path: str) -> tuple[int, int, int, int, int] | None:
    """(inode, device, size, mtime, ctime) of ``path``; None when it cannot be statted."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_ino, found.st_dev, found.st_size, found.st_mtime_ns, found.st_ctime_ns


def doc_vector_ids(doc_id: str, n_chunks: int) -> list[int]:
    """The FAISS ids of a document's chunks (ordinals ``0..n_chunks-1``)."""
    return [vector_id(chunk_id(doc_id, i)) for i in range(n_chunks)]


class HotIndex:
    """One hot-tier index directory: segments, tombstones, document tables, manifests.

    Args:
        root: The index directory on local flash; created on first commit.
        mmap: Memory-map segment files (warm tier) instead of reading them into RAM.
        version: An index version (``indexing.versions``) to read and commit instead of the live one,
            e.g. a candidate that ``tierflow reindex`` builds. None (the default) follows whatever
            version is live, across promotions and rollbacks.
    """

    def __init__(self, root: Path | str, mmap: bool = False, version: str | None = None) -> None:
        self.root = Path(root)
        self.mmap = mmap
        self.version = version
        self.store = ManifestStore(self.root)
        self._pointer_path = os.path.join(self.root, CURRENT)
        self._resolve_pointer()
        self._manifests_dir = os.path.join(self.store.dir, "")
        self._readers: dict[str, SegmentReader] = {}
        self._tombstones: dict[str, np.ndarray] = {}
        self._selectors: dict[str, Any] = {}  # tombstone file -> the FAISS selector that skips its ids
        self._searched: dict[tuple[Any, ...], SearchedSegment] = {}  # see searched_segment()
        self._current: _Current | None = None  # see manifest()
        self._docs_cache: tuple[str | None, dict[str, DocState]] | None = None
        self._cached_generation = -1  # the generation the reader caches were last pruned for
        self._writing: int | None = None  # the generation a write under the lock is building
        self._new_segments: list[Path] = []  # segment directories it wrote (compaction)

    def _resolve_pointer(self) -> None:
        """Point a named version's reads and commits at its pointer: ``CURRENT`` while it is live, its own
        head otherwise (re-resolved under the writer lock, so a commit follows a switch)."""
        if self.version is None:
            return
        pointer = versions.pointer_of(self.root, self.version)
        if self.store.pointer != self.root / pointer:
            self.store = ManifestStore(self.root, pointer)
            self._pointer_path = os.path.join(self.root, pointer)
            self._current = None

    # ---- reading -------------------------------------------------------------------------------
    @property
    def segments_dir(self) -> Path:
        return self.root / "segments"

    def manifest(self) -> Manifest:
        """The current manifest. When the generation changed since the last call, readers, tombstone
        arrays and prepared searches of segments it no longer names are dropped, so a long-lived process
        (the search service, a stream) does not keep every segment that compaction or lifecycle runs
        retired.

        A published manifest file is never rewritten, so the one ``CURRENT`` names is parsed (and its
        checksum verified) once, and returned again while ``CURRENT`` names the same file, unchanged
        (parsing it took a single search about 0.1 ms, as long as FAISS). Finding that out costs one
        ``stat`` of ``CURRENT`` (see :meth:`_unchanged`), else reading it and statting the file
        it names. The manifest returned is shared: treat it as read-only.
        """
        unchanged = self._unchanged()
        if unchanged is not None:
            return unchanged
        checked_at = time.time_ns()
        pointer = _stat_key(self._pointer_path)
        key = self._current_key()
        if key is not None and self._current is not None and self._current.key == key:
            self._current = replace(self._current, pointer=pointer, checked_at=checked_at)
            return self._current.manifest
        manifest = self.store.current()
        # Kept only if it is the file that was statted (a commit in between: the next call reloads).
        self._current = (
            _Current(key, pointer, checked_at, manifest)
            if key and key[0] == self.store.file_name(manifest.generation)
            else None
        )
        if manifest.generation != self._cached_generation:
            live = {seg.info.segment_id for seg in manifest.segments}
            names = {seg.tombstones for seg in manifest.segments if seg.tombstones}
            self._readers = {sid: r for sid, r in self._readers.items() if sid in live}
            self._tombstones = {name: t for name, t in self._tombstones.items() if name in names}
            self._selectors = {name: t for name, t in self._selectors.items() if name in names}
            self._searched = {key: found for key, found in self._searched.items() if key[0] in live}
            self._cached_generation = manifest.generation
        return manifest

    def _unchanged(self) -> Manifest | None:
        """The manifest returned last, if ``CURRENT`` is the very file it was read through (the same
        inode, size, mtime and ctime) and that file was already older than :data:`POINTER_SETTLED_NS`
        when it was read; else None.

        ``CURRENT`` is replaced by a rename, and a new file can get the inode of a just-deleted one, with
        the same size and, within a clock tick (or a file system's timestamp granularity: up to 2 s), the
        same times. A file written after one that was that old when it was read cannot have its times,
        so one ``stat`` tells; a pointer younger than that is read again.
        """
        current = self._current
        if current is None or current.pointer is None:
            return None
        if current.checked_at - max(current.pointer[3:]) < POINTER_SETTLED_NS:
            return None
        return current.manifest if _stat_key(self._pointer_path) == current.pointer else None

    def _current_key(self) -> tuple[str, int, int, int] | None:
        """The manifest file ``CURRENT`` names, as (name, inode, size, mtime); None when there is none.
        (``os`` calls rather than ``open()`` and ``pathlib``: a file object alone costs some 5 µs.)"""
        try:
            pointer = os.open(self._pointer_path, os.O_RDONLY)
            try:
                name = os.read(pointer, 256).decode("utf-8", "replace").strip()
            finally:
                os.close(pointer)
            found = os.stat(self._manifests_dir + name)
        except (OSError, ValueError):
            return None
        return name, found.st_ino, found.st_size, found.st_mtime_ns

    def docs(self, manifest: Manifest | None = None) -> dict[str, DocState]:
        """The document table of ``manifest`` (default: current), cached per generation."""
        manifest = manifest or self.manifest()
        if self._docs_cache is None or self._docs_cache[0] != manifest.docs_file:
            docs: dict[str, DocState] = {}
            if manifest.docs_file:
                path = self.store.verified(manifest.docs_file, manifest.docs_sha256, "document table")
                try:
                    docs = read_docs(path)
                except (pa.ArrowException, OSError, ValueError, KeyError) as err:
                    raise IndexCorrupt(f"document table {path} cannot be read: {err}") from err
            self._docs_cache = (manifest.docs_file, docs)
        return self._docs_cache[1]

    def reader(self, segment: SegmentInfo | LiveSegment) -> SegmentReader:
        """The reader of a segment; a :class:`LiveSegment` of the warm tier is memory-mapped."""
        info = segment.info if isinstance(segment, LiveSegment) else segment
        mmap = self.mmap or (isinstance(segment, LiveSegment) and segment.storage == MMAP)
        found = self._readers.get(info.segment_id)
        if found is None:
            found = SegmentReader(self.segments_dir / info.segment_id, info, mmap=mmap)
            self._readers[info.segment_id] = found
        return found

    def tombstones(self, segment: LiveSegment) -> np.ndarray:
        if segment.tombstones is None:
            return np.zeros(0, dtype=np.int64)
        found = self._tombstones.get(segment.tombstones)
        if found is None:
            path = self.store.verified(segment.tombstones, segment.tombstones_sha256, "tombstones")
            try:
                found = np.load(path)
            except (OSError, ValueError) as err:
                raise IndexCorrupt(f"tombstones {path} cannot be read: {err}") from err
            self._tombstones[segment.tombstones] = found
        return found

    def excluded(self, segment: LiveSegment) -> Any:
        """The FAISS selector that skips the segment's tombstoned vectors (None when it has none), built
        once per tombstone file rather than for every search."""
        name = segment.tombstones
        if name is None:
            return None
        if name not in self._selectors:
            dead = self.tombstones(segment)
            self._selectors[name] = excluding(dead) if len(dead) else None
        return self._selectors[name]

    def searched_segment(self, live: LiveSegment, ef_search: int = 0) -> SearchedSegment:
        """``live`` prepared for searches with an efSearch of at least ``ef_search``: its reader, the
        selector of its tombstones, and FAISS's search parameters, built once per tombstone file and
        efSearch rather than for every search (dropped with the segment's reader).

        GPU flat indexes may not take ID selectors: a segment with tombstones is searched on the CPU
        (compaction clears them). Warm segments stay memory-mapped on the CPU.
        """
        settings = live.info.index
        key = (
            live.info.segment_id,
            live.tombstones,
            live.storage,
            settings.get("type"),
            settings.get("ef_search"),
            settings.get("use_gpu"),
            ef_search,
        )
        found = self._searched.get(key)
        if found is None:
            spec = IndexSpec.from_dict(settings)
            reader, excluded = self.reader(live), self.excluded(live)
            on_cpu = excluded is not None or live.storage == MMAP
            index = reader.index if on_cpu else reader.search_index
            prepared = PreparedSearch(index, spec.type, max(spec.ef_search, ef_search), excluded)
            found = SearchedSegment(live.info.segment_id, live.tier, reader, prepared)
            if len(self._searched) >= MAX_PREPARED_SEARCHES:  # many efSearch values (a benchmark's sweep)
                self._searched.clear()
            self._searched[key] = found
        return found

    def search(self, queries: np.ndarray, k: int, manifest: Manifest | None = None) -> list[list[Hit]]:
        """Top-``k`` chunks per query over all live segments, merged by score (ties: vector id)."""
        manifest = manifest or self.manifest()
        merged: list[list[Hit]] = [[] for _ in range(len(queries))]
        for live in manifest.segments:
            segment = self.searched_segment(live, k)
            scores, ids = segment.prepared.search(queries, k, ids=True)
            for found, row_scores, row_ids in zip(merged, scores.tolist(), ids.tolist(), strict=True):
                found.extend(
                    Hit(s, i, segment.segment_id, segment.tier)
                    for s, i in zip(row_scores, row_ids, strict=True)
                    if i >= 0
                )
        return [sorted(hits, key=lambda h: (-h.score, h.vector_id))[:k] for hits in merged]

    def chunk_rows(self, hits: list[Hit], manifest: Manifest | None = None) -> list[dict[str, Any]]:
        """Chunk metadata (text, doc id, lineage ...) for ``hits``, in the same order."""
        manifest = manifest or self.manifest()
        infos = {live.info.segment_id: live for live in manifest.segments}
        out = []
        for hit in hits:
            columns = self.reader(infos[hit.segment_id]).columns
            out.append(columns.row(columns.row_of(hit.vector_id)))
        return out

    def find_vector(self, vid: int, manifest: Manifest | None = None) -> dict[str, Any] | None:
        """The live chunk row holding FAISS id ``vid``, with its segment id, or None."""
        manifest = manifest or self.manifest()
        for live in manifest.segments:
            if vid in set(self.tombstones(live).tolist()):
                continue
            columns = self.reader(live).columns
            try:
                row = columns.row(columns.row_of(vid))
            except KeyError:
                continue
            row["segment_id"] = live.info.segment_id
            return row
        return None

    # ---- writing -------------------------------------------------------------------------------
    @contextmanager
    def _lock(self) -> Iterator[None]:
        """The writer lock. A write under it that fails (a full disk is :class:`DiskFull`) leaves nothing
        of the generation it was building: its document table, tombstones and new segments are removed,
        unless the manifest of that generation became current after all."""
        held = _HELD.get(str(self.root.resolve())) == threading.get_ident()
        with nullcontext() if held else exclusive_lock(self.root / "LOCK"):
            self._resolve_pointer()
            self._writing, self._new_segments = None, []
            try:
                yield
            except BaseException as err:
                self._discard_failed_generation()
                if is_disk_full(err) and not isinstance(err, DiskFull):
                    raise disk_full_error(err, self.root, f"writing generation {self._writing}") from err
                raise
            finally:
                self._writing, self._new_segments = None, []

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the index directory's writer lock across several steps (a promotion: final catch-up, gate,
        switch). Every other writer waits, in this process too; commits made meanwhile by the thread that
        holds it (a catch-up's pipeline, which runs its bundles in that thread) go ahead."""
        key = str(self.root.resolve())
        if _HELD.get(key) == threading.get_ident():
            raise RuntimeError(f"the writer lock of {self.root} is held by this thread already")
        self.root.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.root / "LOCK", timeout_s=600.0):
            _HELD[key] = threading.get_ident()
            try:
                yield
            finally:
                del _HELD[key]

    def _discard_failed_generation(self) -> None:
        generation = self._writing
        if generation is None:
            return
        pointer = self.store.pointer
        try:
            if pointer.exists() and pointer.read_bytes().strip() == self.store.file_name(generation).encode():
                return  # it was published: its files are the index now
            (self.root / "docs" / f"docs-{generation:09d}.parquet").unlink(missing_ok=True)
            folder = self.root / "tombstones"
            if folder.exists():
                for path in folder.glob(f"*-{generation:09d}.npy"):
                    path.unlink(missing_ok=True)
            for seg_dir in self._new_segments:
                shutil.rmtree(seg_dir, ignore_errors=True)
        except OSError as err:  # what is left is unreferenced: gc removes it
            LOG.warning("could not remove the files of failed generation %s: %s", generation, err)

    def _audit(self, action: str, entry: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Append the audit line of a published change; a failure to (a full disk) is logged, not raised:
        the change is committed, and the next append recovers the line from the manifest history."""
        try:
            audit.append(self.root, action, entry, history)
        except OSError as err:
            LOG.warning(
                "audit line of %s generation %s not written (%s); the next change's line recovers it",
                action,
                entry.get("generation"),
                err,
            )

    def commit(self, request: CommitRequest) -> CommitResult:
        """Publish ``request`` atomically: new vectors become visible in the same manifest that hides
        the documents' old ones. Updates older than the committed version are dropped (their new
        vectors are tombstoned at once), so replays and out-of-order runs change nothing.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            base = self.manifest()
            refuse_mixed(self.root, base, request.embedding, request.chunking)
            docs = dict(self.docs(base))
            added: dict[str, set[int]] = {}
            applied = stale = 0
            for update in sorted(request.updates, key=lambda u: u.doc_id):
                current = docs.get(update.doc_id)
                if update.extra.get(RENEWAL):
                    renewed = _renew(current, update)
                    if renewed is None:
                        stale += 1
                        continue
                    update = renewed
                if current is not None and _is_stale(current, update):
                    stale += 1
                    # A retried commit of this very request finds its vectors live: keep them.
                    if update.segment_id and update.n_chunks and update.segment_id != current.segment_id:
                        added.setdefault(update.segment_id, set()).update(
                            doc_vector_ids(update.doc_id, update.n_chunks)
                        )
                    continue
                if (
                    current is not None
                    and current.status == CANONICAL
                    and current.segment_id
                    and not _same_vectors(current, update)
                ):
                    added.setdefault(current.segment_id, set()).update(
                        doc_vector_ids(current.doc_id, current.n_chunks)
                    )
                docs[update.doc_id] = update
                applied += 1
            _resolve_canonical_links(docs)
            generation = self._next_generation(base)
            known = {seg.info.segment_id for seg in base.segments}
            new = [
                LiveSegment(info)
                for info in request.segments
                if info.n_vectors and info.segment_id not in known
            ]
            live = [*base.segments, *new]
            segments = [
                self._with_tombstones(seg, added.get(seg.info.segment_id, set()), generation) for seg in live
            ]
            segments = [seg for seg in segments if seg.n_live > 0]
            docs_file = self._write_docs(docs, generation)
            summary = {"generation": generation, "run_id": request.run_id, "committed_at": time.time()}
            summary.update(request.summary)
            summary.update(applied=applied, stale=stale)
            manifest = Manifest(
                generation=generation,
                segments=segments,
                docs_file=docs_file,
                embedding=base.embedding or request.embedding,
                chunking=base.chunking or request.chunking,
                sources={**base.sources, **request.sources},
                history=[*base.history, summary][-HISTORY_LIMIT:],
                cold=base.cold,
                version=base.version or (self.version or ""),
                index=base.index,
            )
            self.store.publish(manifest)
            self._audit(
                "commit",
                {
                    **summary,
                    "sources": request.sources,
                    "segments": {"added": [seg.info.segment_id for seg in new]},
                },
                base.history,
            )
            return CommitResult(generation, applied, stale, sum(len(v) for v in added.values()))

    def start_version(
        self,
        embedding: dict[str, Any],
        chunking: dict[str, Any],
        index: dict[str, Any],
        source: Manifest | None = None,
        run_id: str = "reindex",
    ) -> Manifest:
        """The first state of a new index version (this index's ``version``): empty, with the identity
        its vectors must have; or, with ``source`` (a version of the same model and chunking), that
        state's segments, tombstones, document table and cold rows, referenced rather than copied.

        Raises:
            VersionError: The version has a committed state already.
            IncompatibleIndex: ``source`` holds vectors of another model or chunking.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            base = self.manifest()
            if base.generation:
                raise VersionError(f"index version {self.version!r} at {self.root} has a committed state")
            if source is not None:
                refuse_mixed(self.root, source, embedding, chunking)
            generation = self._next_generation(base)
            summary: dict[str, Any] = {"generation": generation, "run_id": run_id, "committed_at": time.time()}
            if source is not None:
                summary["adopted"] = {"version": source.version, "generation": source.generation}
            manifest = Manifest(
                generation=generation,
                segments=[LiveSegment.from_dict(seg.to_dict()) for seg in source.segments] if source else [],
                docs_file=source.docs_file if source else None,
                docs_sha256=source.docs_sha256 if source else None,
                embedding=embedding,
                chunking=chunking,
                sources=dict(source.sources) if source else {},
                history=[summary],
                cold=dict(source.cold) if source else {},
                version=self.version or "",
                index=index,
            )
            self.store.publish(manifest)
            self._audit("commit", summary, [])
            return manifest

    def _next_generation(self, base: Manifest) -> int:
        """One past every generation on disk: after a rollback, new commits never reuse the numbers (and
        file names) of the snapshots that were rolled back from."""
        self._writing = max([base.generation, *self.store.generations()]) + 1
        return self._writing

    def _with_tombstones(self, seg: LiveSegment, new: set[int], generation: int) -> LiveSegment:
        if not new:
            return seg
        ids = np.union1d(self.tombstones(seg), np.fromiter(new, dtype=np.int64, count=len(new)))
        name = f"tombstones/{seg.info.segment_id}-{generation:09d}.npy"
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_npy_durably(path, ids.astype(np.int64))  # np.save would report a full disk as a short write
        fsync_dir(path.parent)
        return LiveSegment(seg.info, name, int(len(ids)), storage=seg.storage)  # a warm segment stays warm

    def _write_docs(self, docs: dict[str, DocState], generation: int) -> str:
        name = f"docs/docs-{generation:09d}.parquet"
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_docs(path, docs)
        fsync_file(path)
        fsync_dir(path.parent)
        return name

    def doc_vectors(
        self, states: list[DocState], manifest: Manifest | None = None, whole_tables: bool = True
    ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The chunk rows and vectors of canonical documents held in hot or warm segments, grouped by
        document in the order given (what a move between tiers copies).

        Args:
            states: The documents' committed states (their ``segment_id`` and ``n_chunks``).
            manifest: The generation to read (default: current).
            whole_tables: Load each segment's chunk table whole and keep it for later calls (a lifecycle
                run copies a segment's documents part by part); False reads only these documents' rows
                (:meth:`~indexing.segment.SegmentReader.read_rows`: a few documents read once).

        Raises:
            IndexCorrupt: A document's segment is not live, or one of its files fails its checks.
        """
        manifest = manifest or self.manifest()
        lives = {live.info.segment_id: live for live in manifest.segments}
        placed: list[tuple[str, list[int]]] = []  # each document's segment and vector ids, in order
        wanted: dict[str, list[int]] = {}  # segment id -> the vector ids to read from it (one read each)
        for state in states:
            segment_id = state.segment_id
            if segment_id is None or segment_id not in lives:
                raise IndexCorrupt(f"document {state.doc_id!r} names segment {segment_id}, not live")
            ids = doc_vector_ids(state.doc_id, state.n_chunks)
            placed.append((segment_id, ids))
            wanted.setdefault(segment_id, []).extend(ids)
        found: dict[tuple[str, int], dict[str, Any]] = {}
        for segment_id, ids in wanted.items():
            reader = self.reader(lives[segment_id])
            read = reader.rows(ids) if whole_tables else reader.read_rows(ids)
            found.update(((segment_id, vid), row) for vid, row in zip(ids, read, strict=True))
        rows: list[dict[str, Any]] = []
        parts: list[np.ndarray] = []
        for segment_id, ids in placed:
            index = self.reader(lives[segment_id]).index
            rows.extend(found[(segment_id, vid)] for vid in ids)
            parts.append(np.vstack([index.reconstruct(vid) for vid in ids]))
        dim = manifest.segments[0].info.dim if manifest.segments else 0
        vectors = np.vstack(parts).astype(np.float32) if parts else np.zeros((0, dim), np.float32)
        return rows, vectors

    def retier(self, request: RetierRequest) -> RetierResult:
        """Publish a lifecycle run in one manifest: documents move between hot, warm and cold (or expire)
        in the same commit that tombstones their old vectors, so every vector is findable exactly once
        before and after it. A document whose committed state changed since the run planned its move is
        skipped (its copies are tombstoned, or left invisible in the cold tier).
        """
        with self._lock():
            base = self.manifest()
            docs = dict(self.docs(base))
            new_ids = {info.segment_id for info, _ in request.segments}
            dead: dict[str, set[int]] = {}
            applied, skipped = [], []
            for move in request.moves:
                doc_id = move.new.doc_id
                current = docs.get(doc_id)
                if current is None or _placement(current) != _placement(move.expected):
                    skipped.append(doc_id)
                    if move.new.segment_id in new_ids:
                        dead.setdefault(move.new.segment_id, set()).update(
                            doc_vector_ids(doc_id, move.new.n_chunks)
                        )
                    continue
                if current.status == CANONICAL and current.segment_id:
                    dead.setdefault(current.segment_id, set()).update(
                        doc_vector_ids(doc_id, current.n_chunks)
                    )
                docs[doc_id] = move.new
                applied.append(doc_id)
            _resolve_canonical_links(docs)
            generation = self._next_generation(base)
            live = [
                *base.segments,
                *(LiveSegment(info, storage=storage) for info, storage in request.segments),
            ]
            segments = [
                self._with_tombstones(seg, dead.get(seg.info.segment_id, set()), generation) for seg in live
            ]
            summary = {"generation": generation, "run_id": request.run_id, "committed_at": time.time()}
            summary.update(request.summary, applied=len(applied), skipped=len(skipped))
            manifest = Manifest(
                generation=generation,
                segments=[seg for seg in segments if seg.n_live > 0],
                docs_file=self._write_docs(docs, generation),
                embedding=base.embedding,
                chunking=base.chunking,
                sources=base.sources,
                history=[*base.history, summary][-HISTORY_LIMIT:],
                cold=request.cold or base.cold,
                version=base.version,
                index=base.index,
            )
            self.store.publish(manifest)
            added = [info.segment_id for info, _ in request.segments]
            self._audit("retier", {**summary, "segments": {"added": added}}, base.history)
            return RetierResult(generation, applied, skipped)

    def compact(self, spec: IndexSpec | None = None) -> Manifest:
        """Merge the live segments of each storage class (hot, warm) into one, dropping tombstoned vectors;
        one atomic commit."""
        with self._lock():
            base = self.manifest()
            groups: dict[str, list[LiveSegment]] = {}
            for live in base.segments:
                groups.setdefault(live.storage, []).append(live)
            rebuilt = spec is not None and any(seg.info.index != spec.to_dict() for seg in base.segments)
            if not rebuilt and all(len(g) <= 1 and not any(s.n_deleted for s in g) for g in groups.values()):
                return base
            merged: list[LiveSegment] = []
            moved: dict[str, str] = {}
            for storage, group in groups.items():
                info = self._merge(group, spec)
                self._new_segments.append(self.segments_dir / info.segment_id)
                moved.update((live.info.segment_id, info.segment_id) for live in group)
                if info.n_vectors:
                    merged.append(LiveSegment(info, storage=storage))
            docs = dict(self.docs(base))
            for state in docs.values():
                if state.status == CANONICAL and state.segment_id in moved:
                    state.segment_id = moved[state.segment_id]
            generation = self._next_generation(base)
            manifest = Manifest(
                generation=generation,
                segments=merged,
                docs_file=self._write_docs(docs, generation),
                embedding=base.embedding,
                chunking=base.chunking,
                sources=base.sources,
                history=[
                    *base.history,
                    {
                        "generation": generation,
                        "run_id": "compaction",
                        "committed_at": time.time(),
                        "merged_segments": len(base.segments),
                        "vectors": sum(seg.info.n_vectors for seg in merged),
                    },
                ][-HISTORY_LIMIT:],
                cold=base.cold,
                version=base.version,
                index=spec.to_dict() if spec is not None else base.index,
            )
            self.store.publish(manifest)
            segments = {
                "added": [seg.info.segment_id for seg in merged],
                "removed": [seg.info.segment_id for seg in base.segments],
            }
            self._audit("compact", {**manifest.history[-1], "segments": segments}, base.history)
            self._docs_cache = None
            return manifest

    def _merge(self, group: list[LiveSegment], spec: IndexSpec | None) -> SegmentInfo:
        all_vectors, all_rows = [], []
        for live in group:
            # A fresh reader checks the files now and reads them into memory: a cached (memory-mapped)
            # one would copy whatever is on disk, and the merged segment would get a fresh checksum.
            reader = SegmentReader(self.segments_dir / live.info.segment_id, live.info)
            ids, vectors = index_vectors(reader.index)
            keep = ~np.isin(ids, self.tombstones(live))
            all_vectors.append(vectors[keep])
            all_rows.extend(reader.rows(ids[keep].tolist()))
        vectors = np.concatenate(all_vectors)
        return write_segment(
            self.segments_dir, all_rows, vectors, spec or IndexSpec.from_dict(group[-1].info.index)
        )

    def collect_garbage(self, keep_generations: int = 5, min_age_s: float = 6 * 3600) -> list[Path]:
        """Delete files that neither the current manifest nor the newest ``keep_generations`` name.
        Unreferenced segments younger than ``min_age_s`` are kept: a running pipeline may be about to
        commit them. So are staged files (``staging/``: what a run's driver settled, for its pipeline's
        commit; the run removes its own, a crashed one leaves it) younger than that."""
        with self._lock():
            generations = self.store.generations()
            current = self.manifest().generation
            kept = sorted(
                set(generations[-keep_generations:] if keep_generations > 0 else [])
                | ({current} if current else set())
            )
            heads = {self.store.generation_of(name) for name in versions.kept_heads(self.root)}
            kept = sorted(set(kept) | (heads & set(generations)))
            referenced: set[str] = set()
            for gen in kept:
                manifest = self.store.load(self.store.file_name(gen))
                referenced.update(f"segments/{seg.info.segment_id}" for seg in manifest.segments)
                referenced.update(seg.tombstones for seg in manifest.segments if seg.tombstones)
                if manifest.docs_file:
                    referenced.add(manifest.docs_file)
            removed: list[Path] = []
            now = time.time()
            for gen in sorted(set(generations) - set(kept)):
                path = self.store.dir / self.store.file_name(gen)
                path.unlink()
                removed.append(path)
            for sub in ("segments", "tombstones", "docs", "staging"):
                folder = self.root / sub
                if not folder.exists():
                    continue
                for path in folder.iterdir():
                    rel = f"{sub}/{path.name}"
                    young = sub in ("segments", "staging") and now - path.stat().st_mtime < min_age_s
                    if rel in referenced or young:
                        continue
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                    removed.append(path)
            if removed:
                entry = {
                    "generation": current,
                    "run_id": "gc",
                    "committed_at": now,
                    "removed": sorted(str(path.relative_to(self.root)) for path in removed),
                    "kept_generations": kept,
                }
                self._audit("gc", entry, [])
            return removed


def refuse_mixed(root: Path, base: Manifest, embedding: dict[str, Any], chunking: dict[str, Any]) -> None:
    """Raise :class:`IncompatibleIndex` when vectors made with ``embedding`` and ``chunking`` would join
    a version that holds vectors made another way (vectors of two models, or of two chunkings, never
    mix: a change is a new version, ``tierflow reindex``)."""
    for what, held, offered in (("model", base.embedding, embedding), ("chunking", base.chunking, chunking)):
        if held and offered and held != offered:
            version = f"version {base.version!r} of the index" if base.version else "the index"
            raise IncompatibleIndex(
                f"{version} at {root} holds vectors made with {what} {held}; refusing vectors made with "
                f"{offered}. A new model or chunking is a new index version: build it with `tierflow "
                f"reindex --config NEW` and switch with `tierflow promote` (or run with the settings the "
                f"live version was built with)."
            )


def _is_stale(current: DocState, update: DocState) -> bool:
    """An update loses to the committed state if it is older, or is the same version with the same result
    (a replay). A delete of version v beats upserts of versions up to v and loses to newer ones. A
    promotion re-decides a duplicate at its own version: a new canonical link is not a replay."""
    if update.version < current.version:
        return True
    if update.version > current.version:
        return False
    same = (update.status, update.content_hash, update.canonical_id)
    return same == (current.status, current.content_hash, current.canonical_id) or (
        current.status == DELETED and update.status != DELETED
    )


def tier_of(state: DocState, storage_of: dict[str, str]) -> str | None:
    """The tier holding a document's vectors (None for duplicates and deleted documents), given each live
    segment's storage."""
    if state.status != CANONICAL:
        return None
    if state.cold_batch:
        return COLD
    return WARM if storage_of.get(state.segment_id or "") == MMAP else HOT


def tier_vectors(index: HotIndex, manifest: Manifest | None = None) -> dict[str, int]:
    """Vectors per tier (hot, warm, cold) of ``manifest`` (default: current)."""
    manifest = manifest or index.manifest()
    storage_of = {live.info.segment_id: live.storage for live in manifest.segments}
    out = dict.fromkeys(TIERS, 0)
    for state in index.docs(manifest).values():
        tier = tier_of(state, storage_of)
        if tier is not None:
            out[tier] += state.n_chunks
    return out


def _renew(current: DocState | None, update: DocState) -> DocState | None:
    """A renewal (a newer version of unchanged content) applied onto the committed state as it is now:
    its vectors stay where they are. None when that state no longer holds the same content at an older
    version (deleted, changed, or already newer): the renewal is stale."""
    if (
        current is None
        or current.status == DELETED
        or current.content_hash != update.content_hash
        or update.version <= current.version
    ):
        return None
    return replace(
        current,
        version=update.version,
        title=update.title,
        metadata=update.metadata,
        source_system=update.source_system,
        source_uri=update.source_uri,
        source_position=update.source_position,
        event_time=update.event_time,
        extra={},
    )


def _same_vectors(current: DocState, update: DocState) -> bool:
    """The update keeps the document's committed vectors (a newer version of unchanged content)."""
    return (
        update.status == CANONICAL
        and update.segment_id == current.segment_id
        and update.n_chunks == current.n_chunks
        and update.cold_batch == current.cold_batch
    )


def _placement(state: DocState) -> tuple[Any, ...]:
    """What a lifecycle move must find unchanged to apply: the version, its content and where it lives."""
    return (
        state.version,
        state.status,
        state.content_hash,
        state.canonical_id,
        state.segment_id,
        state.n_chunks,
        state.cold_batch,
    )


def _resolve_canonical_links(docs: dict[str, DocState]) -> None:
    """Point every duplicate at a live canonical document, following chains (a->b->c becomes a->c)."""
    for state in docs.values():
        if state.status != DUPLICATE:
            continue
        target, seen = state.canonical_id, {state.doc_id}
        while target in docs and docs[target].status == DUPLICATE and target not in seen:
            seen.add(target)
            target = docs[target].canonical_id
        state.canonical_id = target
