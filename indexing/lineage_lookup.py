"""Answer "where did this vector come from" for a document id or a FAISS vector id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from indexing.docs_table import CANONICAL, DUPLICATE
from indexing.hot import HotIndex, doc_vector_ids
from tierflow.records import chunk_id


def lineage_of(root: Path, ident: str) -> dict[str, Any] | None:
    """The document's committed state, lineage and vectors; or, for a vector id, its chunk and document.

    Returns None when ``ident`` is neither a known document id nor a live vector id.
    """
    index = HotIndex(root)
    manifest = index.manifest()
    docs = index.docs(manifest)
    state = docs.get(ident)
    if state is None and ident.lstrip("-").isdigit():
        row = index.find_vector(int(ident), manifest)
        if row is None:
            return None
        found = lineage_of(root, row["doc_id"]) or {}
        found["vector"] = {
            k: row[k] for k in ("vector_id", "chunk_id", "ordinal", "segment_id", "content_hash")
        }
        found["vector"]["lineage"] = json.loads(row["lineage"])
        return found
    if state is None:
        return None
    record: dict[str, Any] = {
        "doc_id": state.doc_id,
        "status": state.status,
        "version": state.version,
        "content_hash": state.content_hash,
        "source": {"system": state.source_system, "uri": state.source_uri, "position": state.source_position},
        "event_time": state.event_time,
        "ingest_time": state.ingest_time,
        "run_id": state.run_id,
        "lineage": json.loads(state.lineage or "{}"),
        "index_generation": manifest.generation,
    }
    if state.status == DUPLICATE:
        record["canonical_id"] = state.canonical_id
        record["dedup"] = {"kind": state.dedup, "similarity": state.similarity}
        canonical = docs.get(state.canonical_id or "")
        if canonical is not None and canonical.status == CANONICAL:
            record["vectors_of_canonical"] = _vectors(
                index, canonical.doc_id, canonical.segment_id, canonical.n_chunks
            )
    elif state.status == CANONICAL:
        record["segment_id"] = state.segment_id
        record["tier"] = _tier(index, state.segment_id, state.cold_batch, manifest.cold)
        record["vectors"] = _vectors(index, state.doc_id, state.segment_id, state.n_chunks)
        record["duplicates"] = sorted(
            d.doc_id for d in docs.values() if d.status == DUPLICATE and d.canonical_id == state.doc_id
        )
    return record


def _tier(
    index: HotIndex, segment_id: str | None, cold_batch: str | None, cold: dict[str, Any]
) -> dict[str, Any]:
    """Which tier holds a canonical document's vectors: hot or warm (a segment) or cold (a Lance batch)."""
    if cold_batch:
        return {"tier": "cold", "batch": cold_batch, "uri": cold.get("uri"), "table": cold.get("table")}
    live = {seg.info.segment_id: seg for seg in index.manifest().segments}
    return {"tier": live[segment_id].tier if segment_id in live else "unknown", "segment_id": segment_id}


def _vectors(index: HotIndex, doc_id: str, segment_id: str | None, n_chunks: int) -> list[dict[str, Any]]:
    ids = doc_vector_ids(doc_id, n_chunks)
    return [
        {"vector_id": vid, "chunk_id": chunk_id(doc_id, i), "segment_id": segment_id}
        for i, vid in enumerate(ids)
    ]
