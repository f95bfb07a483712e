"""The GPU check runs anywhere: on this CPU-only machine it measures the CPU side and reports each GPU check
as not run, with the reason; its agreement rule is unit-tested on constructed top-k lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexing.bench_gpu import agrees, main
from indexing.faiss_index import gpu_available
from tests.helpers import SCIFACT


def test_top_k_lists_agree_up_to_ties_only() -> None:
    ids, scores = np.array([1, 2, 3]), np.array([0.9, 0.8, 0.7], dtype=np.float32)
    assert agrees(ids, scores, ids, scores)
    # Two equal scores may come in either order, and the k-th place may go to either of a tie.
    tied = np.array([0.9, 0.8, 0.8], dtype=np.float32)
    assert agrees(np.array([1, 2, 3]), tied, np.array([1, 3, 2]), tied)
    assert agrees(np.array([1, 2, 3]), tied, np.array([1, 2, 4]), tied)
    # A different id above the tie, or different scores, is a disagreement.
    assert not agrees(ids, scores, np.array([4, 2, 3]), scores)
    assert not agrees(ids, scores, ids, scores + np.float32(0.01))


@pytest.mark.model
def test_runs_on_the_cpu_and_says_what_it_could_not_check(tmp_path: Path) -> None:
    if not SCIFACT.is_dir():
        pytest.skip(f"no SciFact at {SCIFACT}")
    import torch

    assert main(["--dataset", str(SCIFACT), "--limit", "8", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench-gpu.json").read_text())
    cpu = report["embedding"]["cpu_fp32"]
    assert cpu["device"] == "cpu" and cpu["precision"] == "fp32" and cpu["chunks"] == report["windows"] >= 8
    assert cpu["chunks_per_s"] > 0
    assert report["faiss"]["cpu"]["qps"] > 0 and report["faiss"]["cpu"]["build_s"] >= 0
    checks = report["checks"]
    if torch.cuda.is_available():
        assert checks["cuda_embedding"]["passed"] is True
    else:
        assert checks["cuda_embedding"] == {"passed": None, "why": "no CUDA device (torch sees none)"}
    if gpu_available():
        assert checks["gpu_search"]["passed"] is True
    else:
        assert checks["gpu_search"]["passed"] is None and "faiss-cpu" in checks["gpu_search"]["why"]
    assert "## Checks" in (tmp_path / "bench-gpu.md").read_text()


def test_a_missing_dataset_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "missing corpus.jsonl" in error and "expected layout" in error
    assert not (tmp_path / "out").exists()
