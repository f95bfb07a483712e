"""GPU check and benchmark (issue 8): CUDA embedding and GPU FAISS against the CPU, on the same windows.

Run it on a machine with a GPU (``tierflow bench gpu`` or ``python -m indexing.bench_gpu``)::

    python -m indexing.bench_gpu --dataset ../shared/data/scifact --limit 2000 --out DIR

It needs only numpy, torch, sentence-transformers, tokenizers and (for the search part) faiss: no Beam, no
broker, no S3, so it also runs where only those are installed. Without a GPU it measures the CPU side and
says, for each check, that it did not run.

1. **windows**: the first ``--limit`` documents of the dataset, cut by tierflow's chunker at its default
   settings (the windows a batch run embeds), and the dataset's judged test queries.
2. **embedding**: the windows and queries on the CPU at float32 (the reference), then on every CUDA device
   the embedder resolves (``embedding.device = auto``) at its ``auto`` precision (fp16 on a GPU). chunks/s
   after a warm-up batch. Correct when every window's vector has a cosine of at least
   :data:`COSINE_TOLERANCE` to its CPU vector, and each query's top 10 windows over the device's vectors
   share at least :data:`NEIGHBOUR_OVERLAP` of the CPU's top 10 on average.
3. **FAISS**: a flat inner-product index of the CPU vectors through :func:`indexing.faiss_index.build_index`
   with ``use_gpu = never`` and, when faiss has GPU support and sees a device, ``always``: build seconds,
   and QPS of all queries in one call through :func:`~indexing.faiss_index.to_search_device`. Correct when
   both return the same top-10 (scores rank by rank within 1e-5; ids may differ only inside a tie) for at least
   :data:`SAME_IDS` of the queries.

Writes ``bench-gpu.json`` and ``bench-gpu.md`` into ``--out``; the exit status is 1 when a check that ran
failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.beir import BeirDataset, load_beir
from indexing.embedder import Embedder, model_dir, resolve_device
from indexing.exact import exact_top_k
from indexing.faiss_index import IndexSpec, build_index, gpu_available, to_search_device
from pipelines.chunking import TokenChunker
from tierflow.config import ChunkingConfig, EmbeddingConfig
from tierflow.errors import ConfigError

COSINE_TOLERANCE = 0.999  # each window's vector on the device against its CPU float32 vector
NEIGHBOUR_OVERLAP = 0.95  # mean share of a query's top-10 windows the device's vectors keep
SAME_IDS = 0.99  # share of queries whose GPU FAISS top 10 equals the CPU's
K = 10
TIE = 1e-5


def _say(line: str) -> None:
    print(f"bench gpu: {line}", file=sys.stderr, flush=True)


def read_windows(dataset: BeirDataset, limit: int, chunking: ChunkingConfig, tokenizer: Path) -> list[str]:
    """The texts of the windows tierflow's chunker cuts the first ``limit`` documents into (0 = all)."""
    chunker = TokenChunker(chunking, tokenizer)
    windows: list[str] = []
    for record in islice(dataset.iter_corpus(), limit or None):
        windows += [c.text for c in chunker.chunk(record.get("title") or "", record.get("text") or "")]
    return windows


def embed_on(
    config: EmbeddingConfig, windows: list[str], queries: list[str]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Window and query vectors with ``config``, and what it ran as and how fast."""
    embedder = Embedder(config)
    embedder.embed(windows[: config.batch_size])  # load, and the first batch's one-off costs
    synchronize(embedder.device)
    started = time.perf_counter()
    vectors = embedder.embed(windows)
    synchronize(embedder.device)
    seconds = time.perf_counter() - started
    return (
        vectors,
        embedder.embed(queries),
        {
            "device": embedder.device,
            "precision": embedder.precision,
            "chunks": len(windows),
            "seconds": round(seconds, 3),
            "chunks_per_s": round(len(windows) / seconds, 1) if seconds else None,
        },
    )


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def top_k(windows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact top-:data:`K` window ids per query."""
    return exact_top_k(queries, windows, np.arange(windows.shape[0], dtype=np.int64), K)


def embedding_check(
    reference: tuple[np.ndarray, np.ndarray], device: tuple[np.ndarray, np.ndarray]
) -> dict[str, Any]:
    """How far a device's vectors are from the CPU float32 ones, and whether that is within tolerance."""
    (ref_windows, ref_queries), (windows, queries) = reference, device
    cosines = np.sum(ref_windows * windows, axis=1) / np.maximum(
        np.linalg.norm(ref_windows, axis=1) * np.linalg.norm(windows, axis=1), 1e-12
    )
    expected, found = top_k(ref_windows, ref_queries), top_k(windows, queries)
    overlap = float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(expected, found, strict=True)]))
    return {
        "min_cosine": round(float(cosines.min()), 6),
        "mean_cosine": round(float(cosines.mean()), 6),
        "top10_overlap": round(overlap, 4),
        "passed": bool(cosines.min() >= COSINE_TOLERANCE and overlap >= NEIGHBOUR_OVERLAP),
    }


def faiss_side(vectors: np.ndarray, queries: np.ndarray, use_gpu: str) -> dict[str, Any]:
    """Build a flat index of ``vectors`` and search ``queries`` with ``use_gpu``; timings and the results."""
    spec = IndexSpec(type="flat", use_gpu=use_gpu)
    ids = np.arange(vectors.shape[0], dtype=np.int64)
    started = time.perf_counter()
    index = build_index(vectors, ids, spec)
    built = time.perf_counter() - started
    searcher = to_search_device(index, spec)
    searcher.search(queries[:1], K)  # the device's one-off costs
    started = time.perf_counter()
    scores, found = searcher.search(queries, K)
    searched = time.perf_counter() - started
    return {
        "use_gpu": use_gpu,
        "build_s": round(built, 4),
        "vectors_per_s": round(vectors.shape[0] / built, 1) if built else None,
        "search_s": round(searched, 4),
        "qps": round(queries.shape[0] / searched, 1) if searched else None,
        "_ids": found,
        "_scores": scores,
    }


def agrees(a_ids: np.ndarray, a_scores: np.ndarray, b_ids: np.ndarray, b_scores: np.ndarray) -> bool:
    """Two top-k lists agree when their scores match rank by rank (within :data:`TIE`) and an id only one
    of them holds scores within a tie of the k-th score (a boundary tie either side may break)."""
    if not np.allclose(a_scores, b_scores, atol=TIE):
        return False
    differ = set(a_ids.tolist()) ^ set(b_ids.tolist())
    kth = float(a_scores[-1])
    ranked = zip([*a_ids, *b_ids], [*a_scores, *b_scores], strict=True)
    return all(abs(float(score) - kth) <= TIE for doc, score in ranked if int(doc) in differ)


def same_ids(cpu: dict[str, Any], gpu: dict[str, Any]) -> dict[str, Any]:
    """Share of queries whose GPU top 10 agrees with the CPU's (:func:`agrees`)."""
    pairs = zip(cpu["_ids"], cpu["_scores"], gpu["_ids"], gpu["_scores"], strict=True)
    share = sum(agrees(*pair) for pair in pairs) / max(len(cpu["_ids"]), 1)
    return {"same_top10": round(share, 4), "passed": share >= SAME_IDS}


def bench_gpu(dataset: Path, limit: int, out: Path, model_path: str = "") -> dict[str, Any]:
    """Run the checks and measurements; write ``bench-gpu.json`` and ``.md`` into ``out``."""
    base = EmbeddingConfig(model_path=model_path)
    beir = load_beir(dataset)
    windows = read_windows(beir, limit, ChunkingConfig(), model_dir(base) / "tokenizer.json")
    queries = list(beir.queries.values())
    _say(f"{len(windows)} windows of {limit or 'all'} documents, {len(queries)} queries")
    report: dict[str, Any] = {
        "dataset": str(dataset),
        "limit": limit,
        "windows": len(windows),
        "queries": len(queries),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "embedding": {},
        "faiss": {},
        "checks": {},
    }
    _say("embedding on the CPU at float32 (the reference) …")
    ref_windows, ref_queries, report["embedding"]["cpu_fp32"] = embed_on(
        EmbeddingConfig(model_path=model_path, device="cpu", precision="fp32"), windows, queries
    )
    device = resolve_device("auto")
    if device == "cpu":
        report["checks"]["cuda_embedding"] = {"passed": None, "why": "no CUDA device (torch sees none)"}
    else:
        _say(f"embedding on {device} at its auto precision …")
        dev_windows, dev_queries, report["embedding"]["cuda_auto"] = embed_on(
            EmbeddingConfig(model_path=model_path, device="cuda"), windows, queries
        )
        report["checks"]["cuda_embedding"] = embedding_check(
            (ref_windows, ref_queries), (dev_windows, dev_queries)
        )
    try:
        import faiss  # noqa: F401
    except ImportError:
        report["checks"]["gpu_search"] = {"passed": None, "why": "faiss is not installed here"}
    else:
        _say("FAISS flat index on the CPU …")
        cpu = faiss_side(ref_windows, ref_queries, "never")
        report["faiss"]["cpu"] = {k: v for k, v in cpu.items() if not k.startswith("_")}
        if gpu_available():
            _say("FAISS flat index on the GPU …")
            gpu = faiss_side(ref_windows, ref_queries, "always")
            report["faiss"]["gpu"] = {k: v for k, v in gpu.items() if not k.startswith("_")}
            report["checks"]["gpu_search"] = same_ids(cpu, gpu)
        else:
            report["checks"]["gpu_search"] = {
                "passed": None,
                "why": "this faiss has no GPU support or sees no device (faiss-cpu): the CPU index served",
            }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-gpu.json").write_text(json.dumps(report, indent=2))
    (out / "bench-gpu.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# GPU check: {report['windows']} windows, {report['queries']} queries of {Path(report['dataset']).name}",
        "",
        "| embedding | device | precision | chunks/s | seconds |",
        "|---|---|---|---:|---:|",
    ]
    for name, run in report["embedding"].items():
        lines.append(
            f"| {name} | {run['device']} | {run['precision']} | {run['chunks_per_s']} | {run['seconds']} |"
        )
    if report["faiss"]:
        lines += ["", "| FAISS flat | build s | vectors/s | search QPS |", "|---|---:|---:|---:|"]
        for name, run in report["faiss"].items():
            lines.append(f"| {name} | {run['build_s']} | {run['vectors_per_s']} | {run['qps']} |")
    lines += ["", "## Checks", ""]
    for name, check in report["checks"].items():
        verdict = {True: "PASS", False: "FAIL", None: "not run"}[check["passed"]]
        detail = ", ".join(f"{k} {v}" for k, v in check.items() if k != "passed")
        lines.append(f"- {verdict}: {name} ({detail})")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tierflow bench gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, default=Path("../shared/data/scifact"))
    parser.add_argument("--limit", type=int, default=2000, help="documents to use, the first ones (0 = all)")
    parser.add_argument("--out", type=Path, default=Path("tierflow-data/bench-gpu"), help="report folder")
    parser.add_argument("--model-path", default="", help="a model directory (default: the packaged model)")
    args = parser.parse_args(argv)
    try:
        report = bench_gpu(args.dataset, args.limit, args.out, args.model_path)
    except ConfigError as err:  # no such dataset or model: say which, and how it should look
        print(f"tierflow: error: {err}", file=sys.stderr)
        return 2
    print((args.out / "bench-gpu.md").read_text())
    return 1 if any(check["passed"] is False for check in report["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
