"""The lifecycle benchmark runs end to end at a small size and reports what must hold whatever the timings
(latencies are not asserted: the machine is shared and noisy, benchmarks report, tests check behaviour)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexing.exact import exact_top_k
from lifecycle.bench import SETUPS, bench_lifecycle, recall_at_k
from tierflow.cli import main


def test_bench_lifecycle_reports_latency_recall_and_moves(tmp_path: Path) -> None:
    lines: list[str] = []
    report = bench_lifecycle(4000, tmp_path, dim=64, queries=20, progress=lines.append)

    for name in ("bench-lifecycle.json", "bench-lifecycle.md", "bench-lifecycle.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert not (tmp_path / "work").exists()  # the index and cold tiers are removed
    assert json.loads((tmp_path / "bench-lifecycle.json").read_text()) == report
    assert (tmp_path / "bench-lifecycle.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Recall@10" in (tmp_path / "bench-lifecycle.md").read_text()
    assert any(line.startswith("lifecycle run") for line in lines) and len(lines) >= 10

    assert report["vectors"] == 4000 and report["documents"] == 2000 and report["queries"] == 20
    life = report["lifecycle"]
    assert life["plan"] == {"hot->cold": 1000} and life["applied"] == 1000
    assert life["moved"]["to_cold_vectors"] == 2000 == life["cold_vectors"] == life["hot_vectors"]
    assert life["moved"]["to_cold_bytes"] > 0 and life["cold_object_bytes"] > 0
    assert life["compacted"] and 0 < life["flash_bytes_after"] < life["flash_bytes_before"]
    assert report["cold_ivf_pq"]["rows"] == report["cold_ivf_pq"]["indexed_rows"] == 2000

    recall = report["recall_at_10"]
    assert set(recall) == set(SETUPS) and all(0.0 <= r <= 1.0 for r in recall.values())
    assert recall["hot_only"] == 1.0  # flat FAISS over float32 is exact
    assert recall["cold_flat_fp16"] >= 0.95 and recall["federated"] >= 0.95
    assert 0.0 < report["federated_cold_hit_share"] < 1.0  # queries come from both tiers
    for name in SETUPS:
        latency = report["latency_ms"][name]
        assert 0 < latency["p50_ms"] <= latency["p99_ms"] and latency["mean_ms"] > 0
    assert set(report["ratio_to_hot_only"]) == set(SETUPS) - {"hot_only"}


def test_exact_top_k_and_recall() -> None:
    matrix = np.eye(4, dtype=np.float32)
    ids = np.array([10, 11, 12, 13])
    queries = np.array([[0.1, 0.9, 0.5, 0.0], [1.0, 0.0, 0.0, 0.2]], dtype=np.float32)
    exact = exact_top_k(queries, matrix, ids, 2)
    assert exact.tolist() == [[11, 12], [10, 13]]
    assert recall_at_k([[11, 12], [10, 12]], exact) == pytest.approx(0.75)
    assert recall_at_k([[12, 11, 10], [13, 10]], exact) == 1.0


def test_cli_routes_bench_lifecycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "lifecycle", "--vectors", "400", "--queries", "4", "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["vectors"] == 400
    assert (tmp_path / "bench-lifecycle.md").exists()
