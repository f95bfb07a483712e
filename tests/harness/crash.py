"""Crash-consistency harness: SIGKILL ingest, compaction and lifecycle processes at seeded random points,
restart them, and check the invariants of design.md after every kill and after every recovery.

    python -m tests.harness.crash --target all --runs 50 --seed 1 --out crash.json   # release check
    python -m tests.harness.crash --target compact --runs 3                            # what CI runs

Each run copies a prepared index, starts the command as a subprocess, kills it with SIGKILL after a delay
drawn from ``[interpreter start-up, 1.2 × the time an uninterrupted run takes]`` (seeded: a run is reproducible from the seed
and its number), then checks:

- the manifest loads and every live segment passes its checksums;
- every committed document is findable exactly once, at the version the committed state names, and no
  deleted document is visible; the state is all-before or all-after the interrupted command (atomicity);
- re-running the command finishes the job (the final state is the intended one);
- after ``tierflow gc --keep 1 --min-age 0`` no segment, tombstone or document-table file is left that
  no manifest names, and no cold row is left that no manifest names.

The JSON summary counts runs, kills that landed before the command finished, violations and documents
lost (all but the first must be 0 for a passing run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("ingest", "compact", "lifecycle")
DAY = 86400.0


@dataclass
class Target:
    """How to prepare, interrupt and judge one kind of process."""

    name: str
    prepare: Callable[[Path], None]
    command: Callable[[Path], list[str]]
    intended: Callable[[Path], dict[str, Any]]
    env: dict[str, str] = field(default_factory=dict)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tierflow.cli", *args]


def _docs() -> list[dict[str, Any]]:
    from tests.helpers import demo_docs

    return demo_docs()


def _write(path: Path, records: list[dict[str, Any]], mtime_ns: int) -> None:
    from tests.helpers import write_jsonl

    write_jsonl(path, list(records), mtime_ns=mtime_ns)


# ---- ingest: v1 committed, then v2 (every text changed, a quarter deleted) is interrupted -------------
def _prepare_ingest(work: Path) -> None:
    docs = _docs()
    corpus = work / "docs.jsonl"
    _write(corpus, [{**d, "op": "upsert"} for d in docs], 1_000)
    subprocess.run(_ingest_command(work), cwd=REPO, env=_env({}), check=True, capture_output=True)
    updated = [
        {**d, "op": "delete"} if i % 4 == 0 else {**d, "op": "upsert", "text": d["text"] + " Second edition."}
        for i, d in enumerate(docs)
    ]
    _write(corpus, updated, 2_000)


def _ingest_command(work: Path) -> list[str]:
    return _cli("ingest", str(work / "docs.jsonl"), "--index", str(work / "hot"), "--op-field", "op")


def _ingest_intended(work: Path) -> dict[str, Any]:
    docs = _docs()
    return {
        "live": {d["_id"] for i, d in enumerate(docs) if i % 4},
        "text_suffix": " Second edition.",
    }


# ---- compaction: an index of several segments with tombstones ----------------------------------------
def _prepare_compact(work: Path) -> None:
    from lifecycle.synthetic import build_synthetic_index

    build_synthetic_index(work / "hot", 30_000, 2, 64, segment_docs=5_000)
    from indexing.docs_table import DELETED, DocState
    from indexing.hot import CommitRequest, HotIndex
    from lifecycle.synthetic import doc_name

    HotIndex(work / "hot").commit(
        CommitRequest("deletes", updates=[DocState(doc_name(i), 2, DELETED) for i in range(0, 30_000, 3)])
    )


def _compact_intended(work: Path) -> dict[str, Any]:
    from lifecycle.synthetic import doc_name

    return {"live": {doc_name(i) for i in range(30_000) if i % 3}, "segments": 1}


# ---- lifecycle: a third to cold, a third to warm -----------------------------------------------------
def _prepare_lifecycle(work: Path) -> None:
    from lifecycle.synthetic import build_synthetic_index

    now = time.time()
    ages = (60 * DAY, 10 * DAY, 0.0)
    build_synthetic_index(
        work / "hot", 6_300, 1, 16, ingest_time=lambda i: now - ages[i % 3], segment_docs=2_500
    )


def _lifecycle_intended(work: Path) -> dict[str, Any]:
    from lifecycle.synthetic import doc_name

    return {
        "live": {doc_name(i) for i in range(6_300)},
        "tiers": {doc_name(i): ("cold", "warm", "hot")[i % 3] for i in range(6_300)},
    }


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    env.pop("TIERFLOW_FAILPOINTS", None)
    return env


TARGET_SPECS = {
    "ingest": Target(
        "ingest", _prepare_ingest, _ingest_command, _ingest_intended, {"TIERFLOW__WRITE_SHARDS": "2"}
    ),
    "compact": Target(
        "compact", _prepare_compact, lambda w: _cli("compact", "--index", str(w / "hot")), _compact_intended
    ),
    "lifecycle": Target(
        "lifecycle",
        _prepare_lifecycle,
        lambda w: _cli("lifecycle", "run", "--index", str(w / "hot"), "--cold", str(w / "cold")),
        _lifecycle_intended,
        {"TIERFLOW__LIFECYCLE__WARM_AFTER": "7d", "TIERFLOW__LIFECYCLE__COLD_AFTER": "30d"},
    ),
}


# ---- invariants --------------------------------------------------------------------------------------
def _state(work: Path) -> dict[str, Any]:
    """Live documents, their tiers and texts, after verifying checksums and the exactly-once rule."""
    from indexing.cold import ColdConfig
    from indexing.docs_table import DELETED
    from indexing.hot import HotIndex, tier_of
    from tests.helpers import assert_exactly_once

    index = HotIndex(work / "hot")
    manifest = index.manifest()
    for live in manifest.segments:
        index.reader(live).index  # noqa: B018 - raises IndexCorrupt when a checksum fails
        index.reader(live).chunks  # noqa: B018
    assert_exactly_once(work / "hot", ColdConfig(uri=str(work / "cold")))
    docs = index.docs(manifest)
    storage = {live.info.segment_id: live.storage for live in manifest.segments}
    last: dict[str, tuple[int, str]] = {}  # each document's last chunk (where an appended sentence lands)
    for live in manifest.segments:
        dead = set(index.tombstones(live).tolist())
        for row in index.reader(live).chunks.select(["vector_id", "doc_id", "ordinal", "text"]).to_pylist():
            if row["vector_id"] not in dead and row["ordinal"] >= last.get(row["doc_id"], (-1, ""))[0]:
                last[row["doc_id"]] = (row["ordinal"], row["text"])
    texts = {doc_id: text for doc_id, (_, text) in last.items()}
    return {
        "generation": manifest.generation,
        "live": {d for d, s in docs.items() if s.status != DELETED},
        "tiers": {d: tier_of(s, storage) for d, s in docs.items() if tier_of(s, storage)},
        "texts": texts,
        "segments": len(manifest.segments),
    }


def _check(target: str, work: Path, before: dict[str, Any], intended: dict[str, Any], finished: bool) -> str:
    """After a kill: the state is the one before or the intended one, never a mix. Returns which."""
    now = _state(work)
    if _is_intended(target, now, intended):
        return "after"
    if now["live"] == before["live"] and now["tiers"] == before["tiers"] and now["texts"] == before["texts"]:
        if finished:
            raise AssertionError(f"{target}: the command finished but its result is not visible")
        return "before"
    raise AssertionError(f"{target}: a partial result is visible (generation {now['generation']})")


def _is_intended(target: str, now: dict[str, Any], intended: dict[str, Any]) -> bool:
    if now["live"] != intended["live"]:
        return False
    if target == "ingest":
        return all(text.endswith(intended["text_suffix"]) for text in now["texts"].values())
    if target == "compact":
        return now["segments"] == intended["segments"]
    return bool(now["tiers"] == intended["tiers"])


def _no_orphans(work: Path) -> int:
    """Run gc and count files no manifest names, plus cold rows no manifest names."""
    from indexing.cold import ColdConfig, ColdStore
    from indexing.hot import HotIndex

    index = HotIndex(work / "hot")
    index.collect_garbage(keep_generations=1, min_age_s=0)
    manifest = index.manifest()
    named = {f"segments/{s.info.segment_id}" for s in manifest.segments}
    named |= {s.tombstones for s in manifest.segments if s.tombstones}
    named |= {manifest.docs_file} if manifest.docs_file else set()
    orphans = 0
    for sub in ("segments", "tombstones", "docs"):
        folder = work / "hot" / sub
        if folder.exists():
            orphans += sum(1 for p in folder.iterdir() if f"{sub}/{p.name}" not in named)
    if manifest.cold and (work / "cold").exists():
        docs = index.docs(manifest)
        rows = ColdStore(ColdConfig(uri=str(work / "cold"))).placements()
        orphans += sum(
            1
            for batch, ids in rows.items()
            for d in ids
            if docs.get(d) is None or docs[d].cold_batch != batch
        )
    return orphans


def run_target(name: str, runs: int, seed: int, workdir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    spec = TARGET_SPECS[name]
    template = workdir / f"{name}-template"
    if template.exists():
        shutil.rmtree(template)
    template.mkdir(parents=True)
    say(f"{name}: preparing the index")
    spec.prepare(template)
    before = _state(template)
    intended = spec.intended(template)

    timing = workdir / f"{name}-timing"
    shutil.rmtree(timing, ignore_errors=True)
    shutil.copytree(template, timing)
    started = time.monotonic()
    subprocess.run(spec.command(timing), cwd=REPO, env=_env(spec.env), check=True, capture_output=True)
    full = time.monotonic() - started
    assert _is_intended(name, _state(timing), intended), (
        f"{name}: an uninterrupted run did not reach its result"
    )
    started = time.monotonic()
    subprocess.run(_cli("--help"), cwd=REPO, env=_env(spec.env), check=True, capture_output=True)
    startup = min(time.monotonic() - started, 0.5 * full)
    say(f"{name}: an uninterrupted run takes {full:.1f} s (interpreter start-up {startup:.1f} s)")

    rng = random.Random(f"{seed}-{name}")
    counts = {
        "runs": 0,
        "killed_before_finish": 0,
        "state_before": 0,
        "state_after": 0,
        "violations": 0,
        "documents_lost": 0,
        "orphans_after_gc": 0,
        "recoveries": 0,
    }
    failures: list[str] = []
    for number in range(runs):
        work = workdir / f"{name}-run"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(template, work)
        delay = rng.uniform(startup, 1.2 * full)
        proc = subprocess.Popen(
            spec.command(work),
            cwd=REPO,
            env=_env(spec.env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            proc.send_signal(signal.SIGKILL)
            counts["killed_before_finish"] += 1
        proc.wait()
        counts["runs"] += 1
        try:
            outcome = _check(name, work, before, intended, finished and proc.returncode == 0)
            counts[f"state_{outcome}"] += 1
            subprocess.run(spec.command(work), cwd=REPO, env=_env(spec.env), check=True, capture_output=True)
            final = _state(work)
            if not _is_intended(name, final, intended):
                raise AssertionError(f"{name}: the re-run did not reach the intended result")
            counts["documents_lost"] += len(intended["live"] - final["live"])
            counts["recoveries"] += 1
            counts["orphans_after_gc"] += _no_orphans(work)
        except (AssertionError, subprocess.CalledProcessError) as err:
            counts["violations"] += 1
            failures.append(f"run {number} (kill at {delay:.2f} s): {err}")
        say(
            f"{name}: run {number + 1}/{runs}, kill at {delay:.2f} s, {'finished first' if finished else 'killed'}"
        )
    shutil.rmtree(workdir / f"{name}-run", ignore_errors=True)
    return {"target": name, "seed": seed, "uninterrupted_s": round(full, 2), **counts, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.crash", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    parser.add_argument("--runs", type=int, default=3, help="kills per target (release checks: 50)")
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--workdir", default="", help="scratch directory (default: a temporary one)")
    parser.add_argument("--out", help="write the JSON summary here")
    args = parser.parse_args(argv)
    import tempfile

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tierflow-crash-"))
    workdir.mkdir(parents=True, exist_ok=True)
    targets = TARGETS if args.target == "all" else (args.target,)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    results = [run_target(t, args.runs, args.seed, workdir, say) for t in targets]
    summary = {
        "targets": results,
        "runs": sum(r["runs"] for r in results),
        "kills_before_finish": sum(r["killed_before_finish"] for r in results),
        "violations": sum(r["violations"] for r in results),
        "documents_lost": sum(r["documents_lost"] for r in results),
        "orphans_after_gc": sum(r["orphans_after_gc"] for r in results),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    bad = summary["violations"] or summary["documents_lost"] or summary["orphans_after_gc"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
