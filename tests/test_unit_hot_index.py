"""Unit tests for the hot tier (indexing.hot, segment, manifest, durable): commits of hand-built segments
and document states, ordering, tombstones, compaction, corruption, GC, rollback and crash consistency.

No embedding model: vectors are random, L2-normalised float32; the oracle is a brute-force numpy top-k
over the vectors each test itself says should be live.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

import indexing.segment as segment_module
from indexing.docs_table import CANONICAL, DELETED, DocState
from indexing.durable import sha256_file
from indexing.faiss_index import IndexSpec
from indexing.hot import CommitRequest, CommitResult, HotIndex, doc_vector_ids
from indexing.manifest import Manifest
from indexing.segment import CHUNKS_FILE, INDEX_FILE, SegmentInfo, write_segment
from tests.helpers import chunk_row
from tierflow.errors import IncompatibleIndex, IndexCorrupt
from tierflow.records import chunk_id, vector_id

DIM = 32
FLAT = IndexSpec(type="flat", use_gpu="never")
HNSW = IndexSpec(type="hnsw", use_gpu="never")
EMBEDDING = {"name": "random-unit", "revision": "test", "dim": DIM, "normalize": True}


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Lab:
    """A hot index plus a record of every vector the test wrote, so that expectations are independent
    of the code under test."""

    def __init__(self, root: Path, seed: int = 0, dim: int = DIM, spec: IndexSpec = FLAT) -> None:
        self.hot = HotIndex(root)
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        self.spec = spec
        self.vectors: dict[tuple[str, str], np.ndarray] = {}  # (segment_id, doc_id) -> (n_chunks, dim)

    def segment(
        self,
        docs: list[tuple[str, int, int]],
        spec: IndexSpec | None = None,
        vectors: dict[str, np.ndarray] | None = None,
    ) -> tuple[SegmentInfo, list[DocState]]:
        """Write one segment holding ``docs`` as (doc_id, version, n_chunks); return it and the canonical
        states a writer would emit for it."""
        rows, blocks = [], []
        for doc_id, version, n in docs:
            block = vectors[doc_id] if vectors and doc_id in vectors else unit(self.rng, n, self.dim)
            blocks.append(block)
            for i in range(n):
                rows.append(chunk_row(doc_id, i, version, f"{doc_id}-v{version}-{i}", {"version": version}))
        info = write_segment(self.hot.segments_dir, rows, np.vstack(blocks), spec or self.spec)
        states = []
        for (doc_id, version, n), block in zip(docs, blocks, strict=True):
            self.vectors[(info.segment_id, doc_id)] = block
            states.append(
                DocState(
                    doc_id,
                    version,
                    CANONICAL,
                    content_hash=f"{doc_id}-v{version}",
                    fingerprint="fp",
                    segment_id=info.segment_id,
                    n_chunks=n,
                    text=f"text of {doc_id} v{version}",
                )
            )
        return info, states

    def commit(self, segments: list[SegmentInfo], updates: list[DocState], **kw: object) -> CommitResult:
        request = CommitRequest(run_id="test", segments=segments, updates=updates, embedding=EMBEDDING, **kw)  # type: ignore[arg-type]
        return self.hot.commit(request)

    def brute(self, queries: np.ndarray, live: dict[str, str], k: int) -> list[list[tuple[int, str, float]]]:
        """Exact top-k over the docs in ``live`` (doc_id -> segment holding its current vectors)."""
        ids, segs, mats = [], [], []
        for doc_id, seg_id in live.items():
            block = self.vectors[(seg_id, doc_id)]
            ids.extend(doc_vector_ids(doc_id, len(block)))
            segs.extend([seg_id] * len(block))
            mats.append(block)
        if not mats:
            return [[] for _ in queries]
        matrix = np.vstack(mats)
        scores = queries @ matrix.T
        out = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:k]
            out.append([(ids[j], segs[j], float(row[j])) for j in order])
        return out

    def assert_search_matches(self, live: dict[str, str], k: int = 10, n_queries: int = 8) -> None:
        queries = unit(self.rng, n_queries, self.dim)
        got = self.hot.search(queries, k)
        want = self.brute(queries, live, k)
        for g, w in zip(got, want, strict=True):
            assert [(h.vector_id, h.segment_id) for h in g] == [(i, s) for i, s, _ in w]
            assert [h.score for h in g] == pytest.approx([sc for _, _, sc in w], abs=1e-5)


def visible_ids(hot: HotIndex, manifest: Manifest | None = None) -> dict[str, set[int]]:
    """segment id -> vector ids that are stored there and not tombstoned (read through the public API)."""
    manifest = manifest or hot.manifest()
    out: dict[str, set[int]] = {}
    for live in manifest.segments:
        stored = set(hot.reader(live.info).chunks.column("vector_id").to_pylist())
        out.setdefault(live.info.segment_id, set()).update(stored - set(hot.tombstones(live).tolist()))
    return out


# ---- commit + search -------------------------------------------------------------------------------


def test_commit_then_search_matches_brute_force(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 3), ("b", 1, 2), ("c", 1, 4)])
    s2, st2 = lab.segment([("d", 1, 5), ("e", 1, 1)])
    result = lab.commit([s1, s2], st1 + st2)
    assert result == CommitResult(generation=1, applied=5, stale=0, tombstoned=0)
    manifest = lab.hot.manifest()
    assert manifest.generation == 1
    assert {seg.info.segment_id for seg in manifest.segments} == {s1.segment_id, s2.segment_id}
    assert manifest.n_vectors == 15
    assert manifest.embedding == EMBEDDING
    live = {
        "a": s1.segment_id,
        "b": s1.segment_id,
        "c": s1.segment_id,
        "d": s2.segment_id,
        "e": s2.segment_id,
    }
    lab.assert_search_matches(live, k=7)
    lab.assert_search_matches(live, k=50)  # k above the number of vectors returns all of them
    assert len(lab.hot.search(unit(lab.rng, 1), 50)[0]) == 15

    # A query equal to a stored vector finds it first, with score ~1, and its chunk row is right.
    query = lab.vectors[(s2.segment_id, "d")][3:4]
    hit = lab.hot.search(query, 1)[0][0]
    assert hit.vector_id == vector_id(chunk_id("d", 3)) and hit.score == pytest.approx(1.0, abs=1e-5)
    row = lab.hot.chunk_rows([hit])[0]
    assert (row["doc_id"], row["ordinal"], row["chunk_id"]) == ("d", 3, "d#3")
    assert lab.hot.docs()["d"].segment_id == s2.segment_id


def test_empty_index_searches_to_nothing(tmp_path: Path) -> None:
    hot = HotIndex(tmp_path / "none")
    assert hot.manifest().generation == 0
    assert hot.search(unit(np.random.default_rng(1), 2), 5) == [[], []]
    assert hot.docs() == {}


def test_upsert_hides_old_vectors_in_the_same_commit(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 3), ("b", 1, 2)])
    lab.commit([s1], st1)
    # New version of "a" with fewer chunks: ordinals 0,1 reuse the same vector ids as before.
    s2, st2 = lab.segment([("a", 2, 2)])
    assert set(doc_vector_ids("a", 2)) < set(doc_vector_ids("a", 3))
    result = lab.commit([s2], st2)
    assert (result.generation, result.applied, result.stale, result.tombstoned) == (2, 1, 0, 3)

    manifest = lab.hot.manifest()
    visible = visible_ids(lab.hot, manifest)
    assert visible[s1.segment_id] == set(doc_vector_ids("b", 2))  # all three old "a" vectors hidden
    assert visible[s2.segment_id] == set(doc_vector_ids("a", 2))
    assert manifest.n_vectors == 4
    assert lab.hot.docs()["a"].version == 2 and lab.hot.docs()["a"].segment_id == s2.segment_id
    lab.assert_search_matches({"a": s2.segment_id, "b": s1.segment_id})

    # The old vector of a#0 is no longer findable: its exact query now hits the new a#0 in s2 (or other).
    old = lab.vectors[(s1.segment_id, "a")][0:1]
    hits = lab.hot.search(old, 10)[0]
    assert all(h.segment_id != s1.segment_id or h.vector_id in set(doc_vector_ids("b", 2)) for h in hits)

    # The previous generation is an intact snapshot: the old vectors are still live there.
    previous = lab.hot.store.load(lab.hot.store.file_name(1))
    assert visible_ids(lab.hot, previous)[s1.segment_id] == set(doc_vector_ids("a", 3)) | set(
        doc_vector_ids("b", 2)
    )


def test_segment_with_every_vector_replaced_leaves_the_manifest(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 2)])
    lab.commit([s1], st1)
    s2, st2 = lab.segment([("a", 2, 2)])
    lab.commit([s2], st2)
    assert [seg.info.segment_id for seg in lab.hot.manifest().segments] == [s2.segment_id]
    lab.assert_search_matches({"a": s2.segment_id})


def test_stale_update_is_dropped_and_its_vectors_tombstoned(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 5, 3)])
    lab.commit([s1], st1)
    s2, st2 = lab.segment([("a", 4, 2), ("c", 1, 2)])  # "a" is older than the committed version
    result = lab.commit([s2], st2)
    assert (result.applied, result.stale, result.tombstoned) == (1, 1, 2)
    docs = lab.hot.docs()
    assert (docs["a"].version, docs["a"].segment_id, docs["a"].n_chunks) == (5, s1.segment_id, 3)
    visible = visible_ids(lab.hot)
    assert visible[s1.segment_id] == set(doc_vector_ids("a", 3))
    assert visible[s2.segment_id] == set(doc_vector_ids("c", 2))  # the stale "a" vectors never show
    lab.assert_search_matches({"a": s1.segment_id, "c": s2.segment_id})


def test_versions_commit_in_any_order_to_the_same_state(tmp_path: Path) -> None:
    """Invariant 2: whatever order versions 1..3 of a document are committed in, version 3 is live."""
    for n, order in enumerate([(1, 2, 3), (3, 2, 1), (2, 3, 1), (3, 1, 2)]):
        lab = Lab(tmp_path / f"hot{n}", seed=7)
        vectors = {v: unit(np.random.default_rng(100 + v), 2) for v in (1, 2, 3)}
        seg_of = {}
        for version in order:
            info, states = lab.segment([("a", version, 2)], vectors={"a": vectors[version]})
            lab.commit([info], states)
            seg_of[version] = info.segment_id
        assert lab.hot.docs()["a"].version == 3
        assert visible_ids(lab.hot) == {seg_of[3]: set(doc_vector_ids("a", 2))}
        hit = lab.hot.search(vectors[3][:1], 1)[0][0]
        assert hit.segment_id == seg_of[3] and hit.score == pytest.approx(1.0, abs=1e-5)


def test_delete_hides_and_only_a_newer_upsert_revives(tmp_path: Path) -> None:
    """Invariant 2 for deletes: a delete wins over older (and equal-version) upserts, loses to newer ones."""
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 3), ("b", 1, 2)])
    lab.commit([s1], st1)
    result = lab.commit([], [DocState("a", 3, DELETED)])
    assert (result.applied, result.tombstoned) == (1, 3)
    assert lab.hot.docs()["a"].status == DELETED
    lab.assert_search_matches({"b": s1.segment_id})

    # An older upsert (v2 < v3) arriving late is dropped; its vectors never become visible.
    s2, st2 = lab.segment([("a", 2, 2)])
    result = lab.commit([s2], st2)
    assert (result.applied, result.stale) == (0, 1)
    assert lab.hot.docs()["a"].status == DELETED
    lab.assert_search_matches({"b": s1.segment_id})

    # An upsert at the delete's own version also loses (delete wins at equal versions).
    s3, st3 = lab.segment([("a", 3, 2)])
    assert lab.commit([s3], st3).stale == 1
    lab.assert_search_matches({"b": s1.segment_id})

    # A newer upsert brings it back.
    s4, st4 = lab.segment([("a", 4, 2)])
    assert lab.commit([s4], st4).applied == 1
    assert lab.hot.docs()["a"].status == CANONICAL
    lab.assert_search_matches({"a": s4.segment_id, "b": s1.segment_id})

    # A delete at the same version as a live upsert wins.
    lab.commit([], [DocState("a", 4, DELETED)])
    lab.assert_search_matches({"b": s1.segment_id})
    assert all(not ids & set(doc_vector_ids("a", 3)) for ids in visible_ids(lab.hot).values())


def test_redelivered_events_in_a_new_segment_change_nothing(tmp_path: Path) -> None:
    """Invariant 1: the same events processed again (a fresh segment of the same versions) are no-ops."""
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 3), ("b", 2, 2)])
    lab.commit([s1], st1)
    queries = unit(lab.rng, 5)
    before = lab.hot.search(queries, 10)
    docs_before = {k: v.to_row() for k, v in lab.hot.docs().items()}
    for _ in range(2):
        vectors = {d: lab.vectors[(s1.segment_id, d)] for d in ("a", "b")}
        again, states = lab.segment([("a", 1, 3), ("b", 2, 2)], vectors=vectors)
        result = lab.commit([again], states)
        assert (result.applied, result.stale) == (0, 2)
        assert lab.hot.search(queries, 10) == before
        assert {k: v.to_row() for k, v in lab.hot.docs().items()} == docs_before
        assert [seg.info.segment_id for seg in lab.hot.manifest().segments] == [s1.segment_id]


def test_replaying_the_same_commit_request_keeps_the_searchable_state(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 3), ("b", 1, 2)])
    request = CommitRequest(run_id="r1", segments=[s1], updates=st1, embedding=EMBEDDING)
    lab.hot.commit(request)
    queries = unit(lab.rng, 4)
    before = lab.hot.search(queries, 10)
    lab.hot.commit(request)  # e.g. the commit DoFn retried after the manifest swap succeeded
    assert lab.hot.search(queries, 10) == before
    assert lab.hot.manifest().n_vectors == 5


def test_incompatible_embedding_identity_is_refused(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 2)])
    lab.commit([s1], st1)
    s2, st2 = lab.segment([("b", 1, 2)])
    other = {**EMBEDDING, "name": "another-model"}
    with pytest.raises(IncompatibleIndex, match="another-model"):
        lab.hot.commit(CommitRequest(run_id="x", segments=[s2], updates=st2, embedding=other))
    manifest = lab.hot.manifest()
    assert manifest.generation == 1 and manifest.embedding == EMBEDDING
    assert "b" not in lab.hot.docs()
    # The same identity is accepted.
    assert lab.commit([s2], st2).generation == 2


def test_manifest_records_sources_and_history(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 1)])
    lab.commit([s1], st1, sources={"kafka:t/0": "10"}, summary={"note": "first"})
    s2, st2 = lab.segment([("b", 1, 1)])
    lab.commit([s2], st2, sources={"kafka:t/1": "3"})
    manifest = lab.hot.manifest()
    assert manifest.sources == {"kafka:t/0": "10", "kafka:t/1": "3"}
    assert [h["generation"] for h in manifest.history] == [1, 2]
    assert manifest.history[0]["note"] == "first"
    assert (lab.hot.root / "CURRENT").read_text().strip() == "manifest-000000002.json"


# ---- compaction --------------------------------------------------------------------------------------


def test_compaction_keeps_exactly_the_live_vectors(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 3), ("b", 1, 2), ("c", 1, 2)])
    lab.commit([s1], st1)
    s2, st2 = lab.segment([("a", 2, 2), ("d", 1, 4)])
    lab.commit([s2], st2)
    lab.commit([], [DocState("c", 2, DELETED)])
    s3, st3 = lab.segment([("e", 1, 3)])
    lab.commit([s3], st3)
    live = {"a": s2.segment_id, "b": s1.segment_id, "d": s2.segment_id, "e": s3.segment_id}
    lab.assert_search_matches(live)
    queries = unit(lab.rng, 6)
    before = lab.hot.search(queries, 8)
    rows_before = [lab.hot.chunk_rows(hits) for hits in before]
    n_live = lab.hot.manifest().n_vectors
    assert n_live == 2 + 2 + 4 + 3

    manifest = lab.hot.compact()
    assert manifest.generation == 5
    assert len(manifest.segments) == 1
    seg = manifest.segments[0]
    assert seg.tombstones is None and seg.n_deleted == 0 and seg.info.n_vectors == n_live
    expected_ids = set().union(*(doc_vector_ids(d, n) for d, n in [("a", 2), ("b", 2), ("d", 4), ("e", 3)]))
    assert visible_ids(lab.hot) == {seg.info.segment_id: expected_ids}
    after = lab.hot.search(queries, 8)
    assert [[h.vector_id for h in hits] for hits in after] == [[h.vector_id for h in hits] for hits in before]
    for a, b in zip(after, before, strict=True):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
    assert [lab.hot.chunk_rows(hits) for hits in after] == rows_before
    docs = lab.hot.docs()
    assert {d.segment_id for d in docs.values() if d.status == CANONICAL} == {seg.info.segment_id}
    assert docs["c"].status == DELETED

    # Nothing left to do: compaction is a no-op.
    assert lab.hot.compact().generation == 5

    # A later upsert of a compacted document tombstones it inside the merged segment.
    for doc_id in ("a", "b", "d", "e"):
        lab.vectors[(seg.info.segment_id, doc_id)] = lab.vectors[(live[doc_id], doc_id)]
    s4, st4 = lab.segment([("b", 2, 1)])
    assert lab.commit([s4], st4).tombstoned == 2
    lab.assert_search_matches(
        {"a": seg.info.segment_id, "b": s4.segment_id, "d": seg.info.segment_id, "e": seg.info.segment_id}
    )


def test_compaction_can_rebuild_as_hnsw(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 3)])
    s2, st2 = lab.segment([("b", 1, 3)])
    lab.commit([s1, s2], st1 + st2)
    manifest = lab.hot.compact(HNSW)
    assert IndexSpec.from_dict(manifest.segments[0].info.index).type == "hnsw"
    merged = manifest.segments[0].info.segment_id
    for d in ("a", "b"):
        lab.vectors[(merged, d)] = lab.vectors[({"a": s1, "b": s2}[d].segment_id, d)]
    lab.assert_search_matches({"a": merged, "b": merged}, k=6)


def test_reading_only_some_documents_rows_gives_what_the_whole_table_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(tmp_path / "hot")
    monkeypatch.setattr(segment_module, "CHUNK_ROW_GROUP_ROWS", 2)
    s1, st1 = lab.segment([("a", 1, 3), ("b", 1, 2), ("c", 1, 4)])  # rows 0-2, 3-4, 5-8: five groups
    monkeypatch.undo()
    s2, st2 = lab.segment([("d", 1, 2), ("e", 1, 1)], spec=HNSW)  # one group
    assert pq.ParquetFile(lab.hot.segments_dir / s1.segment_id / CHUNKS_FILE).num_row_groups == 5
    lab.commit([s1, s2], st1 + st2)
    states = [st2[1], st1[2], st1[0], st2[0]]  # across segments, in neither segment's order
    whole, partial = HotIndex(lab.hot.root), HotIndex(lab.hot.root)
    rows, vectors = whole.doc_vectors(states)
    some_rows, some_vectors = partial.doc_vectors(states, whole_tables=False)
    assert some_rows == rows
    assert [row["doc_id"] for row in rows] == ["e", "c", "c", "c", "c", "a", "a", "a", "d", "d"]
    np.testing.assert_array_equal(some_vectors, vectors)
    np.testing.assert_array_equal(vectors[:1], lab.vectors[(s2.segment_id, "e")])
    for segment in partial.manifest().segments:
        assert partial.reader(segment)._columns is None, "no segment's whole table turned into objects"

    read_groups: list[list[int]] = []
    read_row_groups = pq.ParquetFile.read_row_groups

    def recording(self: pq.ParquetFile, row_groups: list[int], *args: Any, **kwargs: Any) -> Any:
        read_groups.append(list(row_groups))
        return read_row_groups(self, row_groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", recording)
    reader = HotIndex(lab.hot.root).reader(s1)
    ids = doc_vector_ids("b", 2)[::-1]
    some = reader.read_rows(ids)
    assert read_groups == [[1, 2]], "only the row groups holding b's rows are decoded"
    assert some == reader.rows(ids), "the same rows, in the order asked"
    assert reader.read_rows(ids) == reader.rows(ids), "and from the columns once they are built"
    with pytest.raises(KeyError):
        HotIndex(lab.hot.root).reader(s1).read_rows([vector_id(chunk_id("zz", 0))])

    flip_byte(lab.hot.segments_dir / s1.segment_id / CHUNKS_FILE)
    with pytest.raises(IndexCorrupt, match="checksum"):
        HotIndex(lab.hot.root).doc_vectors(states, whole_tables=False)


# ---- corruption ------------------------------------------------------------------------------------


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    pos = len(data) // 2 if offset is None else offset
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_index_file_is_refused_not_served(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 3)])
    lab.commit([s1], st1)
    flip_byte(lab.hot.segments_dir / s1.segment_id / INDEX_FILE)
    with pytest.raises(IndexCorrupt, match="checksum"):
        HotIndex(lab.hot.root).search(unit(lab.rng, 1), 3)


def test_corrupt_chunks_file_is_refused(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 3)])
    lab.commit([s1], st1)
    flip_byte(lab.hot.segments_dir / s1.segment_id / CHUNKS_FILE)
    fresh = HotIndex(lab.hot.root)
    hits = fresh.search(unit(lab.rng, 1), 3)[0]  # the FAISS file itself is intact
    with pytest.raises(IndexCorrupt, match="checksum"):
        fresh.chunk_rows(hits)


def test_missing_segment_file_is_refused(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 3)])
    lab.commit([s1], st1)
    (lab.hot.segments_dir / s1.segment_id / INDEX_FILE).unlink()
    with pytest.raises(IndexCorrupt, match="missing"):
        HotIndex(lab.hot.root).search(unit(lab.rng, 1), 3)


def test_corrupt_manifest_is_refused(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 3)])
    lab.commit([s1], st1)
    path = lab.hot.store.dir / lab.hot.store.file_name(1)
    path.write_text(path.read_text()[:40])
    with pytest.raises(IndexCorrupt):
        HotIndex(lab.hot.root).manifest()


# ---- snapshots, rollback, garbage collection ---------------------------------------------------------


def test_switch_rolls_back_to_an_older_generation(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 2), ("b", 1, 2)])
    lab.commit([s1], st1)
    s2, st2 = lab.segment([("a", 2, 2), ("c", 1, 1)])
    lab.commit([s2], st2)
    lab.commit([], [DocState("b", 2, DELETED)])
    lab.assert_search_matches({"a": s2.segment_id, "c": s2.segment_id})

    rolled = lab.hot.store.switch(1)
    assert rolled.generation == 1 and lab.hot.manifest().generation == 1
    assert (lab.hot.docs()["a"].version, lab.hot.docs()["b"].status) == (1, CANONICAL)
    assert "c" not in lab.hot.docs()
    lab.assert_search_matches({"a": s1.segment_id, "b": s1.segment_id})
    # A fresh process sees the same rollback.
    assert HotIndex(lab.hot.root).manifest().generation == 1

    lab.hot.store.switch(3)
    lab.assert_search_matches({"a": s2.segment_id, "c": s2.segment_id})
    with pytest.raises(IndexCorrupt):
        lab.hot.store.switch(99)
    assert lab.hot.manifest().generation == 3


def referenced_files(manifest: Manifest) -> list[str]:
    names = [manifest.docs_file] if manifest.docs_file else []
    for seg in manifest.segments:
        names += [f"segments/{seg.info.segment_id}/{name}" for name in seg.info.files]
        if seg.tombstones:
            names.append(seg.tombstones)
    return names


def test_collect_garbage_removes_only_unreferenced_files(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 2), ("b", 1, 2)])
    lab.commit([s1], st1)  # g1
    s2, st2 = lab.segment([("a", 2, 2)])
    lab.commit([s2], st2)  # g2 (tombstones in s1)
    lab.commit([], [DocState("b", 2, DELETED)])  # g3: s1 fully deleted, leaves the manifest
    s3, st3 = lab.segment([("c", 1, 3)])
    lab.commit([s3], st3)  # g4
    s4, st4 = lab.segment([("d", 1, 1)])
    lab.commit([s4], st4)  # g5
    orphan, _ = lab.segment([("zzz", 1, 2)])  # written, never committed (a crashed writer)
    root = lab.hot.root
    staged = root / "staging" / "resolved-run-crashed.pickle"  # a crashed run's settled states
    staged.parent.mkdir()
    staged.write_bytes(b"\x80\x05]\x94.")

    # Young orphans survive the default age guard; a running pipeline may be about to commit them.
    removed = lab.hot.collect_garbage(keep_generations=5)
    assert (root / "segments" / orphan.segment_id).exists() and staged.exists()
    assert lab.hot.store.generations() == [1, 2, 3, 4, 5]
    assert not [p for p in removed if p.parent.name in ("segments", "manifests", "docs")]

    removed = lab.hot.collect_garbage(keep_generations=2, min_age_s=0)
    assert lab.hot.store.generations() == [4, 5]
    kept = [lab.hot.store.load(lab.hot.store.file_name(g)) for g in (4, 5)]
    for manifest in kept:
        for name in referenced_files(manifest):
            assert (root / name).exists(), name
    for manifest in kept:  # every kept file still passes its checksum
        for seg in manifest.segments:
            for name, digest in seg.info.files.items():
                assert sha256_file(root / "segments" / seg.info.segment_id / name) == digest
    removed_rel = {str(p.relative_to(root)) for p in removed}
    assert f"segments/{orphan.segment_id}" in removed_rel
    assert "staging/resolved-run-crashed.pickle" in removed_rel and not staged.exists()
    assert f"segments/{s1.segment_id}" in removed_rel  # only named by generations 1-2
    assert {"manifests/manifest-000000001.json", "docs/docs-000000001.parquet"} <= removed_rel
    kept_rel = {n for m in kept for n in referenced_files(m)}
    assert not any(r == k or k.startswith(r + "/") for r in removed_rel for k in kept_rel)
    assert not (root / "segments" / orphan.segment_id).exists()
    lab.assert_search_matches({"a": s2.segment_id, "c": s3.segment_id, "d": s4.segment_id})
    lab.hot.store.switch(4)  # a kept snapshot is still whole
    lab.assert_search_matches({"a": s2.segment_id, "c": s3.segment_id})


def test_collect_garbage_after_rollback_keeps_the_current_manifest(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    first = None
    for version in range(1, 5):
        info, states = lab.segment([("a", version, 2)])
        lab.commit([info], states)
        first = first or info
    assert first is not None
    lab.hot.store.switch(1)
    lab.hot.collect_garbage(keep_generations=2, min_age_s=0)
    fresh = HotIndex(lab.hot.root)
    assert fresh.manifest().generation == 1
    lab.assert_search_matches({"a": first.segment_id})


def test_collect_garbage_never_removes_the_current_manifest(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 2)])
    lab.commit([s1], st1)
    lab.hot.collect_garbage(keep_generations=0, min_age_s=0)
    assert HotIndex(lab.hot.root).manifest().generation == 1


def test_commit_after_rollback_leaves_kept_snapshots_intact(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 2), ("b", 1, 2)])
    lab.commit([s1], st1)  # g1
    lab.commit([], [DocState("a", 2, DELETED)])  # g2: tombstones for s1
    s2, st2 = lab.segment([("c", 1, 1)])
    lab.commit([s2], st2)  # g3: s1 keeps g2's tombstone file
    at_g3 = {s1.segment_id: set(doc_vector_ids("b", 2)), s2.segment_id: set(doc_vector_ids("c", 1))}
    assert visible_ids(lab.hot) == at_g3  # this process has served generation 3
    lab.hot.store.switch(1)
    lab.commit([], [DocState("b", 2, DELETED)])  # a new commit on top of the rollback
    problems = []
    if visible_ids(lab.hot) != {s1.segment_id: set(doc_vector_ids("a", 2))}:
        problems.append("the writer's own view of the new state is wrong")
    lab.hot.store.switch(3)
    snapshot = visible_ids(HotIndex(lab.hot.root))
    if snapshot != at_g3:
        problems.append("kept snapshot 3 changed content")
    assert not problems, problems


# ---- HNSW --------------------------------------------------------------------------------------------


def test_hnsw_recall_and_tombstones(tmp_path: Path) -> None:
    rng = np.random.default_rng(42)
    dim, n_docs, per_doc, k = 64, 500, 10, 10
    vectors = {f"d{i:03d}": unit(rng, per_doc, dim) for i in range(n_docs)}
    docs = [(d, 1, per_doc) for d in vectors]
    flat = Lab(tmp_path / "flat", dim=dim, spec=FLAT)
    hnsw = Lab(tmp_path / "hnsw", dim=dim, spec=HNSW)
    fs, fst = flat.segment(docs, vectors=vectors)
    hs, hst = hnsw.segment(docs, vectors=vectors)
    flat.commit([fs], fst)
    hnsw.commit([hs], hst)
    assert IndexSpec.from_dict(hnsw.hot.manifest().segments[0].info.index).type == "hnsw"
    queries = unit(rng, 100, dim)

    def recall(lab: Lab, seg_id: str, live: list[str]) -> float:
        got = lab.hot.search(queries, k)
        want = lab.brute(queries, {d: seg_id for d in live}, k)
        return float(
            np.mean(
                [
                    len({h.vector_id for h in g} & {i for i, _, _ in w}) / k
                    for g, w in zip(got, want, strict=True)
                ]
            )
        )

    assert recall(flat, fs.segment_id, list(vectors)) == 1.0  # flat is exact
    assert recall(hnsw, hs.segment_id, list(vectors)) >= 0.95

    # Delete every other document: the selector must keep them out of HNSW results, and k stays full.
    deleted = [d for i, d in enumerate(vectors) if i % 2 == 0]
    hnsw.commit([], [DocState(d, 2, DELETED) for d in deleted])
    dead = {vid for d in deleted for vid in doc_vector_ids(d, per_doc)}
    got = hnsw.hot.search(queries, k)
    assert all(len(hits) == k for hits in got)
    assert not {h.vector_id for hits in got for h in hits} & dead
    live = [d for d in vectors if d not in set(deleted)]
    assert recall(hnsw, hs.segment_id, live) >= 0.95


# ---- crash consistency -------------------------------------------------------------------------------

CHILD = r"""
import random, sys
from pathlib import Path
import numpy as np
from indexing.docs_table import DocState
from indexing.faiss_index import IndexSpec
from indexing.hot import CommitRequest, HotIndex
from indexing.segment import write_segment
from tierflow.records import chunk_id, vector_id

root, seed = Path(sys.argv[1]), int(sys.argv[2])
rnd, rng = random.Random(seed), np.random.default_rng(seed)
hot, spec, dim = HotIndex(root), IndexSpec(use_gpu="never"), 16
doc_ids = [f"doc{i:02d}" for i in range(24)]
print("ready", flush=True)
while True:
    docs = hot.docs()
    rows, blocks, updates, new = [], [], [], []
    for d in rnd.sample(doc_ids, rnd.randint(1, 5)):
        cur = docs.get(d)
        ver = cur.version if cur else 0
        r = rnd.random()
        if cur is not None and r < 0.2:
            updates.append(DocState(d, ver + 1, "deleted"))
            continue
        version = max(ver - 1, 0) if (cur is not None and r < 0.35) else ver + 1  # some stale upserts
        n = rnd.randint(1, 3)
        x = rng.standard_normal((n, dim)).astype(np.float32)
        blocks.append(x / np.linalg.norm(x, axis=1, keepdims=True))
        rows += [dict(vector_id=vector_id(chunk_id(d, i)), chunk_id=chunk_id(d, i), doc_id=d, ordinal=i,
                      text=f"{d}/{version}/{i}", content_hash=f"{d}-{version}-{rnd.random()}", lineage="{}")
                 for i in range(n)]
        new.append((d, version, n))
    segments = []
    if rows:
        info = write_segment(hot.segments_dir, rows, np.vstack(blocks), spec)
        segments.append(info)
        updates += [DocState(d, v, "canonical", content_hash=f"{d}-{v}-{rnd.random()}", segment_id=info.segment_id,
                             n_chunks=n) for d, v, n in new]
    result = hot.commit(CommitRequest("crash", segments, updates, embedding={"name": "crash", "dim": dim}))
    print("committed", result.generation, flush=True)
    if rnd.random() < 0.1:
        print("committed", hot.compact().generation, flush=True)
    if rnd.random() < 0.05:
        hot.collect_garbage(keep_generations=3, min_age_s=0)
"""


def check_consistent(root: Path, rng: np.random.Generator) -> Manifest:
    hot = HotIndex(root)
    manifest = hot.manifest()
    assert hot.store.load(hot.store.file_name(manifest.generation)).generation == manifest.generation
    visible: dict[str, set[int]] = {}
    for live in manifest.segments:
        seg_dir = hot.segments_dir / live.info.segment_id
        for name, digest in live.info.files.items():
            assert sha256_file(seg_dir / name) == digest, f"{seg_dir / name} fails its checksum"
        reader = hot.reader(live.info)
        assert reader.index.ntotal == live.info.n_vectors
        tomb = set(hot.tombstones(live).tolist())
        assert len(tomb) == live.n_deleted
        stored = reader.chunks.column("vector_id").to_pylist()
        assert len(stored) == live.info.n_vectors
        visible[live.info.segment_id] = set(stored) - tomb
    expected: dict[str, set[int]] = {seg_id: set() for seg_id in visible}
    for state in hot.docs(manifest).values():
        if state.status != CANONICAL:
            continue
        assert state.segment_id in visible, f"{state.doc_id} points at a segment the manifest lacks"
        ids = set(doc_vector_ids(state.doc_id, state.n_chunks))
        assert ids <= visible[state.segment_id], f"{state.doc_id} has vectors that are not live"
        expected[state.segment_id] |= ids
    assert visible == expected, "live vectors that belong to no canonical document"
    total = sum(len(v) for v in visible.values())
    assert manifest.n_vectors == total
    hits = hot.search(unit(rng, 3, 16), 5)
    all_live = set().union(*visible.values()) if visible else set()
    for row in hits:
        assert len(row) == min(5, total)
        assert {h.vector_id for h in row} <= all_live
    return manifest


def test_sigkill_during_commits_leaves_a_consistent_index(tmp_path: Path) -> None:
    root = tmp_path / "hot"
    schedule = random.Random(1234)
    rng = np.random.default_rng(5)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    last_acked = 0
    commits_seen = 0
    for attempt in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), str(attempt)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            # The kill comes at a random point after the child's first commit: on a loaded machine a
            # fixed delay after start-up could land before any commit in every attempt.
            first = proc.stdout.readline()
            assert first.startswith("committed"), first
            time.sleep(schedule.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, err
        lines = [first, *out.splitlines()]
        acked = [int(line.split()[1]) for line in lines if line.startswith("committed")]
        commits_seen += len(acked)
        if acked:
            last_acked = max(acked)
        manifest = check_consistent(root, rng)
        # Durable before acknowledged: a commit that returned is never lost.
        assert manifest.generation >= last_acked
    assert commits_seen >= 5, "the child never got to commit; the test exercised nothing"


def test_a_long_lived_index_drops_readers_of_retired_segments(tmp_path: Path) -> None:
    from lifecycle.synthetic import build_synthetic_index

    build_synthetic_index(tmp_path / "hot", 300, 1, 16, segment_docs=100)
    index = HotIndex(tmp_path / "hot")
    old = index.manifest()
    for live in old.segments:
        index.reader(live).index  # noqa: B018 - open each segment, as searches do
    assert len(index._readers) == 3
    HotIndex(tmp_path / "hot").compact()  # another process retires the three segments
    current = index.manifest()
    assert set(index._readers) <= {live.info.segment_id for live in current.segments}
    assert len(index.search(np.ones((1, 16), np.float32), 5)[0]) == 5
    assert set(index._readers) == {live.info.segment_id for live in current.segments}


def test_a_renewal_applies_onto_the_state_as_committed_now(tmp_path: Path) -> None:
    """A newer version of unchanged content keeps the vectors where they are when it commits, even if a
    compaction (or lifecycle move) relocated them after the pipeline read the document."""
    from dataclasses import replace

    from indexing.docs_table import DELETED, RENEWAL
    from lifecycle.synthetic import build_synthetic_index, doc_name
    from tests.helpers import assert_exactly_once

    root = tmp_path / "hot"
    build_synthetic_index(root, 200, 1, 16, segment_docs=100)
    index = HotIndex(root)
    read = index.docs()[doc_name(1)]  # what a pipeline read before the compaction
    index.commit(
        CommitRequest("deletes", updates=[DocState(doc_name(i), 9, DELETED) for i in range(0, 200, 2)])
    )
    index.compact()
    moved = index.docs()[doc_name(1)]
    assert moved.segment_id != read.segment_id
    renewal = replace(read, version=read.version + 5, metadata='{"team": "blue"}', extra={RENEWAL: True})
    result = index.commit(CommitRequest("renew", updates=[renewal]))
    state = HotIndex(root).docs()[doc_name(1)]
    assert result.applied == 1 and result.tombstoned == 0
    assert (state.version, state.metadata, state.segment_id) == (
        read.version + 5,
        '{"team": "blue"}',
        moved.segment_id,
    )
    assert_exactly_once(root, None)
    stale = index.commit(
        CommitRequest("again", updates=[renewal])
    )  # a replay, or a renewal of deleted content
    gone = index.commit(
        CommitRequest("gone", updates=[replace(index.docs()[doc_name(0)], version=50, extra={RENEWAL: True})])
    )
    assert (stale.applied, stale.stale, gone.applied, gone.stale) == (0, 1, 0, 1)
