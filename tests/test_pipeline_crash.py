"""Killing an ingest at any point leaves the last committed index intact and searchable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexing.hot import HotIndex
from tests.helpers import REPO, config, demo_docs, ingest, live_docs, live_vectors, top_doc, write_jsonl

pytestmark = pytest.mark.model

KILLS = 6


def test_sigkill_during_ingest_leaves_last_commit_intact(tmp_path: Path) -> None:
    docs = demo_docs()
    index_dir = tmp_path / "hot"
    cfg = config(index_dir)
    corpus = write_jsonl(tmp_path / "docs.jsonl", docs[:8], mtime_ns=1_000)
    ingest(corpus, cfg)
    committed_docs = set(live_docs(index_dir))
    committed_vectors = live_vectors(index_dir)

    updated = [dict(d, text=d["text"] + " Updated edition.") for d in docs]
    write_jsonl(corpus, updated, mtime_ns=2_000)
    command = [sys.executable, "-m", "tierflow.cli", "ingest", str(corpus), "--index", str(index_dir)]
    env = dict(os.environ, TIERFLOW__WRITE_SHARDS="2")
    rng = random.Random(20261129)
    outcomes = []
    for attempt in range(KILLS):
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        delay = rng.uniform(1.0, 12.0)
        time.sleep(delay)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        index = HotIndex(index_dir)
        manifest = index.manifest()
        for live in manifest.segments:
            index.reader(live.info).index  # noqa: B018 - checksums verified on load
        now = set(live_docs(index_dir))
        vectors = live_vectors(index_dir)
        if manifest.generation == 1:
            assert now == committed_docs and vectors == committed_vectors, f"kill {attempt} at {delay:.1f}s"
        else:
            assert now == {d["_id"] for d in docs}, f"kill {attempt}: partial commit visible"
            assert all("Updated edition." in text for text in vectors.values())
        assert top_doc(index_dir, docs[0]["title"], cfg, k=1) == [docs[0]["_id"]]
        outcomes.append((round(delay, 1), finished, manifest.generation))
        if manifest.generation > 1:
            break
    # Orphans of killed runs are garbage; a clean re-run then finishes the job.
    HotIndex(index_dir).collect_garbage(keep_generations=1, min_age_s=0)
    summary = ingest(corpus, cfg)
    assert set(live_docs(index_dir)) == {d["_id"] for d in docs}
    assert all("Updated edition." in text for text in live_vectors(index_dir).values())
    assert summary["counts"].get("chunks_embedded", 0) in (0, len(live_vectors(index_dir)))
    HotIndex(index_dir).collect_garbage(keep_generations=1, min_age_s=0)
    referenced = {s.info.segment_id for s in HotIndex(index_dir).manifest().segments}
    on_disk = {p.name for p in (index_dir / "segments").iterdir()}
    assert on_disk - referenced <= set(), f"orphan segments left: {on_disk - referenced} ({outcomes})"
