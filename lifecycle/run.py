"""One lifecycle run: plan, copy, verify, commit, clean up. Crash-safe, idempotent and resumable.

The order is what keeps every vector findable exactly once:

1. **copy**: vectors leaving flash are appended to the cold table under a new batch id, and vectors
   moving between hot and warm are written as new segments. None of it is visible: the committed
   document table names neither the batch nor the segments.
2. **verify**: the cold table's row count and checksum of the batch must equal what was copied.
3. **commit**: one manifest publishes the documents' new places and tombstones their old vectors
   (:meth:`indexing.hot.HotIndex.retier`). A document a pipeline changed meanwhile is left alone.
4. **clean up**: compaction when enough flash vectors are deleted, and deletion of cold rows that no
   kept manifest names (aborted batches, documents since updated, deleted or promoted).

A journal (``<index>/lifecycle/journal.json``) names the run's batch and segments; a run killed before
its commit is rolled back by the next one (its invisible copies removed), one killed after is finished.

Example:
    >>> summary = run_lifecycle(Path("tierflow-data/hot"), LifecycleConfig(cold_after="7d"), ColdConfig())
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from indexing.access import compact_access
from indexing.cold import ColdConfig, ColdStore, digest
from indexing.docs_table import CANONICAL, DELETED, DocState
from indexing.durable import atomic_write_bytes
from indexing.faiss_index import IndexSpec
from indexing.hot import HotIndex, Retier, RetierRequest
from indexing.manifest import MEMORY, MMAP, Manifest
from indexing.segment import SegmentInfo, write_segment
from lifecycle.policy import COLD, DELETE, HOT, WARM, LifecycleConfig, Move, Plan, plan_lifecycle
from lifecycle.stats import append_history, read_history, tier_stats
from tierflow import metrics, progress
from tierflow.errors import ConfigError, IndexConflict, IndexCorrupt
from tierflow.failpoints import failpoint
from tierflow.s3 import ObjectStoreUnavailable

log = logging.getLogger(__name__)

JOURNAL = Path("lifecycle") / "journal.json"
LOCK = Path("lifecycle") / "LOCK"
COPY_DOCS = 2_000  # documents read from flash per cold write


def _journal(index: HotIndex, entry: dict[str, Any] | None) -> None:
    path = index.root / JOURNAL
    if entry is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(entry, indent=1).encode())


@contextlib.contextmanager
def _run_lock(index: HotIndex) -> Iterator[None]:
    """One lifecycle run per index at a time (pipelines may commit concurrently)."""
    path = index.root / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexConflict(
                f"another lifecycle run holds {path}; try again when it has finished"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_cold_location(manifest: Manifest, docs: dict[str, DocState], config: ColdConfig) -> None:
    """Refuse a configured cold tier other than the one this index's cold documents live in."""
    if not manifest.cold or not any(s.cold_batch for s in docs.values() if s.status == CANONICAL):
        return
    recorded = {k: manifest.cold.get(k) for k in ("uri", "table", "vector_dtype")}
    if recorded != config.location:
        raise ConfigError(
            f"this index's cold documents live in {recorded}; the configuration says {config.location}. "
            "Point [cold] back at it (moving a cold tier is not supported)."
        )


CHECKING, RECOVERING, MOVING, CLEANING, RECORDING = (
    "checking the cold tier",
    "recovering an interrupted run",
    "moving documents",
    "cleaning up",
    "reading tier sizes for the history",
)


def _stopped(index: HotIndex, stage: str) -> str:
    """What a run that failed during ``stage`` left behind, for its error message."""
    path = index.root / JOURNAL
    state = json.loads(path.read_text()).get("state") if path.exists() else None
    if stage == CHECKING:
        outcome = "nothing was moved"
    elif stage == RECOVERING:
        outcome = f"nothing was moved; the interrupted run's journal ({path}) is kept for the next run"
    elif stage == MOVING and state != "committed":
        outcome = (
            "nothing was committed: every document is where it was, and the next run removes the "
            f"partial cold copy (journal {path})"
        )
    elif stage in (MOVING, CLEANING):
        outcome = "the move is committed; the next run finishes its cleanup"
    else:
        outcome = "the move and its cleanup are done; only this run's history line is missing"
    return f"lifecycle run stopped while {stage}: {outcome}. Run it again once S3 is reachable"


def _recover(index: HotIndex, store: ColdStore | None, say: Callable[[str], None]) -> dict[str, Any] | None:
    """Finish or roll back a run that died: its copies are live only if its commit happened."""
    path = index.root / JOURNAL
    if not path.exists():
        return None
    entry = json.loads(path.read_text())
    manifest = index.manifest()
    segments = {live.info.segment_id for live in manifest.segments}
    batch = entry.get("batch")
    committed = any(s.cold_batch == batch for s in index.docs(manifest).values()) or bool(
        set(entry.get("segments", [])) & segments
    )
    if not committed:
        if store is not None and batch:
            store.delete(batch)
        for seg_id in entry.get("segments", []):
            shutil.rmtree(index.segments_dir / seg_id, ignore_errors=True)
    outcome = {
        "run_id": entry.get("run_id"),
        "batch": batch,
        "state": entry.get("state"),
        "committed": committed,
    }
    say(
        f"recovered an interrupted run {entry.get('run_id')}: "
        + ("finishing its cleanup" if committed else "rolled back its copies")
    )
    _journal(index, None)
    return outcome


def _spec(manifest: Manifest) -> IndexSpec:
    return IndexSpec.from_dict(manifest.segments[-1].info.index) if manifest.segments else IndexSpec()


def _doc_fields(states: list[DocState]) -> dict[str, dict[str, str]]:
    return {s.doc_id: {"metadata": s.metadata, "doc_lineage": s.lineage} for s in states}


def _copy_to_cold(
    index: HotIndex, store: ColdStore, states: list[DocState], batch: str, say: Callable[[str], None]
) -> tuple[int, int]:
    """Append, then verify; returns (vectors, table version). A failed check removes the batch."""
    expected_rows: list[dict[str, Any]] = []
    expected_vectors: list[np.ndarray] = []
    version = store.version
    with progress.bar(len(states), "copy to cold", unit="doc") as shown:
        for start in range(0, len(states), COPY_DOCS):
            part = states[start : start + COPY_DOCS]
            rows, vectors = index.doc_vectors(part)
            version = store.append(rows, vectors, batch, _doc_fields(part))
            expected_rows.extend({k: r[k] for k in ("vector_id", "chunk_id", "content_hash")} for r in rows)
            expected_vectors.append(vectors.astype(store.np_dtype))
            shown.update(len(part))
            say(f"copied {min(start + COPY_DOCS, len(states))}/{len(states)} documents to cold")
            failpoint("lifecycle.copying")
    failpoint("lifecycle.copied")
    count, found = store.batch_digest(batch)
    want = digest(expected_rows, np.vstack(expected_vectors)) if expected_vectors else ""
    if count != len(expected_rows) or found != want:
        store.delete(batch)
        raise IndexCorrupt(
            f"cold copy of batch {batch} failed verification ({count} rows, expected {len(expected_rows)}; "
            f"checksum {'matches' if found == want else 'differs'}); nothing was moved"
        )
    failpoint("lifecycle.verified")
    return len(expected_rows), version


def _write_flash(
    index: HotIndex,
    manifest: Manifest,
    rows: list[dict[str, Any]],
    vectors: np.ndarray,
    entry: dict[str, Any],
) -> SegmentInfo:
    info = write_segment(index.segments_dir, rows, vectors, _spec(manifest))
    entry["segments"].append(info.segment_id)
    _journal(index, entry)
    return info


def _expire(state: DocState, run_id: str, reason: str) -> DocState:
    lineage = json.loads(state.lineage or "{}")
    lineage["lifecycle"] = {"action": "ttl_delete", "run_id": run_id, "reason": reason, "at": time.time()}
    return replace(
        state,
        status=DELETED,
        segment_id=None,
        cold_batch=None,
        n_chunks=0,
        canonical_id=None,
        minhash=None,
        text=None,
        run_id=run_id,
        lineage=json.dumps(lineage, sort_keys=True),
    )


def _referenced_cold(index: HotIndex, keep: int) -> set[tuple[str, str]]:
    """(doc id, batch) of every cold document named by the current or the newest ``keep`` manifests."""
    generations = index.store.generations()
    current = index.manifest()
    names = {index.store.file_name(g) for g in generations[-keep:]} | {
        index.store.file_name(current.generation)
    }
    referenced: set[tuple[str, str]] = set()
    for name in sorted(names):
        with contextlib.suppress(IndexCorrupt):
            manifest = (
                index.store.load(name) if name != index.store.file_name(current.generation) else current
            )
            if not manifest.docs_file:
                continue
            path = index.root / manifest.docs_file
            if "cold_batch" not in pq.read_schema(path).names:
                continue  # written before the cold tier existed: names no cold rows
            table = pq.read_table(path, columns=["doc_id", "status", "cold_batch"])
            for doc_id, status, batch in zip(
                *(table.column(c).to_pylist() for c in table.column_names), strict=True
            ):
                if status == CANONICAL and batch:
                    referenced.add((doc_id, batch))
    return referenced


def _clean_cold(index: HotIndex, store: ColdStore, keep: int) -> int:
    """Delete cold rows no kept manifest names; returns the number of (batch, document) groups removed."""
    referenced = _referenced_cold(index, keep)
    removed = 0
    for batch, doc_ids in store.placements().items():
        dead = sorted(d for d in doc_ids if (d, batch) not in referenced)
        if not dead:
            continue
        store.delete(batch, None if len(dead) == len(doc_ids) else dead)
        removed += len(dead)
    return removed


def run_lifecycle(
    index_dir: Path | str,
    config: LifecycleConfig,
    cold_config: ColdConfig,
    now: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Plan and carry out one lifecycle run over the index at ``index_dir``.

    Args:
        index_dir: The hot tier's directory.
        config: Policies.
        cold_config: Where the cold tier lives.
        now: The time to evaluate policies at (default: now).
        progress: Called with a line per step (the CLI prints them).

    Returns:
        A summary: the plan's counts, what moved, bytes and seconds per step, recovery, cleanup, tier stats.

    Raises:
        ConfigError: The cold tier is unusable (no bucket, no credentials, unreachable) or is not the one
            this index's cold documents live in; raised before anything moves. Also S3 refusing access
            (403) later in the run: the message then says what the run left behind (as below).
        ObjectStoreUnavailable: S3 kept failing (5xx, throttling, timeouts, refused connections) after
            the retries of ``cold_config``. The message says where the run stopped and what it left:
            before its commit nothing committed changed (every document is where it was, findable once)
            and the next run removes the partial copy; after it, the next run finishes the cleanup.
        IndexConflict: Another lifecycle run is in progress.
    """
    say = progress or (lambda line: log.info("%s", line))
    index = HotIndex(Path(index_dir))
    if not index.store.generations():
        raise ConfigError(f"{index.root} holds no index yet; run an ingest first")
    store = ColdStore(cold_config)
    now = time.time() if now is None else now
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with _run_lock(index):
        stage = [CHECKING]
        try:
            manifest = index.manifest()
            docs = index.docs(manifest)
            check_cold_location(manifest, docs, cold_config)
            retention = config.seconds("access_retention") or 0.0
            compact_access(index.root, now, retention)
            plan = plan_lifecycle(index, config, now)
            touches_cold = (
                manifest.cold
                or (index.root / JOURNAL).exists()
                or any(COLD in (m.source, m.target) for m in plan.moves)
            )
            if touches_cold:
                store.check()  # before anything moves
            timings["plan_s"] = time.perf_counter() - started
            say(f"plan: {plan.counts() or 'nothing to move'} ({len(plan.held)} held)")
            stage[0] = RECOVERING
            resumed = _recover(index, store if touches_cold else None, say)
            if resumed is not None:
                manifest = index.manifest()
                plan = plan_lifecycle(index, config, now)
            if not read_history(index):  # the first run also records where the tiers started from
                append_history(
                    index, {**tier_stats(index, store if manifest.cold else None), "run": None, "moved": {}}
                )
            stage[0] = MOVING
            result = _execute(index, store, config, plan, manifest, timings, say) if plan.moves else None
            step = time.perf_counter()
            stage[0] = CLEANING
            cleanup = _cleanup(index, store if (touches_cold or result) else None, config, say)
            timings["cleanup_s"] = time.perf_counter() - step
            stage[0] = RECORDING
            stats = tier_stats(index, store if index.manifest().cold else None)
            metrics.set_tiers(stats["tiers"])
            summary = {
                "now": now,
                "plan": plan.counts(),
                "held": len(plan.held),
                "resumed": resumed,
                **(
                    result
                    or {"run_id": None, "generation": index.manifest().generation, "applied": 0, "skipped": 0}
                ),
                "cleanup": cleanup,
                "seconds": {
                    k: round(v, 3) for k, v in {**timings, "total_s": time.perf_counter() - started}.items()
                },
                "tiers": stats["tiers"],
            }
            append_history(
                index,
                {
                    **stats,
                    "run": {k: summary[k] for k in ("run_id", "plan", "applied", "skipped", "seconds")},
                    "moved": summary.get("moved", {}),
                },
            )
            return summary

        except ObjectStoreUnavailable as err:
            raise ObjectStoreUnavailable(err.uri, f"{err.message}; {_stopped(index, stage[0])}") from err
        except ConfigError as err:
            if stage[0] == CHECKING:
                raise  # refused before anything moved, as the message says
            raise ConfigError(f"{err}; {_stopped(index, stage[0])}") from err


def _execute(
    index: HotIndex,
    store: ColdStore,
    config: LifecycleConfig,
    plan: Plan,
    manifest: Manifest,
    timings: dict[str, float],
    say: Callable[[str], None],
) -> dict[str, Any]:
    run_id = f"lifecycle-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    batch = f"{manifest.generation:09d}-{uuid.uuid4().hex[:12]}"
    entry: dict[str, Any] = {
        "run_id": run_id,
        "batch": batch,
        "state": "copying",
        "segments": [],
        "started_at": time.time(),
    }
    _journal(index, entry)
    states = plan.states
    by_kind: dict[tuple[str, str], list[Move]] = {}
    for move in plan.moves:
        by_kind.setdefault((move.source, move.target), []).append(move)
    moves: list[Retier] = []
    segments: list[tuple[SegmentInfo, str]] = []
    moved = {"to_cold_vectors": 0, "to_cold_bytes": 0, "flash_written_bytes": 0, "from_cold_vectors": 0}

    step = time.perf_counter()
    to_cold = [states[m.doc_id] for m in plan.moves if m.target == COLD]
    version = store.version if manifest.cold else 0
    if to_cold:
        moved["to_cold_vectors"], version = _copy_to_cold(index, store, to_cold, batch, say)
        moved["to_cold_bytes"] = sum(m.bytes for m in plan.moves if m.target == COLD)
        moves.extend(Retier(s, replace(s, segment_id=None, cold_batch=batch)) for s in to_cold)
    timings["copy_cold_s"] = time.perf_counter() - step

    step = time.perf_counter()
    for storage, target, sources in ((MMAP, WARM, (HOT,)), (MEMORY, HOT, (WARM,))):
        group = [states[m.doc_id] for src in sources for m in by_kind.get((src, target), [])]
        if group:
            rows, vectors = index.doc_vectors(group, manifest)
            info = _write_flash(index, manifest, rows, vectors, entry)
            segments.append((info, storage))
            moves.extend(Retier(s, replace(s, segment_id=info.segment_id, cold_batch=None)) for s in group)
            say(f"wrote {len(rows)} vectors of {len(group)} documents to a {target} segment")
    promote = [states[m.doc_id] for m in by_kind.get((COLD, HOT), [])]
    if promote:
        rows, vectors, promoted = _read_cold(store, promote)
        if rows:
            info = _write_flash(index, manifest, rows, vectors, entry)
            segments.append((info, MEMORY))
            moves.extend(Retier(s, replace(s, segment_id=info.segment_id, cold_batch=None)) for s in promoted)
            moved["from_cold_vectors"] = len(rows)
            say(f"promoted {len(promoted)} documents ({len(rows)} vectors) from cold to hot")
    moved["flash_written_bytes"] = sum(
        sum(p.stat().st_size for p in (index.segments_dir / info.segment_id).iterdir())
        for info, _ in segments
    )
    timings["write_flash_s"] = time.perf_counter() - step

    moves.extend(
        Retier(states[m.doc_id], _expire(states[m.doc_id], run_id, m.reason))
        for m in plan.moves
        if m.target == DELETE
    )
    failpoint("lifecycle.before_commit")
    step = time.perf_counter()
    cold = {**store.config.location, "version": version} if (to_cold or manifest.cold) else {}
    result = index.retier(
        RetierRequest(
            run_id, segments, moves, cold, {"lifecycle": plan.counts(), "batch": batch if to_cold else None}
        )
    )
    entry["state"] = "committed"
    _journal(index, entry)
    timings["commit_s"] = time.perf_counter() - step
    kinds = {m.doc_id: (m.source, m.target) for m in plan.moves}
    for (source, target), n in Counter(kinds[doc_id] for doc_id in result.applied).items():
        metrics.LIFECYCLE_MOVES.labels(source, target).inc(n)
    say(
        f"committed generation {result.generation}: {len(result.applied)} moved, {len(result.skipped)} skipped (changed meanwhile)"
    )
    failpoint("lifecycle.committed")
    return {
        "run_id": run_id,
        "batch": batch if to_cold else None,
        "generation": result.generation,
        "applied": len(result.applied),
        "skipped": len(result.skipped),
        "moved": moved,
    }


def _read_cold(
    store: ColdStore, states: list[DocState]
) -> tuple[list[dict[str, Any]], np.ndarray, list[DocState]]:
    """The cold rows of documents being promoted, grouped by batch; documents whose rows are incomplete
    stay where they are."""
    by_batch: dict[str, list[DocState]] = {}
    for state in states:
        by_batch.setdefault(state.cold_batch or "", []).append(state)
    all_rows: list[dict[str, Any]] = []
    parts: list[np.ndarray] = []
    promoted: list[DocState] = []
    for batch, group in by_batch.items():
        rows, vectors = store.rows(batch, [s.doc_id for s in group])
        at: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            at.setdefault(row["doc_id"], []).append(i)
        for state in group:
            picks = at.get(state.doc_id, [])
            if len(picks) != state.n_chunks:
                log.warning(
                    "cold rows of %s in %s are incomplete (%d of %d); not promoted",
                    state.doc_id,
                    batch,
                    len(picks),
                    state.n_chunks,
                )
                continue
            all_rows.extend(rows[i] for i in picks)
            parts.append(vectors[picks])
            promoted.append(state)
    vectors = np.vstack(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)
    return all_rows, vectors, promoted


def _cleanup(
    index: HotIndex, store: ColdStore | None, config: LifecycleConfig, say: Callable[[str], None]
) -> dict[str, Any]:
    out: dict[str, Any] = {"compacted": False, "cold_rows_removed_docs": 0}
    manifest = index.manifest()
    stored = sum(live.info.n_vectors for live in manifest.segments)
    deleted = sum(live.n_deleted for live in manifest.segments)
    if stored and deleted / stored >= config.compact_deleted_fraction:
        compacted = index.compact()
        out["compacted"] = True
        out["compaction_written_bytes"] = sum(
            p.stat().st_size
            for live in compacted.segments
            for p in (index.segments_dir / live.info.segment_id).iterdir()
            if live.info.segment_id not in {seg.info.segment_id for seg in manifest.segments}
        )
        say(f"compacted flash: dropped {deleted} deleted of {stored} stored vectors")
    failpoint("lifecycle.compacted")
    if store is not None and index.manifest().cold:
        out["cold_rows_removed_docs"] = _clean_cold(index, store, config.keep_generations)
        store.optimize()
    _journal(index, None)
    return out
