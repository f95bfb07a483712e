"""Kafka connector: the document contract (encode/decode, every dead-letter reason), client configuration,
and the producer, consumer and dead-letter producer against a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from connectors.kafka_client import (
    DeadLetterProducer,
    DocumentConsumer,
    DocumentProducer,
    KafkaConfig,
    KafkaRecord,
    KafkaRejected,
    KafkaUnavailable,
    kafka_error,
    next_offsets_of,
    read_dead_letter,
)
from connectors.kafka_documents import (
    FIELDS,
    RAW_KEEP_BYTES,
    REASONS,
    decode_message,
    encode_document,
    next_offsets,
    parse_source_key,
    source_key,
)
from connectors.tansu import free_port
from tests.kafka_broker import kafka_config, unique
from tierflow.deadletter import DeadLetter
from tierflow.errors import BadRecord, ConfigError, Terminal, Transient
from tierflow.records import DocumentEvent, SourcePosition

pytestmark = pytest.mark.kafka

TS_MS = 1_718_000_000_123


def decode(value: bytes | None, key: bytes | None = b"d1", **options: Any) -> DocumentEvent | DeadLetter:
    return decode_message("docs", 2, 17, key, value, TS_MS, **options)


# ---- the contract: encode / decode -------------------------------------------------------------------


def test_upsert_round_trip_keeps_every_field() -> None:
    key, value = encode_document(
        "doc-é", "Body ✓", title="Title", metadata={"lang": "en", "tags": [1, 2]}, version=42, event_time=1.5
    )
    assert key == "doc-é".encode()
    assert value is not None and json.loads(value) == {
        "op": "upsert",
        "text": "Body ✓",
        "title": "Title",
        "metadata": {"lang": "en", "tags": [1, 2]},
        "version": 42,
        "event_time": 1.5,
    }
    event = decode_message("docs", 2, 17, key, value, TS_MS)
    assert event == DocumentEvent(
        "doc-é",
        "upsert",
        "Body ✓",
        "Title",
        {"lang": "en", "tags": [1, 2]},
        SourcePosition("kafka", "docs/2", "17"),
        42,
        1.5,
    )


def test_defaults_are_the_offset_and_the_kafka_timestamp() -> None:
    key, value = encode_document("d1", "Hello.")
    assert value == b'{"op":"upsert","text":"Hello."}'
    event = decode(value, key)
    assert isinstance(event, DocumentEvent)
    assert (event.op, event.text, event.title, event.metadata) == ("upsert", "Hello.", "", {})
    assert event.version == 17 and event.event_time == TS_MS / 1000
    assert isinstance(decode(b'{"text": "x"}'), DocumentEvent)  # op defaults to upsert
    no_timestamp = decode_message("docs", 0, 3, b"d1", value, None)
    assert isinstance(no_timestamp, DocumentEvent) and no_timestamp.event_time is None
    assert decode_message("docs", 0, 3, b"d1", value, -1).event_time is None  # type: ignore[union-attr]


def test_deletes_tombstone_or_versioned_json() -> None:
    assert encode_document("d1", "ignored", op="delete") == (b"d1", None)
    key, value = encode_document("d1", "ignored", title="t", metadata={"a": 1}, version=9, op="delete")
    assert value == b'{"op":"delete","version":9}'
    versioned = decode(value, key)
    assert isinstance(versioned, DocumentEvent)
    assert (versioned.op, versioned.version, versioned.text) == ("delete", 9, "")
    tombstone = decode(
        None, b"d1", headers=[("content-type", b"text/plain")]
    )  # headers of tombstones ignored
    assert isinstance(tombstone, DocumentEvent)
    assert (tombstone.op, tombstone.version, tombstone.event_time) == ("delete", 17, TS_MS / 1000)
    assert tombstone.source == SourcePosition("kafka", "docs/2", "17")
    deleted = decode(b'{"op": "delete", "text": "old body"}')
    assert isinstance(deleted, DocumentEvent) and deleted.op == "delete" and deleted.text == ""


def test_null_fields_count_as_absent_and_json_content_type_is_accepted() -> None:
    value = b'{"op": null, "text": "t", "title": null, "metadata": null, "version": null, "event_time": null}'
    event = decode(value, headers={"content-type": b"application/json; charset=utf-8"})
    assert isinstance(event, DocumentEvent)
    assert (event.op, event.title, event.metadata, event.version) == ("upsert", "", {}, 17)
    assert isinstance(decode(b'{"text": "t", "event_time": 5}'), DocumentEvent)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("", "t"), "missing_id"),
        (("  ", "t"), "missing_id"),
        ((7, "t"), "wrong_type"),
        (("d", 5), "wrong_type"),
        (("d", None), "missing_text"),
        (("d", "t", 3), "wrong_type"),
        (("d", "t", "", ["m"]), "wrong_type"),
        (("d", "t", "", {"x": object()}), "wrong_type"),
        (("d", "t", "", None, -1), "wrong_type"),
        (("d", "t", "", None, True), "wrong_type"),
        (("d", "t", "", None, 2**63), "wrong_type"),
        (("d", "t", "", None, None, math.nan), "wrong_type"),
        (("d", "t", "", None, None, "yesterday"), "wrong_type"),
        (("d", "t", "", None, None, None, "remove"), "bad_op"),
        (("d", "\ud800"), "not_utf8"),
        (("\udfff", "t"), "not_utf8"),
    ],
)
def test_encode_refuses_what_consumers_would_reject(args: tuple[Any, ...], reason: str) -> None:
    with pytest.raises(BadRecord) as caught:
        encode_document(*args)
    assert caught.value.reason == reason
    assert isinstance(caught.value, Terminal)


LARGE = b'{"text": "' + b"x" * 200_000 + b'"}'

# (key, value, headers, max_bytes, reason, words in the detail)
DEAD_LETTER_CASES: list[tuple[bytes | None, bytes | None, Any, int, str, tuple[str, ...]]] = [
    (None, b'{"text": "t"}', None, 1000, "missing_id", ("null",)),
    (b"", b'{"text": "t"}', None, 1000, "missing_id", ("empty",)),
    (b" \t", b'{"text": "t"}', None, 1000, "missing_id", ("whitespace",)),
    (b"\xffd1", b'{"text": "t"}', None, 1000, "not_utf8", ("key", "ff6431")),
    (b"d1", b'{"text": "caf\xe9"}', None, 1000, "not_utf8", ("value", "byte 13")),
    (b"d1", b'{"text": "\\ud800"}', None, 1000, "not_utf8", ("surrogate",)),
    (b"d1", LARGE, None, 1000, "too_large", (str(len(LARGE)), "max_bytes=1000", "docs/2 offset 17")),
    (b"d1", b'{"text": "t"}', [("content-type", b"application/avro")], 1000, "bad_content_type", ("avro",)),
    (b"d1", b'{"text": "t"', None, 1000, "malformed_json", ("column",)),
    (b"d1", b"", None, 1000, "malformed_json", ("Expecting value",)),
    (b"d1", b'{"text": "a", "text": "b"}', None, 1000, "malformed_json", ("duplicate", "text")),
    (b"d1", b'{"text": "t", "event_time": NaN}', None, 1000, "malformed_json", ("NaN",)),
    (
        b"d1",
        b'{"text": "t", "metadata": {"score": NaN}}',
        None,
        1000,
        "malformed_json",
        ("NaN", "not valid JSON"),
    ),
    (b"d1", b'{"text": "t", "metadata": {"a": [Infinity]}}', None, 1000, "malformed_json", ("Infinity",)),
    (b"d1", b'{"text": "t", "metadata": {"a": -Infinity}}', None, 1000, "malformed_json", ("-Infinity",)),
    (
        b"d1",
        b'{"text": "t", "metadata": {"a": -1e400}}',
        None,
        1000,
        "malformed_json",
        ("too large for a double",),
    ),
    (b"d1", '\ufeff{"text": "t"}'.encode(), None, 1000, "malformed_json", ("BOM",)),
    (b"d1", b'["text"]', None, 1000, "not_an_object", ("array",)),
    (b"d1", b'"text"', None, 1000, "not_an_object", ("string",)),
    (b"d1", b'{"text": "t", "body": "x", "_id": "d1"}', None, 1000, "unknown_field", ("'_id', 'body'",)),
    (b"d1", b'{"text": 5}', None, 1000, "wrong_type", ("'text'", "number")),
    (b"d1", b'{"text": "t", "title": ["a"]}', None, 1000, "wrong_type", ("'title'", "array")),
    (b"d1", b'{"text": "t", "metadata": "x"}', None, 1000, "wrong_type", ("'metadata'", "object")),
    (b"d1", b'{"text": "t", "version": "3"}', None, 1000, "wrong_type", ("'version'", "string")),
    (b"d1", b'{"text": "t", "version": 1.5}', None, 1000, "wrong_type", ("'version'", "number")),
    (b"d1", b'{"text": "t", "version": -1}', None, 1000, "wrong_type", ("'version'", "-1")),
    (b"d1", b'{"text": "t", "version": true}', None, 1000, "wrong_type", ("'version'", "boolean")),
    (b"d1", b'{"text": "t", "version": 9223372036854775808}', None, 1000, "wrong_type", ("2**63",)),
    (b"d1", b'{"text": "t", "event_time": "2024-01-01"}', None, 1000, "wrong_type", ("'event_time'",)),
    (b"d1", b'{"text": "t", "event_time": 1e999}', None, 1000, "malformed_json", ("too large for a double",)),
    (b"d1", b'{"text": "t", "op": 1}', None, 1000, "wrong_type", ("'op'", "number")),
    (b"d1", b'{"text": "t", "op": "remove"}', None, 1000, "bad_op", ("'remove'",)),
    (b"d1", b'{"title": "only a title"}', None, 1000, "missing_text", ("absent",)),
    (b"d1", b'{"text": null}', None, 1000, "missing_text", ("null",)),
]


@pytest.mark.parametrize(
    ("key", "value", "headers", "max_bytes", "reason", "words"),
    DEAD_LETTER_CASES,
    ids=[f"{case[4]}-{i}" for i, case in enumerate(DEAD_LETTER_CASES)],
)
def test_every_rejection_is_a_dead_letter_with_reason_and_raw_bytes(
    key: bytes | None, value: bytes | None, headers: Any, max_bytes: int, reason: str, words: tuple[str, ...]
) -> None:
    dead = decode(value, key, max_bytes=max_bytes, headers=headers)
    assert isinstance(dead, DeadLetter)
    assert dead.reason == reason, dead.detail
    for word in words:
        assert word in dead.detail, (word, dead.detail)
    assert dead.stage == "parse"
    assert dead.source == SourcePosition("kafka", "docs/2", "17")
    assert dead.raw == (value[:RAW_KEEP_BYTES] if reason == "too_large" and value else value)
    unkeyed = reason == "missing_id" or (reason == "not_utf8" and key != b"d1")
    assert dead.doc_id == (None if unkeyed else "d1")


def test_every_reason_code_is_covered() -> None:
    assert {case[4] for case in DEAD_LETTER_CASES} == set(REASONS)
    assert FIELDS == ("op", "text", "title", "metadata", "version", "event_time")


def test_source_keys_and_resume_offsets() -> None:
    assert source_key("docs.v1", 3) == "kafka:docs.v1/3" == SourcePosition("kafka", "docs.v1/3").key
    assert parse_source_key("kafka:docs.v1/3") == ("docs.v1", 3)
    assert parse_source_key("file:/a/b.jsonl") is None and parse_source_key("kafka:docs") is None
    sources = {"kafka:docs/0": "41", "kafka:docs/1": "0", "file:/x.jsonl": "complete", "kafka:docs/2": "?"}
    assert next_offsets(sources) == {("docs", 0): 42, ("docs", 1): 1}
    records = [KafkaRecord("docs", 0, 5, b"a", b"{}"), KafkaRecord("docs", 0, 3, b"b", b"{}")]
    assert next_offsets_of([*records, KafkaRecord("docs", 1, 0, b"c", None)]) == {
        ("docs", 0): 6,
        ("docs", 1): 1,
    }


# ---- configuration and errors -------------------------------------------------------------------------


def test_config_repr_redacts_secrets() -> None:
    config = KafkaConfig(
        "b1:9092,b2:9092",
        topics="docs, more",  # type: ignore[arg-type]  # a comma-separated string, as from the environment
        group_id="g",
        dead_letter_topic="docs.dlq",
        security={
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "ingest",
            "sasl.password": "hunter2",
            "ssl.key.password": "keypass",
            "ssl.keystore.password": "storepass",
            "ssl.key.pem": "-----BEGIN PRIVATE KEY-----",
            "sasl.oauthbearer.client.secret": "oauth-secret",
        },
    )
    assert config.topics == ("docs", "more")
    for shown in (repr(config), str(config), f"{config}"):
        for secret in ("hunter2", "keypass", "storepass", "PRIVATE KEY", "oauth-secret"):
            assert secret not in shown
        assert "'sasl.username': 'ingest'" in shown and "'sasl.password': '***'" in shown
    consumer = config.consumer_settings()
    assert consumer["sasl.password"] == "hunter2" and consumer["enable.auto.commit"] is False
    assert consumer["group.id"] == "g" and consumer["bootstrap.servers"] == "b1:9092,b2:9092"
    producer = config.producer_settings()
    assert (producer["acks"], producer["enable.idempotence"], producer["linger.ms"]) == ("all", True, 5)
    assert producer["partitioner"] == "murmur2_random" and producer["ssl.key.password"] == "keypass"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"bootstrap_servers": " "}, "bootstrap_servers"),
        ({"topics": ("bad topic",)}, "not a valid Kafka topic name"),
        ({"topics": ("docs",), "dead_letter_topic": "docs"}, "also a source topic"),
        ({"security": {"linger.ms": 5}}, "non-security properties"),
        ({"consumer_properties": {"enable.auto.commit": True}}, "enable.auto.commit"),
        ({"producer_properties": {"acks": 1}}, "acks"),
        ({"producer_properties": {"enable.idempotence": False}}, "enable.idempotence"),
        ({"consumer_properties": {"sasl.password": "x"}}, "kafka.security"),
        ({"max_message_bytes": 0}, "max_message_bytes"),
    ],
)
def test_config_errors(options: dict[str, Any], words: str) -> None:
    values = {"bootstrap_servers": "b:9092", **options}
    with pytest.raises(ConfigError, match=words):
        KafkaConfig(**values)


def test_clients_need_a_group_and_topics() -> None:
    with pytest.raises(ConfigError, match="group_id"):
        DocumentConsumer(KafkaConfig("b:9092", topics=("docs",)))
    with pytest.raises(ConfigError, match="topic"):
        DocumentProducer(KafkaConfig("b:9092"))
    with pytest.raises(ConfigError, match="dead_letter_topic"):
        DeadLetterProducer(KafkaConfig("b:9092", topics=("docs",)))


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (KafkaError._MSG_TIMED_OUT, KafkaUnavailable),
        (KafkaError._TRANSPORT, KafkaUnavailable),
        (KafkaError._ALL_BROKERS_DOWN, KafkaUnavailable),
        (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaUnavailable),
        (KafkaError.REBALANCE_IN_PROGRESS, KafkaUnavailable),
        (KafkaError.MSG_SIZE_TOO_LARGE, KafkaRejected),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaRejected),
        (KafkaError.SASL_AUTHENTICATION_FAILED, KafkaRejected),
        (KafkaError._FATAL, KafkaRejected),
        (KafkaError.INVALID_CONFIG, KafkaRejected),
    ],
)
def test_errors_are_transient_or_terminal_by_code(code: int, kind: type) -> None:
    error = kafka_error(KafkaException(KafkaError(code)), "producing")
    assert type(error) is kind and error.code == code
    assert isinstance(error, Transient) != isinstance(error, Terminal)
    assert error.name in str(error) and str(error).startswith("producing failed")


def test_producer_refuses_documents_consumers_would_reject() -> None:
    config = KafkaConfig(f"127.0.0.1:{free_port()}", topics=("docs",), max_message_bytes=100)
    producer = DocumentProducer(config)
    with pytest.raises(BadRecord) as caught:
        producer.send("d1", "x" * 200)
    assert caught.value.reason == "too_large"
    with pytest.raises(BadRecord) as caught:
        producer.send("", "text")
    assert caught.value.reason == "missing_id"
    producer.flush(1)  # nothing was queued


def test_delivery_failure_is_raised_at_flush_as_transient() -> None:
    # Nothing listens on this port: the records time out, which retrying later may fix.
    config = KafkaConfig(
        f"127.0.0.1:{free_port()}", topics=("docs",), producer_properties={"message.timeout.ms": 300}
    )
    producer = DocumentProducer(config)
    producer.send("d1", "text")
    producer.delete("d2")
    with pytest.raises(KafkaUnavailable) as caught:
        producer.flush(10)
    assert caught.value.failed == ("d1", "d2") and caught.value.name == "_MSG_TIMED_OUT"
    assert "2 record(s) were not delivered" in str(caught.value)


# ---- against the broker ---------------------------------------------------------------------------------

PARTITIONS = 3


def murmur2(data: bytes) -> int:
    """Kafka's Java ``Utils.murmur2`` (the default partitioner's hash), as an unsigned 32-bit int."""
    m, h = 0x5BD1E995, (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    for i in range(0, len(data) - len(data) % 4, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * m) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail, rest = len(data) & ~3, len(data) % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h = ((h ^ data[tail]) * m) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def java_partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def planned_documents() -> list[dict[str, Any]]:
    """200 changes: versioned upserts, older versions sent late, versioned deletes, tombstones, and
    upserts ordered by offset only."""
    plan: list[dict[str, Any]] = []
    for i in range(100):
        plan.append({"doc_id": f"doc-{i:03}", "op": "upsert", "version": 10, "text": f"text {i} v10"})
    for i in range(30):  # out of order: an older version arrives after the newer one
        plan.append({"doc_id": f"doc-{i:03}", "op": "upsert", "version": 5, "text": f"text {i} v5"})
    for i in range(30, 50):
        plan.append({"doc_id": f"doc-{i:03}", "op": "delete", "version": 20, "text": ""})
    for i in range(50, 70):
        plan.append({"doc_id": f"doc-{i:03}", "op": "delete", "version": None, "text": ""})  # tombstone
    for i in range(100, 130):
        plan.append({"doc_id": f"doc-{i:03}", "op": "upsert", "version": None, "text": f"text {i}"})
    assert len(plan) == 200
    return plan


@pytest.fixture(scope="module")
def documents(kafka_broker: str, topic: Callable[..., str]) -> tuple[str, list[dict[str, Any]]]:
    """A 3-partition topic holding the 200 planned changes, produced with DocumentProducer."""
    name = topic("docs", partitions=PARTITIONS)
    plan = planned_documents()
    with DocumentProducer(kafka_config(kafka_broker, name)) as producer:
        for doc in plan:
            if doc["op"] == "delete":
                producer.delete(doc["doc_id"], version=doc["version"])
            else:
                producer.send(
                    doc["doc_id"], doc["text"], title="T", metadata={"n": 1}, version=doc["version"]
                )
    return name, plan


def read_all(
    consumer: DocumentConsumer, count: int, batch: int = 37, timeout_s: float = 20.0
) -> list[KafkaRecord]:
    records: list[KafkaRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        got = consumer.poll_batch(batch, 0.5)
        assert len(got) <= batch
        records += got
    return records


def check_once_in_order(
    topic_name: str, records: list[KafkaRecord], plan: list[dict[str, Any]], consumer: DocumentConsumer
) -> None:
    """Every planned change arrives exactly once, decoded with the right op, version and position, on
    the partition Java's partitioner picks for its key, in the order it was sent."""
    positions = [(r.partition, r.offset) for r in records]
    assert len(positions) == len(set(positions)) == len(plan)
    by_partition: dict[int, list[int]] = defaultdict(list)
    for partition, offset in sorted(positions):
        by_partition[partition].append(offset)
    for offsets in by_partition.values():
        assert offsets == list(range(len(offsets)))
    seen: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = consumer.decode(record)
        assert isinstance(event, DocumentEvent), event
        assert event.source == SourcePosition("kafka", f"{topic_name}/{record.partition}", str(record.offset))
        assert record.partition == java_partition(event.doc_id.encode(), PARTITIONS)
        assert event.event_time is not None and abs(event.event_time - time.time()) < 600
        seen[event.doc_id].append((event.op, event.version, event.text))
        if record.value is None:
            assert event.version == record.offset  # tombstones are ordered by offset
    expected: dict[str, list[tuple[str, int | None, str]]] = defaultdict(list)
    for doc in plan:
        expected[doc["doc_id"]].append((doc["op"], doc["version"], doc["text"]))
    assert set(seen) == set(expected)
    for doc_id, changes in expected.items():
        got = seen[doc_id]
        assert [(op, text) for op, _, text in got] == [(op, text) for op, _, text in changes]
        for (_, version, _), (_, want, _) in zip(got, changes, strict=True):
            assert want is None or version == want


def test_murmur2_matches_kafka() -> None:
    # Vectors from Kafka's UtilsTest.testMurmur2 (signed there).
    for data, signed in [
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
    ]:
        assert murmur2(data) == signed & 0xFFFFFFFF


def test_produce_and_consume_every_document_once(
    kafka_broker: str, documents: tuple[str, list[dict[str, Any]]]
) -> None:
    name, plan = documents
    with DocumentConsumer(kafka_config(kafka_broker, name)) as consumer:
        assert consumer.subscribe() == {(name, p) for p in range(PARTITIONS)}
        records = read_all(consumer, len(plan))
        check_once_in_order(name, records, plan, consumer)
        assert consumer.poll_batch(10, 0.3) == []
        assert consumer.positions() == next_offsets_of(records)
        assert consumer.committed() == {}  # nothing is committed unless asked


def test_commit_then_a_new_consumer_resumes_after_it(
    kafka_broker: str, documents: tuple[str, list[dict[str, Any]]]
) -> None:
    name, plan = documents
    config = kafka_config(kafka_broker, name)
    with DocumentConsumer(config) as first:
        first.subscribe()
        done = read_all(first, 90)
        assert len(done) >= 90
        committed = first.positions()
        assert committed == next_offsets_of(done)
        first.commit(committed)
        assert first.committed() == committed
        first.poll_batch(50, 0.5)  # read past the commit without committing: these come again
    with DocumentConsumer(config) as second:
        second.subscribe()
        assert second.committed() == committed
        rest = read_all(second, len(plan) - len(done))
        firsts: dict[tuple[str, int], int] = {}
        for record in rest:
            firsts.setdefault(record.topic_partition, record.offset)
        for tp, offset in firsts.items():
            assert offset == committed.get(tp, 0)
        check_once_in_order(name, done + rest, plan, second)


def test_start_offsets_and_seek(kafka_broker: str, documents: tuple[str, list[dict[str, Any]]]) -> None:
    name, plan = documents
    with DocumentConsumer(kafka_config(kafka_broker, name)) as consumer:
        consumer.subscribe(start_offsets={(name, 0): 5, (name, 1): 7})
        records = read_all(consumer, len(plan) - 12)
        firsts: dict[int, int] = {}
        for record in records:
            firsts.setdefault(record.partition, record.offset)
        assert firsts == {0: 5, 1: 7, 2: 0}
        ends = consumer.positions()

        consumer.seek({(name, 1): 3, (name, 2): 10})
        assert consumer.positions() == {**ends, (name, 1): 3, (name, 2): 10}
        again = read_all(consumer, ends[(name, 1)] - 3 + ends[(name, 2)] - 10)
        by_partition: dict[int, list[int]] = defaultdict(list)
        for record in again:
            by_partition[record.partition].append(record.offset)
        assert by_partition == {1: list(range(3, ends[(name, 1)])), 2: list(range(10, ends[(name, 2)]))}


def test_dead_letter_record_is_readable_with_its_headers(
    kafka_broker: str, topic: Callable[..., str]
) -> None:
    source, dlq = topic("docs"), topic("dlq")
    config = kafka_config(kafka_broker, source, dead_letter_topic=dlq)
    raw = b'{"text": "t", "body": "\xff not utf8 either"}'
    dead = decode_message(source, 0, 41, b"\xfekey", raw, TS_MS)
    assert isinstance(dead, DeadLetter) and dead.reason == "not_utf8"
    other = decode_message(source, 0, 42, b"d2", b'{"text": 1}', TS_MS)
    assert isinstance(other, DeadLetter) and other.reason == "wrong_type"
    with DeadLetterProducer(config) as producer:
        producer.send(dead, key=b"\xfekey")
        producer.send(other)

    with DocumentConsumer(config) as reader:
        reader.assign({(dlq, 0): 0})  # no group join needed to read it back
        records = read_all(reader, 2)
    assert [(r.key, r.value) for r in records] == [(b"\xfekey", raw), (b"d2", b'{"text": 1}')]
    headers = dict(records[1].headers)
    assert headers["tierflow.reason"] == b"wrong_type"
    assert headers["tierflow.detail"] == other.detail.encode()
    assert json.loads(headers["tierflow.source"] or b"") == {
        "system": "kafka",
        "uri": f"{source}/0",
        "position": "42",
    }
    assert headers["tierflow.doc_id"] == b"d2"
    for record, original in zip(records, (dead, other), strict=True):
        back = read_dead_letter(record.value, record.headers)
        assert back == original


def test_subscribing_to_a_missing_topic_fails_with_the_brokers_reason(kafka_broker: str) -> None:
    config = kafka_config(kafka_broker, "no-such-topic-" + unique("t"))
    consumer = DocumentConsumer(config)
    started = time.monotonic()
    with pytest.raises(KafkaRejected, match="Unknown topic or partition"):
        consumer.subscribe(timeout_s=2)
    consumer.close()  # does not wait again for an assignment that will not come
    assert time.monotonic() - started < 5


class _HangingConsumer:
    """A ``confluent_kafka.Consumer`` whose close() blocks, as librdkafka's can while the coordinator is
    unreachable (confluent-kafka-python#1667). The real broker path: tests/test_faults_broker.py."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.closes = 0

    def close(self) -> None:
        self.closes += 1
        self.release.wait(60)


def test_a_consumer_close_that_hangs_is_left_behind_after_its_bound(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    hanging = _HangingConsumer(release)
    consumer = DocumentConsumer(kafka_config("127.0.0.1:1", ("docs",)), consumer=hanging)
    started = time.monotonic()
    try:
        consumer.close(timeout_s=0.5)
        took = time.monotonic() - started
        consumer.close(timeout_s=0.5)  # a second close does nothing
    finally:
        release.set()
    assert took < 30 and hanging.closes == 1
    assert "close did not finish within 0.5s; leaving it behind" in caplog.text
