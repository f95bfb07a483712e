"""Score a searchable index on a labelled query set: build the run, compute metrics, record provenance."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from evaluation.beir import BeirDataset
from evaluation.metrics import DEFAULT_KS, evaluate
from indexing.hot import tier_vectors
from indexing.search import Searcher
from tierflow.lineage import code_version

QUERY_BATCH = 64


def retrieve(searcher: Searcher, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
    """The run: query id -> document id -> score, top-``k`` documents per query.

    A duplicate linked to a hit is scored like its canonical document: it is findable under its own id.
    """
    ids = sorted(queries)
    run: dict[str, dict[str, float]] = {}
    for start in range(0, len(ids), QUERY_BATCH):
        part = ids[start : start + QUERY_BATCH]
        for qid, results in zip(part, searcher.search_many([queries[q] for q in part], k), strict=True):
            scores: dict[str, float] = {}
            for result in results:
                scores[result.doc_id] = result.score
                for dup in result.duplicates:
                    scores.setdefault(dup, result.score)
            run[qid] = scores
    return run


def evaluate_index(
    searcher: Searcher,
    dataset: BeirDataset,
    ks: Sequence[int] = DEFAULT_KS,
    reference: dict[str, float] | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Run every query of ``dataset`` against ``searcher`` and return a report dict (see evaluation.report)."""
    started = time.perf_counter()
    run = retrieve(searcher, dataset.queries, max(ks))
    elapsed = time.perf_counter() - started
    scores = evaluate(run, dataset.qrels, ks)
    manifest = searcher.index.manifest()
    result: dict[str, Any] = {
        "title": title or f"Retrieval evaluation: {dataset.path.name}",
        "provenance": {
            "dataset": {
                "path": str(dataset.path),
                "queries": len(dataset.queries),
                "checksums": dataset.checksums,
            },
            "model": manifest.embedding,
            "chunking": manifest.chunking,
            "index": {
                "path": str(searcher.index.root),
                "generation": manifest.generation,
                "segments": len(manifest.segments),
                "vectors": manifest.n_vectors,
                "types": sorted({seg.info.index["type"] for seg in manifest.segments}),
            },
            "tiers": tier_vectors(searcher.index, manifest),
            "code_version": code_version(),
            "search_seconds": round(elapsed, 3),
        },
        "metrics": {"mean": scores.mean, "per_query": scores.per_query},
        "run": run,
    }
    if reference:
        result["reference"] = reference
    return result
