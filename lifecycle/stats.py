"""Per-tier sizes of one index: documents, vectors, RAM, flash and object-store bytes, oldest and newest.

The lifecycle run appends one line of these to ``<index>/lifecycle/history.jsonl`` after every run; the
storage report reads the current numbers and that history.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from indexing.cold import ColdStore
from indexing.docs_table import CANONICAL
from indexing.hot import COLD, HOT, TIERS, WARM, HotIndex, tier_of
from indexing.manifest import MMAP
from indexing.segment import INDEX_FILE

HISTORY = Path("lifecycle") / "history.jsonl"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def tier_stats(index: HotIndex, cold: ColdStore | None) -> dict[str, Any]:
    """Sizes of every tier of ``index`` now.

    RAM bytes count the FAISS files of hot segments (read into memory when searched); warm segments are
    memory-mapped, so they cost flash and only page cache. Flash bytes are the live segments' files;
    ``flash_held_bytes`` are segment files on disk that only older manifests (rollback snapshots) or
    nothing at all name, which ``tierflow gc`` removes. ``flash_saved_bytes`` is what the cold tier's
    vectors would take on flash at the hot tier's bytes per vector.
    """
    manifest = index.manifest()
    storage_of = {live.info.segment_id: live.storage for live in manifest.segments}
    tiers: dict[str, dict[str, Any]] = {
        t: {
            "documents": 0,
            "vectors": 0,
            "ram_bytes": 0,
            "flash_bytes": 0,
            "object_bytes": 0,
            "oldest": None,
            "newest": None,
        }
        for t in TIERS
    }
    for state in index.docs(manifest).values():
        tier = tier_of(state, storage_of) if state.status == CANONICAL else None
        if tier is None:
            continue
        entry = tiers[tier]
        entry["documents"] += 1
        entry["vectors"] += state.n_chunks
        stamp = float(state.ingest_time)
        entry["oldest"] = stamp if entry["oldest"] is None else min(entry["oldest"], stamp)
        entry["newest"] = stamp if entry["newest"] is None else max(entry["newest"], stamp)
    live_files = 0
    stored_vectors = 0
    for live in manifest.segments:
        seg_dir = index.segments_dir / live.info.segment_id
        flash = _dir_bytes(seg_dir)
        live_files += flash
        stored_vectors += live.info.n_vectors
        tier = WARM if live.storage == MMAP else HOT
        tiers[tier]["flash_bytes"] += flash
        if tier == HOT:
            path = seg_dir / INDEX_FILE
            tiers[HOT]["ram_bytes"] += os.path.getsize(path) if path.exists() else 0
    cold_stats = cold.stats() if cold is not None and manifest.cold else {"rows": 0, "bytes": 0, "version": 0}
    tiers[COLD]["object_bytes"] = cold_stats["bytes"]
    tiers[COLD]["table_rows"] = cold_stats["rows"]
    per_vector = live_files / stored_vectors if stored_vectors else 0.0
    if not per_vector and manifest.embedding.get("dim"):
        per_vector = int(manifest.embedding["dim"]) * 4 + 8
    return {
        "at": time.time(),
        "generation": manifest.generation,
        "tiers": tiers,
        "flash_bytes": live_files,
        "flash_held_bytes": max(0, _dir_bytes(index.segments_dir) - live_files),
        "flash_saved_bytes": int(tiers[COLD]["vectors"] * per_vector),
        "cold": {"uri": manifest.cold.get("uri"), **cold_stats},
    }


def append_history(index: HotIndex, entry: dict[str, Any]) -> None:
    path = index.root / HISTORY
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_history(index: HotIndex) -> list[dict[str, Any]]:
    """Every recorded lifecycle run, oldest first (a torn last line after a crash is skipped)."""
    path = index.root / HISTORY
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
