"""The crash-consistency harness (tests/harness/crash.py) in its short mode: a few seeded SIGKILLs of each
process kind. Release checks run it long: ``python -m tests.harness.crash --target all --runs 50``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness.crash import main, run_target


def _quiet(_: str) -> None:
    return None


@pytest.mark.parametrize(
    "target,runs",
    [
        ("compact", 4),
        ("lifecycle", 3),
        pytest.param("ingest", 2, marks=pytest.mark.model),
    ],
)
def test_sigkill_then_restart_keeps_every_invariant(target: str, runs: int, tmp_path: Path) -> None:
    result = run_target(target, runs, seed=20261129, workdir=tmp_path, say=_quiet)
    assert result["runs"] == runs
    assert result["violations"] == 0, result["failures"]
    assert result["documents_lost"] == 0 and result["orphans_after_gc"] == 0
    assert result["recoveries"] == runs


@pytest.mark.kafka
@pytest.mark.model
def test_sigkill_stream_while_producing_keeps_every_invariant(tmp_path: Path) -> None:
    out = tmp_path / "crash-stream.json"
    code = main(["--target", "stream", "--runs", "3", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    summary = json.loads(out.read_text())
    assert summary["runs"] == 3
    assert summary["violations"] == 0, summary["targets"][0]["failures"]
    assert summary["documents_lost"] == 0 and summary["orphans_after_gc"] == 0
    assert summary["kills_before_finish"] >= 1
    assert summary["messages_produced"] > 0 and summary["targets"][0]["documents_unsure"] == 0
    assert code == 0
