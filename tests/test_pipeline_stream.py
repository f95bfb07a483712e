"""Streaming ingestion from a real Kafka-protocol broker (Tansu): micro-batches through the shared stages,
offsets committed only after the index commit, restarts resume from the index's own positions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from connectors.kafka_client import DocumentConsumer, DocumentProducer, read_dead_letter
from indexing.hot import HotIndex
from pipelines.stream import BatchPolicy, KafkaSource, MicroBatchStream
from tests.helpers import config, demo_docs, live_docs, live_vectors, top_doc
from tests.kafka_broker import consume, kafka_config

pytestmark = [pytest.mark.kafka, pytest.mark.model]


def _stream(kafka: Any, index_dir: Path) -> MicroBatchStream:
    policy = BatchPolicy(max_records=200, max_wait_s=0.5)
    return MicroBatchStream(KafkaSource(kafka), config(index_dir, write_shards=1), policy)


def test_stream_indexes_resumes_and_commits_offsets_after_the_index(
    kafka_broker: str, topic: Any, tmp_path: Path
) -> None:
    docs_topic, dlq_topic = topic("docs", partitions=2), topic("dlq")
    kafka = kafka_config(kafka_broker, (docs_topic,), dead_letter_topic=dlq_topic)
    index_dir = tmp_path / "hot"
    docs = demo_docs()
    with DocumentProducer(kafka) as producer:
        for i, doc in enumerate(docs):
            producer.send(doc["_id"], doc["text"], doc["title"], version=10 + i)
    # Bad input on the wire: not JSON, and no key.
    raw = DocumentProducer(kafka)
    raw._producer.produce(docs_topic, key=b"broken", value=b"{not json")  # noqa: SLF001 - bypass the contract
    raw._producer.produce(docs_topic, key=None, value=b'{"text": "no key"}')  # noqa: SLF001
    raw.flush()
    raw.close()

    first = _stream(kafka, index_dir)
    assert first.run(idle_exit_s=3) >= 1
    assert set(live_docs(index_dir)) == {d["_id"] for d in docs}
    manifest = HotIndex(index_dir).manifest()
    assert {k for k in manifest.sources if k.startswith("kafka:")} == {
        f"kafka:{docs_topic}/0",
        f"kafka:{docs_topic}/1",
    }
    before = live_vectors(index_dir)
    first_commits = len(manifest.history)

    # The group's committed offsets equal the positions the index holds (+1): nothing acknowledged early.
    probe = DocumentConsumer(kafka)
    try:
        probe.subscribe(timeout_s=30)
        committed = probe.committed()
    finally:
        probe.close()
    held = {
        (docs_topic, int(k.rsplit("/", 1)[1])): int(v) + 1
        for k, v in manifest.sources.items()
        if k.startswith("kafka:")
    }
    assert committed == held

    # Dead letters went to the dead-letter topic with their reasons and original bytes.
    letters = consume(kafka_broker, dlq_topic, 2)
    reasons = sorted(read_dead_letter(r.value, r.headers).reason for r in letters)
    assert reasons == ["malformed_json", "missing_id"]

    # Updates, a delete, an out-of-order older version and a replay, consumed by a new process.
    with DocumentProducer(kafka) as producer:
        producer.send(
            docs[0]["_id"],
            "Kafka consumers resume from committed offsets. Revised.",
            docs[0]["title"],
            version=100,
        )
        producer.send(docs[0]["_id"], "an older version that must lose", docs[0]["title"], version=50)
        producer.delete(docs[1]["_id"], version=100)
        producer.send(docs[2]["_id"], docs[2]["text"], docs[2]["title"], version=12)  # a replay of version 12
    second = _stream(kafka, index_dir)
    second.run(idle_exit_s=3)
    state = live_docs(index_dir)
    assert docs[1]["_id"] not in state
    after = live_vectors(index_dir)
    assert any("Revised." in text for text in after.values())
    assert not any("must lose" in text for text in after.values())
    assert len(after) == len(before) - 1
    later = HotIndex(index_dir).manifest().history[first_commits:]
    assert sum(h["counts"].get("chunks_embedded", 0) for h in later) == 1, (
        "only the revised document is re-embedded"
    )
    assert top_doc(index_dir, "resume from committed offsets revised", config(index_dir), k=1) == [
        docs[0]["_id"]
    ]


FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "debezium" / "postgresql"


@pytest.mark.skipif(not FIXTURES.exists(), reason=f"Debezium fixtures not found at {FIXTURES}")
def test_debezium_topic_streams_into_the_index(kafka_broker: str, topic: Any, tmp_path: Path) -> None:
    from confluent_kafka import Producer

    from connectors.debezium import DebeziumMapping
    from pipelines.stream import debezium_decoder

    cdc_topic = topic("dbserver1.public.customers")
    kafka = kafka_config(kafka_broker, (cdc_topic,))
    producer = Producer({"bootstrap.servers": kafka_broker})

    def send(value_file: str | None, key_file: str = "create.key.json") -> None:
        key = (FIXTURES / key_file).read_bytes()
        value = (FIXTURES / value_file).read_bytes() if value_file else None
        producer.produce(cdc_topic, key=key, value=value)

    for name in ("transaction_begin.json", "create.json", "update.json", "transaction_end.json"):
        send(name)
    producer.flush()
    mapping = DebeziumMapping(text_column=("first_name", "last_name", "email"), id_prefix="customers:")
    index_dir = tmp_path / "hot"
    stream = MicroBatchStream(
        KafkaSource(kafka, debezium_decoder(mapping)),
        config(index_dir, write_shards=1),
        BatchPolicy(max_wait_s=0.5),
    )
    stream.run(idle_exit_s=3)
    state = live_docs(index_dir)
    assert set(state) == {"customers:1"}
    assert any("Anne Marie" in text for text in live_vectors(index_dir).values())
    assert json.loads(state["customers:1"].metadata)["table"].endswith("public.customers")

    send("delete.json", "delete.key.json")
    send(None, "tombstone.key.json")
    producer.flush()
    again = MicroBatchStream(
        KafkaSource(kafka, debezium_decoder(mapping)),
        config(index_dir, write_shards=1),
        BatchPolicy(max_wait_s=0.5),
    )
    again.run(idle_exit_s=3)
    assert live_docs(index_dir) == {}


def test_micro_batches_dedup_against_committed_documents_and_promote(
    kafka_broker: str, topic: Any, tmp_path: Path
) -> None:
    """A micro-batch reads only the committed documents it can touch; dedup and promotion still see
    every one that matters."""
    name = topic("dedup")
    kafka = kafka_config(kafka_broker, (name,))
    index_dir = tmp_path / "hot"
    docs = demo_docs()[:8]
    base = docs[4]
    with DocumentProducer(kafka) as producer:
        for doc in docs:
            producer.send(doc["_id"], doc["text"], doc["title"], version=1)
    _stream(kafka, index_dir).run(idle_exit_s=3)
    with DocumentProducer(kafka) as producer:
        producer.send("zz-copy", base["text"].upper(), base["title"], version=1)
        producer.send("zz-near", base["text"] + " It is widely used.", base["title"], version=1)
    _stream(kafka, index_dir).run(idle_exit_s=3)
    state = HotIndex(index_dir).docs()
    assert (state["zz-copy"].status, state["zz-copy"].canonical_id, state["zz-copy"].dedup) == (
        "duplicate",
        base["_id"],
        "exact",
    )
    assert (state["zz-near"].status, state["zz-near"].canonical_id, state["zz-near"].dedup) == (
        "duplicate",
        base["_id"],
        "near",
    )

    with DocumentProducer(kafka) as producer:
        producer.delete(base["_id"], version=2)
    _stream(kafka, index_dir).run(idle_exit_s=3)
    state = HotIndex(index_dir).docs()
    assert state[base["_id"]].status == "deleted"
    assert state["zz-copy"].status == "canonical"
    assert (state["zz-near"].status, state["zz-near"].canonical_id) == ("duplicate", "zz-copy")
