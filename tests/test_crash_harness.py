"""The crash-consistency harness (tests/harness/crash.py) in its short mode: a few seeded SIGKILLs of each
process kind. Release checks run it long: ``python -m tests.harness.crash --target all --runs 50``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.crash import run_target


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
