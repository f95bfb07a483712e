"""Hot-search benchmark: tierflow's hot-tier search against bare FAISS on the very same HNSW index, at an
efSearch where both find at least 95% of the exact top 10 (GitHub issue 8).

One process, one synthetic index (clustered unit vectors, one chunk per document, no embedding model), one
query set (perturbed copies of stored vectors):

1. **build**: the documents are committed through :meth:`~indexing.hot.HotIndex.commit` as one HNSW
   segment (:func:`lifecycle.synthetic.build_synthetic_index`); the exact top 10 of every query comes from
   a float32 brute-force scan.
2. **sides**: *tierflow* is :meth:`~indexing.search.Searcher.search_vectors`, the search ``tierflow search``
   and ``tierflow serve`` run once a query is embedded (the manifest checked on every query, FAISS,
   tombstone selectors, chunk rows, documents ranked by their best chunk, results with ids, scores and
   text; their lineage, metadata and duplicates are made when first read, which the benchmark does not do,
   as a caller that wants ids does not);
   *tierflow, memory-mapped* is the same over the warm tier's storage; *bare FAISS* is the segment's
   ``index.faiss`` read with ``faiss.read_index`` and queried with ``index.search`` (k = 10).
3. **sweep**: Recall@10 and latency of every side at each efSearch of :data:`EF_SWEEP`; the benchmark
   settles on the smallest one at which both tierflow and bare FAISS reach :data:`TARGET_RECALL` and
   search with the same efSearch (tierflow searches with at least the efSearch of a ``k × CHUNK_FANOUT``
   chunk fetch: it asks FAISS for the first ``k + 1`` of those chunks, and for all of them when the first
   do not settle the top ``k`` documents).
4. **single queries** at that efSearch, one query per call as a service searches: the sides take turns
   in rounds (the side that starts alternates) so that the shared machine's noise falls on all of them;
   FAISS runs on one thread here (see :func:`_timed_rounds`). p50/p99 and QPS per side, and the QPS ratio
   tierflow / bare FAISS per round and overall.
5. **batched**: all queries in one call per side, FAISS on every core.
6. **load**: time to open the index and answer a first query, and the memory it takes, for each side in a
   fresh process.

A segment's efSearch is recorded in its manifest entry when it is built (``IndexSpec.ef_search``); the
benchmark searches copies of the committed manifest that differ only in it.

Results of every size run into the same ``--out`` are kept side by side in ``bench-search.json``, ``.md``
and ``.png`` (a new run of a size replaces that size's entry).

Example:
    >>> report = bench_search(100_000, Path("tierflow-data/bench"))
    >>> report["single"]["ratio"]["qps"]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from indexing.exact import exact_top_k
from indexing.faiss_index import IndexSpec
from indexing.hot import HotIndex
from indexing.manifest import Manifest
from indexing.search import CHUNK_FANOUT, Searcher
from indexing.segment import INDEX_FILE
from lifecycle.bench import make_queries, recall_at_k
from lifecycle.synthetic import build_synthetic_index
from tierflow.config import EmbeddingConfig
from tierflow.progress import bar as progress_bar

K = 10
TARGET_RECALL = 0.95
TARGET_RATIO = 0.8  # the acceptance: hot search at >= 0.8x bare FAISS QPS at the same recall
EF_SWEEP = (16, 24, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512)
HNSW_M = 32
EF_CONSTRUCTION = 100  # IndexSpec's default is 200: half the build time, for a 1M-vector run in minutes
SWEEP_QUERIES = 200  # queries timed per efSearch of the sweep (all of them count for recall)
WARM_UP_QUERIES = 20
BATCH_ROUNDS = 3
DEFAULT_THREAD_ROUNDS = 2  # rounds of single queries with FAISS on all its threads (tierflow, bare)
HEARTBEAT_S = 30.0
PROGRESS_EVERY = 100  # timed queries between progress bar updates
REPORT = "bench-search"
TIERFLOW, WARM, BARE = "tierflow", "tierflow_mmap", "bare_faiss"
SIDES = (TIERFLOW, WARM, BARE)
LABELS = {TIERFLOW: "tierflow (hot, in RAM)", WARM: "tierflow (memory-mapped)", BARE: "bare FAISS"}
COLORS = {TIERFLOW: "#1f77b4", WARM: "#2ca02c", BARE: "#ff7f0e"}

Search = Callable[[np.ndarray], list[list[int]]]
"""Query vectors (one per row) -> the top ``K`` vector ids of each."""


def _stderr(line: str) -> None:
    print(f"bench search: {line}", file=sys.stderr, flush=True)


@contextmanager
def _heartbeat(say: Callable[[str], None], what: str) -> Iterator[None]:
    """Say every :data:`HEARTBEAT_S` seconds that ``what`` is still running (a FAISS build says nothing)."""
    done = threading.Event()
    started = time.perf_counter()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            say(f"  {what}: {time.perf_counter() - started:.0f} s so far")

    thread = threading.Thread(target=beat, name="bench-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextmanager
def _faiss_threads(n: int) -> Iterator[None]:
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def at_ef_search(manifest: Manifest, ef_search: int) -> Manifest:
    """``manifest`` with every segment searched at ``ef_search`` (a copy; what a segment built with
    ``IndexSpec(ef_search=...)`` records)."""
    return replace(
        manifest,
        segments=[
            replace(live, info=replace(live.info, index={**live.info.index, "ef_search": ef_search}))
            for live in manifest.segments
        ],
    )


def _hnsw(index: Any) -> Any:
    """The HNSW graph of a segment's ``IndexIDMap2`` over ``IndexHNSWFlat`` (its ``efSearch`` is settable)."""
    import faiss

    hnsw: Any = faiss.downcast_index(index.index)
    return hnsw.hnsw


class Sides:
    """The searches compared, each a :data:`Search` at the efSearch last set with :meth:`set_ef_search`.

    Args:
        root: The hot tier's directory (one HNSW segment).
    """

    def __init__(self, root: Path) -> None:
        import faiss

        self.hot = HotIndex(root)
        self.warm = HotIndex(root, mmap=True)
        self.searchers = {
            TIERFLOW: Searcher(self.hot, EmbeddingConfig()),
            WARM: Searcher(self.warm, EmbeddingConfig()),
        }
        [live] = self.hot.manifest().segments
        self.bare: Any = faiss.read_index(str(self.hot.segments_dir / live.info.segment_id / INDEX_FILE))
        self._hnsw = _hnsw(self.bare)
        self._tuned: dict[str, tuple[Manifest, Manifest]] = {}  # side -> (committed, at the efSearch)
        self.ef_search = int(live.info.index["ef_search"])

    def set_ef_search(self, ef_search: int) -> None:
        self.ef_search = ef_search
        self._hnsw.efSearch = ef_search
        self._tuned.clear()

    def _manifest(self, side: str) -> Manifest:
        # Every query checks CURRENT, as `tierflow search` and the service do; the copy at the efSearch is
        # made once per committed manifest.
        committed = self.searchers[side].index.manifest()
        found = self._tuned.get(side)
        if found is None or found[0] is not committed:
            found = self._tuned[side] = (committed, at_ef_search(committed, self.ef_search))
        return found[1]

    def search(self, side: str) -> Search:
        if side == BARE:
            return lambda queries: self.bare.search(queries, K)[1].tolist()
        searcher = self.searchers[side]
        return lambda queries: [
            [r.vector_id for r in results]
            for results in searcher.search_vectors(queries, K, manifest=self._manifest(side))
        ]

    def scores(self, side: str, queries: np.ndarray) -> list[list[float]]:
        """Scores of the top ``K`` (for checking that the sides agree)."""
        if side == BARE:
            return [[float(s) for s in row] for row in self.bare.search(queries, K)[0]]
        found = self.searchers[side].search_vectors(queries, K, manifest=self._manifest(side))
        return [[r.score for r in results] for results in found]


def _latency(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(statistics.fmean(ms)), 4),
        "qps": round(1000.0 / float(statistics.fmean(ms)), 1),
    }


def _timed_rounds(
    searches: dict[str, Search], queries: np.ndarray, rounds: int, bar: Any, threads: int | None = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Every side searches every query, one per call, in ``rounds`` rounds; the side that starts a round
    alternates. Returns per side the seconds of every query and the total seconds of every round.

    FAISS runs on ``threads`` threads (None: as many as it would). One by default: a single query uses one
    anyway, and an ``IndexIDMap``'s own search wakes every OpenMP thread to map ten labels, which on a
    busy machine costs milliseconds of waiting (tierflow maps them itself:
    :class:`~indexing.faiss_index.PreparedSearch`). :data:`DEFAULT_THREAD_ROUNDS` rounds measure that too.
    """
    import faiss

    names = list(searches)
    with _faiss_threads(threads or faiss.omp_get_max_threads()):
        for search in searches.values():
            for query in queries[:WARM_UP_QUERIES]:
                search(query[None, :])
        seconds: dict[str, list[float]] = {name: [] for name in names}
        per_round: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                search, spent = searches[name], seconds[name]
                begun = len(spent)
                for start in range(0, len(queries), PROGRESS_EVERY):
                    block = queries[start : start + PROGRESS_EVERY]
                    for query in block:
                        started = time.perf_counter()
                        search(query[None, :])
                        spent.append(time.perf_counter() - started)
                    bar.update(len(block))  # between queries, never inside a timed one
                per_round[name].append(sum(spent[begun:]))
    return seconds, per_round


def _sweep(
    sides: Sides, queries: np.ndarray, exact: np.ndarray, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Recall@10 (every query) and single-query latency (:data:`SWEEP_QUERIES` of them) per efSearch."""
    fetch = K * CHUNK_FANOUT
    timed = queries[:SWEEP_QUERIES]
    out = []
    with progress_bar(len(EF_SWEEP) * len(SIDES) * len(timed), "efSearch sweep", unit="query") as bar:
        for ef in EF_SWEEP:
            sides.set_ef_search(ef)
            searches = {side: sides.search(side) for side in SIDES}
            recall = {
                side: round(recall_at_k(search(queries), exact), 4) for side, search in searches.items()
            }
            seconds, _ = _timed_rounds(searches, timed, 1, bar)
            latency = {side: _latency(s) for side, s in seconds.items()}
            out.append(
                {
                    "ef_search": ef,
                    "tierflow_ef_search": max(ef, fetch),
                    "recall_at_10": recall,
                    "latency_ms": latency,
                }
            )
            say(
                f"  efSearch {ef}: Recall@10 "
                + ", ".join(f"{side} {recall[side]:.4f}" for side in SIDES)
                + "; p50 "
                + ", ".join(f"{side} {latency[side]['p50_ms']:.3f} ms" for side in SIDES)
            )
    return out


def _settle(sweep: list[dict[str, Any]]) -> tuple[int, bool]:
    """The efSearch to compare at: the smallest at which tierflow and bare FAISS reach the target recall
    searching with the same efSearch (else the one with the best recall); and whether the target was met."""
    same = [row for row in sweep if row["ef_search"] == row["tierflow_ef_search"]]
    for row in same:
        if min(row["recall_at_10"][TIERFLOW], row["recall_at_10"][BARE]) >= TARGET_RECALL:
            return row["ef_search"], True
    best = max(same, key=lambda row: min(row["recall_at_10"][TIERFLOW], row["recall_at_10"][BARE]))
    return best["ef_search"], False


def _equal_recall(sweep: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Tierflow and bare FAISS each at its own cheapest efSearch of the sweep (best p50) that reaches the
    target recall: their efSearch and latency ratios (None when one never reaches it). Tierflow's
    candidates are the efSearch values it really searches with."""
    cheapest: dict[str, dict[str, Any]] = {}
    for side in (TIERFLOW, BARE):
        good = [
            row
            for row in sweep
            if row["recall_at_10"][side] >= TARGET_RECALL
            and (side == BARE or row["ef_search"] == row["tierflow_ef_search"])
        ]
        if not good:
            return None
        cheapest[side] = min(good, key=lambda row: row["latency_ms"][side]["p50_ms"])
    ours, theirs = cheapest[TIERFLOW]["latency_ms"][TIERFLOW], cheapest[BARE]["latency_ms"][BARE]
    return {
        "tierflow_ef_search": cheapest[TIERFLOW]["ef_search"],
        "bare_ef_search": cheapest[BARE]["ef_search"],
        "p50_ratio": round(ours["p50_ms"] / theirs["p50_ms"], 3),
        "qps_ratio": round(ours["qps"] / theirs["qps"], 3),
    }


def _memory_bytes(field: str) -> int:
    """A memory figure of this process from Linux's ``/proc/self/status`` (``VmRSS``: resident now,
    ``VmHWM``: the most it has been); 0 elsewhere. ``ru_maxrss`` would not do: a spawned process inherits
    the peak of the process it was forked from."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def _load_probe(root: str, side: str, ef_search: int, query: np.ndarray) -> dict[str, float]:
    """In a fresh process: seconds to open the index and answer ``query``, and the resident memory that
    added, after and at its peak (run by :func:`_loads`)."""
    import faiss

    before = _memory_bytes("VmRSS")
    started = time.perf_counter()
    if side == BARE:
        [live] = HotIndex(root).manifest().segments
        index: Any = faiss.read_index(str(Path(root) / "segments" / live.info.segment_id / INDEX_FILE))
        _hnsw(index).efSearch = ef_search
        index.search(query, K)
    else:
        hot = HotIndex(root, mmap=side == WARM)
        Searcher(hot, EmbeddingConfig()).search_vectors(
            query, K, manifest=at_ef_search(hot.manifest(), ef_search)
        )
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "rss_mib": round((_memory_bytes("VmRSS") - before) / 2**20, 1),
        "peak_rss_mib": round((_memory_bytes("VmHWM") - before) / 2**20, 1),
    }


def _loads(root: Path, ef_search: int, query: np.ndarray, say: Callable[[str], None]) -> dict[str, Any]:
    """:func:`_load_probe` of every side, each in a process of its own (so none finds another's pages)."""
    context = multiprocessing.get_context("spawn")
    out: dict[str, Any] = {}
    for side in SIDES:
        with context.Pool(1) as pool:
            out[side] = pool.apply(_load_probe, (str(root), side, ef_search, query))
        found = out[side]
        say(
            f"  {LABELS[side]}: opened and answered in {found['seconds']} s, "
            f"+{found['rss_mib']} MiB resident (peak +{found['peak_rss_mib']} MiB)"
        )
    return out


def bench_search(
    vectors: int,
    out: Path,
    dim: int = 384,
    queries: int = 500,
    rounds: int = 5,
    ef_construction: int = EF_CONSTRUCTION,
    seed: int = 7,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the hot-search benchmark at one size; (re)write ``bench-search.json``, ``.md`` and ``.png`` in
    ``out`` with this size's results next to those of other sizes already there.

    Args:
        vectors: Vectors (= documents: one chunk each) in the synthetic index.
        out: Report folder; the index is built in ``out/work-search`` and removed at the end.
        dim: Vector dimension (384: the default model's).
        queries: Queries (perturbed copies of stored vectors); all count for recall and are timed in
            every round.
        rounds: Rounds of single-query searches at the chosen efSearch (every side, every query).
        ef_construction: HNSW build-time candidate list (M is :data:`HNSW_M`).
        seed: Seed of the vectors and the queries.
        progress: Called with a line per step (default: printed to stderr).

    Returns:
        This size's report (``bench-search.json`` holds it under ``runs[str(vectors)]``).
    """
    say = progress or _stderr
    if vectors < 2 * K or queries < 2 or rounds < 1:
        raise ValueError(f"bench search needs at least {2 * K} vectors, 2 queries and 1 round")
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work-search"
    shutil.rmtree(work, ignore_errors=True)
    began = time.perf_counter()
    try:
        report = _run(vectors, work / "hot", dim, queries, rounds, ef_construction, seed, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["total_s"] = round(time.perf_counter() - began, 2)
    runs = _merge(out / f"{REPORT}.json", report)
    say(f"writing {REPORT}.json, {REPORT}.md and {REPORT}.png")
    (out / f"{REPORT}.json").write_text(json.dumps({"benchmark": "search", "runs": runs}, indent=2))
    (out / f"{REPORT}.md").write_text(_markdown(runs))
    _plot(runs, out / f"{REPORT}.png")
    say(f"done in {report['total_s']} s: {out / f'{REPORT}.md'}")
    return report


def _merge(path: Path, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The runs already in ``path`` (if it is a report of this benchmark), with ``report``'s size
    replaced, by size."""
    runs: dict[str, dict[str, Any]] = {}
    try:
        found = json.loads(path.read_text())
        if found.get("benchmark") == "search" and isinstance(found.get("runs"), dict):
            runs = found["runs"]
    except (OSError, ValueError, AttributeError):
        pass
    runs[str(report["vectors"])] = report
    return dict(sorted(runs.items(), key=lambda item: int(item[0])))


def _run(
    n: int,
    root: Path,
    dim: int,
    n_queries: int,
    rounds: int,
    ef_construction: int,
    seed: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    import faiss

    spec = IndexSpec(type="hnsw", hnsw_m=HNSW_M, ef_construction=ef_construction, use_gpu="never")
    say(
        f"building a hot index: {n} documents of one {dim}-d vector, one HNSW segment "
        f"(M={HNSW_M}, efConstruction={ef_construction}) written and committed through HotIndex.commit"
    )
    started = time.perf_counter()
    with _heartbeat(say, "building"):
        stored = build_synthetic_index(root, n, 1, dim, seed, segment_docs=n, spec=spec)
    build_s = time.perf_counter() - started
    ids = np.fromiter(stored.keys(), dtype=np.int64, count=len(stored))
    matrix = np.stack(list(stored.values())).astype(np.float32)
    del stored
    say(f"built and committed in {build_s:.1f} s ({n / build_s:.0f} vectors/s)")

    rng = np.random.default_rng(seed + 1)
    queries = make_queries(matrix, rng.choice(n, n_queries, replace=n < n_queries), seed + 2)
    say(f"exact top-{K} of {n_queries} queries over {n} vectors (float32 brute force)")
    exact = exact_top_k(queries, matrix, ids, K)
    del matrix

    say("load: each side opens the index and answers one query in a fresh process")
    loads = _loads(root, EF_SWEEP[0], queries[:1], say)

    sides = Sides(root)
    say(
        f"efSearch sweep {EF_SWEEP[0]}..{EF_SWEEP[-1]}: Recall@{K} of {n_queries} queries, "
        f"p50 of {min(SWEEP_QUERIES, n_queries)}"
    )
    sweep = _sweep(sides, queries, exact, say)
    ef, met = _settle(sweep)
    sides.set_ef_search(ef)
    searches = {side: sides.search(side) for side in SIDES}
    found = {side: search(queries) for side, search in searches.items()}
    recall = {side: round(recall_at_k(found[side], exact), 4) for side in SIDES}
    same_ids = float(np.mean([set(t) == set(b) for t, b in zip(found[TIERFLOW], found[BARE], strict=True)]))
    same_order = float(np.mean([t == b for t, b in zip(found[TIERFLOW], found[BARE], strict=True)]))
    scores = {side: sides.scores(side, queries) for side in (TIERFLOW, BARE)}
    score_gap = max(
        (
            abs(a - b)
            for ours, theirs in zip(scores[TIERFLOW], scores[BARE], strict=True)
            for a, b in zip(sorted(ours), sorted(theirs), strict=True)
        ),
        default=0.0,
    )
    say(
        f"efSearch {ef}: Recall@{K} tierflow {recall[TIERFLOW]:.4f}, bare FAISS {recall[BARE]:.4f}; "
        f"same top-{K} ids for {same_ids:.1%} of queries"
    )

    say(f"single queries at efSearch {ef}: {rounds} rounds x {n_queries} queries x {len(SIDES)} sides")
    with progress_bar(rounds * len(SIDES) * n_queries, "single queries", unit="query") as bar:
        seconds, per_round = _timed_rounds(searches, queries, rounds, bar)
    latency = {side: _latency(s) for side, s in seconds.items()}
    round_ratios = [b / t for t, b in zip(per_round[TIERFLOW], per_round[BARE], strict=True)]
    single_ratio: dict[str, Any] = {
        "qps": round(sum(per_round[BARE]) / sum(per_round[TIERFLOW]), 3),
        "qps_rounds": [round(r, 3) for r in round_ratios],
        "qps_median_round": round(statistics.median(round_ratios), 3),
        "p50": round(latency[TIERFLOW]["p50_ms"] / latency[BARE]["p50_ms"], 3),
        "p99": round(latency[TIERFLOW]["p99_ms"] / latency[BARE]["p99_ms"], 3),
        "mmap_qps": round(sum(per_round[BARE]) / sum(per_round[WARM]), 3),
    }
    for side in SIDES:
        lat = latency[side]
        say(f"  {LABELS[side]}: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, {lat['qps']} QPS")
    say(f"QPS tierflow / bare FAISS: {single_ratio['qps']} (rounds: {single_ratio['qps_rounds']})")

    threads = faiss.omp_get_max_threads()
    say(
        f"single queries with FAISS on {threads} threads (its default): {DEFAULT_THREAD_ROUNDS} rounds, "
        "tierflow and bare FAISS"
    )
    compared = {side: searches[side] for side in (TIERFLOW, BARE)}
    with progress_bar(
        DEFAULT_THREAD_ROUNDS * len(compared) * n_queries, "default threads", unit="query"
    ) as bar:
        default_s, default_rounds = _timed_rounds(compared, queries, DEFAULT_THREAD_ROUNDS, bar, threads=None)
    default_threads: dict[str, Any] = {
        "faiss_threads": threads,
        "latency_ms": {side: _latency(s) for side, s in default_s.items()},
        "ratio": {"qps": round(sum(default_rounds[BARE]) / sum(default_rounds[TIERFLOW]), 3)},
    }
    for side in compared:
        lat = default_threads["latency_ms"][side]
        say(f"  {LABELS[side]}: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, {lat['qps']} QPS")

    say(f"batched: {n_queries} queries per call, {BATCH_ROUNDS} rounds, FAISS on {threads} threads")
    batch_s: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(BATCH_ROUNDS):
        for side in SIDES[r % len(SIDES) :] + SIDES[: r % len(SIDES)]:
            started = time.perf_counter()
            searches[side](queries)
            batch_s[side].append(time.perf_counter() - started)
    batch_qps = {side: round(n_queries / min(s), 1) for side, s in batch_s.items()}
    say("  " + ", ".join(f"{LABELS[side]} {batch_qps[side]} QPS" for side in SIDES))

    return {
        "vectors": n,
        "dim": dim,
        "queries": n_queries,
        "k": K,
        "seed": seed,
        "rounds": rounds,
        "index": {"type": "hnsw", "M": HNSW_M, "ef_construction": ef_construction, "segments": 1},
        "build": {"seconds": round(build_s, 2), "vectors_per_s": round(n / build_s, 1)},
        "target_recall": TARGET_RECALL,
        "target_ratio": TARGET_RATIO,
        "chunk_fetch": K * CHUNK_FANOUT,
        "sweep": sweep,
        "ef_search": ef,
        "target_recall_met": met,
        "recall_at_10": recall,
        "agreement": {
            "same_ids": round(same_ids, 4),
            "same_order": round(same_order, 4),
            "max_score_gap": round(score_gap, 6),
        },
        "single": {"faiss_threads": 1, "latency_ms": latency, "ratio": single_ratio},
        "single_default_threads": default_threads,
        "batched": {
            "faiss_threads": threads,
            "qps": batch_qps,
            "ratio": round(batch_qps[TIERFLOW] / batch_qps[BARE], 3),
        },
        "equal_recall": _equal_recall(sweep),
        "load": loads,
        "acceptance_met": bool(met and single_ratio["qps"] >= TARGET_RATIO),
    }


def _markdown(runs: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Hot-search benchmark: tierflow vs bare FAISS, same HNSW index",
        "",
        f"Synthetic clustered unit vectors (one chunk per document), queries perturbed from stored vectors; "
        f"Recall@{K} against exact float32 brute force. *tierflow* is `Searcher.search_vectors` (what "
        "`tierflow search` and `tierflow serve` run once the query is embedded: manifest check, FAISS, "
        "chunk rows, documents ranked by best chunk, results with ids, scores and text; lineage, metadata and "
        "duplicates are made when read, which this benchmark does not); *bare FAISS* "
        f"is `faiss.read_index` of the same segment file and `index.search(q, {K})`. Single queries, one per "
        "call, FAISS on one thread, the sides interleaved in rounds. Acceptance (issue 8): tierflow QPS >= "
        f"{TARGET_RATIO}x bare FAISS at Recall@{K} >= {TARGET_RECALL}.",
        "",
        "| vectors | efSearch | Recall@10 tierflow / bare | p50 ms tierflow / bare | p99 ms tierflow / bare "
        "| QPS tierflow / bare | QPS ratio (rounds) | memory-mapped QPS ratio | batched QPS ratio | met |",
        "|---:|---:|---|---|---|---|---:|---:|---:|---|",
    ]
    for report in runs.values():
        lat, rec, ratio = report["single"]["latency_ms"], report["recall_at_10"], report["single"]["ratio"]
        rounds = ", ".join(str(r) for r in ratio["qps_rounds"])
        lines.append(
            f"| {report['vectors']:,} | {report['ef_search']} | {rec[TIERFLOW]:.4f} / {rec[BARE]:.4f} | "
            f"{lat[TIERFLOW]['p50_ms']:.3f} / {lat[BARE]['p50_ms']:.3f} | "
            f"{lat[TIERFLOW]['p99_ms']:.3f} / {lat[BARE]['p99_ms']:.3f} | "
            f"{lat[TIERFLOW]['qps']:.0f} / {lat[BARE]['qps']:.0f} | **{ratio['qps']}** ({rounds}) | "
            f"{ratio['mmap_qps']} | {report['batched']['ratio']} | "
            f"{'yes' if report['acceptance_met'] else 'no'} |"
        )
    for report in runs.values():
        lines += ["", *_size_section(report)]
    lines += [
        "",
        "The machine is shared and noisy: compare the ratios, each measured in one process with the sides "
        "taking turns, not the milliseconds across runs.",
    ]
    return "\n".join(lines) + "\n"


def _size_section(report: dict[str, Any]) -> list[str]:
    index, build, agree = report["index"], report["build"], report["agreement"]
    lines = [
        f"## {report['vectors']:,} vectors, dim {report['dim']}",
        "",
        f"HNSW M={index['M']}, efConstruction={index['ef_construction']}, one segment; built and committed "
        f"in {build['seconds']} s ({build['vectors_per_s']:.0f} vectors/s). {report['queries']} queries, "
        f"{report['rounds']} rounds; total {report.get('total_s', '?')} s. At efSearch {report['ef_search']} "
        f"tierflow and bare FAISS return the same top-{report['k']} ids for {agree['same_ids']:.1%} of the "
        f"queries (same order {agree['same_order']:.1%}, scores within {agree['max_score_gap']}).",
        "",
        f"efSearch sweep (tierflow asks FAISS for {report['chunk_fetch']} chunks, so it never searches with "
        f"a smaller efSearch; p50 of single queries):",
        "",
        "| efSearch | tierflow efSearch | Recall@10 tierflow | Recall@10 bare | p50 ms tierflow | "
        "p50 ms memory-mapped | p50 ms bare |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["sweep"]:
        rec, lat = row["recall_at_10"], row["latency_ms"]
        lines.append(
            f"| {row['ef_search']} | {row['tierflow_ef_search']} | {rec[TIERFLOW]:.4f} | {rec[BARE]:.4f} | "
            f"{lat[TIERFLOW]['p50_ms']:.3f} | {lat[WARM]['p50_ms']:.3f} | {lat[BARE]['p50_ms']:.3f} |"
        )
    equal = report["equal_recall"]
    if equal:
        lines += [
            "",
            f"Each side at its own cheapest efSearch reaching Recall@10 >= {report['target_recall']} in the "
            f"sweep (tierflow {equal['tierflow_ef_search']}, bare FAISS {equal['bare_ef_search']}): QPS "
            f"ratio {equal['qps_ratio']}, p50 ratio {equal['p50_ratio']}.",
        ]
    batched, load, default = report["batched"], report["load"], report["single_default_threads"]
    lat = default["latency_ms"]
    lines += [
        "",
        f"Single queries with FAISS on {default['faiss_threads']} threads, its default (the table above: one "
        "thread; an `IndexIDMap`'s own search wakes every OpenMP thread to map the labels of each query, "
        "tierflow maps them itself): "
        + ", ".join(
            f"{LABELS[side]} p50 {lat[side]['p50_ms']:.3f} ms, p99 {lat[side]['p99_ms']:.3f} ms"
            for side in (TIERFLOW, BARE)
        )
        + f"; QPS ratio {default['ratio']['qps']}.",
        "",
        f"Batched ({report['queries']} queries per call, FAISS on {batched['faiss_threads']} threads): "
        + ", ".join(f"{LABELS[side]} {batched['qps'][side]:.0f} QPS" for side in SIDES)
        + ".",
        "",
        "Opening the index and answering a first query, each in a fresh process: "
        + ", ".join(
            f"{LABELS[side]} {load[side]['seconds']} s, +{load[side]['rss_mib']} MiB resident "
            f"(peak +{load[side]['peak_rss_mib']} MiB)"
            for side in SIDES
        )
        + ".",
    ]
    return lines


def _plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 2, figsize=(13, 4.8 * len(runs)), squeeze=False)
    for (left, right), report in zip(axes, runs.values(), strict=True):
        efs = [row["ef_search"] for row in report["sweep"]]
        recall_axis = left.twinx()
        for side in SIDES:
            p50 = [row["latency_ms"][side]["p50_ms"] for row in report["sweep"]]
            recall = [row["recall_at_10"][side] for row in report["sweep"]]
            left.plot(efs, p50, marker="o", color=COLORS[side], label=f"{LABELS[side]}: p50")
            recall_axis.plot(efs, recall, linestyle="--", color=COLORS[side], alpha=0.6)
        recall_axis.axhline(report["target_recall"], color="#7f7f7f", linestyle=":", linewidth=1)
        recall_axis.set_ylabel(f"Recall@{report['k']} (dashed; dotted: target)")
        left.axvline(report["ef_search"], color="#7f7f7f", linewidth=1)
        left.set_xscale("log", base=2)
        left.set_xticks(efs, [str(ef) for ef in efs])
        left.set_xlabel("efSearch (vertical line: compared at)")
        left.set_ylabel("single-query p50 latency (ms)")
        left.set_title(f"{report['vectors']:,} vectors: efSearch sweep")
        left.legend(loc="upper left", fontsize=8)

        lat = report["single"]["latency_ms"]
        x = np.arange(len(SIDES))
        width = 0.38
        p50 = [lat[side]["p50_ms"] for side in SIDES]
        p99 = [lat[side]["p99_ms"] for side in SIDES]
        right.bar(x - width / 2, p50, width, label="p50", color="#1f77b4")
        right.bar(x + width / 2, p99, width, label="p99", color="#ff7f0e")
        for i, side in enumerate(SIDES):
            right.annotate(
                f"{lat[side]['qps']:.0f} QPS",
                (x[i], max(p50[i], p99[i])),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                fontsize=9,
            )
        right.set_yscale("log")
        right.set_ylim(min(p50) / 2, max(p99) * 6)
        right.set_xticks(x, [LABELS[side] for side in SIDES])
        right.set_ylabel("latency per query (ms, log scale)")
        right.set_title(
            f"efSearch {report['ef_search']}: QPS tierflow / bare = {report['single']['ratio']['qps']} "
            f"(target {report['target_ratio']})"
        )
        right.legend(loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``python -m indexing.bench_search --vectors N [--vectors M ...] --out DIR``: every size's report."""
    parser = argparse.ArgumentParser(
        prog="python -m indexing.bench_search", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--vectors", type=int, action="append", help="index size; repeat for several (default 100000)"
    )
    parser.add_argument("--out", default="tierflow-data/bench", help="report folder (bench-search.*)")
    parser.add_argument("--queries", type=int, default=500, help="queries (all timed in every round)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of single queries, sides interleaved")
    parser.add_argument(
        "--ef-construction", type=int, default=EF_CONSTRUCTION, help=f"HNSW build (default {EF_CONSTRUCTION})"
    )
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    reports = {
        str(n): bench_search(
            n, Path(args.out), args.dim, args.queries, args.rounds, args.ef_construction, args.seed
        )
        for n in args.vectors or [100_000]
    }
    print(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
