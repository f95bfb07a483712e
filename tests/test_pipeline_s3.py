"""The batch pipeline reading an s3:// prefix from a real S3 API (moto's server on loopback)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.helpers import config, demo_docs, ingest, live_docs

pytestmark = [pytest.mark.s3, pytest.mark.model]


def test_ingest_from_s3_prefix(s3_server: str, tmp_path: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    bucket = f"tierflow-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    docs = demo_docs()
    half = len(docs) // 2
    for name, part in (("a.jsonl", docs[:half]), ("b.jsonl", docs[half:])):
        body = "".join(json.dumps(d) + "\n" for d in part) + ('{"_id": "bad"\n' if name == "b.jsonl" else "")
        s3.put_object(Bucket=bucket, Key=f"corpus/{name}", Body=body.encode())
    s3.put_object(
        Bucket=bucket, Key="elsewhere/c.jsonl", Body=b'{"_id": "not-me", "text": "outside the prefix"}\n'
    )

    cfg = config(tmp_path / "hot")
    summary = ingest(f"s3://{bucket}/corpus/", cfg, s3_endpoint_url=s3_server, s3_region="us-east-1")
    assert summary["counts"]["docs_canonical"] == len(docs)
    assert summary["dead_letters"]["by_reason"] == {"malformed_json": 1}
    state = live_docs(tmp_path / "hot")
    assert set(state) == {d["_id"] for d in docs}
    assert state[docs[0]["_id"]].source_system == "s3"
    assert state[docs[0]["_id"]].source_uri == f"s3://{bucket}/corpus/a.jsonl"

    # Unchanged objects are not read again; an overwrite is, even one of the same size in the same
    # second (S3 mtimes have one-second resolution: the ETag tells them apart).
    again = ingest(f"s3://{bucket}/corpus/", cfg, s3_endpoint_url=s3_server, s3_region="us-east-1")
    assert again["committed"] is False and again["counts"] == {"files_unchanged": 2}
    first = docs[0]
    renamed = dict(first, text=first["text"].swapcase())  # same length, other bytes
    body = "".join(json.dumps(d) + "\n" for d in [renamed, *docs[1:half]])
    s3.put_object(Bucket=bucket, Key="corpus/a.jsonl", Body=body.encode())
    third = ingest(f"s3://{bucket}/corpus/", cfg, s3_endpoint_url=s3_server, s3_region="us-east-1")
    assert third["counts"]["files_unchanged"] == 1, third["counts"]
    assert third["counts"]["events_valid"] == half
