"""Streaming ingestion from Kafka document topics: bounded micro-batches through the shared ingest stages.

Each micro-batch (at most ``max_records``, closed ``max_wait_s`` after its first record) runs the same
Beam stages as the batch pipeline and ends in one index commit that records, per topic partition, the
offset of the last record it holds. Only then are dead letters forwarded to the dead-letter topic and
the offsets committed to Kafka (invariant 4). A restart seeks to the positions in the index's own
manifest, so a crash at any point loses nothing and applies nothing twice (replays are no-ops anyway).

Why micro-batches: Beam's local Python runners do not fire streaming windows while an unbounded source
is still running, so a streaming Beam pipeline on them cannot make documents searchable within
seconds. On a JVM-backed runner (Flink, Dataflow), the same stages can sit behind Beam's
cross-language ``apache_beam.io.kafka.ReadFromKafka`` with a windowed commit instead.

Example:
    >>> stream = KafkaStream(KafkaConfig("localhost:9092", topics=("docs",), group_id="tierflow"), config)
    >>> stream.run(stop_event)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from connectors.kafka_client import (
    DeadLetterProducer,
    DocumentConsumer,
    KafkaConfig,
    KafkaRecord,
    next_offsets_of,
)
from connectors.kafka_documents import next_offsets, source_key
from indexing.hot import HotIndex
from pipelines.stages import build_run_context, index_items, run_pipeline
from tierflow.config import IngestConfig
from tierflow.deadletter import DeadLetter, read_dead_letter_files
from tierflow.records import DocumentEvent

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    """How a micro-batch is bounded: by size, and by time since its first record."""

    max_records: int = 500
    max_wait_s: float = 1.0
    poll_s: float = 0.2


class KafkaStream:
    """Follows Kafka document topics into the hot tier.

    Args:
        kafka: Brokers, topics, consumer group and the dead-letter topic.
        config: Ingest settings (index directory, chunking, model ...).
        policy: Micro-batch bounds.
        beam_args: Beam pipeline options for each micro-batch's pipeline.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        config: IngestConfig,
        policy: BatchPolicy | None = None,
        beam_args: list[str] | None = None,
    ) -> None:
        self.kafka = kafka
        self.config = config
        self.policy = policy or BatchPolicy()
        self.beam_args = beam_args or []
        self.consumer: DocumentConsumer | None = None
        self.dead_letters: DeadLetterProducer | None = None
        self.batches = 0

    def start(self) -> None:
        """Join the consumer group, resuming every partition from the index manifest's positions."""
        resume = next_offsets(HotIndex(self.config.index_dir).manifest().sources)
        self.consumer = DocumentConsumer(self.kafka)
        self.consumer.subscribe(start_offsets=resume)
        if self.kafka.dead_letter_topic:
            self.dead_letters = DeadLetterProducer(self.kafka)
        LOG.info("stream: following %s from %s", ",".join(self.kafka.topics), resume or "the group's offsets")

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
        if self.dead_letters is not None:
            self.dead_letters.close()

    def _poll(self) -> list[KafkaRecord]:
        assert self.consumer is not None
        records = self.consumer.poll_batch(self.policy.max_records, self.policy.poll_s)
        if not records:
            return []
        deadline = time.monotonic() + self.policy.max_wait_s
        while len(records) < self.policy.max_records and time.monotonic() < deadline:
            more = self.consumer.poll_batch(
                self.policy.max_records - len(records), max(0.0, deadline - time.monotonic())
            )
            records.extend(more)
        return records

    def run_once(self) -> dict[str, Any] | None:
        """Poll one micro-batch and index it; None when nothing arrived."""
        records = self._poll()
        if not records:
            return None
        assert self.consumer is not None
        items: list[DocumentEvent | DeadLetter] = [self.consumer.decode(record) for record in records]
        positions: dict[str, str] = {}
        for record in records:
            key = source_key(record.topic, record.partition)
            positions[key] = str(max(record.offset, int(positions.get(key, -1))))
        run = build_run_context(self.config)
        summary = run_pipeline(
            lambda pipeline: index_items(
                pipeline | "Batch" >> beam.Create([items]),
                self.config,
                run,
                positions,
                self.config.write_shards or 1,
            ),
            self.config,
            run,
            self.beam_args,
        )
        self._forward_dead_letters(summary)
        self.consumer.commit(next_offsets_of(records))
        self.batches += 1
        summary["records"] = len(records)
        return summary

    def _forward_dead_letters(self, summary: dict[str, Any]) -> None:
        """Dead letters are durable in the index's dead-letter files before the commit; they are then
        copied to the dead-letter topic (at least once) before the offsets are committed."""
        files = summary.get("dead_letters", {}).get("files", [])
        if not files or self.dead_letters is None:
            return
        for letter in read_dead_letter_files(files):
            self.dead_letters.send(letter)
        self.dead_letters.flush()

    def run(
        self,
        stop: threading.Event | None = None,
        max_batches: int | None = None,
        idle_exit_s: float | None = None,
    ) -> int:
        """Index micro-batches until ``stop`` is set, ``max_batches`` were indexed, or nothing arrived for
        ``idle_exit_s`` seconds. Returns the number of batches indexed."""
        stop = stop or threading.Event()
        if self.consumer is None:
            self.start()
        idle_since = time.monotonic()
        try:
            while not stop.is_set() and (max_batches is None or self.batches < max_batches):
                summary = self.run_once()
                if summary is None:
                    if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                        break
                    continue
                idle_since = time.monotonic()
                counts = summary.get("counts", {})
                LOG.info(
                    "stream: generation %s, %d records, %d chunks embedded, %d dead letters",
                    summary["generation"],
                    summary["records"],
                    counts.get("chunks_embedded", 0),
                    summary.get("dead_letters", {}).get("total", 0),
                )
        finally:
            self.close()
        return self.batches
