"""Search results read their lineage, metadata and duplicates when first read (issue 8): the values are those
of the manifest searched, whatever is committed later; each result owns its copies; copies, pickles,
``to_dict`` and ``==`` see the values. FAISS is called without its Python wrapper, with the same checks.
"""

from __future__ import annotations

import copy
import json
import pickle
from dataclasses import fields, replace
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexing.docs_table import CANONICAL, DELETED, DUPLICATE, DocState
from indexing.faiss_index import IndexSpec, PreparedSearch
from indexing.hot import CommitRequest, HotIndex
from indexing.search import Searcher, SearchResult
from indexing.segment import write_segment
from tests.helpers import chunk_row
from tierflow.config import EmbeddingConfig

DIM = 8
EMBEDDING = {"name": "random-unit", "dim": DIM}


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def commit(index: HotIndex, vectors: np.ndarray, version: int, metadata: dict[str, str]) -> None:
    """One segment of one-chunk documents d0, d1, ... (all with ``metadata``) at ``version``."""
    docs = [f"d{i}" for i in range(len(vectors))]
    rows = [chunk_row(d, 0, version, f"{d}-{version}", {"v": version}) for d in docs]
    info = write_segment(index.segments_dir, rows, vectors, IndexSpec(type="flat", use_gpu="never"))
    states = [
        DocState(
            d,
            version,
            CANONICAL,
            content_hash=f"{d}-{version}",
            segment_id=info.segment_id,
            n_chunks=1,
            metadata=json.dumps(metadata),
        )
        for d in docs
    ]
    index.commit(CommitRequest("test", segments=[info], updates=states, embedding=EMBEDDING))


@pytest.fixture
def searched(tmp_path: Path) -> tuple[HotIndex, Searcher, np.ndarray]:
    vectors = unit(12)
    index = HotIndex(tmp_path / "hot")
    commit(index, vectors, 1, {"lang": "en"})
    index.commit(CommitRequest("dups", updates=[DocState("x0", 1, DUPLICATE, canonical_id="d0")]))
    return index, Searcher(index, EmbeddingConfig()), vectors


def test_results_keep_the_values_of_the_manifest_searched(
    searched: tuple[HotIndex, Searcher, np.ndarray],
) -> None:
    index, searcher, vectors = searched
    [before] = searcher.search_vectors(vectors[:1], 3)  # nothing of it read yet
    assert before[0].doc_id == "d0"

    commit(index, vectors, 2, {"lang": "de"})  # new text, lineage and metadata for every document
    dups = [DocState("x0", 2, DELETED), DocState("x1", 1, DUPLICATE, canonical_id="d0")]
    index.commit(CommitRequest("dups", updates=dups))
    [after] = searcher.search_vectors(vectors[:1], 3)

    assert (before[0].text, before[0].lineage, before[0].metadata, before[0].duplicates) == (
        "d0 v1 chunk 0",
        {"v": 1},
        {"lang": "en"},
        ["x0"],
    )
    assert (after[0].text, after[0].lineage, after[0].metadata, after[0].duplicates) == (
        "d0 v2 chunk 0",
        {"v": 2},
        {"lang": "de"},
        ["x1"],
    )
    assert [r.metadata for r in before[1:]] == [{"lang": "en"}] * 2
    assert [r.duplicates for r in before[1:]] == [[], []]


def test_each_result_owns_its_lineage_metadata_and_duplicates(
    searched: tuple[HotIndex, Searcher, np.ndarray],
) -> None:
    _, searcher, vectors = searched
    [first] = searcher.search_vectors(vectors[:1], 2)
    first[0].duplicates.append("changed")
    first[0].metadata["lang"] = "changed"
    first[0].lineage["v"] = "changed"
    first[1].metadata["lang"] = "changed"  # documents without their own metadata share nothing either
    [again] = searcher.search_vectors(vectors[:1], 2)
    assert (again[0].duplicates, again[0].metadata, again[0].lineage) == (["x0"], {"lang": "en"}, {"v": 1})
    assert again[1].metadata == {"lang": "en"}


def test_copies_pickles_and_dicts_carry_the_values(searched: tuple[HotIndex, Searcher, np.ndarray]) -> None:
    _, searcher, vectors = searched
    [[result, *_]] = searcher.search_vectors(vectors[:1], 3)
    values = {
        "doc_id": "d0",
        "score": result.score,
        "text": "d0 v1 chunk 0",
        "chunk_id": result.chunk_id,
        "vector_id": result.vector_id,
        "tier": "hot",
        "lineage": {"v": 1},
        "duplicates": ["x0"],
        "metadata": {"lang": "en"},
    }
    for made in (
        copy.copy(result),
        copy.deepcopy(result),
        pickle.loads(pickle.dumps(result)),
        replace(result),
        SearchResult(**values),
    ):
        assert made == result and made.to_dict() == values == result.to_dict()
    assert {f.name for f in fields(SearchResult)} == set(values)
    assert len(pickle.dumps(result)) < 1000  # the values, not the document table they were read from
    assert result != replace(result, metadata={"lang": "de"})
    assert "metadata={'lang': 'en'}" in repr(result)


def test_constructed_results_start_with_their_own_empty_duplicates_and_metadata() -> None:
    a = SearchResult("a", 1.0, "t", "c", 1, "hot", {"k": 1})
    b = SearchResult("b", 1.0, "t", "c", 2, "hot", '{"k": 2}')  # type: ignore[arg-type]  # JSON text parses
    a.duplicates.append("x")
    a.metadata["m"] = 1
    assert (b.duplicates, b.metadata, b.lineage) == ([], {}, {"k": 2})
    assert a.to_dict()["duplicates"] == ["x"] and a.to_dict()["metadata"] == {"m": 1}
    with pytest.raises(TypeError):
        SearchResult("a", 1.0, "t", "c", 1, "hot")  # type: ignore[call-arg]  # lineage is required


def test_prepared_search_checks_what_faiss_python_search_checks() -> None:
    vectors = unit(40, seed=1)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    index.add_with_ids(vectors, np.arange(40, dtype=np.int64) * 3)
    prepared = PreparedSearch(index, "flat", 16)
    want_scores, want_ids = index.search(vectors[:5], 4)
    for queries in (vectors[:5], vectors[:5].astype(np.float64), np.asfortranarray(vectors[:5])):
        scores, ids = prepared.search(queries, 4, ids=True)
        assert np.array_equal(ids, want_ids) and np.allclose(scores, want_scores)
    with pytest.raises(ValueError, match="shape"):
        prepared.search(vectors[:5, :4], 4)
    with pytest.raises(ValueError, match="shape"):
        prepared.search(vectors[0], 4)
    assert prepared.search(vectors[:0], 4)[1].shape == (0, 4)
