"""The freshness benchmark command runs end to end (a short run; figures are not asserted: the machine is
shared and noisy, benchmarks report, tests check behaviour)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierflow.cli import main

pytestmark = [pytest.mark.kafka, pytest.mark.model]


def test_bench_stream_reports_latency_percentiles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "stream", "--rate", "20", "--duration", "3", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench-stream.json").read_text())
    assert report["documents"] == 60 and report["missing"] == 0
    assert 0 < report["latency_s"]["p50"] <= report["latency_s"]["p99"] <= report["latency_s"]["max"]
    assert "p99" in (tmp_path / "bench-stream.md").read_text()


def test_bench_stream_curve_runs_each_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "stream", "--rates", "10,30", "--duration", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench-stream-curve.json").read_text())
    assert [p["rate_docs_per_s"] for p in report["points"]] == [10.0, 30.0]
    assert [p["documents"] for p in report["points"]] == [20, 60]
    assert all(p["missing"] == 0 and p["latency_s"]["p99"] > 0 for p in report["points"])
    table = (tmp_path / "bench-stream-curve.md").read_text()
    assert table.count("\n| 10 |") + table.count("\n| 30 |") == 2 and table in capsys.readouterr().out
    assert (tmp_path / "bench-stream-curve.png").stat().st_size > 10_000
