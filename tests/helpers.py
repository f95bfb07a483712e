"""Helpers shared by the integration tests: small corpora, ingest runs and index inspection."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from connectors.files import FileSourceConfig
from indexing.docs_table import CANONICAL
from indexing.hot import HotIndex
from indexing.search import Searcher
from pipelines.batch import run_batch
from tierflow.config import IngestConfig, load_config
from tierflow.records import chunk_id, vector_id

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SCIFACT = SHARED / "data" / "scifact"
DEMO = REPO / "tierflow" / "demo_data"


def demo_docs() -> list[dict[str, Any]]:
    """The valid documents of the shipped demo corpus (not its bad records)."""
    docs = []
    for line in (DEMO / "corpus.jsonl").read_text().splitlines():
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (
            doc.get("_id")
            and doc.get("text", "").strip()
            and "copy" not in doc["_id"]
            and "mirror" not in doc["_id"]
        ):
            docs.append(doc)
    return docs


def write_jsonl(path: Path, records: list[dict[str, Any] | bytes], mtime_ns: int | None = None) -> Path:
    path.write_bytes(
        b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)
    )
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def config(index_dir: Path, **overrides: Any) -> IngestConfig:
    return load_config(overrides={"index_dir": str(index_dir), "write_shards": 2, **overrides}, environ={})


def ingest(
    path: Path | str, cfg: IngestConfig, beam_args: list[str] | None = None, **source: Any
) -> dict[str, Any]:
    return run_batch(FileSourceConfig(str(path), **source), cfg, beam_args)


def live_docs(index_dir: Path) -> dict[str, Any]:
    index = HotIndex(index_dir)
    return {k: v for k, v in index.docs().items() if v.status != "deleted"}


def live_vectors(index_dir: Path) -> dict[int, str]:
    """vector id -> chunk text of every live (not tombstoned) vector."""
    index = HotIndex(index_dir)
    out: dict[int, str] = {}
    for live in index.manifest().segments:
        dead = set(index.tombstones(live).tolist())
        for row in index.reader(live.info).chunks.to_pylist():
            if row["vector_id"] not in dead:
                assert row["vector_id"] not in out, "a vector is live twice"
                out[row["vector_id"]] = row["text"]
    return out


def canonical_ids(index_dir: Path) -> set[str]:
    return {k for k, v in HotIndex(index_dir).docs().items() if v.status == CANONICAL}


def top_doc(index_dir: Path, query: str, cfg: IngestConfig, k: int = 5) -> list[str]:
    return [r.doc_id for r in Searcher(HotIndex(index_dir), cfg.embedding).search(query, k)]


def tier_counts(index_dir: Path, cold: Any = None) -> Counter[int]:
    """How many times each vector id is findable: live in a hot/warm segment, or a cold row whose batch the
    committed document table names. A correct index has every canonical document's vectors exactly once."""
    from indexing.cold import ColdConfig, ColdStore

    index = HotIndex(index_dir)
    manifest = index.manifest()
    counts: Counter[int] = Counter()
    for live in manifest.segments:
        dead = set(index.tombstones(live).tolist())
        counts.update(v for v in index.reader(live).chunks.column("vector_id").to_pylist() if v not in dead)
    docs = index.docs(manifest)
    if manifest.cold:
        config = cold or ColdConfig()
        store = ColdStore(replace(config, **{k: manifest.cold[k] for k in ("uri", "table", "vector_dtype")}))
        rows = store.scan("true", ["vector_id", "doc_id", "batch"]).to_pylist()
        counts.update(
            r["vector_id"]
            for r in rows
            if docs.get(r["doc_id"]) is not None
            and docs[r["doc_id"]].status == CANONICAL
            and docs[r["doc_id"]].cold_batch == r["batch"]
        )
    return counts


def assert_exactly_once(index_dir: Path, cold: Any = None, expect_docs: set[str] | None = None) -> None:
    """Every canonical document's vectors are findable exactly once, and nothing else is."""
    from indexing.hot import doc_vector_ids

    counts = tier_counts(index_dir, cold)
    docs = HotIndex(index_dir).docs()
    wanted: set[int] = set()
    for state in docs.values():
        if state.status == CANONICAL:
            wanted.update(doc_vector_ids(state.doc_id, state.n_chunks))
    twice = {v: n for v, n in counts.items() if n > 1}
    assert not twice, f"{len(twice)} vector(s) findable more than once"
    assert set(counts) == wanted, f"lost {len(wanted - set(counts))}, unexpected {len(set(counts) - wanted)}"
    if expect_docs is not None:
        assert {d for d, s in docs.items() if s.status == CANONICAL} == expect_docs


def chunk_row(doc_id: str, ordinal: int, version: int, content_hash: str, lineage: Any) -> dict[str, Any]:
    """A chunk-table row as the pipeline's writer makes it, for tests that write segments by hand."""
    return {
        "vector_id": vector_id(chunk_id(doc_id, ordinal)),
        "chunk_id": chunk_id(doc_id, ordinal),
        "doc_id": doc_id,
        "ordinal": ordinal,
        "text": f"{doc_id} v{version} chunk {ordinal}",
        "content_hash": content_hash,
        "lineage": json.dumps(lineage),
    }
