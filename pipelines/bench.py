"""Benchmark: the whole batch pipeline vs bare ``SentenceTransformer.encode`` of the same chunks, in one process.

Both sides use the same loaded model (warmed up before either is timed), the same chunk texts and the
same batch size, so the ratio isolates what the pipeline adds: parsing, validation, dedup, chunking,
Beam's own overhead, segment writing and the commit. The machine is shared and noisy, so only the ratio
measured in one run is meaningful; run it more than once before believing a change.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from connectors.files import FileSourceConfig
from indexing.embedder import Embedder, model_dir
from pipelines.batch import run_batch
from pipelines.chunking import TokenChunker
from tierflow.config import load_config


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_ingest(dataset: Path, limit: int, out: Path, beam_args: list[str] | None = None) -> dict[str, Any]:
    """Time the pipeline and the bare encode of the same chunks; write ``bench.json`` and ``bench.md``."""
    import faiss

    corpus = dataset / "corpus.jsonl" if dataset.is_dir() else dataset
    lines = corpus.read_text(encoding="utf-8").splitlines()
    lines = lines[:limit] if limit else lines
    docs = [json.loads(line) for line in lines]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        sample = Path(tmp) / "corpus.jsonl"
        sample.write_text("\n".join(lines) + "\n", encoding="utf-8")
        config = load_config(overrides={"index_dir": str(Path(tmp) / "hot")})
        embedder = Embedder(config.embedding)
        embedder.warm_up()
        embedder.embed(["warm-up"])
        chunker = TokenChunker(config.chunking, model_dir(config.embedding) / "tokenizer.json")
        texts = [c.text for d in docs for c in chunker.chunk(d.get("title", ""), d.get("text", ""))]

        rss_before = _peak_rss_mib()
        started = time.perf_counter()
        vectors = embedder.embed(texts)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors))
        bare_s = time.perf_counter() - started

        started = time.perf_counter()
        summary = run_batch(FileSourceConfig(str(sample), format="jsonl"), config, beam_args)
        pipeline_s = time.perf_counter() - started

    n_docs, n_chunks = len(docs), len(texts)
    report: dict[str, Any] = {
        "dataset": str(dataset),
        "documents": n_docs,
        "chunks": n_chunks,
        "bare_encode": {
            "seconds": round(bare_s, 2),
            "docs_per_s": round(n_docs / bare_s, 2),
            "chunks_per_s": round(n_chunks / bare_s, 2),
        },
        "pipeline": {
            "seconds": round(pipeline_s, 2),
            "docs_per_s": round(n_docs / pipeline_s, 2),
            "chunks_per_s": round(n_chunks / pipeline_s, 2),
            "chunks_embedded": summary["counts"].get("chunks_embedded", 0),
        },
        "ratio_pipeline_to_bare": round(bare_s / pipeline_s, 3),
        "peak_rss_mib": {"after_model_load": round(rss_before, 1), "end": round(_peak_rss_mib(), 1)},
        "model": embedder.identity(),
        "device": embedder.device,
    }
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(
        "| | seconds | docs/s | chunks/s |\n|---|---:|---:|---:|\n"
        f"| bare `encode` + `IndexFlatIP.add` | {report['bare_encode']['seconds']} | {report['bare_encode']['docs_per_s']} | {report['bare_encode']['chunks_per_s']} |\n"
        f"| tierflow pipeline | {report['pipeline']['seconds']} | {report['pipeline']['docs_per_s']} | {report['pipeline']['chunks_per_s']} |\n\n"
        f"Pipeline / bare throughput: **{report['ratio_pipeline_to_bare']}** ({n_docs} documents, {n_chunks} chunks). "
        f"Peak RSS {report['peak_rss_mib']['end']} MiB.\n"
    )
    return report
