"""Shadow reads (indexing.shadow): live searches repeated on a candidate index version, with the real model
and the real pipeline. A candidate with another chunking, an identical copy of the live version (overlap
1.0), a full queue, a candidate whose search fails, and the HTTP search service with shadow reads on and off.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from connectors.files import FileSourceConfig
from indexing import versions
from indexing.hot import HotIndex
from indexing.search import Searcher
from indexing.service import OPENAPI_PATH, READY_PATH, SEARCH_PATH, SearchService, ServeConfig
from indexing.shadow import ShadowReads, candidate_searcher, open_shadow, overlap
from pipelines.batch import run_batch
from pipelines.stages import build_run_context
from tests.helpers import config, demo_docs, write_jsonl
from tierflow import metrics
from tierflow.config import ChunkingConfig, EmbeddingConfig, IngestConfig
from tierflow.errors import ConfigError, VersionError

pytestmark = pytest.mark.model

QUERIES = (
    "how do Kafka consumers resume after a restart",
    "fast approximate vector search",
    "bread with wild yeast",
    "why is the sky blue",
    "replication slot and write-ahead log",
    "consumer group offsets and sourdough starters",
)
K = 5
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Index:
    root: Path
    embedding: EmbeddingConfig


def _corpus(path: Path) -> Path:
    """The demo documents (with a topic as metadata) and a few long ones made of two of them, which a
    small chunking splits into several chunks: 30 documents."""
    docs = demo_docs()
    records: list[dict[str, Any] | bytes] = [{**d, "topic": d["_id"].split("-")[0]} for d in docs]
    for i in range(8):
        a, b = docs[i], docs[-1 - i]
        records.append(
            {
                "_id": f"long-{i}",
                "title": f"{a['title']} and {b['title']}",
                "text": f"{a['text']} {b['text']}",
                "topic": "long",
            }
        )
    return write_jsonl(path, records, mtime_ns=1_000)


def _settings(cfg: IngestConfig) -> dict[str, Any]:
    return {"embedding": asdict(cfg.embedding), "chunking": asdict(cfg.chunking), "index": asdict(cfg.index)}


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Index:
    """One index directory: the live version; candidate ``v2`` (another chunking); ``same`` (the live
    settings: an identical copy); ``broken`` (its HEAD names a manifest that does not exist)."""
    tmp = tmp_path_factory.mktemp("shadow")
    root = tmp / "hot"
    corpus = _corpus(tmp / "docs.jsonl")
    live_cfg = config(root)
    run_batch(FileSourceConfig(str(corpus)), live_cfg)
    live_run = build_run_context(live_cfg)
    live_identity = versions.identity_of(live_run.model, live_run.chunking, asdict(live_cfg.index))
    versions.ensure_registry(root, live_identity, _settings(live_cfg))
    candidates = {
        "v2": replace(live_cfg, index_version="v2", chunking=ChunkingConfig(max_tokens=32, overlap_tokens=4)),
        "same": replace(live_cfg, index_version="same"),
    }
    for name, cand_cfg in candidates.items():
        run = build_run_context(cand_cfg)
        identity = versions.identity_of(run.model, run.chunking, asdict(cand_cfg.index))
        versions.add_candidate(root, name, identity, _settings(cand_cfg), run.code_version)
        run_batch(FileSourceConfig(str(corpus)), replace(cand_cfg, skip_unchanged_files=False))
    versions.add_candidate(root, "broken", live_identity, _settings(live_cfg), live_run.code_version)
    head = root / versions.head_pointer("broken")
    head.parent.mkdir(parents=True)
    head.write_text("manifest-000000999.json")
    v2 = HotIndex(root, version="v2").manifest()
    assert v2.chunking["max_tokens"] == 32 and v2.n_vectors > HotIndex(root).manifest().n_vectors
    assert HotIndex(root).manifest().chunking["max_tokens"] == live_cfg.chunking.max_tokens
    return Index(root, live_cfg.embedding)


def _live(index: Index) -> Searcher:
    return Searcher(HotIndex(index.root), index.embedding)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


# --- no model ---------------------------------------------------------------------------------------


def test_overlap_is_the_shared_share_of_the_top_k() -> None:
    assert overlap(["a", "b", "c"], ["c", "b", "a"], 3) == 1.0  # order does not matter
    assert overlap(["a", "b", "c", "d"], ["a", "x", "y", "z"], 4) == 0.25
    assert overlap(["a", "b"], ["a", "b", "c", "d"], 4) == 0.5  # k' = the longer list
    assert overlap(["a", "b", "c"], ["a", "b", "c", "x"], 3) == 1.0  # only the top-k counts
    assert overlap(["a"], [], 10) == 0.0
    assert overlap([], [], 10) == 1.0  # both found nothing: they agree


# --- with the model -----------------------------------------------------------------------------------


def test_a_candidate_with_another_chunking_gets_one_line_per_search(index: Index, tmp_path: Path) -> None:
    live = _live(index)
    log_path = tmp_path / "logs" / "shadow.jsonl"
    compared = _sample("tierflow_shadow_searches_total", {"outcome": "compared"})
    observed = _sample("tierflow_shadow_overlap_ratio_count")
    answers = {}
    with open_shadow(index.root, "v2", index.embedding, log_path=log_path) as shadow:
        for query in QUERIES:
            answers[query] = [r.doc_id for r in live.search(query, K)]
            assert shadow.submit(query, K, None, None, answers[query], live_ms=1.5)
    lines = _lines(log_path)
    assert [line["query_sha256"] for line in lines] == [_sha(q) for q in QUERIES]
    direct = candidate_searcher(index.root, "v2", index.embedding)
    for query, line in zip(QUERIES, lines, strict=True):
        assert line["version"] == "v2" and line["outcome"] == "compared" and line["k"] == K
        assert "query" not in line, "the query text is logged only with log_queries"
        assert line["live"] == answers[query] and len(line["live"]) == K
        assert line["candidate"] == [r.doc_id for r in direct.search(query, K)], "searched v2, not live"
        assert 0.0 <= line["overlap"] <= 1.0
        assert line["overlap"] == pytest.approx(overlap(line["live"], line["candidate"], K))
        assert line["candidate_ms"] > 0 and line["live_ms"] == 1.5
        assert time.time() - 600 < line["time"] <= time.time()
    summary = shadow.summary()
    assert (summary["compared"], summary["dropped"], summary["failed"], summary["queued"]) == (6, 0, 0, 0)
    assert summary["mean_overlap"] == pytest.approx(sum(line["overlap"] for line in lines) / len(lines))
    # The same documents chunked otherwise: related answers, and not all the same ones (long documents
    # are several chunks in v2).
    assert 0.0 < summary["mean_overlap"] < 1.0 and min(line["overlap"] for line in lines) < 1.0
    assert _sample("tierflow_shadow_searches_total", {"outcome": "compared"}) == compared + len(QUERIES)
    assert _sample("tierflow_shadow_overlap_ratio_count") == observed + len(QUERIES)


def test_an_identical_candidate_overlaps_fully_with_tiers_and_filters(index: Index, tmp_path: Path) -> None:
    live = _live(index)
    log_path = tmp_path / "shadow.jsonl"
    full = _sample("tierflow_shadow_overlap_ratio_bucket", {"le": "1.0"}) - _sample(
        "tierflow_shadow_overlap_ratio_bucket", {"le": "0.9"}
    )
    searches: list[tuple[str, int, tuple[str, ...] | None, dict[str, Any] | None]] = [
        (query, K, None, None) for query in QUERIES
    ]
    searches += [
        (QUERIES[0], 3, ("hot",), {"topic": ["kafka", "long"]}),
        (QUERIES[2], 10, None, {"topic": "long"}),
    ]
    with open_shadow(index.root, "same", index.embedding, log_path=log_path, log_queries=True) as shadow:
        for query, k, tiers, where in searches:
            found = [r.doc_id for r in live.search(query, k, tiers, where)]
            assert found
            assert shadow.submit(query, k, tiers, where, found)
    lines = _lines(log_path)
    assert [(line["query"], line["k"]) for line in lines] == [(q, k) for q, k, _, _ in searches]
    assert all(line["overlap"] == 1.0 and sorted(line["candidate"]) == sorted(line["live"]) for line in lines)
    assert [line["filtered"] for line in lines] == [where is not None for _, _, _, where in searches]
    assert lines[-2]["tiers"] == ["hot"] and lines[-1]["tiers"] is None
    assert all(doc.startswith("long-") for doc in lines[-1]["candidate"])  # the filter went to the candidate
    assert shadow.summary()["mean_overlap"] == 1.0
    after = _sample("tierflow_shadow_overlap_ratio_bucket", {"le": "1.0"}) - _sample(
        "tierflow_shadow_overlap_ratio_bucket", {"le": "0.9"}
    )
    assert after == full + len(searches)


def test_a_full_queue_drops_and_counts_without_blocking(index: Index) -> None:
    dropped = _sample("tierflow_shadow_searches_total", {"outcome": "dropped"})
    shadow = ShadowReads(candidate_searcher(index.root, "same", index.embedding), "same", queue_size=2)
    ids = ["kafka-1"]
    started = time.perf_counter()
    accepted = [shadow.submit(query, K, None, None, ids) for query in QUERIES[:5]]
    assert time.perf_counter() - started < 0.5
    assert accepted == [True, True, False, False, False]  # not started: nothing drains the queue
    assert shadow.summary() | {"mean_overlap": None} == {
        "version": "same",
        "compared": 0,
        "dropped": 3,
        "failed": 0,
        "mean_overlap": None,
        "queued": 2,
    }
    assert _sample("tierflow_shadow_searches_total", {"outcome": "dropped"}) == dropped + 3
    shadow.start()
    shadow.close(60)
    summary = shadow.summary()
    assert (summary["compared"], summary["dropped"], summary["queued"]) == (2, 3, 0)
    assert not shadow.submit("after close", K, None, None, ids)
    assert shadow.summary()["dropped"] == 4

    # Closed with no time to drain: what was not compared is dropped, nothing is lost from the counts.
    busy = ShadowReads(candidate_searcher(index.root, "same", index.embedding), "same", queue_size=64)
    for i in range(30):
        assert busy.submit(f"query {i}", K, None, None, ids)
    busy.start()
    busy.close(0)
    counts = busy.summary()
    assert counts["compared"] + counts["dropped"] + counts["failed"] == 30 and counts["queued"] == 0


def test_candidate_versions_are_checked(index: Index) -> None:
    with pytest.raises(VersionError, match="live one"):
        candidate_searcher(index.root, versions.load_registry(index.root).live, index.embedding)
    with pytest.raises(VersionError, match="no index version 'v9'"):
        open_shadow(index.root, "v9", index.embedding)
    with pytest.raises(ConfigError, match="queue size"):
        ShadowReads(candidate_searcher(index.root, "v2", index.embedding), "v2", queue_size=0)


# --- through the HTTP service ---------------------------------------------------------------------------


def _start(index: Index, shadow: ShadowReads | None = None) -> SearchService:
    service = SearchService(_live(index), ServeConfig(port=0), shadow=shadow).start()
    assert service.wait_ready(120), service.readiness()[1]
    return service


def _call(service: SearchService, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    host, port = service.address
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=JSON)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


REQUESTS: list[dict[str, Any]] = [
    *({"query": query, "k": K} for query in QUERIES),
    {"query": QUERIES[0], "k": 3, "tiers": ["hot"], "filter": {"topic": ["kafka", "long"]}},
    {"query": QUERIES[1]},
]


def _answers(service: SearchService) -> list[dict[str, Any]]:
    answers = []
    for request in REQUESTS:
        status, answer = _call(service, "POST", SEARCH_PATH, request)
        assert status == 200, answer
        del answer["took_ms"]
        answers.append(answer)
    return answers


def test_the_service_answers_the_same_with_shadow_reads_on(index: Index, tmp_path: Path) -> None:
    log_path = tmp_path / "shadow.jsonl"
    plain = _start(index)
    shadow = open_shadow(index.root, "v2", index.embedding, log_path=log_path)
    shadowed = _start(index, shadow)
    try:
        for path in (OPENAPI_PATH, READY_PATH):
            assert _call(shadowed, "GET", path) == _call(plain, "GET", path)
        assert _answers(shadowed) == _answers(plain)
        status, refused = _call(shadowed, "POST", SEARCH_PATH, {"query": "x", "k": 0})
        assert status == 400 and refused["error"] == "invalid_field"  # refused: not shadowed
    finally:
        plain.stop()
        shadowed.stop()
    lines = _lines(log_path)
    assert [line["query_sha256"] for line in lines] == [_sha(request["query"]) for request in REQUESTS]
    assert [line["k"] for line in lines] == [request.get("k", 10) for request in REQUESTS]
    assert all(line["outcome"] == "compared" and 0.0 <= line["overlap"] <= 1.0 for line in lines)
    assert all(line["live_ms"] >= 0 for line in lines)
    assert shadow.summary()["compared"] == len(REQUESTS)


def test_a_failing_candidate_leaves_live_answers_alone(index: Index, tmp_path: Path) -> None:
    log_path = tmp_path / "shadow.jsonl"
    failed = _sample("tierflow_shadow_searches_total", {"outcome": "failed"})
    plain = _start(index)
    shadow = open_shadow(index.root, "broken", index.embedding, log_path=log_path)
    shadowed = _start(index, shadow)
    try:
        first = _answers(shadowed)
        assert first == _answers(plain)
        assert _answers(shadowed) == first  # and again, with the failures logged meanwhile
        assert _call(shadowed, "GET", READY_PATH)[0] == 200
    finally:
        plain.stop()
        shadowed.stop()
    summary = shadow.summary()
    assert (summary["compared"], summary["failed"], summary["mean_overlap"]) == (0, 2 * len(REQUESTS), None)
    assert _sample("tierflow_shadow_searches_total", {"outcome": "failed"}) == failed + 2 * len(REQUESTS)
    lines = _lines(log_path)
    assert len(lines) == 2 * len(REQUESTS)
    for line in lines:
        assert line["outcome"] == "failed" and line["candidate"] is None and line["overlap"] is None
        assert line["error"].startswith("IndexCorrupt") and "manifest-000000999.json" in line["error"]
        assert line["live"]
