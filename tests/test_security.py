"""Security: webhook authentication, request limits, secrets kept out of every output, path traversal,
loopback binding, TLS/SASL settings reaching the Kafka and S3 clients.

What other test files already cover (not repeated here):

- webhook signatures, bad: ``tests/test_connectors_webhooks.py::test_negative_vectors``,
  ``::test_tampering_is_refused``, ``::test_bad_signature_is_401_with_dead_letter`` (401 over HTTP, dead
  letter without the signature header or the secret)
- missing headers: ``::test_missing_or_empty_headers``; malformed ids: ``::test_malformed_id``
- expired or future timestamps (outside ``tolerance_s``): ``::test_tolerance_both_ways``,
  ``::test_bad_signature_is_401_with_dead_letter`` (``timestamp_too_old`` over HTTP)
- replays (the same webhook id, also re-signed and after a restart):
  ``::test_replay_is_409_even_after_a_restart``, ``::test_concurrent_deliveries_are_each_accepted_once``
- rotation in :func:`~connectors.webhooks.verify` (either active secret accepts, a removed one is
  refused): ``::test_rotation_any_active_secret_accepts``; over HTTP and through a restart: here
- request size (413 from Content-Length before reading, and while reading a chunked body):
  ``::test_too_large_is_413_before_reading``, ``::test_chunked_bodies``
- secrets hidden in reprs: ``::test_config_hides_secrets_and_loads_from_env`` (webhook),
  ``tests/test_connectors_kafka.py::test_config_repr_redacts_secrets`` (Kafka ``security``),
  ``tests/test_connectors_postgres.py::test_config_hides_the_password_and_validates`` (DSN);
  all of them with one planted value, and the cold tier's keys: here
- symlinks out of a file source's root: ``tests/test_connectors_files.py::test_text_dead_letters_and_symlinks``,
  ``::test_escaping_symlink_is_one_dead_letter_even_when_split``
- Kafka ``security`` settings in the consumer/producer property dicts:
  ``tests/test_connectors_kafka.py::test_config_repr_redacts_secrets``; that the clients are built with
  them, and that librdkafka takes them: here

Added here: the rate limit (429, per client address), rotation over HTTP, credential headers kept out of
dead letters, planted secrets scanned for in every file, log line and CLI output of a webhook session, a
Kafka produce, an ingest, a lifecycle run, a storage report, lineage and search (and a cold tier on S3),
``..``/absolute paths outside a file source's root and ``.``/``..`` segments in ``s3://`` uris, loopback
defaults, TLS/SASL passthrough.

There is no search server yet (``tierflow search`` is a one-shot command); when one is added it must
default to loopback like the webhook receiver, and get a test here.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import connectors.kafka_client as kafka_client
from connectors.files import FileSourceConfig, FileSplit, plan_splits, read_split
from connectors.kafka_client import DeadLetterProducer, DocumentConsumer, DocumentProducer, KafkaConfig
from connectors.objectstore import LocalStore, S3Store
from connectors.postgres_cdc import PostgresCdcConfig, TableMapping
from connectors.webhooks import (
    EVENTS_PATH,
    WebhookConfig,
    WebhookReceiver,
    _RateLimiter,
    load_webhook_config,
    sign,
)
from indexing.cold import ColdConfig, ColdStore
from tierflow.cli import main
from tierflow.config import load_settings
from tierflow.deadletter import DeadLetter
from tierflow.errors import ConfigError
from tierflow.records import DocumentEvent
from tierflow.s3 import Credentials, ObjectUnreadable, s3_client, traversal

OLD_SECRET = "whsec_" + base64.b64encode(b"security-old-key-0123456789abcdef").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"security-new-key-fedcba9876543210").decode()


def _secret(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


def _headers(body: bytes, msg_id: str, secret: str, stamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if stamp is None else stamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, msg_id, stamp, body),
        "Content-Type": "application/json",
    }


def _event(doc_id: str = "doc-1", version: int = 1) -> bytes:
    return json.dumps({"doc_id": doc_id, "version": version, "text": f"text of {doc_id}"}).encode()


def _post(
    receiver: WebhookReceiver,
    body: bytes,
    headers: dict[str, str],
    source: str | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    host, port = receiver.address
    connection = http.client.HTTPConnection(
        host, port, timeout=10, source_address=(source, 0) if source else None
    )
    try:
        connection.request("POST", EVENTS_PATH, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        connection.close()


@pytest.fixture(autouse=True)
def _no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./tierflow.toml; default directories land in tmp_path


@pytest.fixture
def receivers() -> Iterator[list[WebhookReceiver]]:
    started: list[WebhookReceiver] = []
    yield started
    for receiver in started:
        receiver.stop()


def _start(
    started: list[WebhookReceiver], tmp_path: Path, **settings: Any
) -> tuple[WebhookReceiver, list[Any]]:
    letters: list[DeadLetter] = []
    values = {"port": 0, "secrets": (NEW_SECRET,), "queue_dir": str(tmp_path / "queue"), **settings}
    receiver = WebhookReceiver(WebhookConfig(**values), dead_letters=letters.append).start()
    started.append(receiver)
    return receiver, letters


# --- 1. webhook authentication ---------------------------------------------------------------------------


def test_rotation_over_http_both_secrets_then_only_the_new_one(
    tmp_path: Path, receivers: list[WebhookReceiver]
) -> None:
    # during the rotation: both secrets are active, deliveries signed with either are accepted
    receiver, letters = _start(receivers, tmp_path, secrets=(OLD_SECRET, NEW_SECRET))
    for i, secret in enumerate((OLD_SECRET, NEW_SECRET)):
        body = _event(f"doc-{i}")
        assert _post(receiver, body, _headers(body, f"msg_during_{i}", secret))[0] == 202
    receiver.stop()

    # the old secret removed (same queue): its signatures are refused, the new one's accepted
    receiver, letters = _start(receivers, tmp_path, secrets=(NEW_SECRET,))
    body = _event("doc-after")
    status, payload, _ = _post(receiver, body, _headers(body, "msg_after_old", OLD_SECRET))
    assert (status, payload["error"]) == (401, "bad_signature")
    assert _post(receiver, body, _headers(body, "msg_after_new", NEW_SECRET))[0] == 202
    assert [letter.reason for letter in letters] == ["bad_signature"]

    # the rotation set through the environment, as deployments do it
    env = {"TIERFLOW__WEBHOOK__SECRETS": f"{NEW_SECRET},{OLD_SECRET}"}
    assert load_webhook_config(None, environ=env).secrets == (NEW_SECRET, OLD_SECRET)


def test_credential_headers_never_reach_dead_letters(
    tmp_path: Path, receivers: list[WebhookReceiver]
) -> None:
    receiver, letters = _start(receivers, tmp_path)
    body = _event()
    headers = {
        **_headers(body, "msg_creds", OLD_SECRET),  # a wrong secret: 401, dead-lettered
        "Authorization": "Bearer token-that-must-not-be-kept",
        "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
        "Cookie": "session=cookie-that-must-not-be-kept",
        "X-Hub-Signature-256": "sha256=" + "0" * 64,
    }
    assert _post(receiver, body, headers)[0] == 401
    [letter] = letters
    text = letter.to_json()
    for value in (
        "token-that-must-not-be-kept",
        "cHJveHk6c2VjcmV0",
        "cookie-that-must-not-be-kept",
        "0" * 64,
    ):
        assert value not in text
    assert letter.headers["webhook-id"] == "msg_creds"  # the rest is kept for the investigation
    assert not {"authorization", "proxy-authorization", "cookie", "webhook-signature"} & set(letter.headers)


# --- 2. request size and rate limits ------------------------------------------------------------------


def test_rate_limiter_token_bucket() -> None:
    limiter = _RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", 100.0) == pytest.approx(0.5)  # empty: one token in 1/rate seconds
    assert limiter.take("b", 100.0) == 0.0  # per address
    assert limiter.take("a", 100.25) == pytest.approx(0.25)  # half a token refilled meanwhile
    assert limiter.take("a", 100.5) == 0.0
    assert [limiter.take("a", 200.0) for _ in range(4)][-1] > 0  # refills to the burst, not beyond
    limiter.take("c", 300.0)  # a prune (> 10 s since the last) forgets buckets that are full again
    assert set(limiter._buckets) == {"c"}


def test_rate_limit_is_429_with_retry_after_per_client_address(
    tmp_path: Path, receivers: list[WebhookReceiver]
) -> None:
    receiver, letters = _start(receivers, tmp_path, rate_limit_per_s=0.1, rate_burst=3)
    statuses = []
    for i in range(3):
        body = _event(f"doc-{i}")
        statuses.append(_post(receiver, body, _headers(body, f"msg_{i}", NEW_SECRET))[0])
    forged = _event("forged")
    statuses.append(_post(receiver, forged, _headers(forged, "msg_forged", OLD_SECRET))[0])
    assert statuses == [202, 202, 202, 429]  # unsigned floods are throttled before the HMAC

    body = _event("doc-3")
    status, payload, headers = _post(receiver, body, _headers(body, "msg_3", NEW_SECRET))
    assert (status, payload["error"]) == (429, "rate_limited") and "127.0.0.1" in payload["detail"]
    assert int(headers["Retry-After"]) in (9, 10) and headers["Connection"] == "close"  # 1 token at 0.1/s
    assert receiver.counts["rate_limited"] == 2 and receiver.counts["accepted"] == 3
    assert letters == []  # throttled requests are not read, not dead-lettered

    health = http.client.HTTPConnection(*receiver.address, timeout=10)  # health checks are not limited
    health.request("GET", "/healthz")
    assert health.getresponse().status == 200
    health.close()

    try:  # another client address has its own bucket (Linux routes all of 127/8 to loopback)
        status = _post(receiver, body, _headers(body, "msg_3", NEW_SECRET), source="127.0.0.2")[0]
    except OSError:
        pytest.skip("cannot send from 127.0.0.2 on this host")
    assert status == 202


def test_rate_limit_settings(tmp_path: Path, receivers: list[WebhookReceiver]) -> None:
    default = WebhookConfig()
    assert (default.rate_limit_per_s, default.rate_burst) == (100.0, 500)
    assert "rate_limit_per_s=100.0, rate_burst=500" in repr(default)
    env = {"TIERFLOW__WEBHOOK__RATE_LIMIT_PER_S": "0", "TIERFLOW__WEBHOOK__RATE_BURST": "7"}
    loaded = load_webhook_config(None, environ=env)
    assert (loaded.rate_limit_per_s, loaded.rate_burst) == (0.0, 7)
    for bad, match in (
        ({"rate_limit_per_s": -1.0}, "rate_limit_per_s"),
        ({"rate_limit_per_s": float("nan")}, "rate_limit_per_s"),
        ({"rate_burst": 0}, "rate_burst"),
    ):
        with pytest.raises(ConfigError, match=match):
            WebhookConfig(**bad)  # type: ignore[arg-type]

    receiver, _ = _start(receivers, tmp_path, rate_limit_per_s=0, rate_burst=1)  # 0: no limit
    statuses = []
    for i in range(5):
        body = _event(f"doc-{i}")
        statuses.append(_post(receiver, body, _headers(body, f"msg_{i}", NEW_SECRET))[0])
    assert statuses == [202] * 5


# --- 3. planted secrets ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:  # bound, then closed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Planted:
    """A unique marker, the secrets made from it, and what to look for in outputs."""

    def __init__(self) -> None:
        self.marker = f"planted{uuid.uuid4().hex}"
        self.webhook = _secret(f"{self.marker}-webhook".encode())
        self.rotated = _secret(f"{self.marker}-rotated".encode())
        # the marker itself, and the base64 text of the webhook keys (a leaked secret shows as that)
        self.needles = [self.marker, self.webhook[6:].rstrip("="), self.rotated[6:].rstrip("=")]
        self.outputs: list[str] = []

    def leaks_in(self, text: str | bytes) -> list[str]:
        data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
        return [needle for needle in self.needles if needle.encode() in data]

    def assert_nowhere(self, roots: list[Path], caplog: pytest.LogCaptureFixture) -> int:
        assert self.leaks_in(f"x{self.webhook}y") and self.leaks_in(f"{self.marker}-kafka")  # the scan works
        scanned = 0
        for root in roots:
            for path in sorted(root.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    scanned += 1
                    assert not self.leaks_in(path.read_bytes()), f"a planted secret is in {path}"
        for i, text in enumerate(self.outputs):
            assert not self.leaks_in(text), f"a planted secret is in captured output #{i}: {text[:2000]}"
        records = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
        assert not self.leaks_in(caplog.text + records), "a planted secret is in the logs"
        return scanned


def _plant_environment(monkeypatch: pytest.MonkeyPatch, planted: Planted, tmp_path: Path) -> None:
    env = {
        "TIERFLOW__WEBHOOK__SECRETS": f"{planted.rotated} {planted.webhook}",
        "TIERFLOW__WEBHOOK__PORT": "0",
        "TIERFLOW__WEBHOOK__QUEUE_DIR": str(tmp_path / "webhooks"),
        "TIERFLOW__WEBHOOK__MAX_BODY_BYTES": "4096",
        "TIERFLOW__COLD__ACCESS_KEY_ID": "AKIATIERFLOWTESTKEY",
        "TIERFLOW__COLD__SECRET_ACCESS_KEY": f"{planted.marker}-cold-secret",
        "TIERFLOW__COLD__SESSION_TOKEN": f"{planted.marker}-cold-token",
        "TIERFLOW__KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{_free_port()}",
        "TIERFLOW__KAFKA__TOPICS": "documents",
        "TIERFLOW__KAFKA__SECURITY__SECURITY.PROTOCOL": "SASL_PLAINTEXT",
        "TIERFLOW__KAFKA__SECURITY__SASL.MECHANISM": "PLAIN",
        "TIERFLOW__KAFKA__SECURITY__SASL.USERNAME": "ingest",
        "TIERFLOW__KAFKA__SECURITY__SASL.PASSWORD": f"{planted.marker}-kafka",
        "TIERFLOW__KAFKA__PRODUCER_PROPERTIES__MESSAGE.TIMEOUT.MS": "1500",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def _webhook_session(planted: Planted, tmp_path: Path) -> None:
    """Valid and invalid deliveries to a receiver configured from the environment."""
    config = load_webhook_config()
    assert config.secrets == (planted.rotated, planted.webhook)
    planted.outputs += [repr(config), str(config)]
    with WebhookReceiver(config) as receiver:  # dead letters: <queue_dir>/dead-letters.jsonl
        now = int(time.time())
        good = _event("wh-1")
        sends = [
            (good, _headers(good, "msg_ok", planted.webhook), 202),
            (good, _headers(good, "msg_ok", planted.webhook), 409),  # replay
            (_event("wh-2"), _headers(_event("wh-2"), "msg_rotated", planted.rotated), 202),
            (good, _headers(good, "msg_forged", OLD_SECRET), 401),
            (good, _headers(good, "msg_stale", planted.webhook, now - 3600), 401),
            (b'{"doc_id": ', _headers(b'{"doc_id": ', "msg_json", planted.webhook), 400),
            (b"x" * 5000, _headers(b"x" * 5000, "msg_big", planted.webhook), 413),
            (
                good,
                {"Authorization": f"Bearer {planted.marker}-bearer", "Cookie": f"s={planted.marker}"},
                401,
            ),
        ]
        for body, headers, expected in sends:
            status, payload, _ = _post(receiver, body, headers)
            assert status == expected, (headers.get("webhook-id"), payload)
            planted.outputs.append(json.dumps(payload))
    dead = (tmp_path / "webhooks" / "dead-letters.jsonl").read_text().splitlines()
    assert len(dead) == 6


def _cli(planted: Planted, capsys: pytest.CaptureFixture[str], *argv: str) -> int:
    code = main(list(argv))
    captured = capsys.readouterr()
    planted.outputs += [captured.out, captured.err]
    return code


@pytest.mark.model
def test_planted_secrets_appear_in_no_file_log_or_output(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    planted = Planted()
    _plant_environment(monkeypatch, planted, tmp_path)

    _webhook_session(planted, tmp_path)

    # Kafka with SASL from the environment, brokers down: the delivery fails, and says why without it
    documents = tmp_path / "produce.jsonl"
    documents.write_text(json.dumps({"doc_id": "k1", "text": "via kafka", "version": 1}) + "\n")
    assert _cli(planted, capsys, "produce", str(documents), "-v") == 2
    assert "not delivered" in planted.outputs[-1]
    planted.outputs.append(repr(load_settings(KafkaConfig, "kafka")))

    # an ingest of the demo corpus (its bad records are dead-lettered), then the cold tier and reports
    from tests.helpers import DEMO

    hot, cold, report = tmp_path / "hot", tmp_path / "cold", tmp_path / "report"
    assert (
        _cli(planted, capsys, "ingest", str(DEMO / "corpus.jsonl"), "--index", str(hot), "--json", "-v") == 0
    )
    summary = json.loads(planted.outputs[-2])
    assert summary["dead_letters"]["total"] > 0 and summary["dead_letters"]["files"]
    cold_args = ("--index", str(hot), "--cold", str(cold), "-v")
    assert _cli(planted, capsys, "lifecycle", "run", "--as-of", "+60d", "--json", *cold_args) == 0
    assert json.loads(planted.outputs[-2])["moved"]["to_cold_vectors"] > 0
    assert _cli(planted, capsys, "storage", "report", "--out", str(report), *cold_args) == 0
    assert _cli(planted, capsys, "search", "sourdough starter", "--json", "--index", str(hot)) == 0
    assert json.loads(planted.outputs[-2])[0]["tier"] == "cold"  # read with the cold settings
    assert _cli(planted, capsys, "lineage", "kafka-2", "--index", str(hot)) == 0
    assert json.loads(planted.outputs[-2])["lineage"]["source"]
    planted.outputs.append(repr(load_settings(ColdConfig, "cold")))

    scanned = planted.assert_nowhere([tmp_path], caplog)
    assert (cold.exists(), (report / "storage.json").exists()) == (True, True)
    assert scanned > 20 and caplog.records  # the scan saw the index, cold table, reports, dead letters, logs


@pytest.mark.s3
def test_planted_cold_credentials_stay_out_of_the_bucket_and_outputs(
    s3_server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The cold tier's keys are really used here (LanceDB's object store and boto3 sign with them)."""
    import boto3

    from lifecycle.synthetic import build_synthetic_index

    caplog.set_level(logging.DEBUG)
    planted = Planted()
    _plant_environment(monkeypatch, planted, tmp_path)
    bucket = f"secrets-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    monkeypatch.setenv("TIERFLOW__COLD__URI", f"s3://{bucket}/cold")
    monkeypatch.setenv("TIERFLOW__COLD__ENDPOINT_URL", s3_server)
    monkeypatch.setenv("TIERFLOW__COLD__REGION", "us-east-1")
    now = time.time()
    build_synthetic_index(
        tmp_path / "hot", 20, 2, 16, ingest_time=lambda i: now - (60 if i % 2 else 1) * 86400
    )

    hot = str(tmp_path / "hot")
    assert _cli(planted, capsys, "lifecycle", "run", "--index", hot, "--json", "-v") == 0
    assert json.loads(planted.outputs[-2])["moved"]["to_cold_vectors"] == 20
    assert _cli(planted, capsys, "storage", "report", "--index", hot, "--out", str(tmp_path / "report")) == 0

    objects = tmp_path / "bucket"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", ()):
            target = objects / obj["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
    assert any(path.suffix == ".lance" for path in objects.rglob("*"))
    assert planted.assert_nowhere([tmp_path], caplog) > 10


def test_reprs_of_settings_never_show_secrets() -> None:
    secret = f"planted{uuid.uuid4().hex}"
    tables = {"public.articles": TableMapping(text_column="body")}
    shown = [
        WebhookConfig(secrets=(_secret(secret.encode()),)),
        ColdConfig(access_key_id="AKIA", secret_access_key=secret, session_token=secret + "t"),
        Credentials(access_key_id="AKIA", secret_access_key=secret, session_token=secret + "t"),
        KafkaConfig(
            "b:9092",
            security={
                "sasl.password": secret,
                "ssl.key.password": secret,
                "ssl.key.pem": secret,
                "sasl.oauthbearer.client.secret": secret,
                "sasl.jaas.config": f'x password="{secret}";',
            },
        ),
        PostgresCdcConfig(f"host=db dbname=app user=cdc password={secret}", mappings=tables),
        PostgresCdcConfig(f"postgresql://cdc:{secret}@db:5432/app", mappings=tables),
    ]
    b64 = base64.b64encode(secret.encode()).decode().rstrip("=")
    for value in shown:
        for text in (repr(value), str(value), f"{value!r}"):
            assert secret not in text and b64 not in text, type(value).__name__


# --- 4. path traversal --------------------------------------------------------------------------------


@pytest.fixture
def source_root(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "ok.jsonl").write_text(json.dumps({"_id": "ok", "text": "inside"}) + "\n")
    (tmp_path / "outside.jsonl").write_text(json.dumps({"_id": "secret", "text": "outside"}) + "\n")
    return root


def test_local_paths_outside_the_root_are_refused(source_root: Path, tmp_path: Path) -> None:
    store = LocalStore(str(source_root))
    dotdot = f"{source_root}/../outside.jsonl"
    absolute = str(tmp_path / "outside.jsonl")
    for uri in (dotdot, absolute):
        reason = store.refusal(uri)
        assert reason and "path resolves to" in reason and "outside the source root" in reason
        with pytest.raises(ObjectUnreadable, match="outside the source root"):
            store.read(uri, 0, 100)
        with pytest.raises(ObjectUnreadable, match="outside the source root"):
            store.open(uri)
    assert store.refusal(f"{source_root}/sub/../ok.jsonl") is None  # `..` that stays inside is fine

    # a split naming a file outside its source (built by hand, or tampered with) reads nothing from it
    config = FileSourceConfig(str(source_root))
    for uri in (dotdot, absolute):
        [dead] = list(read_split(FileSplit(uri, "jsonl", 0, 100, 0, config)))
        assert isinstance(dead, DeadLetter) and dead.reason == "unreadable" and dead.raw == b""
        assert "outside the source root" in dead.detail


def test_symlinked_directories_are_not_followed(source_root: Path, tmp_path: Path) -> None:
    # (symlinked files out of the root: test_connectors_files.py::test_text_dead_letters_and_symlinks)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "leak.jsonl").write_text(json.dumps({"_id": "leak", "text": "t"}) + "\n")
    (source_root / "linked").symlink_to(elsewhere, target_is_directory=True)
    events = [r for s in plan_splits(FileSourceConfig(str(source_root))) for r in read_split(s)]
    assert [e.doc_id for e in events if isinstance(e, DocumentEvent)] == ["ok"]


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/../other/x.jsonl",
        "s3://bucket/docs/../../x",
        "s3://bucket/./docs",
        "s3://../x",
        "s3://bucket/a/..",
    ],
)
def test_s3_uris_with_dot_segments_are_refused(uri: str) -> None:
    assert traversal(uri) is not None
    with pytest.raises(ConfigError, match="segment; refused"):
        FileSourceConfig(uri)
    with pytest.raises(ConfigError, match="segment; refused"):
        ColdConfig(uri=uri)
    store = S3Store("http://127.0.0.1:9")  # discard port: nothing below may reach it
    assert store.refusal(uri) is not None
    with pytest.raises(ConfigError, match="segment; refused"):
        store.list(uri)
    with pytest.raises(ConfigError, match="segment; refused"):
        store.stat(uri)
    with pytest.raises(ObjectUnreadable, match="segment; refused"):
        store.read(uri, 0, 10)
    assert store._client is None  # refused before a client was even made


def test_s3_dot_segments_in_listed_keys_and_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for fine in ("s3://bucket/docs/v1.2/a.jsonl", "s3://bucket/docs/..hidden", "s3://bucket/a..b/c"):
        assert traversal(fine) is None
    # a listed object whose key has a `..` segment is one unreadable dead letter, nothing is fetched
    config = FileSourceConfig("s3://bucket/docs", s3_endpoint_url="http://127.0.0.1:9")
    [dead] = list(read_split(FileSplit("s3://bucket/docs/../x.jsonl", "jsonl", 0, 10, 0, config)))
    assert isinstance(dead, DeadLetter) and dead.reason == "unreadable" and "segment; refused" in dead.detail

    assert main(["ingest", "s3://bucket/../x", "--index", str(tmp_path / "hot")]) == 2
    assert "segment; refused" in capsys.readouterr().err
    assert main(["lifecycle", "plan", "--index", str(tmp_path / "hot"), "--cold", "s3://b/c/../d"]) == 2
    assert "cold.uri" in capsys.readouterr().err


# --- 5. loopback binding ------------------------------------------------------------------------------


def test_webhook_receiver_binds_loopback_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert WebhookConfig().host == "127.0.0.1"
    assert load_webhook_config(None, environ={}).host == "127.0.0.1"
    config = WebhookConfig(port=0, secrets=(NEW_SECRET,), queue_dir=str(tmp_path / "q"))
    with WebhookReceiver(config) as receiver:
        assert receiver.address[0] == "127.0.0.1" and receiver.url.startswith("http://127.0.0.1:")
    # only when configured otherwise
    assert load_webhook_config(None, overrides={"host": "0.0.0.0"}, environ={}).host == "0.0.0.0"
    assert load_webhook_config(None, environ={"TIERFLOW__WEBHOOK__HOST": "::1"}).host == "::1"

    with pytest.raises(SystemExit) as exit_info:
        main(["webhook", "serve", "--help"])
    assert exit_info.value.code == 0
    assert "bind address (default 127.0.0.1)" in " ".join(capsys.readouterr().out.split())


# --- 6. TLS/SASL passthrough --------------------------------------------------------------------------

TLS_SASL = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "ingest",
    "sasl.password": "scram-password",
    "ssl.ca.location": "/etc/tierflow/ca.pem",
    "ssl.certificate.location": "/etc/tierflow/client.pem",
    "ssl.key.location": "/etc/tierflow/client.key",
    "ssl.key.password": "key-password",
    "ssl.endpoint.identification.algorithm": "https",
    "enable.ssl.certificate.verification": "true",
}


class _Recorder:
    """Stands in for confluent_kafka's Producer/Consumer: records the settings it is built with."""

    made: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, settings: dict[str, Any], **callbacks: Any) -> None:
        self.made.append((type(self).__name__, dict(settings)))


def test_kafka_security_settings_reach_every_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    made: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(kafka_client, "Producer", type("Producer", (_Recorder,), {"made": made}))
    monkeypatch.setattr(kafka_client, "Consumer", type("Consumer", (_Recorder,), {"made": made}))
    config = KafkaConfig(
        "broker-1:9093", topics=("docs",), group_id="g", dead_letter_topic="docs.dlq", security=TLS_SASL
    )
    DocumentProducer(config)
    DeadLetterProducer(config)
    DocumentConsumer(config)
    assert [kind for kind, _ in made] == ["Producer", "Producer", "Consumer"]
    for _, settings in made:
        assert {k: settings[k] for k in TLS_SASL} == TLS_SASL
        assert settings["bootstrap.servers"] == "broker-1:9093"
    assert {k: config.admin_settings()[k] for k in TLS_SASL} == TLS_SASL

    # the same settings from a config file and from TIERFLOW__KAFKA__SECURITY__<property> variables
    toml = tmp_path / "kafka.toml"
    toml.write_text(
        '[kafka]\nbootstrap_servers = "broker-1:9093"\n[kafka.security]\n'
        + "".join(f'"{k}" = "{v}"\n' for k, v in TLS_SASL.items())
    )
    from_file = load_settings(KafkaConfig, "kafka", toml, environ={})
    env = {f"TIERFLOW__KAFKA__SECURITY__{k.upper()}": v for k, v in TLS_SASL.items()}
    from_env = load_settings(KafkaConfig, "kafka", None, {"bootstrap_servers": "b:9093"}, env)
    assert from_file.security == from_env.security == TLS_SASL
    assert "scram-password" not in repr(from_env) and "key-password" not in repr(from_file)


def test_librdkafka_takes_the_tls_and_sasl_settings(tmp_path: Path) -> None:
    from confluent_kafka import KafkaException

    bundle = tmp_path / "ca.pem"
    shutil.copy(_ca_bundle(), bundle)
    security = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "ingest",
        "sasl.password": "pw",
        "ssl.ca.location": str(bundle),
        "ssl.endpoint.identification.algorithm": "https",
    }
    closed = f"127.0.0.1:{_free_port()}"
    producer = DocumentProducer(KafkaConfig(closed, topics=("docs",), security=security))  # accepted
    producer.flush(0.1)
    del producer
    missing = {**security, "ssl.ca.location": str(tmp_path / "missing.pem")}
    with pytest.raises(KafkaException, match="ssl.ca.location"):  # it really reached the TLS setup
        DocumentProducer(KafkaConfig(closed, topics=("docs",), security=missing))


def _ca_bundle() -> str:
    import certifi

    return str(certifi.where())


def test_s3_clients_verify_tls_and_honour_aws_ca_bundle(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    endpoint = f"https://s3.{uuid.uuid4().hex[:8]}.example:9443"
    keys = Credentials(access_key_id="AKIA", secret_access_key="secret")
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    default = s3_client(endpoint, "us-east-1", keys)
    assert default._endpoint.host == endpoint
    assert default._endpoint.http_session._verify is True  # verification on, botocore's CA bundle

    bundle = tmp_path / "private-ca.pem"
    shutil.copy(_ca_bundle(), bundle)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
    private = s3_client(endpoint, "us-east-1", keys)
    assert private is not default  # a client made before the bundle was set is not reused
    assert private._endpoint.http_session._verify == str(bundle)

    # LanceDB's object store: plain HTTP only when the endpoint says so
    secure = ColdStore(ColdConfig(uri="s3://b/p", endpoint_url=endpoint, region="us-east-1",
                                  access_key_id="AKIA", secret_access_key="secret"))  # fmt: skip
    options = secure._storage_options()
    assert options["aws_endpoint"] == endpoint and "allow_http" not in options
    plain = ColdStore(ColdConfig(uri="s3://b/p", endpoint_url="http://127.0.0.1:9000", region="us-east-1",
                                 access_key_id="AKIA", secret_access_key="secret"))  # fmt: skip
    assert plain._storage_options()["allow_http"] == "true"
    assert os.environ["AWS_CA_BUNDLE"] == str(bundle)
