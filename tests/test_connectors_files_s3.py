"""File connector against a real S3 API (moto's server on loopback): listing, range reads, errors."""

from __future__ import annotations

import io
import json
import socket
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import connectors.files as files
from connectors.files import FileSourceConfig, plan_splits, read_split, source_uris
from tierflow.deadletter import DeadLetter
from tierflow.errors import ConfigError
from tierflow.records import DocumentEvent

pytestmark = pytest.mark.s3


@pytest.fixture
def s3(s3_server: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"tierflow-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def config(s3_server: str, path: str, **options: Any) -> FileSourceConfig:
    return FileSourceConfig(path, s3_endpoint_url=s3_server, s3_region="us-east-1", **options)


def read_all(cfg: FileSourceConfig) -> list[DocumentEvent | DeadLetter]:
    return [record for split in plan_splits(cfg) for record in read_split(split)]


def lines(*records: dict[str, Any] | bytes) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def test_jsonl_object_read_in_range_splits_matches_local(
    s3: Any, bucket: str, s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "_BLOCK_BYTES", 50)  # several Range GETs per split
    data = lines(
        *({"_id": f"d{i}", "text": "word " * (i % 7), "n": i} for i in range(30)),
        b"",
        b"{broken",
        {"_id": "last", "text": "\u00e9t\u00e9"},
    )
    s3.put_object(Bucket=bucket, Key="data/docs.jsonl", Body=data)
    (tmp_path / "docs.jsonl").write_bytes(data)
    head = s3.head_object(Bucket=bucket, Key="data/docs.jsonl")

    remote = read_all(config(s3_server, f"s3://{bucket}/data/docs.jsonl", split_bytes=37))
    local = read_all(FileSourceConfig(str(tmp_path / "docs.jsonl")))

    def view(records: list[DocumentEvent | DeadLetter]) -> list[tuple[Any, ...]]:
        return [
            (r.doc_id, r.text, r.metadata, r.source.position)
            if isinstance(r, DocumentEvent)
            else (r.reason, r.raw, r.source.position)
            for r in records
        ]

    assert len(plan_splits(config(s3_server, f"s3://{bucket}/data/docs.jsonl", split_bytes=37))) > 10
    assert view(remote) == view(local)
    event = next(r for r in remote if isinstance(r, DocumentEvent))
    assert (event.source.system, event.source.uri) == ("s3", f"s3://{bucket}/data/docs.jsonl")
    assert event.version == int(head["LastModified"].timestamp()) * 10**9


def test_prefix_is_a_directory_and_glob_filters(s3: Any, bucket: str, s3_server: str) -> None:
    for key in ("docs/a.jsonl", "docs/sub/b.jsonl", "docs/.hidden.jsonl", "docs/x.md", "docs2/c.jsonl"):
        s3.put_object(Bucket=bucket, Key=key, Body=lines({"_id": key, "text": "t"}))
    s3.put_object(Bucket=bucket, Key="docs/emptydir/", Body=b"")

    cfg = config(s3_server, f"s3://{bucket}/docs", glob="*.jsonl")

    assert source_uris(cfg) == [f"s3://{bucket}/docs/a.jsonl", f"s3://{bucket}/docs/sub/b.jsonl"]
    assert [r.doc_id for r in read_all(cfg) if isinstance(r, DocumentEvent)] == [
        "docs/a.jsonl",
        "docs/sub/b.jsonl",
    ]


def test_text_prefix_ids_are_relative_keys(s3: Any, bucket: str, s3_server: str) -> None:
    s3.put_object(Bucket=bucket, Key="kb/a.md", Body=b"# Alpha\nbody\n")
    s3.put_object(Bucket=bucket, Key="kb/deep/b.txt", Body=b"plain\n")
    s3.put_object(Bucket=bucket, Key="kb/bad.md", Body=b"\xff\xfe")

    records = read_all(config(s3_server, f"s3://{bucket}/kb/", format="text"))

    events = [r for r in records if isinstance(r, DocumentEvent)]
    assert [(e.doc_id, e.title, e.source.position) for e in events] == [
        ("a.md", "Alpha", "file"),
        ("deep/b.txt", "b", "file"),
    ]
    assert [(d.reason, d.doc_id) for d in records if isinstance(d, DeadLetter)] == [("not_utf8", "bad.md")]


def test_parquet_object_row_groups_over_range_reads(s3: Any, bucket: str, s3_server: str) -> None:
    buffer = io.BytesIO()
    rows = [{"_id": f"p{i}", "text": f"row {i}", "lang": "en"} for i in range(7)]
    pq.write_table(pa.Table.from_pylist(rows), buffer, row_group_size=3)
    s3.put_object(Bucket=bucket, Key="t/rows.parquet", Body=buffer.getvalue())

    cfg = config(s3_server, f"s3://{bucket}/t/")
    splits = plan_splits(cfg)
    records = read_all(cfg)

    assert [(s.format, s.start, s.end) for s in splits] == [
        ("parquet", 0, 1),
        ("parquet", 1, 2),
        ("parquet", 2, 3),
    ]
    assert [(e.doc_id, e.source.position, e.metadata) for e in records if isinstance(e, DocumentEvent)] == [
        (f"p{i}", f"row:{i}", {"lang": "en"}) for i in range(7)
    ]


def test_beir_prefix(s3: Any, bucket: str, s3_server: str) -> None:
    s3.put_object(Bucket=bucket, Key="beir/corpus.jsonl", Body=lines({"_id": "1", "title": "T", "text": "x"}))
    s3.put_object(Bucket=bucket, Key="beir/queries.jsonl", Body=lines({"_id": "q", "text": "y"}))
    cfg = config(s3_server, f"s3://{bucket}/beir")
    assert [(s.format, s.uri) for s in plan_splits(cfg)] == [("beir", f"s3://{bucket}/beir/corpus.jsonl")]
    assert [(e.doc_id, e.title) for e in read_all(cfg) if isinstance(e, DocumentEvent)] == [("1", "T")]


def test_object_deleted_after_planning_is_unreadable(s3: Any, bucket: str, s3_server: str) -> None:
    s3.put_object(Bucket=bucket, Key="gone.jsonl", Body=lines({"_id": "a", "text": "t"}))
    [split] = plan_splits(config(s3_server, f"s3://{bucket}/gone.jsonl"))
    s3.delete_object(Bucket=bucket, Key="gone.jsonl")
    [dead] = list(read_split(split))
    assert isinstance(dead, DeadLetter)
    assert dead.reason == "unreadable" and "NoSuchKey" in dead.detail


def test_missing_bucket_is_a_config_error(s3_server: str) -> None:
    with pytest.raises(ConfigError, match="does not exist") as err:
        plan_splits(config(s3_server, "s3://no-such-bucket-here/prefix/"))
    assert "no-such-bucket-here" in str(err.value)


def test_empty_prefix_is_a_config_error(bucket: str, s3_server: str) -> None:
    with pytest.raises(ConfigError, match=f"no files under s3://{bucket}/nothing"):
        plan_splits(config(s3_server, f"s3://{bucket}/nothing/"))


def test_missing_credentials_is_a_config_error(
    bucket: str, s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    with pytest.raises(ConfigError, match="credentials") as err:
        plan_splits(config(s3_server, f"s3://{bucket}/x/"))
    assert f"s3://{bucket}/x/" in str(err.value)


def test_unreachable_endpoint_is_a_config_error(s3_server: str) -> None:  # s3_server: for its credentials
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(ConfigError, match="cannot reach the S3 endpoint"):
            plan_splits(
                FileSourceConfig(
                    "s3://bucket/prefix/", s3_endpoint_url=f"http://127.0.0.1:{port}", s3_region="us-east-1"
                )
            )


def test_s3_uri_without_bucket_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="names no bucket"):
        plan_splits(FileSourceConfig("s3:///key"))
