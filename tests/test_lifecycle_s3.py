"""The cold tier on a real S3 API (moto's server on loopback), through boto3 and LanceDB's object store."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest

from indexing.access import AccessLog
from indexing.cold import ColdConfig, ColdStore
from indexing.hot import HotIndex
from indexing.search import Searcher
from lifecycle.policy import LifecycleConfig
from lifecycle.report import storage_report
from lifecycle.run import run_lifecycle
from lifecycle.synthetic import build_synthetic_index, doc_name
from tests.helpers import assert_exactly_once
from tierflow.config import EmbeddingConfig
from tierflow.errors import ConfigError
from tierflow.records import chunk_id, vector_id

pytestmark = pytest.mark.s3

DAY = 86400.0
NOW = 1_800_000_000.0


def _bucket(endpoint: str) -> str:
    name = f"cold-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


def _index(root: Path, n_docs: int = 60) -> dict[int, np.ndarray]:
    return build_synthetic_index(
        root, n_docs, 2, 24, ingest_time=lambda i: NOW - (60 * DAY if i % 2 == 0 else 0)
    )


def test_cold_tier_on_s3_is_searched_promoted_and_cleaned(s3_server: str, tmp_path: Path) -> None:
    vectors = _index(tmp_path / "hot")
    bucket = _bucket(s3_server)
    cold = ColdConfig(uri=f"s3://{bucket}/tierflow/cold", endpoint_url=s3_server)
    summary = run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    assert summary["applied"] == 30 and summary["moved"]["to_cold_vectors"] == 60
    assert_exactly_once(tmp_path / "hot", cold)
    keys = boto3.client("s3", endpoint_url=s3_server).list_objects_v2(Bucket=bucket, Prefix="tierflow/cold/")
    assert any(obj["Key"].endswith(".lance") for obj in keys["Contents"])
    assert HotIndex(tmp_path / "hot").manifest().cold["uri"] == cold.uri

    searcher = Searcher(HotIndex(tmp_path / "hot"), EmbeddingConfig(), ColdConfig(endpoint_url=s3_server))
    wanted = vector_id(chunk_id(doc_name(10), 1))
    hit = searcher.chunk_search(vectors[wanted][None, :], 1)[0][0]
    assert (hit.tier, hit.vector_id, hit.row["doc_id"]) == ("cold", wanted, doc_name(10))

    log = AccessLog(tmp_path / "hot")
    log.record([doc_name(10)] * 2, at=NOW)
    log.flush()
    promoted = run_lifecycle(tmp_path / "hot", LifecycleConfig(promote_hits=2, keep_generations=1), cold, NOW)
    assert promoted["plan"] == {"cold->hot": 1}
    assert_exactly_once(tmp_path / "hot", cold)
    assert doc_name(10) not in set().union(*ColdStore(cold).placements().values())
    report = storage_report(tmp_path / "hot", ColdConfig(endpoint_url=s3_server), tmp_path / "report")
    assert (
        report["now"]["tiers"]["cold"]["vectors"] == 58 and report["now"]["tiers"]["cold"]["object_bytes"] > 0
    )


def test_missing_bucket_fails_before_anything_moves(s3_server: str, tmp_path: Path) -> None:
    _index(tmp_path / "hot", 10)
    generation = HotIndex(tmp_path / "hot").manifest().generation
    cold = ColdConfig(uri="s3://no-such-bucket-here/cold", endpoint_url=s3_server)
    with pytest.raises(ConfigError, match="no-such-bucket-here.*does not exist"):
        run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    assert HotIndex(tmp_path / "hot").manifest().generation == generation


def test_unreachable_endpoint_fails_before_anything_moves(tmp_path: Path, s3_server: str) -> None:
    _index(tmp_path / "hot", 10)
    generation = HotIndex(tmp_path / "hot").manifest().generation
    cold = ColdConfig(uri="s3://bucket/cold", endpoint_url="http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(ConfigError, match="cannot reach the S3 endpoint http://127.0.0.1:9"):
        run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    assert HotIndex(tmp_path / "hot").manifest().generation == generation


def test_missing_credentials_fail_before_anything_moves(
    s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _index(tmp_path / "hot", 10)
    bucket = _bucket(s3_server)
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    generation = HotIndex(tmp_path / "hot").manifest().generation
    cold = ColdConfig(uri=f"s3://{bucket}/cold", endpoint_url=s3_server)
    with pytest.raises(ConfigError, match="no usable AWS credentials"):
        run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    assert HotIndex(tmp_path / "hot").manifest().generation == generation
    # The same run with the keys given in configuration ([cold] or TIERFLOW__COLD__* variables) works.
    keyed = ColdConfig(
        uri=f"s3://{bucket}/cold",
        endpoint_url=s3_server,
        access_key_id="testing",
        secret_access_key="testing",
    )
    assert "testing" not in repr(keyed).replace("access_key_id='testing'", "")  # the secret is not printed
    assert run_lifecycle(tmp_path / "hot", LifecycleConfig(), keyed, NOW)["applied"] == 5
    assert_exactly_once(tmp_path / "hot", keyed)
