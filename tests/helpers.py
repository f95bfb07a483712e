"""Helpers shared by the integration tests: small corpora, ingest runs and index inspection."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from connectors.files import FileSourceConfig
from indexing.docs_table import CANONICAL
from indexing.hot import HotIndex
from indexing.search import Searcher
from pipelines.batch import run_batch
from tierflow.config import IngestConfig, load_config

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
