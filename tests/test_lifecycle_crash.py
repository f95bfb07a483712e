"""kill -9 during a lifecycle run, then re-run: no vector lost or duplicated.

``tierflow lifecycle run`` is killed with SIGKILL at every step of a run (named failure points: mid-copy,
after the copy, after verification, before and after the commit, after compaction) and at seeded random
times. After each kill every canonical document's vectors are findable exactly once, the documents are
either all where they were or all where the plan put them, and a re-run finishes the job and leaves no
cold rows that no manifest names.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexing.cold import ColdConfig, ColdStore
from indexing.hot import COLD, HOT, WARM, HotIndex, tier_of
from lifecycle.run import JOURNAL
from lifecycle.synthetic import build_synthetic_index
from tests.helpers import REPO, assert_exactly_once

DAY = 86400.0
DOCS = 6_300  # 2,100 documents go cold: more than one copy chunk (lifecycle.run.COPY_DOCS)
POINTS = (
    "lifecycle.copying",
    "lifecycle.copied",
    "lifecycle.verified",
    "lifecycle.before_commit",
    "lifecycle.committed",
    "lifecycle.compacted",
)
RANDOM_KILLS = 4


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A third of the documents is 60 days old (-> cold), a third 10 days (-> warm), a third fresh."""
    root = tmp_path_factory.mktemp("lifecycle-crash") / "hot"
    now = time.time()
    ages = (60 * DAY, 10 * DAY, 0.0)
    build_synthetic_index(root, DOCS, 1, 16, ingest_time=lambda i: now - ages[i % 3], segment_docs=2_500)
    return root


def _tiers(root: Path) -> dict[str, str]:
    index = HotIndex(root)
    manifest = index.manifest()
    storage = {live.info.segment_id: live.storage for live in manifest.segments}
    return {d: tier_of(s, storage) or s.status for d, s in index.docs(manifest).items()}


def _run(root: Path, cold: Path, failpoint: str | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ, TIERFLOW__LIFECYCLE__WARM_AFTER="7d", TIERFLOW__LIFECYCLE__COLD_AFTER="30d")
    env.pop("TIERFLOW_FAILPOINTS", None)
    if failpoint:
        env["TIERFLOW_FAILPOINTS"] = f"{failpoint}=kill"
    command = [
        sys.executable,
        "-m",
        "tierflow.cli",
        "lifecycle",
        "run",
        "--index",
        str(root),
        "--cold",
        str(cold),
    ]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _expected(before: dict[str, str]) -> dict[str, str]:
    """Where the plan puts every document: by age, the third it belongs to."""
    return {d: (COLD, WARM, HOT)[int(d.split("-")[1]) % 3] for d in before}


def _check_after_kill(root: Path, cold: Path, before: dict[str, str], what: str) -> str:
    config = ColdConfig(uri=str(cold))
    assert_exactly_once(root, config, set(before))
    now = _tiers(root)
    assert now in (before, _expected(before)), f"{what}: a partial move is visible"
    return "moved" if now == _expected(before) else "not moved"


def _finish(root: Path, cold: Path, before: dict[str, str], what: str) -> None:
    proc = _run(root, cold)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{what}: the re-run failed: {err.decode()[-2000:]}"
    assert _tiers(root) == _expected(before), what
    assert_exactly_once(root, ColdConfig(uri=str(cold)), set(before))
    assert not (root / JOURNAL).exists()
    index = HotIndex(root)
    named = {(d, s.cold_batch) for d, s in index.docs().items() if s.cold_batch}
    stored = {
        (d, batch) for batch, docs in ColdStore(ColdConfig(uri=str(cold))).placements().items() for d in docs
    }
    assert stored == named, f"{what}: cold rows no manifest names: {len(stored - named)}"


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_step_then_rerun(template: Path, tmp_path: Path, point: str) -> None:
    root, cold = tmp_path / "hot", tmp_path / "cold"
    shutil.copytree(template, root)
    before = _tiers(root)
    proc = _run(root, cold, point)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"{point} was not reached: {err.decode()[-2000:]}"
    state = _check_after_kill(root, cold, before, point)
    assert state == ("moved" if point in ("lifecycle.committed", "lifecycle.compacted") else "not moved")
    _finish(root, cold, before, point)


def test_kill_at_random_times_then_rerun(template: Path, tmp_path: Path) -> None:
    rng = random.Random(20261129)
    timing = tmp_path / "timing"
    shutil.copytree(template, timing / "hot")
    started = time.monotonic()
    _finish(timing / "hot", timing / "cold", _tiers(timing / "hot"), "timing run")
    full = time.monotonic() - started
    outcomes = []
    for attempt in range(RANDOM_KILLS):
        root, cold = tmp_path / f"run{attempt}" / "hot", tmp_path / f"run{attempt}" / "cold"
        shutil.copytree(template, root)
        before = _tiers(root)
        delay = rng.uniform(0.3 * full, full)
        proc = _run(root, cold)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        outcomes.append((round(delay, 2), _check_after_kill(root, cold, before, f"kill at {delay:.2f}s")))
        _finish(root, cold, before, f"kill at {delay:.2f}s")
    assert len(outcomes) == RANDOM_KILLS, outcomes
