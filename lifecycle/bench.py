"""Lifecycle benchmark: search latency and recall before and after aging half an index to the cold tier,
and what the lifecycle run itself costs (time, vectors and bytes moved).

One process, one synthetic index (clustered unit vectors, no embedding model), one query set:

1. **hot-only** (the baseline): every vector on flash; ``Searcher.chunk_search`` one query at a time.
2. **lifecycle run**: ``cold_after = "30d"`` moves the half of the documents ingested 60 days ago to a local
   cold tier (Lance, float16, flat scan); wall time, vectors and bytes moved, flash before and after.
3. **federated**: the same queries over hot + cold, merged by score, as search runs them.
4. **cold tier alone**: ``ColdStore.search`` restricted to the live cold batch, flat float16 and, on a copy
   of the same rows, IVF_PQ (``ColdConfig(index="ivf_pq")``).

Recall@10 compares each setup's top 10 vector ids with exact float32 inner-product search (numpy) over the
vectors that setup covers: all of them for hot-only and federated, the cold ones for the cold tier alone.
The machine is shared and noisy: latencies are reported as ratios to the hot-only run of the same process.

Example:
    >>> report = bench_lifecycle(120_000, Path("tierflow-data/bench"))
    >>> report["ratio_to_hot_only"]["federated"]["p50"]
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from indexing.cold import ROW_COLUMNS, ColdConfig, ColdStore
from indexing.docs_table import CANONICAL
from indexing.exact import exact_top_k
from indexing.hot import HotIndex, doc_vector_ids
from indexing.search import Searcher
from lifecycle.policy import LifecycleConfig
from lifecycle.render import human_bytes
from lifecycle.run import run_lifecycle
from lifecycle.stats import tier_stats
from lifecycle.synthetic import build_synthetic_index
from tierflow.config import EmbeddingConfig

K = 10
CHUNKS_PER_DOC = 2
DAY = 86_400.0
OLD_AGE_S = 60 * DAY  # older than cold_after: these documents move
COLD_AFTER = "30d"
WARM_UP_QUERIES = 5  # searched before timing: segment files read, Lance table opened, caches filled
QUERY_NOISE = 0.25  # norm of the perturbation added to a stored unit vector to make a query
SETUPS = ("hot_only", "federated", "cold_flat_fp16", "cold_ivf_pq")
LABELS = {
    "hot_only": "hot only (all vectors on flash)",
    "federated": "federated (hot + cold flat fp16)",
    "cold_flat_fp16": "cold tier alone, flat fp16",
    "cold_ivf_pq": "cold tier alone, IVF_PQ",
}


def _stderr(line: str) -> None:
    print(f"bench lifecycle: {line}", file=sys.stderr, flush=True)


def _timed(
    search: Callable[[np.ndarray], list[list[int]]], queries: np.ndarray
) -> tuple[list[float], list[list[int]]]:
    """Search ``queries`` one at a time after a few warm-up queries; seconds and top vector ids per query."""
    for query in queries[:WARM_UP_QUERIES]:
        search(query[None, :])
    seconds: list[float] = []
    found: list[list[int]] = []
    for query in queries:
        started = time.perf_counter()
        ids = search(query[None, :])[0]
        seconds.append(time.perf_counter() - started)
        found.append(ids)
    return seconds, found


def _latency(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(statistics.fmean(ms)), 3),
    }


def recall_at_k(found: list[list[int]], exact: np.ndarray) -> float:
    """Mean share of the exact top ``k`` ids that were found (each query's found list cut at ``k``)."""
    k = exact.shape[1]
    if not k:
        return 1.0
    return float(np.mean([len(set(f[:k]) & set(e.tolist())) / k for f, e in zip(found, exact, strict=True)]))


def make_queries(matrix: np.ndarray, sources: np.ndarray, seed: int) -> np.ndarray:
    """Perturbed, re-normalised copies of ``matrix[sources]``."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(len(sources), matrix.shape[1])).astype(np.float32)
    noise *= QUERY_NOISE / math.sqrt(matrix.shape[1])
    queries = matrix[sources] + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries.astype(np.float32)


def _copy_cold(source: ColdStore, target: ColdStore) -> int:
    """Append every row of ``source``'s table to ``target`` (same batches, same vectors); returns rows."""
    table = source.table()
    if table is None:
        return 0
    found = table.to_arrow()
    dim = found.schema.field("vector").type.list_size
    for batch in sorted(set(found.column("batch").to_pylist())):
        part = found.filter(pc.equal(found.column("batch"), batch))
        rows = part.select(list(ROW_COLUMNS)).to_pylist()
        values = part.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False)
        vectors = np.asarray(values, dtype=np.float32).reshape(-1, dim)
        doc_fields = {
            doc_id: {"metadata": metadata, "doc_lineage": lineage}
            for doc_id, metadata, lineage in zip(
                *(part.column(c).to_pylist() for c in ("doc_id", "metadata", "doc_lineage")), strict=True
            )
        }
        target.append(rows, vectors, batch, doc_fields)
    return found.num_rows


def bench_lifecycle(
    vectors: int,
    out: Path,
    dim: int = 384,
    queries: int = 200,
    seed: int = 7,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the lifecycle benchmark; write ``bench-lifecycle.json``, ``.md`` and ``.png`` into ``out``.

    Args:
        vectors: Vectors in the synthetic index (2 chunks per document; half the documents age out).
        out: Report folder; the index and cold tiers are built in ``out/work`` and removed at the end.
        dim: Vector dimension (384: the default model's).
        queries: Queries, half perturbed from vectors that go cold, half from ones that stay hot.
        seed: Seed of the vectors and the queries.
        progress: Called with a line per step (default: printed to stderr).

    Returns:
        The report written to ``bench-lifecycle.json``.
    """
    say = progress or _stderr
    n_docs = vectors // CHUNKS_PER_DOC
    if n_docs < 2 or queries < 2:
        raise ValueError("bench lifecycle needs at least 4 vectors and 2 queries")
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    began = time.perf_counter()
    try:
        report = _run(n_docs, work, dim, queries, seed, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["total_s"] = round(time.perf_counter() - began, 2)
    say("writing bench-lifecycle.json, bench-lifecycle.md and bench-lifecycle.png")
    (out / "bench-lifecycle.json").write_text(json.dumps(report, indent=2))
    (out / "bench-lifecycle.md").write_text(_markdown(report))
    _plot(report, out / "bench-lifecycle.png")
    say(f"done in {report['total_s']} s: {out / 'bench-lifecycle.md'}")
    return report


def _run(
    n_docs: int, work: Path, dim: int, n_queries: int, seed: int, say: Callable[[str], None]
) -> dict[str, Any]:
    hot_dir, cold_config = work / "hot", ColdConfig(uri=str(work / "cold"), vector_dtype="float16")
    now = time.time()

    # ---- the index: even documents were ingested 60 days ago, odd ones now ----------------------------
    say(f"building a synthetic index: {n_docs} documents, {n_docs * CHUNKS_PER_DOC} vectors of dim {dim}")
    started = time.perf_counter()
    stored = build_synthetic_index(
        hot_dir,
        n_docs,
        CHUNKS_PER_DOC,
        dim,
        seed,
        ingest_time=lambda i: now - OLD_AGE_S if i % 2 == 0 else now,
    )
    build_s = time.perf_counter() - started
    ids = np.fromiter(stored.keys(), dtype=np.int64, count=len(stored))
    matrix = np.stack(list(stored.values())).astype(np.float32)
    del stored
    old_rows = np.flatnonzero((np.arange(len(ids)) // CHUNKS_PER_DOC) % 2 == 0)  # rows are doc-major
    new_rows = np.setdiff1d(np.arange(len(ids)), old_rows)
    say(f"built in {build_s:.1f} s")

    rng = np.random.default_rng(seed + 1)
    half = n_queries // 2
    sources = np.concatenate(
        [
            rng.choice(old_rows, half, replace=len(old_rows) < half),
            rng.choice(new_rows, n_queries - half, replace=len(new_rows) < n_queries - half),
        ]
    )
    queries = make_queries(matrix, sources, seed + 2)
    say(f"exact top-{K} of {n_queries} queries over all {len(ids)} vectors (numpy float32)")
    exact_all = exact_top_k(queries, matrix, ids, K)

    # ---- baseline: hot only ----------------------------------------------------------------------
    index = HotIndex(hot_dir)
    flash_before = tier_stats(index, None)["flash_bytes"]
    segments_before = {live.info.segment_id for live in index.manifest().segments}
    searcher = Searcher(index, EmbeddingConfig(), cold=cold_config)
    say(f"hot-only search: {n_queries} queries one at a time, k={K}")
    hot_s, hot_found = _timed(
        lambda q: [[h.vector_id for h in r] for r in searcher.chunk_search(q, K)], queries
    )
    latency = {"hot_only": _latency(hot_s)}
    recall = {"hot_only": recall_at_k(hot_found, exact_all)}
    say(f"hot-only: p50 {latency['hot_only']['p50_ms']} ms, p99 {latency['hot_only']['p99_ms']} ms")

    # ---- the lifecycle run -------------------------------------------------------------------------
    say(f"lifecycle run: cold_after={COLD_AFTER}, cold tier {cold_config.uri} (float16, flat)")
    started = time.perf_counter()
    summary = run_lifecycle(
        hot_dir, LifecycleConfig(cold_after=COLD_AFTER), cold_config, progress=lambda line: say(f"  {line}")
    )
    lifecycle_s = time.perf_counter() - started
    index = HotIndex(hot_dir)
    store = ColdStore(cold_config)
    after = tier_stats(index, store)
    manifest = index.manifest()
    cold_docs = {
        doc_id: state
        for doc_id, state in index.docs(manifest).items()
        if state.status == CANONICAL and state.cold_batch
    }
    cold_ids = np.array(
        [vid for doc_id, state in cold_docs.items() for vid in doc_vector_ids(doc_id, state.n_chunks)],
        dtype=np.int64,
    )
    in_cold = np.isin(ids, cold_ids)
    moved = summary.get("moved", {})
    rewritten = sum(  # segments the run wrote: its hot/warm moves and the compaction that follows
        path.stat().st_size
        for live in manifest.segments
        if live.info.segment_id not in segments_before
        for path in (index.segments_dir / live.info.segment_id).iterdir()
    )
    say(
        f"lifecycle run took {lifecycle_s:.1f} s: {moved.get('to_cold_vectors', 0)} vectors "
        f"({human_bytes(moved.get('to_cold_bytes', 0))} of flash) to cold"
    )

    # ---- federated ---------------------------------------------------------------------------------
    federated = Searcher(HotIndex(hot_dir), EmbeddingConfig(), cold=cold_config)
    tiers_seen: list[str] = []

    def federated_search(q: np.ndarray) -> list[list[int]]:
        found = federated.chunk_search(q, K)
        tiers_seen.extend(h.tier for h in found[0])
        return [[h.vector_id for h in r] for r in found]

    say(f"federated search (hot + cold): {n_queries} queries one at a time, k={K}")
    fed_s, fed_found = _timed(federated_search, queries)
    latency["federated"] = _latency(fed_s)
    recall["federated"] = recall_at_k(fed_found, exact_all)
    timed_tiers = tiers_seen[-sum(len(f) for f in fed_found) :]
    cold_share = timed_tiers.count("cold") / len(timed_tiers) if timed_tiers else 0.0
    say(f"federated: p50 {latency['federated']['p50_ms']} ms, p99 {latency['federated']['p99_ms']} ms")

    # ---- the cold tier alone: flat float16, then IVF_PQ over a copy of the same rows ----------------
    say(f"exact top-{K} over the {int(in_cold.sum())} cold vectors")
    exact_cold = exact_top_k(queries, matrix[in_cold], ids[in_cold], K)
    batches = sorted({state.cold_batch or "" for state in cold_docs.values()})

    def visible(doc_id: str, batch: str) -> bool:
        state = cold_docs.get(doc_id)
        return state is not None and state.cold_batch == batch

    def cold_search(cold: ColdStore, min_version: int) -> Callable[[np.ndarray], list[list[int]]]:
        return lambda q: [[h.vector_id for h in r] for r in cold.search(q, K, batches, visible, min_version)]

    say("cold tier alone, flat float16 scan")
    flat_s, flat_found = _timed(cold_search(store, int(manifest.cold.get("version", 0))), queries)
    latency["cold_flat_fp16"] = _latency(flat_s)
    recall["cold_flat_fp16"] = recall_at_k(flat_found, exact_cold)

    ivf_config = ColdConfig(
        uri=str(work / "cold-ivfpq"), vector_dtype="float16", index="ivf_pq", index_min_rows=0
    )
    ivf = ColdStore(ivf_config)
    say("copying the cold rows to a second table for IVF_PQ")
    rows = _copy_cold(store, ivf)
    partitions = ivf_config.ivf_partitions or max(1, int(math.sqrt(rows)))
    sub_vectors = ivf_config.pq_sub_vectors or max(1, dim // 8)
    say(f"building IVF_PQ over {rows} rows: {partitions} partitions, {sub_vectors} sub-vectors")
    started = time.perf_counter()
    ivf.optimize()
    ivf_build_s = time.perf_counter() - started
    ivf_stats = ivf.stats()
    table = ivf.table()
    # Lance trains no index below 256 rows: an "index" over none of them, searched by a flat scan.
    indexed = sum(int(getattr(ix, "num_indexed_rows", 0) or 0) for ix in table.list_indices()) if table else 0
    say(f"IVF_PQ built in {ivf_build_s:.1f} s ({ivf_stats['indices'] or 'no index'}, {indexed} rows indexed)")
    say(f"cold tier alone, IVF_PQ (nprobes {ivf_config.nprobes}, refine_factor {ivf_config.refine_factor})")
    ivf_s, ivf_found = _timed(cold_search(ivf, 0), queries)
    latency["cold_ivf_pq"] = _latency(ivf_s)
    recall["cold_ivf_pq"] = recall_at_k(ivf_found, exact_cold)

    base = latency["hot_only"]
    ratios = {
        name: {
            stat: round(latency[name][f"{stat}_ms"] / base[f"{stat}_ms"], 3) if base[f"{stat}_ms"] else None
            for stat in ("p50", "p99", "mean")
        }
        for name in SETUPS
        if name != "hot_only"
    }
    moved_bytes = int(moved.get("to_cold_bytes", 0))
    return {
        "vectors": len(ids),
        "documents": n_docs,
        "dim": dim,
        "queries": n_queries,
        "k": K,
        "seed": seed,
        "build_index_s": round(build_s, 2),
        "latency_ms": latency,
        "ratio_to_hot_only": ratios,
        "recall_at_10": {name: round(value, 4) for name, value in recall.items()},
        "federated_cold_hit_share": round(cold_share, 4),
        "lifecycle": {
            "cold_after": COLD_AFTER,
            "wall_s": round(lifecycle_s, 2),
            "seconds": summary["seconds"],
            "plan": summary["plan"],
            "applied": summary["applied"],
            "moved": moved,
            "vectors_per_s": round(moved.get("to_cold_vectors", 0) / lifecycle_s, 1) if lifecycle_s else None,
            "flash_mib_per_s": round(moved_bytes / 2**20 / lifecycle_s, 2) if lifecycle_s else None,
            "compacted": summary["cleanup"]["compacted"],
            "flash_rewritten_bytes": rewritten,
            "flash_bytes_before": flash_before,
            "flash_bytes_after": after["flash_bytes"],
            "flash_held_bytes_after": after["flash_held_bytes"],
            "cold_object_bytes": after["tiers"]["cold"]["object_bytes"],
            "cold_vectors": after["tiers"]["cold"]["vectors"],
            "hot_vectors": after["tiers"]["hot"]["vectors"],
        },
        "cold_flat": {"uri_kind": "local", "vector_dtype": "float16", "index": "flat"},
        "cold_ivf_pq": {
            "rows": rows,
            "partitions": partitions,
            "sub_vectors": sub_vectors,
            "nprobes": ivf_config.nprobes,
            "refine_factor": ivf_config.refine_factor,
            "build_s": round(ivf_build_s, 2),
            "object_bytes": ivf_stats["bytes"],
            "indices": ivf_stats["indices"],
            "indexed_rows": indexed,
        },
    }


def _markdown(report: dict[str, Any]) -> str:
    lat, rec, ratio, life = (
        report["latency_ms"],
        report["recall_at_10"],
        report["ratio_to_hot_only"],
        report["lifecycle"],
    )
    moved = life["moved"]
    searched = {
        "hot_only": report["vectors"],
        "federated": report["vectors"],
        "cold_flat_fp16": life["cold_vectors"],
        "cold_ivf_pq": life["cold_vectors"],
    }
    lines = [
        f"# Lifecycle benchmark: {report['vectors']} vectors, dim {report['dim']}",
        "",
        f"{report['queries']} queries (perturbed copies of stored vectors, half of them from vectors that go "
        f"cold), searched one at a time for the top {report['k']} chunks; Recall@{report['k']} against exact "
        "float32 inner-product search over the vectors each setup covers.",
        "",
        "| setup | vectors searched | p50 ms | p99 ms | mean ms | p50 / hot-only | p99 / hot-only | Recall@10 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in SETUPS:
        r = ratio.get(name, {"p50": 1.0, "p99": 1.0})
        lines.append(
            f"| {LABELS[name]} | {searched[name]} | {lat[name]['p50_ms']} | {lat[name]['p99_ms']} | "
            f"{lat[name]['mean_ms']} | {r['p50']} | {r['p99']} | {rec[name]} |"
        )
    ivf = report["cold_ivf_pq"]
    lines += [
        "",
        f"Federated top-{report['k']} hits from the cold tier: {report['federated_cold_hit_share']:.0%}. "
        f"IVF_PQ: {ivf['partitions']} partitions requested, {ivf['sub_vectors']} sub-vectors, nprobes {ivf['nprobes']}, "
        f"refine_factor {ivf['refine_factor']}; {ivf['indexed_rows']} of {ivf['rows']} rows indexed, "
        f"built in {ivf['build_s']} s (float16 vectors).",
        "",
        f"## Lifecycle run (cold_after = {life['cold_after']})",
        "",
        "| | |",
        "|---|---:|",
        f"| wall time | {life['wall_s']} s |",
        f"| vectors moved to cold | {moved.get('to_cold_vectors', 0)} ({life['vectors_per_s']} vectors/s) |",
        f"| flash bytes of the moved vectors | {human_bytes(moved.get('to_cold_bytes', 0))} ({life['flash_mib_per_s']} MiB/s) |",
        f"| flash written by hot/warm moves | {human_bytes(moved.get('flash_written_bytes', 0))} |",
        f"| flash written in all (moves and compaction: new live segments) | {human_bytes(life['flash_rewritten_bytes'])} |",
        f"| compacted flash | {life['compacted']} |",
        f"| live flash before / after | {human_bytes(life['flash_bytes_before'])} / {human_bytes(life['flash_bytes_after'])} |",
        f"| flash still held after (older manifests' segments, until `tierflow gc`) | {human_bytes(life['flash_held_bytes_after'])} |",
        f"| cold tier objects (float16) | {human_bytes(life['cold_object_bytes'])} |",
        f"| steps (s) | {', '.join(f'{k} {v}' for k, v in life['seconds'].items())} |",
        "",
        _meaning(report),
        "",
        f"Total benchmark time {report.get('total_s', '?')} s (index build {report['build_index_s']} s). "
        "The machine is shared and noisy: compare the ratios, measured in one process, not the milliseconds.",
    ]
    return "\n".join(lines) + "\n"


def _meaning(report: dict[str, Any]) -> str:
    lat, rec, ratio = report["latency_ms"], report["recall_at_10"], report["ratio_to_hot_only"]
    life = report["lifecycle"]
    saved = life["flash_bytes_before"] - life["flash_bytes_after"]
    return (
        f"Aging half the index to the cold tier cut live flash by {human_bytes(saved)} for "
        f"{human_bytes(life['cold_object_bytes'])} of object storage, in a {life['wall_s']} s run; searching "
        f"both tiers costs {ratio['federated']['p50']}x the hot-only p50 latency ({lat['federated']['p50_ms']} "
        f"vs {lat['hot_only']['p50_ms']} ms) and {ratio['federated']['p99']}x its p99, and finds "
        f"{rec['federated']:.1%} of the exact top 10 (float16 flat cold tier alone: {rec['cold_flat_fp16']:.1%}; "
        f"IVF_PQ: {rec['cold_ivf_pq']:.1%} at {ratio['cold_ivf_pq']['p50']}x the hot-only p50)."
    )


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat, rec, life = report["latency_ms"], report["recall_at_10"], report["lifecycle"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(SETUPS))
    width = 0.38
    p50 = [lat[s]["p50_ms"] for s in SETUPS]
    p99 = [lat[s]["p99_ms"] for s in SETUPS]
    left.bar(x - width / 2, p50, width, label="p50", color="#1f77b4")
    left.bar(x + width / 2, p99, width, label="p99", color="#ff7f0e")
    top = max(p99) if p99 else 1.0
    for i, name in enumerate(SETUPS):
        left.annotate(
            f"R@10 {rec[name]:.3f}",
            (x[i], max(p50[i], p99[i])),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize=9,
        )
    left.set_ylim(0, top * 1.15)
    left.set_xticks(x, ["hot only", "federated", "cold flat fp16", "cold IVF_PQ"])
    left.set_ylabel("latency per query (ms)")
    left.set_title(f"Search latency, {report['vectors']} vectors, dim {report['dim']}, k={report['k']}")
    left.legend(loc="upper left")
    mib = 2**20
    names = ["live flash before", "live flash after", "cold objects", "moved (flash)"]
    values = [
        life["flash_bytes_before"] / mib,
        life["flash_bytes_after"] / mib,
        life["cold_object_bytes"] / mib,
        life["moved"].get("to_cold_bytes", 0) / mib,
    ]
    right.bar(names, values, color=["#d62728", "#ff7f0e", "#1f77b4", "#7f7f7f"])
    right.set_ylabel("MiB")
    right.set_title(f"Lifecycle run: {life['wall_s']} s, {life['moved'].get('to_cold_vectors', 0)} vectors")
    right.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
