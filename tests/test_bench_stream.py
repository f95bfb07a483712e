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
