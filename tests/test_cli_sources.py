"""The producer-facing commands against real peers: ``tierflow produce`` to the Tansu broker and
``tierflow webhook serve`` over loopback HTTP."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from connectors.local_queue import LocalQueue
from connectors.webhooks import decode_record, sign
from tests.helpers import REPO
from tests.kafka_broker import consume
from tierflow.cli import main


def post_signed(url: str, secret: str, id_prefix: str, events: list[dict[str, Any]]) -> list[int]:
    """POST each event signed per Standard Webhooks (ids ``<prefix>0``, ``<prefix>1`` ...); the statuses."""
    now, statuses = int(time.time()), []
    for i, event in enumerate(events):
        body = json.dumps(event).encode()
        msg_id = f"{id_prefix}{i}"
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(now),
            "webhook-signature": sign(secret, msg_id, now, body),
        }
        with urllib.request.urlopen(
            urllib.request.Request(url, body, headers, method="POST"), timeout=10
        ) as resp:
            statuses.append(resp.status)
    return statuses


@pytest.mark.kafka
def test_produce_sends_documents_and_refuses_bad_lines(
    kafka_broker: str, topic: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = topic("cli")
    lines = [
        {"doc_id": "a", "text": "alpha", "version": 1},
        {"_id": "b", "title": "B", "text": "beta", "metadata": {"team": "x"}},
        {"doc_id": "a", "op": "delete", "version": 2},
        {"doc_id": "c"},
        {"doc_id": "d", "text": 5},
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken\n")
    code = main(["produce", str(path), "--bootstrap", kafka_broker, "--topic", name])
    assert code == 1
    captured = capsys.readouterr()
    assert "sent 2 upsert(s) and 1 delete(s)" in captured.out
    assert "line 4: missing_text" in captured.err and "line 5: wrong_type" in captured.err
    assert "line 6: malformed_json" in captured.err

    events = [record.decode() for record in consume(kafka_broker, name, 3)]
    assert [(e.doc_id, e.op) for e in events] == [("a", "upsert"), ("b", "upsert"), ("a", "delete")]
    assert events[1].metadata == {"team": "x"} and events[2].version == 2


def test_webhook_serve_accepts_a_signed_event_durably(tmp_path: Path) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    env = dict(os.environ, TIERFLOW__WEBHOOK__SECRETS=secret)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tierflow.cli",
            "webhook",
            "serve",
            "--port",
            "0",
            "--queue-dir",
            str(tmp_path / "q"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "listening on" in line, line + (proc.stderr.read() if proc.stderr else "")
        url = line.split("listening on", 1)[1].strip()
        body = json.dumps({"doc_id": "w1", "text": "from a webhook", "version": 3}).encode()
        now = int(time.time())
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(now),
            "webhook-signature": sign(secret, "msg_1", now, body),
        }
        with urllib.request.urlopen(
            urllib.request.Request(url, body, headers, method="POST"), timeout=10
        ) as resp:
            assert resp.status == 202 and json.load(resp) == {"accepted": "msg_1"}
        headers["webhook-signature"] = sign(secret, "msg_1", now, body + b" ")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(
                urllib.request.Request(url, body + b" ", headers, method="POST"), timeout=10
            )
        assert err.value.code == 409
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    queue = LocalQueue(tmp_path / "q")
    try:
        [(offset, record)] = queue.read(0, 10)
        event = decode_record(record)
        assert (event.doc_id, event.text, event.version, event.source.position) == (
            "w1",
            "from a webhook",
            3,
            "msg_1",
        )
    finally:
        queue.close()
    assert secret not in (proc.stderr.read() if proc.stderr else "")


@pytest.mark.model
def test_webhook_serve_ingest_makes_events_searchable(tmp_path: Path) -> None:
    from tests.helpers import live_docs

    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    env = dict(os.environ, TIERFLOW__WEBHOOK__SECRETS=secret)
    index_dir = tmp_path / "hot"
    command = [
        sys.executable,
        "-m",
        "tierflow.cli",
        "webhook",
        "serve",
        "--port",
        "0",
        "--ingest",
        "--index",
        str(index_dir),
        "--queue-dir",
        str(tmp_path / "q"),
    ]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "listening on" in line, line
        url = line.split("listening on", 1)[1].split(",")[0].strip()
        events = [
            {"doc_id": "h1", "text": "Heat pumps move heat instead of making it.", "version": 1},
            {"doc_id": "h2", "text": "Solar panels turn light into electricity.", "version": 1},
            {"doc_id": "bad", "text": "", "version": 1},
        ]
        assert post_signed(url, secret, "m", events) == [202, 202, 202]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and set(
            live_docs(index_dir) if (index_dir / "CURRENT").exists() else {}
        ) != {"h1", "h2"}:
            time.sleep(0.5)
        assert set(live_docs(index_dir)) == {"h1", "h2"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    queue = LocalQueue(tmp_path / "q")
    try:
        assert queue.committed() == 3, "the queue is acknowledged once the index holds the events"
    finally:
        queue.close()


@pytest.mark.postgres
@pytest.mark.model
def test_cdc_command_follows_a_replication_slot(postgres_db: str, tmp_path: Path) -> None:
    import psycopg

    from tests.helpers import live_docs

    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE articles (id int PRIMARY KEY, headline text, body text NOT NULL)")
    config_file = tmp_path / "tierflow.toml"
    config_file.write_text(
        f'index_dir = "{tmp_path / "hot"}"\n\n[postgres]\ndsn = "{postgres_db}"\nslot = "cli_slot"\n\n'
        '[postgres.mappings."public.articles"]\ntext_column = ["headline", "body"]\nid_prefix = "article:"\n'
    )
    args = ["cdc", "--config", str(config_file), "--create-slot", "--max-wait", "0.2"]
    assert main([*args, "--exit-when-idle", "1"]) == 0  # creates the slot; nothing to index yet
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute("INSERT INTO articles VALUES (1, 'Slots', 'A slot keeps WAL until it is confirmed.')")
        conn.execute("INSERT INTO articles VALUES (2, 'Peek', 'Peeking does not consume changes.')")
        conn.execute("DELETE FROM articles WHERE id = 2")
    assert main([*args, "--exit-when-idle", "2"]) == 0
    assert set(live_docs(tmp_path / "hot")) == {"article:1"}


@pytest.mark.kafka
def test_webhook_serve_writes_accepted_events_to_a_kafka_topic(kafka_broker: str, topic: Any) -> None:
    name = topic("hooks")
    secret = "whsec_" + base64.b64encode(b"t" * 32).decode()
    env = dict(os.environ, TIERFLOW__WEBHOOK__SECRETS=secret)
    command = [
        sys.executable,
        "-m",
        "tierflow.cli",
        "webhook",
        "serve",
        "--port",
        "0",
        "--bootstrap",
        kafka_broker,
        "--topic",
        name,
    ]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "listening on" in line, line + (proc.stderr.read() if proc.stderr else "")
        url = line.split("listening on", 1)[1].strip()
        events = [
            {"doc_id": "k1", "text": "to kafka", "version": 4},
            {"doc_id": "k0", "op": "delete", "version": 5},
        ]
        assert post_signed(url, secret, "k", events) == [202, 202]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    events = [record.decode() for record in consume(kafka_broker, name, 2)]
    assert [(e.doc_id, e.op, e.version) for e in events] == [("k1", "upsert", 4), ("k0", "delete", 5)]
    assert events[0].text == "to kafka"
