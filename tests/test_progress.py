"""Progress bars: on a terminal (or TIERFLOW_PROGRESS=1) long commands show them on stderr; off otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tierflow import progress

DEMO = REPO / "tierflow" / "demo_data" / "corpus.jsonl"


def test_bars_follow_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFLOW_PROGRESS", "0")
    assert progress.bar(10, "x").disable
    monkeypatch.setenv("TIERFLOW_PROGRESS", "1")
    assert not progress.bar(10, "x").disable
    monkeypatch.delenv("TIERFLOW_PROGRESS")
    assert progress.enabled() is None  # decided by whether stderr is a terminal


@pytest.mark.model
def test_ingest_and_lifecycle_show_progress_and_end_with_a_summary(tmp_path: Path) -> None:
    env = dict(os.environ, TIERFLOW_PROGRESS="1", HF_HUB_OFFLINE="1", TIERFLOW__LIFECYCLE__COLD_AFTER="0s")
    cli = [sys.executable, "-m", "tierflow.cli"]
    index = ["--index", str(tmp_path / "hot")]
    ingest = subprocess.run(
        [*cli, "ingest", str(DEMO), *index], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    assert "embed shard" in ingest.stderr and "chunk/s" in ingest.stderr and "100%" in ingest.stderr
    assert "committed generation" in ingest.stdout and "chunks_embedded" in ingest.stdout
    quiet = subprocess.run(
        [*cli, "ingest", str(DEMO), "--index", str(tmp_path / "other")],
        cwd=REPO, env=dict(env, TIERFLOW_PROGRESS="0"), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert quiet.returncode == 0 and "chunk/s" not in quiet.stderr
    moved = subprocess.run(
        [*cli, "lifecycle", "run", *index, "--cold", str(tmp_path / "cold")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert "copy to cold" in moved.stderr and "doc/s" in moved.stderr
    assert "cold" in moved.stdout
