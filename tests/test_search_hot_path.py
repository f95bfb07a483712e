"""Document search over the hot tier answers exactly what the plain algorithm answers, whatever its caches
and shortcuts (issue 8): chunk rows kept per segment, FAISS searches prepared once, the manifest checked
with one ``stat``, the k + 1 first chunks that settle most queries, lineage parsed when read.

The oracle is the plain algorithm written out here over the public chunk API (``HotIndex.search`` and
``chunk_rows``): ``k`` × CHUNK_FANOUT chunks per query, each document ranked by its best chunk, ties by
document id, filtered searches fetching more until ``k`` documents match.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import indexing.hot as hot_module
import indexing.search as search_module
from indexing.docs_table import CANONICAL, DELETED, DUPLICATE, DocState
from indexing.durable import sha256_file
from indexing.faiss_index import IndexSpec, PreparedSearch
from indexing.hot import CommitRequest, HotIndex
from indexing.manifest import CURRENT, MMAP
from indexing.search import (
    CHUNK_FANOUT,
    FILTER_GROWTH,
    FILTER_MAX_CHUNKS,
    MetadataFilter,
    Searcher,
    SearchResult,
    metadata_matches,
)
from indexing.segment import CHUNKS_FILE, SegmentReader, write_segment
from tests.helpers import chunk_row
from tierflow.config import EmbeddingConfig
from tierflow.records import vector_id

DIM = 16
FLAT = IndexSpec(type="flat", use_gpu="never")
HNSW = IndexSpec(type="hnsw", use_gpu="never", ef_search=32)
EMBEDDING = {"name": "random-unit", "dim": DIM}


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_docs(
    index: HotIndex,
    docs: list[tuple[str, np.ndarray]],
    spec: IndexSpec = FLAT,
    version: int = 1,
    metadata: Any = None,
) -> list[DocState]:
    """Commit one segment holding ``docs`` as (doc_id, its chunk vectors); returns their states."""
    rows, states = [], []
    for doc_id, block in docs:
        for i in range(len(block)):
            lineage = {"doc": doc_id, "chunk": i, "source": {"position": [version, i]}}
            rows.append(chunk_row(doc_id, i, version, f"{doc_id}-{version}-{i}", lineage))
    info = write_segment(index.segments_dir, rows, np.vstack([block for _, block in docs]), spec)
    for doc_id, block in docs:
        meta = metadata(doc_id) if metadata else {}
        states.append(
            DocState(
                doc_id,
                version,
                CANONICAL,
                content_hash=f"{doc_id}-{version}",
                segment_id=info.segment_id,
                n_chunks=len(block),
                metadata=json.dumps(meta),
            )
        )
    index.commit(CommitRequest("test", segments=[info], updates=states, embedding=EMBEDDING))
    return states


def expected(
    index: HotIndex, queries: np.ndarray, k: int, where: MetadataFilter | None = None
) -> list[list[dict[str, Any]]]:
    """The plain algorithm over the public chunk API, as result dicts."""
    manifest = index.manifest()
    docs = index.docs(manifest)
    linked: dict[str, list[str]] = {}
    for state in docs.values():
        if state.status == DUPLICATE and state.canonical_id:
            linked.setdefault(state.canonical_id, []).append(state.doc_id)
    out = []
    for query in queries:
        fetch = k * CHUNK_FANOUT
        while True:
            hits = index.search(query[None], fetch, manifest)[0] if k > 0 else []
            rows = index.chunk_rows(hits, manifest)
            best: dict[str, tuple[Any, dict[str, Any]]] = {}
            for hit, row in zip(hits, rows, strict=True):
                meta = json.loads(docs[row["doc_id"]].metadata or "{}")
                if row["doc_id"] not in best and (not where or metadata_matches(meta, where)):
                    best[row["doc_id"]] = (hit, row)
            if not where or len(best) >= k or len(hits) < fetch or fetch >= FILTER_MAX_CHUNKS:
                break
            fetch = min(fetch * FILTER_GROWTH, FILTER_MAX_CHUNKS)
        ranked = sorted(best.items(), key=lambda item: (-item[1][0].score, item[0]))[:k]
        out.append(
            [
                {
                    "doc_id": doc_id,
                    "score": hit.score,
                    "text": row["text"],
                    "chunk_id": row["chunk_id"],
                    "vector_id": hit.vector_id,
                    "tier": hit.tier,
                    "lineage": json.loads(row["lineage"]),
                    "duplicates": sorted(linked.get(doc_id, [])),
                    "metadata": json.loads(docs[doc_id].metadata or "{}"),
                }
                for doc_id, (hit, row) in ranked
            ]
        )
    return out


def found(searcher: Searcher, queries: np.ndarray, k: int, **kw: Any) -> list[list[dict[str, Any]]]:
    return [[r.to_dict() for r in results] for results in searcher.search_vectors(queries, k, **kw)]


def near(vectors: np.ndarray, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    """Queries close to ``vectors`` (so that results are not one tie)."""
    x = vectors + noise * rng.standard_normal(vectors.shape).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("segments", [1, 2])
def test_one_chunk_documents_are_answered_from_the_first_chunks_as_the_full_search_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, segments: int
) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 400)
    index = HotIndex(tmp_path / "hot")
    docs = [(f"d{i:03d}", vectors[i : i + 1]) for i in range(400)]
    for part in range(segments):
        write_docs(index, docs[part::segments], HNSW if part == 0 else FLAT)
    queries = near(vectors[:30], rng)
    fetched: list[int] = []
    original = search_module.search_segments

    def counted(searched: Any, batch: np.ndarray, k: int) -> Any:
        fetched.append(k)
        return original(searched, batch, k)

    monkeypatch.setattr(search_module, "search_segments", counted)
    searcher = Searcher(index, EmbeddingConfig())
    for k in (1, 5, 10):
        assert found(searcher, queries, k) == expected(index, queries, k)
        assert [found(searcher, q[None], k)[0] for q in queries[:5]] == expected(index, queries[:5], k)
        # Distinct documents, distinct scores: no query needed more than its k + 1 first chunks.
        assert set(fetched) <= {k + 1}
        fetched.clear()


def test_several_chunks_segments_tombstones_duplicates_and_filters_match_the_plain_search(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(2)
    index = HotIndex(tmp_path / "hot")

    def meta(doc_id: str) -> dict[str, Any]:
        i = int(doc_id[1:])
        return {"lang": ["en", "de", "fr"][i % 3], "tags": ["a", "b"] if i % 4 == 0 else "c"}

    blocks = {f"d{i:03d}": unit(rng, 1 + i % 3) for i in range(240)}
    names = sorted(blocks)
    write_docs(index, [(d, blocks[d]) for d in names[:120]], HNSW, metadata=meta)
    write_docs(index, [(d, blocks[d]) for d in names[120:]], FLAT, metadata=meta)
    index.commit(CommitRequest("deletes", updates=[DocState(d, 2, DELETED) for d in names[::9]]))
    dups = [DocState(f"x{d}", 1, DUPLICATE, canonical_id=d) for d in names[1::10]]
    index.commit(CommitRequest("dups", updates=dups))
    assert any(live.n_deleted for live in index.manifest().segments)

    queries = near(np.vstack([blocks[d][0] for d in names[::12]]), rng, 0.3)
    searcher = Searcher(index, EmbeddingConfig())
    for k in (0, 1, 4, 10, 30):
        assert found(searcher, queries, k) == expected(index, queries, k), k
        for where in ({"lang": "en"}, {"tags": "a"}, {"lang": ["de", "fr"], "tags": "c"}, {"nope": 1}):
            assert found(searcher, queries, k, where=where) == expected(index, queries, k, where), where
    deleted = {d for d in names[::9]}
    results = searcher.search_vectors(queries, 30)
    assert not {r.doc_id for found in results for r in found} & deleted
    assert any(r.duplicates for found in results for r in found)
    chunks = searcher.chunk_search(queries, 25)
    plain = index.search(queries, 25)
    assert [[(h.score, h.vector_id, h.tier) for h in hits] for hits in chunks] == [
        [(h.score, h.vector_id, h.tier) for h in hits] for hits in plain
    ]
    assert [[h.row for h in hits] for hits in chunks] == [index.chunk_rows(hits) for hits in plain]


def test_equal_scores_rank_by_vector_id_then_document_id(tmp_path: Path) -> None:
    """Documents whose chunks repeat the same few vectors: every query is a run of ties."""
    rng = np.random.default_rng(3)
    base = unit(rng, 6)
    index = HotIndex(tmp_path / "hot")
    write_docs(index, [(f"t{i:02d}", base[[i % 6]]) for i in range(30)])
    write_docs(index, [(f"u{i:02d}", base[[i % 6, (i + 1) % 6]]) for i in range(20)])
    searcher = Searcher(index, EmbeddingConfig())
    for k in (1, 3, 7, 40):
        assert found(searcher, base, k) == expected(index, base, k)
        assert found(searcher, base, k, where={}) == expected(index, base, k)


def test_a_long_lived_searcher_sees_every_commit(tmp_path: Path) -> None:
    """Segment caches hold immutable files only: what another process commits (a delete, whose
    vectors stay in the cached segment as tombstones, and a new version in a new segment) shows at once."""
    rng = np.random.default_rng(4)
    vectors = unit(rng, 60)
    index = HotIndex(tmp_path / "hot")
    write_docs(index, [(f"d{i:02d}", vectors[i : i + 1]) for i in range(60)])
    searcher = Searcher(index, EmbeddingConfig())
    queries = vectors[:6]
    before = searcher.search_vectors(queries, 3)
    assert [found[0].doc_id for found in before] == [f"d{i:02d}" for i in range(6)]

    other = HotIndex(tmp_path / "hot")  # another process
    other.commit(CommitRequest("delete", updates=[DocState("d00", 2, DELETED)]))
    write_docs(other, [("d01", vectors[1:2])], version=2, metadata=lambda _: {"v": 2})
    after = searcher.search_vectors(queries, 3)
    assert "d00" not in [r.doc_id for r in after[0]]
    assert (after[1][0].doc_id, after[1][0].text, after[1][0].metadata) == ("d01", "d01 v2 chunk 0", {"v": 2})
    assert found(searcher, queries, 3) == expected(HotIndex(tmp_path / "hot"), queries, 3)


def test_results_own_their_lineage_and_metadata(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    vectors = unit(rng, 20)
    index = HotIndex(tmp_path / "hot")
    write_docs(index, [(f"d{i:02d}", vectors[i : i + 1]) for i in range(20)], metadata=lambda d: {"d": d})
    searcher = Searcher(index, EmbeddingConfig())
    [first] = searcher.search_vectors(vectors[:1], 2)
    assert first[0].lineage == {"doc": "d00", "chunk": 0, "source": {"position": [1, 0]}}
    first[0].lineage["source"]["position"].append("changed")
    first[0].metadata["d"] = "changed"
    [again] = searcher.search_vectors(vectors[:1], 2)
    assert again[0].lineage == {"doc": "d00", "chunk": 0, "source": {"position": [1, 0]}}
    assert again[0].metadata == {"d": "d00"}
    assert again[0] == replace(again[0]) and again[0].to_dict()["lineage"] == again[0].lineage

    made = SearchResult("a", 1.0, "t", "c", 1, "hot", {"k": 1})  # the constructor takes a dict as ever
    assert made.lineage == {"k": 1} and made.to_dict()["lineage"] == {"k": 1}
    with pytest.raises(TypeError):
        SearchResult("a", 1.0, "t", "c", 1, "hot")  # type: ignore[call-arg]  # lineage is required


def test_memory_mapped_storage_returns_the_same_results_as_warm(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    vectors = unit(rng, 80)
    write_docs(HotIndex(tmp_path / "hot"), [(f"d{i:02d}", vectors[i : i + 1]) for i in range(80)], HNSW)
    queries = near(vectors[:10], rng)
    hot = found(Searcher(HotIndex(tmp_path / "hot"), EmbeddingConfig()), queries, 5)
    index = HotIndex(tmp_path / "hot")
    committed = index.manifest()
    warm = replace(committed, segments=[replace(live, storage=MMAP) for live in committed.segments])
    got = found(Searcher(index, EmbeddingConfig()), queries, 5, manifest=warm)
    assert got == [[{**r, "tier": "warm"} for r in results] for results in hot]
    assert index.reader(warm.segments[0]).mmap


def test_chunk_columns_are_the_chunk_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    index = HotIndex(tmp_path / "hot")
    write_docs(index, [(f"d{i:02d}", unit(rng, 2)) for i in range(10)])
    [live] = index.manifest().segments
    reader = index.reader(live)
    table = pq.read_table(index.segments_dir / live.info.segment_id / CHUNKS_FILE)
    columns = reader.columns
    assert [columns.row(i) for i in range(len(columns))] == table.to_pylist()
    ids = table.column("vector_id").to_pylist()
    assert reader.rows(ids[::-1]) == table.to_pylist()[::-1]
    assert columns.rows_of(np.array([ids[3], -1, ids[0]])).tolist() == [3, -1, 0]
    with pytest.raises(KeyError):
        reader.rows([12345])
    with pytest.raises(KeyError):
        columns.rows_of(np.array([12345]))
    assert reader.label_rows() is None  # write_segment adds vectors in row order


def test_a_chunk_table_in_another_order_than_the_index_still_maps_rows(tmp_path: Path) -> None:
    """Positions FAISS returns are mapped to rows through the vector ids when the two orders differ."""
    rng = np.random.default_rng(8)
    vectors = unit(rng, 12)
    index = HotIndex(tmp_path / "hot")
    write_docs(index, [(f"d{i:02d}", vectors[i : i + 1]) for i in range(12)])
    [live] = index.manifest().segments
    seg_dir = index.segments_dir / live.info.segment_id
    table = pq.read_table(seg_dir / CHUNKS_FILE)
    pq.write_table(table.take(pa.array(list(range(11, -1, -1)))), seg_dir / CHUNKS_FILE)
    info = replace(live.info, files={**live.info.files, CHUNKS_FILE: sha256_file(seg_dir / CHUNKS_FILE)})
    reader = SegmentReader(seg_dir, info)
    assert reader.label_rows() is not None and reader.label_rows().tolist() == list(range(11, -1, -1))

    manifest = index.manifest()
    index._readers[live.info.segment_id] = reader  # as if the segment had been written in this order
    searcher = Searcher(index, EmbeddingConfig())
    results = searcher.search_vectors(
        vectors[:4], 3, manifest=replace(manifest, segments=[replace(live, info=info)])
    )
    for i, found_ in enumerate(results):
        assert found_[0].doc_id == f"d{i:02d}" and found_[0].text == f"d{i:02d} v1 chunk 0"
        assert all(r.vector_id == vector_id(r.chunk_id) for r in found_)


def test_prepared_search_is_the_index_search(tmp_path: Path) -> None:
    import faiss

    rng = np.random.default_rng(9)
    index = HotIndex(tmp_path / "hot")
    write_docs(index, [(f"d{i:02d}", unit(rng, 1)) for i in range(50)], HNSW)
    [live] = index.manifest().segments
    faiss_index = index.reader(live).index
    queries = unit(rng, 4)
    prepared = PreparedSearch(faiss_index, "hnsw", 40)
    scores, positions = prepared.search(queries, 7)
    params = faiss.SearchParametersHNSW(efSearch=40)
    want_scores, want_ids = faiss_index.search(queries, 7, params=params)
    assert np.array_equal(scores, want_scores)
    assert prepared.id_map is not None and np.array_equal(prepared.id_map[positions], want_ids)
    assert np.array_equal(prepared.search(queries, 7, ids=True)[1], want_ids)
    assert prepared.search(queries, 0)[1].shape == (4, 0)


def test_the_manifest_is_checked_with_one_stat_once_the_pointer_has_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(10)
    vectors = unit(rng, 10)
    index = HotIndex(tmp_path / "hot")
    write_docs(index, [(f"d{i}", vectors[i : i + 1]) for i in range(5)])
    reads: list[int] = []
    original = HotIndex._current_key

    def counted(self: HotIndex) -> Any:
        if self is index:
            reads.append(1)
        return original(self)

    monkeypatch.setattr(HotIndex, "_current_key", counted)
    first = index.manifest()
    assert index.manifest() is first and len(reads) == 2  # a pointer just written is read every time

    monkeypatch.setattr(hot_module, "POINTER_SETTLED_NS", 0)  # as if it had been read long after written
    assert index.manifest() is first and index.manifest() is first and len(reads) == 2  # one stat each

    other = HotIndex(tmp_path / "hot")  # another process commits: CURRENT is replaced
    write_docs(other, [(f"d{i}", vectors[i : i + 1]) for i in range(5, 10)])
    current = index.manifest()
    assert current.generation == first.generation + 1 and len(reads) == 3
    shutil.copy(tmp_path / "hot" / CURRENT, tmp_path / "pointer")
    other.store.switch(first.generation)  # a rollback rewrites CURRENT too
    assert index.manifest().generation == first.generation
    os.replace(tmp_path / "pointer", tmp_path / "hot" / CURRENT)
    assert index.manifest().generation == current.generation
