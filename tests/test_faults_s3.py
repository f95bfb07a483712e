"""S3 dependency faults during lifecycle moves and cold reads, injected by a proxy in front of moto.

Through :class:`tests.s3_faults.S3FaultProxy` boto3 and LanceDB's object store see throttling (503
SlowDown), 5xx (500 InternalError), timeouts, uploads cut short, responses lost after the write landed, a
persistent outage and 403s. Transient faults are retried with backoff and lose nothing; an outage fails
the run clearly and leaves the committed state as it was, and the next run finishes the move; a 403 fails
at once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from indexing.cold import ColdConfig, ColdStore
from indexing.hot import HotIndex
from indexing.search import Searcher
from lifecycle.policy import LifecycleConfig
from lifecycle.run import JOURNAL, run_lifecycle
from lifecycle.synthetic import build_synthetic_index, doc_name
from tests.helpers import assert_exactly_once, tier_counts
from tests.s3_faults import Fault, FaultPlan, S3FaultProxy
from tierflow.config import EmbeddingConfig
from tierflow.errors import ConfigError
from tierflow.records import chunk_id, vector_id
from tierflow.s3 import ObjectStoreUnavailable

pytestmark = pytest.mark.s3

DAY = 86400.0
NOW = 1_800_000_000.0
N_DOCS = 60  # half of them aged: 30 documents, 60 vectors move to cold
TIMEOUT_S = 2.0  # the clients' per-request timeout in these tests; a stalled request is held longer


@pytest.fixture
def proxy(s3_server: str) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(s3_server, stall_s=TIMEOUT_S + 2) as running:
        yield running


def _bucket(endpoint: str) -> str:
    name = f"faults-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


def _index(root: Path) -> dict[int, np.ndarray]:
    return build_synthetic_index(
        root, N_DOCS, 2, 24, ingest_time=lambda i: NOW - (60 * DAY if i % 2 == 0 else 0)
    )


def _cold(bucket: str, proxy: S3FaultProxy, **retry: Any) -> ColdConfig:
    settings: dict[str, Any] = {
        "timeout_s": TIMEOUT_S,
        "connect_timeout_s": 1.0,
        "max_attempts": 6,
        "retry_timeout_s": 30.0,
        **retry,
    }
    return ColdConfig(uri=f"s3://{bucket}/tierflow/cold", endpoint_url=proxy.endpoint, **settings)


# Outages: few tries, short budgets, so that giving up takes seconds.
OUTAGE: dict[str, Any] = {"max_attempts": 3, "retry_timeout_s": 3.0, "operation_attempts": 2}


def _log(proxy: S3FaultProxy) -> str:
    return "\n".join(f"{r.at:.3f} {r.method} {r.target[:100]} {r.action}" for r in proxy.requests)


def _placement(index_dir: Path) -> dict[str, tuple[str | None, str | None]]:
    return {d: (s.segment_id, s.cold_batch) for d, s in HotIndex(index_dir).docs().items()}


def test_move_to_cold_survives_throttling_5xx_timeouts_and_partial_uploads(
    s3_server: str, proxy: S3FaultProxy, tmp_path: Path
) -> None:
    vectors = _index(tmp_path / "hot")
    bucket = _bucket(s3_server)
    cold = _cold(bucket, proxy)
    proxy.set_plan(
        FaultPlan(
            [
                # One of each kind for sure, at a chosen request ...
                Fault("slowdown", methods=("HEAD",), limit=1),  # boto3's check of the bucket
                # Lance's commit is a conditional PUT of the next manifest, which LanceDB does not retry
                # when it times out. The first one stalls unanswered (LanceDB finds it did not land and
                # fails: the append is retried whole, after checking that the failed try did not land);
                # the second lands, then times out (LanceDB finds it landed).
                Fault("timeout", methods=("PUT",), path=r"_versions/.*\.manifest", limit=1),
                Fault("hang", methods=("PUT",), path=r"_versions/.*\.manifest", limit=1),
                Fault("partial", methods=("PUT",), path=r"/data/.*\.lance$", limit=1),
                Fault("lost", methods=("PUT",), path=r"/_transactions/", limit=1),
                Fault("internal", methods=("GET",), path=r"/data/.*\.lance$", limit=1),
                # ... and at random: with those, a quarter to a third of all requests.
                Fault("timeout", 0.04, limit=2),
                Fault("lost", 0.04, methods=("PUT", "POST")),
                Fault("partial", 0.2, methods=("PUT", "POST")),
                Fault("slowdown", 0.2),
                Fault("internal", 0.1),
            ],
            seed=20260,
        )
    )
    started = time.monotonic()
    summary = run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    elapsed = time.monotonic() - started
    assert summary["applied"] == 30 and summary["moved"]["to_cold_vectors"] == 60
    assert not (tmp_path / "hot" / JOURNAL).exists()
    faults = dict(proxy.faults)
    for kind in ("slowdown", "internal", "timeout", "partial", "hang", "lost"):
        assert faults.get(kind, 0) > 0, f"no {kind} fault was injected: {faults}\n{_log(proxy)}"
    requests = len(proxy.requests)
    assert sum(faults.values()) / requests >= 0.2, (faults, requests)
    print(f"\nmove with faults: {faults} in {requests} requests, {elapsed:.1f} s")

    # Every vector findable exactly once (the cold rows read through the faulty proxy too), and the cold
    # copy is the verified one: 60 rows under the committed batch, the very vectors (fp16) that left flash.
    assert_exactly_once(tmp_path / "hot", cold)
    store = ColdStore(cold)
    assert set(store.placements()) == {summary["batch"]}
    count, checksum = store.batch_digest(summary["batch"])
    direct = ColdStore(replace(cold, endpoint_url=s3_server))  # moto itself, no proxy
    assert (count, checksum) == direct.batch_digest(summary["batch"]) and count == 60
    moved = sorted(doc_name(i) for i in range(0, N_DOCS, 2))
    rows, stored = store.rows(summary["batch"], moved)
    assert len(rows) == 60
    for row, vector in zip(rows, stored, strict=True):
        assert np.array_equal(vector, vectors[row["vector_id"]].astype(np.float16).astype(np.float32))


def test_outage_mid_move_fails_clearly_and_the_next_run_finishes(
    s3_server: str, proxy: S3FaultProxy, tmp_path: Path
) -> None:
    _index(tmp_path / "hot")
    bucket = _bucket(s3_server)
    cold = _cold(bucket, proxy, **OUTAGE)
    generation = HotIndex(tmp_path / "hot").manifest().generation
    before = _placement(tmp_path / "hot")
    # The copy lands (data file and commit), then S3 goes away for good at the first read of a data file:
    # the verification. Connections are refused from then on.
    proxy.outage_mode = "refuse"
    proxy.set_plan(FaultPlan([Fault("down", methods=("GET",), path=r"/data/.*\.lance$", limit=1)]))
    started = time.monotonic()
    with pytest.raises(ObjectStoreUnavailable) as raised:
        run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert "connection" in message and "lifecycle run stopped while moving documents" in message, message
    assert "nothing was committed: every document is where it was" in message
    assert elapsed < 90, elapsed
    assert proxy.faults["down"] == 1 and proxy.mode == "refuse"
    print(f"\noutage: failed after {elapsed:.1f} s: {message[:300]}")

    # The committed state is what it was: same manifest, every document in its hot segment, findable once.
    assert HotIndex(tmp_path / "hot").manifest().generation == generation
    assert _placement(tmp_path / "hot") == before
    assert_exactly_once(tmp_path / "hot", cold)  # no cold tier committed yet: reads nothing from S3
    journal = (tmp_path / "hot" / JOURNAL).read_text()
    failed_batch = json.loads(journal)["batch"]
    direct = ColdStore(replace(cold, endpoint_url=s3_server))
    assert set(direct.placements()) == {failed_batch}  # the invisible, unverified copy

    proxy.set_mode("up")
    proxy.set_plan(FaultPlan())
    summary = run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    assert summary["resumed"]["committed"] is False and summary["resumed"]["batch"] == failed_batch
    assert summary["applied"] == 30 and summary["moved"]["to_cold_vectors"] == 60
    assert_exactly_once(tmp_path / "hot", cold)
    assert set(ColdStore(cold).placements()) == {summary["batch"]}  # the failed copy was rolled back
    assert not (tmp_path / "hot" / JOURNAL).exists()


def _queries(vectors: dict[int, np.ndarray]) -> np.ndarray:
    picks = [vector_id(chunk_id(doc_name(i), i % 2)) for i in range(0, 20, 3)]  # cold and hot documents
    return np.stack([vectors[v] for v in picks])


def _found(searcher: Searcher, queries: np.ndarray) -> list[list[tuple[int, str, float]]]:
    return [
        [(h.vector_id, h.tier, round(h.score, 4)) for h in hits] for hits in searcher.chunk_search(queries, 5)
    ]


def test_cold_reads_retry_transient_faults_and_fail_clearly_when_down(
    s3_server: str, proxy: S3FaultProxy, tmp_path: Path
) -> None:
    vectors = _index(tmp_path / "hot")
    bucket = _bucket(s3_server)
    cold = _cold(bucket, proxy)
    run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    index = HotIndex(tmp_path / "hot")
    queries = _queries(vectors)
    expected = _found(Searcher(index, EmbeddingConfig(), cold), queries)
    assert {tier for hits in expected for _, tier, _ in hits} == {"hot", "cold"}

    proxy.set_plan(
        FaultPlan(
            [
                Fault("slowdown", 0.3, methods=("GET", "HEAD")),
                Fault("internal", 0.2, methods=("GET", "HEAD")),
                Fault("timeout", 0.05, methods=("GET",), limit=1),
            ],
            seed=7,
        )
    )
    for _ in range(3):  # a fresh searcher each time: nothing cached from the reads before
        assert _found(Searcher(index, EmbeddingConfig(), cold), queries) == expected
    faults = dict(proxy.faults)
    assert faults.get("slowdown", 0) > 0 and faults.get("internal", 0) > 0, faults
    print(f"\ncold reads with faults: {faults} in {len(proxy.requests)} requests")

    # Down: the search raises, naming the tier and the cause; it never answers with the hot tier's hits
    # alone as if they were complete.
    outage = replace(cold, **OUTAGE)
    proxy.set_mode("503")
    started = time.monotonic()
    with pytest.raises(
        ObjectStoreUnavailable, match=r"cold tier search failed after 2 attempt\(s\).*503"
    ) as raised:
        Searcher(index, EmbeddingConfig(), outage).chunk_search(queries, 5)
    elapsed = time.monotonic() - started
    assert bucket in str(raised.value) and elapsed < 60, elapsed
    print(f"cold reads down: failed after {elapsed:.1f} s: {str(raised.value)[:200]}")

    proxy.set_mode("up")
    proxy.set_plan(FaultPlan())
    assert _found(Searcher(index, EmbeddingConfig(), cold), queries) == expected


def test_access_denied_fails_fast_without_retries(
    s3_server: str, proxy: S3FaultProxy, tmp_path: Path
) -> None:
    vectors = _index(tmp_path / "hot")
    bucket = _bucket(s3_server)
    cold = _cold(bucket, proxy)
    generation = HotIndex(tmp_path / "hot").manifest().generation

    # Every request refused: the check before the move (boto3) stops at its first request.
    proxy.set_plan(FaultPlan([Fault("deny")]))
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"cannot list s3://.* \(403\): check the credentials"):
        run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    assert len(proxy.requests) == proxy.faults["deny"] == 1
    assert time.monotonic() - started < 5

    # Listing allowed, writes refused: LanceDB's first PUT is refused once, not retried.
    proxy.reset_counts()
    proxy.set_plan(FaultPlan([Fault("deny", methods=("PUT",))]))
    with pytest.raises(
        ConfigError, match=r"access to s3://.* was denied \(403 Forbidden AccessDenied\)"
    ) as raised:
        run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    assert "nothing was committed" in str(raised.value)
    assert proxy.faults["deny"] == 1, proxy.seen("PUT")
    assert HotIndex(tmp_path / "hot").manifest().generation == generation

    # After a good move, reads refused: the search fails at once, with a 403, not an outage.
    proxy.set_plan(FaultPlan())
    run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    assert sum(tier_counts(tmp_path / "hot", cold).values()) == 2 * N_DOCS
    proxy.reset_counts()
    proxy.set_plan(FaultPlan([Fault("deny", methods=("GET",), path=r"/data/")]))
    started = time.monotonic()
    with pytest.raises(ConfigError, match="was denied .*403"):
        Searcher(HotIndex(tmp_path / "hot"), EmbeddingConfig(), cold).chunk_search(_queries(vectors), 5)
    # LanceDB reads a file's ranges concurrently: each refused once, none again (a retry would follow a
    # backoff of 100 ms or more), against ``max_attempts`` (6) tries of each for a 5xx.
    denied = [r.at for r in proxy.requests if r.action == "deny"]
    assert 1 <= len(denied) <= 4 and max(denied) - min(denied) < 0.1, _log(proxy)
    assert time.monotonic() - started < 5
