"""Beyond relevance: what an index costs and how fresh and clean it is, from its own records.

- **Freshness**: per document, the time from its source change (``event_time``) to the commit that made
  it searchable (the ``committed_at`` of its run in the manifest history), as p50/p95/max.
- **Cleanliness**: dedup rate (documents linked to a canonical instead of embedded) and dead-letter rate
  (rejected records over all records read) of the runs the manifest history keeps.
- **Cost per 1,000 documents**: embedding seconds, bytes on flash (live segments), bytes on object
  storage (the cold tier), and the vectors per tier.

Example:
    >>> operations(HotIndex("tierflow-data/hot"), cold=None)["cost_per_1k_docs"]["embed_seconds"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from indexing.cold import ColdStore
from indexing.docs_table import CANONICAL, DELETED
from indexing.hot import HotIndex, tier_vectors


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"documents": 0, "p50_s": None, "p95_s": None, "max_s": None}
    array = np.asarray(values, dtype=np.float64)
    return {
        "documents": len(values),
        "p50_s": round(float(np.percentile(array, 50)), 3),
        "p95_s": round(float(np.percentile(array, 95)), 3),
        "max_s": round(float(array.max()), 3),
    }


def operations(index: HotIndex, cold: ColdStore | None) -> dict[str, Any]:
    """Freshness, dedup and dead-letter rates, and cost per 1k documents of ``index`` as committed now."""
    manifest = index.manifest()
    docs = index.docs(manifest)
    committed = {h["run_id"]: h["committed_at"] for h in manifest.history if "run_id" in h}
    lags = [
        committed[s.run_id] - float(s.event_time)
        for s in docs.values()
        if s.status != DELETED and s.event_time and s.run_id in committed
    ]
    counts: dict[str, int] = {}
    dead = 0
    embed_ms = 0.0
    for entry in manifest.history:
        for key, value in entry.get("counts", {}).items():
            counts[key] = counts.get(key, 0) + int(value)
        dead += int(entry.get("dead_letters", {}).get("total", 0))
        embed_ms += float(entry.get("timings_ms", {}).get("embed", 0.0))
    valid = counts.get("events_valid", 0)
    linked = counts.get("dedup_exact", 0) + counts.get("dedup_near", 0)
    live = [s for s in docs.values() if s.status != DELETED]
    canonical = sum(1 for s in live if s.status == CANONICAL)
    flash = sum(_bytes(index.segments_dir / live_seg.info.segment_id) for live_seg in manifest.segments)
    object_bytes = int(cold.stats()["bytes"]) if cold is not None and manifest.cold else 0
    per_k = 1000.0 / max(1, len(live))
    return {
        "documents": {"live": len(live), "canonical": canonical, "duplicates": len(live) - canonical},
        "freshness": _percentiles(lags),
        "runs_in_history": sum(1 for h in manifest.history if "counts" in h),
        "dedup_rate": round(linked / valid, 6) if valid else None,
        "dead_letter_rate": round(dead / (valid + dead), 6) if valid + dead else None,
        "dead_letters": dead,
        "chunks_embedded": counts.get("chunks_embedded", 0),
        "tiers": tier_vectors(index, manifest),
        "bytes": {"flash": flash, "object_storage": object_bytes},
        "cost_per_1k_docs": {
            "embed_seconds": round(embed_ms / 1000.0 * per_k, 3),
            "flash_bytes": round(flash * per_k),
            "object_storage_bytes": round(object_bytes * per_k),
        },
    }
