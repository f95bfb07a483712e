"""The hot-search benchmark runs end to end at a small size and reports what must hold whatever the timings
(latencies and ratios are not asserted: the machine is shared and noisy, benchmarks report, tests check
behaviour)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexing.bench_search import (
    BARE,
    EF_SWEEP,
    SIDES,
    TIERFLOW,
    WARM,
    Sides,
    at_ef_search,
    bench_search,
    main,
)
from indexing.exact import exact_top_k
from indexing.faiss_index import IndexSpec
from indexing.hot import HotIndex
from indexing.search import CHUNK_FANOUT
from lifecycle.bench import make_queries, recall_at_k
from lifecycle.synthetic import build_synthetic_index, clustered_vectors


def test_bench_search_reports_recall_latency_and_agreement(tmp_path: Path) -> None:
    lines: list[str] = []
    report = bench_search(5000, tmp_path, dim=64, queries=40, rounds=2, progress=lines.append)

    for name in ("bench-search.json", "bench-search.md", "bench-search.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert not (tmp_path / "work-search").exists()  # the index is removed
    written = json.loads((tmp_path / "bench-search.json").read_text())
    assert written["benchmark"] == "search" and written["runs"] == {"5000": report}
    assert (tmp_path / "bench-search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "bench-search.md").read_text()
    assert "| 5,000 | " in markdown and "Recall@10" in markdown
    assert any(line.startswith("efSearch sweep") for line in lines) and len(lines) >= 20

    assert (report["vectors"], report["dim"], report["queries"], report["k"]) == (5000, 64, 40, 10)
    assert report["index"] == {"type": "hnsw", "M": 32, "ef_construction": 100, "segments": 1}
    assert [row["ef_search"] for row in report["sweep"]] == list(EF_SWEEP)
    for row in report["sweep"]:
        assert row["tierflow_ef_search"] == max(row["ef_search"], 10 * CHUNK_FANOUT)
        assert set(row["recall_at_10"]) == set(SIDES) and all(
            0 <= r <= 1 for r in row["recall_at_10"].values()
        )
        # The same index at the same efSearch finds the same vectors, however it is stored.
        assert row["recall_at_10"][TIERFLOW] == row["recall_at_10"][WARM]
        if row["ef_search"] == row["tierflow_ef_search"]:
            assert row["recall_at_10"][TIERFLOW] == row["recall_at_10"][BARE]
    assert report["sweep"][-1]["recall_at_10"][BARE] >= 0.99  # efSearch 512 over 5,000 vectors: ~exact

    # The chosen efSearch is the smallest searched alike by both sides at which both reach the target.
    ef = report["ef_search"]
    assert report["target_recall_met"] and ef >= 10 * CHUNK_FANOUT
    chosen = next(row for row in report["sweep"] if row["ef_search"] == ef)
    assert report["recall_at_10"][TIERFLOW] == report["recall_at_10"][BARE] >= 0.95
    assert chosen["recall_at_10"][TIERFLOW] == report["recall_at_10"][TIERFLOW]
    # Both sides return the same ids, in the same order, with the same scores.
    assert report["agreement"]["same_ids"] == report["agreement"]["same_order"] == 1.0
    assert report["agreement"]["max_score_gap"] < 1e-6

    single = report["single"]
    for side in SIDES:
        latency = single["latency_ms"][side]
        assert 0 < latency["p50_ms"] <= latency["p99_ms"] and latency["qps"] > 0
        assert report["batched"]["qps"][side] > 0
        assert report["load"][side]["seconds"] > 0
    assert len(single["ratio"]["qps_rounds"]) == 2 and single["ratio"]["qps"] > 0
    default = report["single_default_threads"]
    assert set(default["latency_ms"]) == {TIERFLOW, BARE} and default["ratio"]["qps"] > 0
    assert report["acceptance_met"] == (single["ratio"]["qps"] >= 0.8)


def test_sides_agree_with_an_exact_search(tmp_path: Path) -> None:
    """Recall is computed against brute force: at an efSearch covering the whole index every side finds
    exactly the exact top 10, and the recall of a known miss is counted right."""
    stored = build_synthetic_index(
        tmp_path / "hot", 300, 1, 16, 3, segment_docs=300, spec=IndexSpec(type="hnsw")
    )
    ids = np.fromiter(stored, dtype=np.int64)
    matrix = np.stack(list(stored.values()))
    queries = make_queries(matrix, np.arange(0, 300, 15), 4)
    exact = exact_top_k(queries, matrix, ids, 10)
    assert np.array_equal(matrix, clustered_vectors(300, 16, 3))  # one chunk per document, in order

    sides = Sides(tmp_path / "hot")
    sides.set_ef_search(400)
    for side in SIDES:
        found = sides.search(side)(queries)
        assert recall_at_k(found, exact) == 1.0, side
        assert [sorted(f) for f in found] == [sorted(e.tolist()) for e in exact], side
    missed = [[*e.tolist()[:9], -1] for e in exact]
    assert recall_at_k(missed, exact) == pytest.approx(0.9)


def test_at_ef_search_changes_only_the_search_setting(tmp_path: Path) -> None:
    build_synthetic_index(
        tmp_path / "hot", 50, 1, 8, segment_docs=50, spec=IndexSpec(type="hnsw", ef_search=77)
    )
    committed = HotIndex(tmp_path / "hot").manifest()
    tuned = at_ef_search(committed, 33)
    assert tuned.segments[0].info.index == {**committed.segments[0].info.index, "ef_search": 33}
    assert committed.segments[0].info.index["ef_search"] == 77  # the committed manifest is left as it is
    assert (tuned.generation, tuned.docs_file) == (committed.generation, committed.docs_file)


def test_main_runs_each_size_into_one_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--queries", "4", "--rounds", "1", "--dim", "16", "--out", str(tmp_path)]
    assert main(["--vectors", "300", "--vectors", "400", *args]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"300", "400"}
    assert main(["--vectors", "300", *args]) == 0  # a new run of a size replaces that size only
    runs = json.loads((tmp_path / "bench-search.json").read_text())["runs"]
    assert list(runs) == ["300", "400"]
    table = (tmp_path / "bench-search.md").read_text()
    assert "| 300 | " in table and "| 400 | " in table
