"""Peer ingest benchmark (issue 8): tierflow against bare ``encode`` + ``faiss.add``, LangChain and LlamaIndex.

One corpus sample, up to seven tools, three phases each, every tool/phase in a fresh process started one
after the other (never two at once, so they do not share the CPU):

* **tools**: ``bare`` (``SentenceTransformer.encode`` + ``faiss.IndexFlatIP.add`` of the peers' texts: the
  limit; no change tracking, so every phase is a full rebuild); tierflow's real batch pipeline
  (``run_batch``) in two variants (:data:`TIERFLOW_VARIANTS`), set through ``TIERFLOW__EMBEDDING__*``
  as a user would: ``tierflow-torch`` (torch at float32, the arithmetic the peers use: the reference),
  ``tierflow-auto`` (the shipped defaults: ``embedding.precision = auto`` picks bf16 on CPUs that compute
  it natively); ``langchain`` (``index()`` + ``SQLRecordManager`` + FAISS) and ``llamaindex`` (``IngestionPipeline`` +
  ``SimpleDocumentStore``, ``UPSERTS``, + FAISS), each embedding one text per document as the issue measured
  them, and again as ``langchain-windows`` / ``llamaindex-windows``: the same peer with its own token
  splitter (``SentenceTransformersTokenTextSplitter``, ``SentenceSplitter`` counting the model's tokens)
  set to tierflow's window and overlap, so that every word is embedded, as tierflow does; the same work.
  The peers and ``bare`` are the scripts in
  ``infra/bench/``; the peers run in their own venv (``bash infra/bench/peers-venv.sh``).
* **phases**: ``first`` ingest into an empty index (docs/s), re-ingest of the ``unchanged`` corpus (s), and
  re-ingest after a seeded, deterministic 1 % of the documents got new text (``changed``, s; the same
  documents for every tool).

Every process loads the same model directory and embeds one batch before its timer (tierflow also runs
the pipeline once over a few documents into a throwaway index, which loads Beam and the stages); the
timer runs from reading the corpus file to the index being durable on disk. The one-text peers embed
``title + "\\n\\n" + text`` per document, which the model truncates to its first 256 tokens (the report counts the
documents that are longer and the share of the corpus's tokens never embedded: :func:`truncation`); tierflow chunks with its own settings (256-token
windows), so it may embed more than one chunk per document, and so do the windowed peers. tierflow's nDCG@10 is measured on the index each variant
built (with queries embedded by the same variant) and compared with ``tierflow-torch``'s; with
``--limit`` the qrels are cut to the sample.

The machine is shared and noisy: only ratios measured in one run are meaningful.

Example:
    >>> report = bench_peers(Path("../shared/data/scifact"), 100, Path("tierflow-data/bench-peers"))
    >>> report["ratios"]["tierflow-torch"]["langchain"]["first"]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evaluation.beir import BeirDataset, load_beir
from tierflow.errors import ConfigError
from tierflow.lineage import REPO_ROOT

TOOLS = (
    "bare",
    "tierflow-torch",
    "tierflow-auto",
    "langchain",
    "llamaindex",
    "langchain-windows",
    "llamaindex-windows",
)
TIERFLOW_VARIANTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    # variant: (embedding settings it needs, settings applied where the configuration has them)
    "tierflow-torch": ({}, {"precision": "fp32"}),
    "tierflow-auto": ({}, {}),
}
TIERFLOW_TOOLS = tuple(TIERFLOW_VARIANTS)
REFERENCE = "tierflow-torch"  # the nDCG@10 every other variant is held to
PEERS = ("langchain", "llamaindex", "langchain-windows", "llamaindex-windows")
WINDOWED = ("langchain-windows", "llamaindex-windows")  # the peer's own token splitter, tierflow's window
PHASES = ("first", "unchanged", "changed")
LABELS = {
    "bare": "bare `encode` + `IndexFlatIP.add` (full rebuild)",
    "tierflow-torch": "tierflow (torch, fp32)",
    "tierflow-auto": "tierflow (default settings)",
    "langchain": "LangChain `index()` + SQLRecordManager + FAISS",
    "llamaindex": "LlamaIndex `IngestionPipeline` + docstore (UPSERTS) + FAISS",
    "langchain-windows": "LangChain, split into tierflow's windows (`SentenceTransformersTokenTextSplitter`)",
    "llamaindex-windows": "LlamaIndex, split into tierflow's windows (`SentenceSplitter`)",
}
SHORT = {
    "bare": "bare (full rebuild)",
    "langchain": "LangChain",
    "llamaindex": "LlamaIndex",
    "langchain-windows": "LangChain, same windows",
    "llamaindex-windows": "LlamaIndex, same windows",
}
PHASE_LABELS = {
    "first": "first ingest",
    "unchanged": "unchanged re-ingest",
    "changed": "1 % changed re-ingest",
}
BENCH_DIR = REPO_ROOT / "infra" / "bench"
BENCH_VENV = REPO_ROOT / ".bench-venv"
EMBEDDING_VARIABLE = "TIERFLOW__EMBEDDING__"
CHANGED_SUFFIX = " (Revised for the peer benchmark.)"
FIRST_SPEEDUP = 1.5  # issue 8: tierflow's first ingest at least 1.5x each peer's docs/s
NDCG_TOLERANCE = 0.005  # issue 8: a faster variant's index within 0.005 nDCG@10 of the torch-built one
LOG_TAIL = 1500
WARM_UP_DOCS = 4  # tierflow's warm-up pipeline run: enough to load Beam, the stages and their imports


def _stderr(line: str) -> None:
    print(f"bench peers: {line}", file=sys.stderr, flush=True)


def bench_python(explicit: str | None = None) -> Path:
    """The bench venv's interpreter: ``explicit`` > ``TIERFLOW_BENCH_PYTHON`` > ``./.bench-venv/bin/python``.

    Raises:
        ConfigError: It does not exist; the message says how to build it or leave the peers out.
    """
    chosen = explicit or os.environ.get("TIERFLOW_BENCH_PYTHON")
    path = Path(chosen) if chosen else BENCH_VENV / "bin" / "python"
    if not path.is_file():
        looked = (
            f"--bench-python {chosen}" if explicit else f"TIERFLOW_BENCH_PYTHON={chosen}" if chosen else path
        )
        raise ConfigError(
            f"no bench venv for the peers (looked at {looked}): run `bash infra/bench/peers-venv.sh`, "
            f"or leave LangChain and LlamaIndex out with --tools {','.join(t for t in TOOLS if t not in PEERS)}"
        )
    return path


# ---- the corpus sample ---------------------------------------------------------------------------
def prepare_corpus(
    dataset: BeirDataset, limit: int, work: Path, fraction: float, seed: int
) -> tuple[Path, Path, list[str]]:
    """Write the sample and its changed copy into ``work``; return their paths and the changed ids.

    The sample is the first ``limit`` lines of ``corpus.jsonl`` (all when 0). ``round(fraction * docs)``
    documents (at least one), drawn with ``random.Random(seed)``, get :data:`CHANGED_SUFFIX` appended to
    their text. The changed file's mtime is set a second later than the sample's: tierflow takes a
    document's version from it.
    """
    lines = [line for line in dataset.corpus_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = lines[:limit] if limit else lines
    records = [json.loads(line) for line in lines]
    ids = [str(record["_id"]) for record in records]
    changed = sorted(random.Random(seed).sample(ids, max(1, round(fraction * len(ids)))))
    chosen = set(changed)
    corpus, changed_corpus = work / "corpus.jsonl", work / "corpus-changed.jsonl"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    changed_lines = [
        json.dumps({**record, "text": record.get("text", "") + CHANGED_SUFFIX}, ensure_ascii=False)
        if str(record["_id"]) in chosen
        else line
        for line, record in zip(lines, records, strict=True)
    ]
    changed_corpus.write_text("\n".join(changed_lines) + "\n", encoding="utf-8")
    later = corpus.stat().st_mtime_ns + 1_000_000_000
    os.utime(changed_corpus, ns=(later, later))
    return corpus, changed_corpus, changed


def _peer_common() -> Any:
    """``infra/bench/peer_common.py``, whose ``read_corpus`` makes the text every one-text peer embeds."""
    spec = importlib.util.spec_from_file_location("peer_common", BENCH_DIR / "peer_common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def truncation(corpus: Path, model: Path, window: int) -> dict[str, Any]:
    """What one text per document loses to the model's window: documents longer than ``window`` tokens
    (special tokens included) and the share of all tokens past it, counted with the model's tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    lengths = [len(tokenizer.encode(text).ids) for _, text in _peer_common().read_corpus(corpus)]
    total = sum(lengths)
    return {
        "window_tokens": window,
        "docs_longer": sum(length > window for length in lengths),
        "tokens_past_window": round(1 - sum(min(length, window) for length in lengths) / max(total, 1), 4),
    }


def sample_dataset(dataset: BeirDataset, doc_ids: set[str]) -> BeirDataset:
    """``dataset`` with its qrels cut to ``doc_ids`` and only the queries that still have one."""
    qrels = {
        qid: kept
        for qid, judged in dataset.qrels.items()
        if (kept := {doc: grade for doc, grade in judged.items() if doc in doc_ids})
    }
    queries = {qid: text for qid, text in dataset.queries.items() if qid in qrels}
    return dataclasses.replace(dataset, queries=queries, qrels=qrels)


# ---- one tool, one phase, one process --------------------------------------------------------------
def _command(
    tool: str,
    phase: str,
    corpus: Path,
    state: Path,
    model: Path,
    batch_size: int,
    python: Path | None,
    window: tuple[int, int] = (0, 0),
) -> list[str]:
    """The command of one tool's phase; ``window`` is tierflow's (max_tokens, overlap_tokens), which the
    windowed peers split to."""
    common = [
        "--corpus",
        str(corpus),
        "--work",
        str(state),
        "--phase",
        phase,
        "--batch-size",
        str(batch_size),
    ]
    if tool in TIERFLOW_TOOLS:
        return [sys.executable, "-m", "pipelines.bench_peers", "worker", *common, "--variant", tool]
    script = BENCH_DIR / f"peer_{tool.removesuffix('-windows')}.py"
    interpreter = sys.executable if tool == "bare" else str(python)
    if tool in WINDOWED:
        common += ["--window-tokens", str(window[0]), "--window-overlap", str(window[1])]
    return [interpreter, str(script), *common, "--model", str(model)]


def _environment() -> dict[str, str]:
    """Every process's environment: offline, no progress bars, and none of the caller's embedding
    settings (each tierflow variant sets its own, see :func:`run_tierflow_phase`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(EMBEDDING_VARIABLE)}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TIERFLOW_PROGRESS="0")
    return env


def run_phase(command: list[str], env: dict[str, str], log: Path, timeout: float) -> dict[str, Any]:
    """Run one tool/phase process; its result line, or ``{"error": ...}`` with the end of its stderr."""
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else err.stderr or ""
        log.write_text(f"$ {' '.join(command)}\n{stderr}")
        return {"error": f"timed out after {timeout:.0f} s", "log": str(log)}
    log.write_text(
        f"$ {' '.join(command)}\n--- exit {done.returncode}\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        try:
            result: dict[str, Any] = json.loads(lines[-1])
            return result
        except json.JSONDecodeError:
            pass
    tail = done.stderr.strip()[-LOG_TAIL:] or done.stdout.strip()[-LOG_TAIL:]
    return {"error": f"exit {done.returncode}: {tail}", "log": str(log)}


# ---- tierflow's runner (the ``worker`` subcommand) -----------------------------------------------------
def run_tierflow_phase(
    corpus: Path, state: Path, phase: str, batch_size: int, variant: str, dataset: Path | None = None
) -> dict[str, Any]:
    """One phase of tierflow's ingest through ``run_batch``, timed after a warm-up; in the calling process.

    The ``variant``'s settings (:data:`TIERFLOW_VARIANTS`) are set as ``TIERFLOW__EMBEDDING__*`` variables,
    as a user would: the ones it needs always (a configuration without them fails with its own error),
    the others only where the configuration has them. The warm-up embeds the corpus's first batch like the peers'
    (the model is then shared by the pipeline's stages in this process) and runs the pipeline once over a
    few documents into a throwaway index, so Beam, the stages and their imports are loaded before the
    timer like the peers' libraries. With ``dataset``, the index is then scored (nDCG@10) on its queries, cut to the documents of
    ``corpus``, with queries embedded by the same backend.
    """
    from connectors.files import FileSourceConfig
    from indexing.embedder import Embedder
    from indexing.hot import HotIndex
    from pipelines.batch import run_batch
    from tierflow.config import EmbeddingConfig, load_config

    needed, optional = TIERFLOW_VARIANTS[variant]
    known = {f.name for f in dataclasses.fields(EmbeddingConfig)}
    settings = {**{k: v for k, v in optional.items() if k in known}, **needed}
    os.environ.update({f"{EMBEDDING_VARIABLE}{k.upper()}": v for k, v in settings.items()})
    config = load_config(
        overrides={"index_dir": str(state / "index"), "embedding": {"batch_size": batch_size}}
    )
    embedder = Embedder(config.embedding)
    lines = corpus.read_text(encoding="utf-8").splitlines()
    embedder.embed([json.loads(line).get("text", "") for line in lines[:batch_size]])
    warm = state / "warm-up"
    shutil.rmtree(warm, ignore_errors=True)
    warm.mkdir(parents=True)
    (warm / "corpus.jsonl").write_text("\n".join(lines[:WARM_UP_DOCS]) + "\n", encoding="utf-8")
    warm_config = dataclasses.replace(config, index_dir=str(warm / "index"))
    run_batch(FileSourceConfig(str(warm / "corpus.jsonl"), format="jsonl"), warm_config)
    shutil.rmtree(warm)

    index = HotIndex(config.index_dir)
    before = index.docs() if phase != "first" else {}
    started = time.perf_counter()
    summary = run_batch(FileSourceConfig(str(corpus), format="jsonl"), config)
    seconds = time.perf_counter() - started

    after = index.docs()
    live = [s for s in after.values() if s.status in ("canonical", "duplicate")]
    embedded = sorted(
        d
        for d, s in after.items()
        if s.status == "canonical" and (d not in before or before[d].segment_id != s.segment_id)
    )
    counts = summary["counts"]
    result: dict[str, Any] = {
        "tool": variant,
        "settings": settings,
        "phase": phase,
        "docs": sum(1 for line in lines if line.strip()),
        "seconds": round(seconds, 4),
        "embedded": len(embedded),
        "embedded_ids": embedded if phase != "first" else [],
        "chunks_embedded": counts.get("chunks_embedded", 0),
        "chunks_reused": counts.get("chunks_reused", 0),
        "chunks_of_embedded": sum(after[d].n_chunks for d in embedded),
        "skipped": counts.get("skipped_unchanged", 0),
        "files_unchanged": counts.get("files_unchanged", 0),
        "indexed": len(live),
        "duplicates": sum(1 for s in live if s.status == "duplicate"),
        "vectors": index.manifest().n_vectors,
        "counts": counts,
        "timings_ms": summary["timings_ms"],
        "backend": "torch",
        "precision": embedder.precision,
        "device": embedder.device,
    }
    if dataset is not None:
        result.update(_ndcg(dataset, corpus, index, config.embedding))
    return result


def _ndcg(dataset_path: Path, corpus: Path, index: Any, embedding: Any) -> dict[str, Any]:
    from evaluation.retrieval import evaluate_index
    from indexing.search import Searcher

    dataset = load_beir(dataset_path)
    ids = {
        str(json.loads(line)["_id"])
        for line in corpus.read_text(encoding="utf-8").splitlines()
        if line.strip()
    }
    sample = sample_dataset(dataset, ids)
    searcher = Searcher(index, embedding)
    try:
        scored = evaluate_index(searcher, sample, ks=(10,))
    finally:
        searcher.close()
    return {"ndcg@10": scored["metrics"]["mean"]["ndcg@10"], "eval_queries": len(sample.queries)}


def _worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.bench_peers worker")
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--phase", choices=PHASES, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--variant", choices=TIERFLOW_TOOLS, default=REFERENCE)
    parser.add_argument("--evaluate", type=Path, help="a BEIR dataset to score the index on after the run")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    result = run_tierflow_phase(
        args.corpus, args.work, args.phase, args.batch_size, args.variant, args.evaluate
    )
    print(json.dumps(result, sort_keys=True), flush=True)
    sys.stderr.flush()
    # The phase is over and its index durable; end the process here. A native thread left by the run
    # (seen once in CI: "terminate called without an active exception", SIGABRT during interpreter
    # teardown) must not turn a finished measurement into a failed one. Not yet traced to its library.
    os._exit(0)


# ---- the benchmark ---------------------------------------------------------------------------------
def bench_peers(
    dataset: Path,
    limit: int,
    out: Path,
    tools: Sequence[str] = TOOLS,
    batch_size: int = 64,
    fraction: float = 0.01,
    seed: int = 8,
    python: str | None = None,
    timeout: float = 3600.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; write ``bench-peers.json``, ``.md`` and ``.png`` into ``out``.

    Args:
        dataset: A BEIR dataset directory (SciFact).
        limit: Documents to use, the first of ``corpus.jsonl`` (0 = all).
        out: Report folder; tool state goes to ``out/work`` (removed at the end), process logs to
            ``out/logs``.
        tools: Some of :data:`TOOLS`, run in that order.
        batch_size: Texts per forward pass, every tool.
        fraction: Share of the documents the changed phase changes (at least one).
        seed: Seed of the changed documents' draw.
        python: The bench venv's interpreter (default: see :func:`bench_python`).
        timeout: Seconds one tool/phase process may run.
        progress: Called with a line per step (default: printed to stderr).

    Returns:
        The report written to ``bench-peers.json``. A tool whose process failed has an ``error`` in that
        phase and skips its later phases; the others go on.

    Raises:
        ConfigError: An unknown tool, or peers asked for without the bench venv.
    """
    from indexing.embedder import model_dir
    from tierflow.config import load_config

    say = progress or _stderr
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown or not tools:
        raise ConfigError(
            f"unknown tool(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(TOOLS)}"
        )
    tools = [t for t in TOOLS if t in tools]
    peers_python = bench_python(python) if any(t in PEERS for t in tools) else None
    config = load_config()
    model = model_dir(config.embedding)
    window = (config.chunking.max_tokens, config.chunking.overlap_tokens)
    beir = load_beir(dataset)
    out.mkdir(parents=True, exist_ok=True)
    work, logs = out / "work", out / "logs"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    work.mkdir()
    logs.mkdir()
    began = time.perf_counter()
    corpus, changed_corpus, changed = prepare_corpus(beir, limit, work, fraction, seed)
    n_docs = sum(1 for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip())
    truncated = truncation(corpus, model, window[0])
    say(
        f"{n_docs} documents from {beir.corpus_path}, {len(changed)} changed in the last phase; model {model}"
    )
    results: dict[str, dict[str, Any]] = {}
    try:
        for tool in tools:
            results[tool] = {}
            for phase in PHASES:
                command = _command(
                    tool,
                    phase,
                    changed_corpus if phase == "changed" else corpus,
                    work / tool,
                    model,
                    batch_size,
                    peers_python,
                    window,
                )
                if tool in TIERFLOW_TOOLS and phase == "first":
                    command += ["--evaluate", str(dataset)]
                say(f"{LABELS[tool]}: {PHASE_LABELS[phase]} …")
                result = run_phase(command, _environment(), logs / f"{tool}-{phase}.log", timeout)
                results[tool][phase] = result
                say(f"{LABELS[tool]}: {PHASE_LABELS[phase]}: {_describe(result, phase)}")
                if "error" in result:
                    break
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = _report(
        dataset, beir, n_docs, limit, batch_size, fraction, seed, changed, model, window, results
    )
    report["texts"]["truncated"] = truncated
    report["total_s"] = round(time.perf_counter() - began, 1)
    say("writing bench-peers.json, bench-peers.md and bench-peers.png")
    (out / "bench-peers.json").write_text(json.dumps(report, indent=2))
    (out / "bench-peers.md").write_text(markdown(report))
    _plot(report, out / "bench-peers.png")
    say(f"done in {report['total_s']} s: {out / 'bench-peers.md'}")
    return report


def _describe(result: dict[str, Any], phase: str) -> str:
    if "error" in result:
        return f"FAILED ({result['error'].strip().splitlines()[-1][:300]}; log {result['log']})"
    rate = (
        f", {result['docs'] / result['seconds']:.1f} docs/s" if phase == "first" and result["seconds"] else ""
    )
    extra = f", nDCG@10 {result['ndcg@10']:.4f}" if "ndcg@10" in result else ""
    return f"{result['docs']} docs in {result['seconds']:.2f} s{rate}, embedded {result['embedded']}{extra}"


def _speed(result: dict[str, Any] | None, phase: str) -> float | None:
    """docs/s of a first ingest, seconds of a re-ingest; None when the phase did not run."""
    if not result or "error" in result:
        return None
    if phase == "first":
        return float(result["docs"] / result["seconds"]) if result["seconds"] else None
    return float(result["seconds"])


def _ratio(tierflow: dict[str, Any], peer: dict[str, Any], phase: str) -> float | None:
    """tierflow's speed over the peer's (> 1: tierflow faster): docs/s over docs/s, or seconds over seconds."""
    mine, theirs = _speed(tierflow.get(phase), phase), _speed(peer.get(phase), phase)
    if not mine or not theirs:
        return None
    return round(mine / theirs if phase == "first" else theirs / mine, 3)


def _checks(tool: str, phases: dict[str, Any], n_docs: int, changed: list[str]) -> dict[str, bool | None]:
    """Soundness, whatever the timings: all documents indexed, nothing re-embedded that did not change."""

    def ok(phase: str) -> dict[str, Any] | None:
        result = phases.get(phase)
        return result if result and "error" not in result else None

    def indexed(result: dict[str, Any]) -> bool:
        if tool in TIERFLOW_TOOLS:
            return bool(result["indexed"] == n_docs)
        findable = result.get("findable_docs", result["vectors"])
        if tool in WINDOWED:  # one vector per window of every document
            return bool(
                len(result["chunks_by_doc"]) == n_docs and result["vectors"] == result["chunks"] == findable
            )
        return bool(result["vectors"] == n_docs == findable)

    def changed_windows(result: dict[str, Any]) -> int:
        return sum(result["chunks_by_doc"].get(doc_id, 0) for doc_id in changed)

    first, unchanged, after = ok("first"), ok("unchanged"), ok("changed")
    incremental = tool != "bare"
    checks: dict[str, bool | None] = {
        "first_indexed_every_doc": indexed(first) if first else None,
        "unchanged_embedded_nothing": (unchanged["embedded"] == 0) if unchanged and incremental else None,
        # A windowed peer may keep a window whose text did not change (LangChain's record manager keys each
        # window by its content hash), so it embeds at most the changed documents' windows.
        "changed_embedded_only_changed": (
            (
                0 < after["embedded"] <= changed_windows(after)
                if tool in WINDOWED
                else after["embedded"] == len(changed)
            )
            and after.get("embedded_ids", changed) == changed
            if after and incremental
            else None
        ),
        "changed_indexed_every_doc": indexed(after) if after else None,
    }
    if tool in TIERFLOW_TOOLS and first and after:
        checks["changed_chunks_match"] = (
            after["chunks_embedded"] + after.get("chunks_reused", 0) == after["chunks_of_embedded"]
        )
    return checks


def _report(
    dataset: Path,
    beir: BeirDataset,
    n_docs: int,
    limit: int,
    batch_size: int,
    fraction: float,
    seed: int,
    changed: list[str],
    model: Path,
    window: tuple[int, int],
    results: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    tools = {
        tool: {"label": LABELS[tool], "phases": phases, "checks": _checks(tool, phases, n_docs, changed)}
        for tool, phases in results.items()
    }
    ratios = {
        mine: {
            other: {phase: _ratio(results[mine], results[other], phase) for phase in PHASES}
            for other in results
            if other not in TIERFLOW_TOOLS
        }
        for mine in results
        if mine in TIERFLOW_TOOLS
    }
    ran = [t for t in TIERFLOW_TOOLS if "ndcg@10" in results.get(t, {}).get("first", {})]
    ndcg: dict[str, Any] = {t: results[t]["first"]["ndcg@10"] for t in ran}
    if REFERENCE in ndcg:
        ndcg["difference_to_torch"] = {t: round(ndcg[t] - ndcg[REFERENCE], 5) for t in ran if t != REFERENCE}
    if ran:
        ndcg["queries"] = results[ran[0]]["first"]["eval_queries"]
    variants = {
        t: {k: results[t]["first"][k] for k in ("settings", "backend", "precision", "device")} for t in ran
    }
    report: dict[str, Any] = {
        "dataset": str(dataset),
        "corpus": str(beir.corpus_path),
        "documents": n_docs,
        "limit": limit,
        "batch_size": batch_size,
        "changed": {"fraction": fraction, "seed": seed, "docs": len(changed), "ids": changed},
        "model": str(model),
        "texts": {
            "peers_and_bare": 'one text per document: title + "\\n\\n" + text (truncated by the model)',
            "windowed_peers": (
                f"the same text cut by the peer's own token splitter into windows of {window[0]} model tokens "
                f"overlapping by {window[1]}, tierflow's chunking settings"
            ),
            "tierflow": "its own chunking (token windows, title prefixed), so possibly several per document",
        },
        "tools": tools,
        "ratios": ratios,
        "ndcg@10": ndcg,
        "tierflow_variants": variants,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    report["acceptance"] = _acceptance(report)
    return report


def _acceptance(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 8's acceptance checks, for each tierflow variant that ran; ``passed`` is None when not measured."""
    tools, ratios, ndcg = report["tools"], report["ratios"], report["ndcg@10"]
    lines: list[dict[str, Any]] = []

    def add(tierflow: str, check: str, value: float | None, passed: bool | None) -> None:
        lines.append({"tierflow": tierflow, "check": check, "value": value, "passed": passed})

    for mine in TIERFLOW_TOOLS:
        if mine not in ratios or "error" in tools[mine]["phases"].get("first", {"error": ""}):
            continue
        mine_ratios = ratios[mine]
        for peer in (p for p in PEERS if p in tools or p not in WINDOWED):
            value = mine_ratios.get(peer, {}).get("first")
            add(
                mine,
                f"first ingest >= {FIRST_SPEEDUP}x the docs/s of {SHORT[peer]}",
                value,
                None if value is None else value >= FIRST_SPEEDUP,
            )
        if mine != REFERENCE:
            diff = ndcg.get("difference_to_torch", {}).get(mine)
            add(
                mine,
                f"nDCG@10 within {NDCG_TOLERANCE} of the torch run",
                diff,
                None if diff is None else abs(diff) <= NDCG_TOLERANCE,
            )
        value = mine_ratios.get("langchain", {}).get("unchanged")
        add(
            mine, "unchanged re-ingest faster than LangChain's", value, None if value is None else value > 1.0
        )
        values = [
            mine_ratios.get(peer, {}).get("changed")
            for peer in PEERS
            if peer in tools or peer not in WINDOWED
        ]
        measured = [v for v in values if v is not None]
        add(
            mine,
            "1 % changed re-ingest no slower than any peer",
            min(measured) if measured else None,
            None if not values or len(measured) < len(values) else min(measured) >= 1.0,
        )
    return lines


# ---- reports ---------------------------------------------------------------------------------------
def _cell(result: dict[str, Any] | None, phase: str) -> str:
    if result is None:
        return "not run"
    if "error" in result:
        return "failed"
    if phase == "first":
        texts = result.get("chunks_embedded", result["embedded"])
        return (
            f"{result['docs'] / result['seconds']:.1f} docs/s ({result['seconds']:.2f} s; embedded {texts})"
        )
    reused = result.get("chunks_reused", 0)
    kept = f"; {reused} of {result.get('chunks_of_embedded')} windows kept their vectors" if reused else ""
    return f"{result['seconds']:.2f} s (embedded {result['embedded']}{kept})"


def _texts_line(texts: dict[str, Any]) -> str:
    line = (
        "What each tool embeds: the one-text peers and bare one text per document, which the model truncates "
        "to its window; tierflow its own token windows (title prefixed); the windowed peers "
        + texts["windowed_peers"].removeprefix("the same text ")
        + ". 'embedded' counts texts: windows for tierflow and the windowed peers, documents for the others."
    )
    cut = texts.get("truncated")
    if cut:
        line += (
            f" {cut['docs_longer']} documents are longer than the {cut['window_tokens']}-token window; one "
            f"text per document leaves {cut['tokens_past_window']:.0%} of the corpus's tokens unembedded."
        )
    return line


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}×"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: results per tool and phase, ratios, soundness and the acceptance checks."""
    tools, ratios, ndcg = report["tools"], report["ratios"], report["ndcg@10"]
    changed = report["changed"]
    lines = [
        f"# Peer ingest benchmark: {report['documents']} documents of {Path(report['dataset']).name}",
        "",
        f"Batch size {report['batch_size']}; the changed phase appends text to {changed['docs']} documents "
        f"({changed['fraction']:.0%}, seed {changed['seed']}). Each tool and phase ran in its own process, one "
        "after another, model loaded and one batch embedded before the timer; timed from reading the corpus "
        "to the index being durable on disk.",
        "",
        _texts_line(report["texts"]),
        "",
        "| tool | " + " | ".join(PHASE_LABELS[p] for p in PHASES) + " |",
        "|---|" + "---:|" * len(PHASES),
    ]
    for entry in tools.values():
        phases = entry["phases"]
        lines.append(f"| {entry['label']} | " + " | ".join(_cell(phases.get(p), p) for p in PHASES) + " |")
    if any(tool in tools for tool in TIERFLOW_TOOLS):
        lines += [
            "",
            "How tierflow re-ingests: a file whose size, mtime and reading settings are those its last commit "
            "recorded is not read (the unchanged run); a changed file is read and validated in the driver, the "
            "documents whose content the index holds already are settled there (their new version recorded), "
            "and only the changed ones go through the Beam pipeline (`pipelines/driver.py`), where a window whose "
            "text did not change keeps its stored vector.",
        ]
    for mine, against in ratios.items():
        if not any(v is not None for values in against.values() for v in values.values()):
            continue
        lines += [
            "",
            f"**{LABELS[mine]}: speed ÷ the other's** (> 1: tierflow faster; first ingest docs/s ÷ docs/s, "
            "re-ingests their seconds ÷ tierflow's)",
            "",
            "| against | " + " | ".join(PHASE_LABELS[p] for p in PHASES) + " |",
            "|---|" + "---:|" * len(PHASES),
        ]
        for other, values in against.items():
            lines.append(f"| {LABELS[other]} | " + " | ".join(_times(values[p]) for p in PHASES) + " |")
    variants = report["tierflow_variants"]
    if variants:
        lines += [
            "",
            f"**tierflow variants** (nDCG@10 over {ndcg['queries']} queries; tierflow embeds its own chunks)",
            "",
            "| variant | settings | ran as | chunks embedded (first ingest) | nDCG@10 | Δ to torch fp32 |",
            "|---|---|---|---:|---:|---:|",
        ]
        for tool, ran in variants.items():
            settings = ", ".join(f"{k} = {v}" for k, v in ran["settings"].items()) or "defaults"
            diff = ndcg.get("difference_to_torch", {}).get(tool)
            lines.append(
                f"| {LABELS[tool]} | {settings} | {ran['backend']} {ran['precision']} on {ran['device']} | "
                f"{tools[tool]['phases']['first']['chunks_embedded']} | {ndcg[tool]:.4f} | "
                f"{'' if diff is None else f'{diff:+.5f}'} |"
            )
    lines += ["", "## Soundness", ""]
    for entry in tools.values():
        shown = ", ".join(
            f"{name} {'✓' if ok else '✗'}" for name, ok in entry["checks"].items() if ok is not None
        )
        after = entry["phases"].get("changed", {})
        if after.get("findable_docs", after.get("vectors")) != after.get("vectors"):
            shown += (
                f" (after the changed run {after['vectors']} vectors, but only {after['findable_docs']} "
                "entries a search can return: FaissMapVectorStore reuses FAISS ids after a delete)"
            )
        elif "chunks" in after and after["vectors"] != after["chunks"]:
            shown += (
                f" (after the changed run {after['vectors']} vectors for the {after['chunks']} texts the corpus "
                "splits into: replaced texts were left in the store)"
            )
        lines.append(f"- {entry['label']}: {shown or 'nothing measured'}")
    lines += ["", "## Acceptance (issue 8)", ""]
    for item in report["acceptance"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[item["passed"]]
        value = "not measured" if item["value"] is None else f"{item['value']:g}"
        lines.append(f"- {verdict}: {LABELS[item['tierflow']]}: {item['check']} ({value})")
    failed = [f"{LABELS[t]} {p}" for t, e in tools.items() for p, r in e["phases"].items() if "error" in r]
    if failed:
        lines += ["", f"Failed runs (see the logs folder): {', '.join(failed)}."]
    lines += [
        "",
        f"Total benchmark time {report.get('total_s', '?')} s on {report['machine']['cpus']} CPUs. The machine "
        "is shared and noisy: compare the ratios, measured in one run, not the seconds.",
    ]
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ratios = report["ratios"]
    mines = [m for m in ratios if any(v is not None for other in ratios[m].values() for v in other.values())]
    others = [t for t in TOOLS if t not in TIERFLOW_TOOLS and t in report["tools"]]
    values = [v for m in mines for o in others for v in ratios[m].get(o, {}).values() if v]
    low, high = min([*values, 1.0, FIRST_SPEEDUP]) / 1.6, max([*values, 1.0, FIRST_SPEEDUP]) * 1.6
    fig, axes = plt.subplots(1, len(PHASES), figsize=(14, 4.8), sharey=True)
    width = 0.8 / max(1, len(mines))
    x = np.arange(len(others))
    colours = {"tierflow-torch": "#1f77b4", "tierflow-auto": "#2ca02c"}
    for axis, phase in zip(axes, PHASES, strict=True):
        for i, mine in enumerate(mines):
            offset = (i - (len(mines) - 1) / 2) * width
            for j, other in enumerate(others):
                value = ratios[mine].get(other, {}).get(phase)
                if value:
                    axis.bar(x[j] + offset, value - low, width, bottom=low, color=colours[mine])
                axis.annotate(
                    f"{value:.2g}×" if value else "n/a",
                    (x[j] + offset, value or 1.0),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                )
        axis.axhline(1.0, color="#555555", linewidth=1, linestyle="--")
        if phase == "first":
            axis.axhline(FIRST_SPEEDUP, color="#d62728", linewidth=1, linestyle=":")
        axis.set_yscale("log")
        axis.set_ylim(low, high)
        axis.set_xlim(-0.5, len(others) - 0.5)
        axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.set_xticks(x, [SHORT[o].replace(", ", ",\n") for o in others], fontsize=8)
        axis.set_title(PHASE_LABELS[phase])
    handles: list[Any] = [plt.Rectangle((0, 0), 1, 1, color=colours[m]) for m in mines]
    handles.append(plt.Line2D([], [], color="#d62728", linestyle=":"))
    axes[0].legend(
        handles, [*(LABELS[m] for m in mines), f"{FIRST_SPEEDUP}× (issue 8)"], loc="best", fontsize=8
    )
    axes[0].set_ylabel("tierflow speed ÷ the other's (> 1: tierflow faster)")
    missing = [LABELS[t] for t in TIERFLOW_TOOLS if t in report["tools"] and t not in mines]
    fig.suptitle(
        f"Peer ingest benchmark, {report['documents']} documents, ratios measured in one run"
        + (f" ({', '.join(missing)}: failed)" if missing else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- command line ------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.bench_peers`` (``tierflow bench peers``): run the benchmark, print the table.

    Args:
        argv: ``--dataset DIR [--limit N] [--out DIR] [--tools t1,t2] [--batch-size N]
            [--changed-fraction F] [--seed N] [--bench-python PATH] [--timeout S]``.

    Returns:
        0 when every tool's phases ran (whatever the acceptance checks say), 1 when one failed (the report
        is still written), 2 on bad input (printed as ``tierflow: error: ...``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return _worker_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="tierflow bench peers",
        description="Ingest throughput and re-ingest cost: tierflow vs bare encode, LangChain and LlamaIndex.",
    )
    parser.add_argument("--dataset", default="../shared/data/scifact", help="a BEIR dataset directory")
    parser.add_argument("--limit", type=int, default=0, help="documents to use, the first ones (0 = all)")
    parser.add_argument("--out", default="tierflow-data/bench-peers", help="report folder")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, of {', '.join(TOOLS)}")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--changed-fraction", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=8, help="seed of the changed documents' draw")
    parser.add_argument("--bench-python", help="the peers' interpreter (default: ./.bench-venv/bin/python)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one tool/phase may run")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed by argparse)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        report = bench_peers(
            Path(args.dataset),
            args.limit,
            Path(args.out),
            [t.strip() for t in args.tools.split(",") if t.strip()],
            args.batch_size,
            args.changed_fraction,
            args.seed,
            args.bench_python,
            args.timeout,
        )
    except (ConfigError, OSError) as err:
        print(f"tierflow: error: {err}", file=sys.stderr)
        return 2
    print(markdown(report), end="")
    failed = any("error" in r for entry in report["tools"].values() for r in entry["phases"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
