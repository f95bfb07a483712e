"""The main job end to end on the embedded default (no servers): ingest, re-ingest, search, lineage, evaluate,
then age half the documents to the cold tier (a local directory) and search and evaluate across both tiers.

Uses the small labelled corpus shipped in ``tierflow/demo_data`` (22 documents, an exact and a near
duplicate, and three bad records that must be dead-lettered) and a local index directory.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from connectors.files import FileSourceConfig
from evaluation import load_beir, summary_lines, write_reports
from evaluation.retrieval import evaluate_index
from indexing.cold import ColdConfig
from indexing.hot import HotIndex
from indexing.lineage_lookup import lineage_of
from indexing.search import Searcher
from lifecycle.policy import LifecycleConfig
from lifecycle.report import storage_report
from lifecycle.run import run_lifecycle
from pipelines.batch import run_batch
from tierflow.config import load_config

DATA = Path(__file__).resolve().parent / "demo_data"
QUERIES = (
    "how do Kafka consumers resume after a restart",
    "fast approximate vector search",
    "bread with wild yeast",
)


def _counts(summary: dict) -> str:
    counts = summary["counts"]
    return (
        ", ".join(f"{k}={counts[k]}" for k in sorted(counts))
        + f", dead_letters={summary['dead_letters']['total']}"
    )


def run_demo(workdir: Path, beam_args: list[str]) -> int:
    if workdir.exists():
        shutil.rmtree(workdir)
    config = load_config(overrides={"index_dir": str(workdir / "hot")})
    source = FileSourceConfig(str(DATA), format="beir")

    print(f"== 1. ingest {DATA / 'corpus.jsonl'} -> {config.index_dir}")
    first = run_batch(source, config, beam_args)
    print(f"   generation {first['generation']}: {_counts(first)}")
    for reason, n in first["dead_letters"]["by_reason"].items():
        print(f"   dead-lettered {n} × {reason}")
    print(f"   dead-letter files: {', '.join(first['dead_letters']['files'])}")

    print("== 2. ingest the same corpus again (nothing may be re-embedded)")
    second = run_batch(source, config, beam_args)
    print(f"   generation {second['generation']}: {_counts(second)}")

    searcher = Searcher(HotIndex(config.index_dir), config.embedding)
    print("== 3. search")
    for query in QUERIES:
        print(f"   {query!r}")
        for r in searcher.search(query, 3):
            dups = f" (+ duplicates {r.duplicates})" if r.duplicates else ""
            print(f"     {r.score:.3f}  {r.doc_id:<14} {r.text[:70]}…{dups}")

    print("== 4. lineage of kafka-1-copy (an exact duplicate)")
    record = lineage_of(Path(config.index_dir), "kafka-1-copy") or {}
    print(
        "   "
        + json.dumps({k: record.get(k) for k in ("doc_id", "status", "canonical_id", "dedup", "source")})
    )

    print("== 5. evaluate on the demo's labelled queries")
    result = evaluate_index(searcher, load_beir(DATA), title="tierflow demo")
    paths = write_reports(workdir / "report", result)
    for line in summary_lines(result):
        print(f"   {line}")
    print(f"   reports: {paths['json']}, {paths['markdown']}")

    print("== 6. lifecycle: age half the documents to the cold tier (Lance, local directory), search both")
    cold = ColdConfig(uri=str(workdir / "cold"))
    live = sum(1 for s in HotIndex(config.index_dir).docs().values() if s.status == "canonical")
    policy = LifecycleConfig(cold_after="1s", max_moves=live // 2)
    moved = run_lifecycle(
        config.index_dir, policy, cold, now=time.time() + 60, progress=lambda m: print(f"   {m}")
    )
    tiers = moved["tiers"]
    print(f"   hot {tiers['hot']['documents']} docs, cold {tiers['cold']['documents']} docs")
    federated = Searcher(HotIndex(config.index_dir), config.embedding, cold)
    for r in federated.search(QUERIES[0], 3):
        print(f"     {r.score:.3f}  {r.doc_id:<14} [{r.tier}] {r.text[:60]}…")
    tiered = evaluate_index(federated, load_beir(DATA), title="tierflow demo, half cold")
    before, after = result["metrics"]["mean"]["ndcg@10"], tiered["metrics"]["mean"]["ndcg@10"]
    print(f"   nDCG@10 all hot {before:.4f}, half cold {after:.4f}")
    report = storage_report(Path(config.index_dir), cold, workdir / "storage-report")
    print(f"   storage report: {report['files'][1]}, plot {report['files'][2]}")

    ok = (
        second["counts"].get("chunks_embedded", 0) == 0
        and first["dead_letters"]["total"] == 3
        and tiers["cold"]["documents"] == live // 2
        and abs(after - before) <= 0.01
    )
    print("demo OK" if ok else "demo FAILED: see above")
    return 0 if ok else 1
