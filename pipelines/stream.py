"""Streaming ingestion: bounded micro-batches from a change source through the shared ingest stages.

Each micro-batch (at most ``max_records``, closed ``max_wait_s`` after its first record) runs the same
Beam stages as the batch pipeline and ends in one index commit that records the source positions it
holds (Kafka offsets, replication-slot LSNs, queue offsets). Only then does the source acknowledge them
(commit offsets, advance the slot) — invariant 4. A restart resumes from the positions in the index's
own manifest, so a crash at any point loses nothing and applies nothing twice (replays are no-ops).

Outages of the source (a Kafka broker restart, a lost Postgres connection) are transient errors: the
stream retries with backoff (:data:`RETRY_BACKOFF_S` doubling up to :data:`RETRY_BACKOFF_MAX_S`),
logs when the outage starts, every :data:`OUTAGE_REMINDER_S` while it lasts and when it ends, and goes
on where it was: a micro-batch already polled is indexed, and one already indexed is acknowledged, once
(never polled again past it). Whether it waits however long it takes or stops with
:class:`~tierflow.errors.SourceUnavailable` after a bound is the source's setting (``max_outage_s``;
for Kafka ``kafka.unavailable_timeout_s``, unset = keep waiting). A non-transient error stops the stream
at once. Either way nothing is lost: what the index commit holds is never read again, what it does not
hold is never acknowledged.

Why micro-batches: Beam's local Python runners do not fire streaming windows while an unbounded source
is still running, so a streaming Beam pipeline on them cannot make documents searchable within
seconds. On a JVM-backed runner (Flink, Dataflow) the same stages can sit behind Beam's cross-language
``apache_beam.io.kafka.ReadFromKafka`` with a windowed commit instead.

Example:
    >>> stream = MicroBatchStream(KafkaSource(KafkaConfig("localhost:9092", topics=("docs",), group_id="g")), config)
    >>> stream.run(stop_event)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

from connectors.debezium import DebeziumMapping, decode_change
from connectors.kafka_client import (
    DeadLetterProducer,
    DocumentConsumer,
    KafkaConfig,
    KafkaRecord,
    KafkaUnavailable,
    TopicPartitionKey,
    next_offsets_of,
)
from connectors.kafka_documents import next_offsets, source_key
from connectors.local_queue import LocalQueue
from connectors.webhooks import decode_record
from indexing.hot import HotIndex
from pipelines.driver import run_items
from pipelines.stages import build_run_context
from tierflow import metrics
from tierflow.config import IngestConfig
from tierflow.deadletter import DeadLetter, read_dead_letter_files
from tierflow.errors import SourceUnavailable, TierflowError, Transient
from tierflow.records import DocumentEvent, SourcePosition
from tierflow.streams import Batch, BatchPolicy, StreamSource

LOG = logging.getLogger(__name__)
__all__ = ["Batch", "BatchPolicy", "KafkaSource", "MicroBatchStream", "QueueSource", "StreamSource"]

RETRY_BACKOFF_S = 0.5  # first wait after a transient failure; doubles per failure in a row
RETRY_BACKOFF_MAX_S = 10.0
OUTAGE_REMINDER_S = 30.0  # while an outage lasts, a warning with its length this often


class MicroBatchStream:
    """Follows a :class:`StreamSource` into the hot tier.

    Args:
        source: Where changes come from.
        config: Ingest settings (index directory, chunking, model ...).
        policy: Micro-batch bounds.
        beam_args: Beam pipeline options for each micro-batch's pipeline.
        max_outage_s: How long :meth:`run` retries transient failures in a row before it stops with
            :class:`~tierflow.errors.SourceUnavailable`; None waits indefinitely. Default: the source's
            ``max_outage_s`` attribute if it has one (Kafka: ``kafka.unavailable_timeout_s``), else None.
    """

    def __init__(
        self,
        source: StreamSource,
        config: IngestConfig,
        policy: BatchPolicy | None = None,
        beam_args: list[str] | None = None,
        max_outage_s: float | None = None,
    ) -> None:
        self.source = source
        self.max_outage_s = (
            max_outage_s if max_outage_s is not None else getattr(source, "max_outage_s", None)
        )
        self.config = config
        self.policy = policy or BatchPolicy()
        # Each micro-batch is a small bounded pipeline over input the driver holds: without a runner in
        # the options it runs on pipelines.driver.DRIVER_RUNNER.
        self.beam_args = list(beam_args or [])
        self.batches = 0
        self.index = HotIndex(config.index_dir, version=config.index_version or None)
        self._started = False
        self._polled: Batch | None = None  # polled, not yet in the index (a retry indexes it, never re-polls)
        self._indexed: tuple[Batch, list[DeadLetter]] | None = None  # in the index, not yet acknowledged
        self.outages = 0

    def start(self) -> None:
        self.source.start(self.index.manifest().sources)
        self._started = True

    def run_once(self) -> dict[str, Any] | None:
        """Poll one micro-batch and index it; None when nothing arrived.

        After a failure, the next call first finishes what the failed one left: it acknowledges a batch
        already in the index, and indexes a batch already polled, before it polls anything new.
        """
        if not self._started:
            self.start()
        if self._indexed is not None:
            self._acknowledge(*self._indexed)
        batch = self._polled or self.source.poll(self.policy)
        if batch is None:
            return None
        self._polled = batch
        run = build_run_context(self.config)
        summary = run_items(
            batch.items,
            self.config,
            run,
            batch.positions,
            self.config.write_shards or 1,
            self.beam_args,
            index=self.index,
        )
        files = summary.get("dead_letters", {}).get("files", [])
        self._polled, self._indexed = None, (batch, read_dead_letter_files(files) if files else [])
        self.batches += 1
        summary["records"] = len(batch.items)
        summary["received_at"] = batch.received_at
        self._acknowledge(*self._indexed)
        return summary

    def _acknowledge(self, batch: Batch, letters: list[DeadLetter]) -> None:
        """Dead letters to the source's sink, then the source's acknowledgement (the batch is indexed)."""
        if letters:
            self.source.dead_letters(letters)
        self.source.acknowledge(batch)
        self._indexed = None

    def run(
        self,
        stop: threading.Event | None = None,
        max_batches: int | None = None,
        idle_exit_s: float | None = None,
    ) -> int:
        """Index micro-batches until ``stop`` is set, ``max_batches`` were indexed, or nothing arrived for
        ``idle_exit_s`` seconds. Returns the number of batches indexed."""
        stop = stop or threading.Event()
        idle_since = time.monotonic()
        outage: _Outage | None = None
        try:
            while not stop.is_set() and (max_batches is None or self.batches < max_batches):
                started = self._started
                try:
                    summary = self.run_once()
                except TierflowError as err:
                    if not isinstance(err, Transient):
                        raise
                    if outage is None:
                        outage = _Outage(self.max_outage_s)
                        self.outages += 1
                    stop.wait(outage.failed(err, self._what_is_pending()))
                    continue
                if outage is not None or not started:  # idle from when the source answers, not before
                    if outage is not None:
                        outage.ended()
                    outage = None
                    idle_since = time.monotonic()
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
            self.source.close()
        return self.batches

    def _what_is_pending(self) -> str:
        if self._indexed is not None:
            return "a micro-batch is in the index and waits to be acknowledged"
        if self._polled is not None:
            return "a polled micro-batch waits to be indexed"
        return "nothing is pending"


class _Outage:
    """Transient failures in a row: the backoff before the next try, the log lines, and the bound."""

    def __init__(self, max_s: float | None) -> None:
        self.max_s = max_s
        self.since = time.monotonic()
        self.failures = 0
        self.reminded = self.since

    def failed(self, err: TierflowError, pending: str) -> float:
        """Record one failure; return how long to wait before the next try.

        Raises:
            SourceUnavailable: The failures have lasted longer than ``max_s``.
        """
        self.failures += 1
        now = time.monotonic()
        lasted = now - self.since
        if self.max_s is not None and lasted >= self.max_s:
            raise SourceUnavailable(
                f"the stream's source stayed unavailable for {lasted:.0f}s ({self.failures} tries), over "
                f"its bound of {self.max_s:g}s (kafka.unavailable_timeout_s for Kafka): {err}. Nothing was "
                f"acknowledged that the index does not hold ({pending}); run the stream again once the "
                "source is back and it resumes from the index's own positions"
            ) from err
        bound = "indefinitely" if self.max_s is None else f"for up to {self.max_s:g}s"
        if self.failures == 1:
            LOG.warning("stream: source unavailable (%s); %s; retrying with backoff %s", err, pending, bound)
        elif now - self.reminded >= OUTAGE_REMINDER_S:
            self.reminded = now
            LOG.warning(
                "stream: source still unavailable after %.0fs (%d tries): %s", lasted, self.failures, err
            )
        else:
            LOG.debug("stream: retry %d failed: %s", self.failures, err)
        wait = min(RETRY_BACKOFF_S * 2 ** min(self.failures - 1, 10), RETRY_BACKOFF_MAX_S)
        if self.max_s is not None:  # the last try comes when the bound is reached, not a backoff later
            wait = min(wait, max(self.max_s - lasted, 0.01))
        return wait

    def ended(self) -> None:
        LOG.warning(
            "stream: source available again after %.1fs (%d failed tries); resuming",
            time.monotonic() - self.since,
            self.failures,
        )


RecordDecoder = Callable[[KafkaRecord], DocumentEvent | DeadLetter | None]


def debezium_decoder(mapping: DebeziumMapping) -> RecordDecoder:
    """Decode Debezium change events (heartbeats and transaction markers decode to None: skipped)."""

    def decode(record: KafkaRecord) -> DocumentEvent | DeadLetter | None:
        position = SourcePosition("kafka", f"{record.topic}/{record.partition}", str(record.offset))
        return decode_change(record.key, record.value, position, mapping)

    return decode


class KafkaSource:
    """Kafka topics as a :class:`StreamSource`: offsets are committed after the index commit, dead
    letters go to the dead-letter topic (flushed before the offsets are committed).

    While the brokers are unreachable, :meth:`poll` raises :class:`KafkaUnavailable` (after asking them
    for metadata), so that the stream backs off and keeps count of the outage (``max_outage_s``, from
    ``kafka.unavailable_timeout_s``). A commit that fails for the same reason does not fail the batch:
    the index already holds its records, so the offsets stay owed and are committed with the next
    batch, or at the next poll once the brokers answer; and the consumer restarts partitions the group
    re-assigns (a broker restart makes it rejoin) after what the index holds, not at the group's older
    committed offsets. Dead letters that could not be flushed are flushed (or re-sent, if they timed
    out) before any offset is committed.

    Args:
        kafka: Brokers, topics, group, dead-letter topic, outage bound.
        decoder: How a record becomes an event: the document-topic contract by default, or
            :func:`debezium_decoder` for Debezium change-event topics.
    """

    def __init__(self, kafka: KafkaConfig, decoder: RecordDecoder | None = None) -> None:
        self.kafka = kafka
        self.decoder = decoder
        self.consumer: DocumentConsumer | None = None
        self.producer: DeadLetterProducer | None = None
        self.max_outage_s = kafka.unavailable_timeout_s
        self._owed: dict[TopicPartitionKey, int] = {}  # indexed, not yet committed to the group
        self._letters: list[DeadLetter] | None = None  # sent to the dead-letter topic, not yet confirmed
        self._commit_failing = False

    @property
    def _wait_s(self) -> float:
        """How long one blocking call (group join, flush) waits before the stream counts a failed try."""
        return 30.0 if self.max_outage_s is None else max(1.0, min(30.0, self.max_outage_s))

    def start(self, resume: dict[str, str]) -> None:
        offsets = next_offsets(resume)
        if self.consumer is None:
            self.consumer = DocumentConsumer(self.kafka)
            self.consumer.outage.logger = LOG  # the outage, and its end, in the stream's own log
        # A failed join (brokers down) raises KafkaUnavailable; the stream retries start() with the same
        # consumer, which is still subscribed.
        self.consumer.subscribe(start_offsets=offsets, timeout_s=self._wait_s)
        if self.kafka.dead_letter_topic and self.producer is None:
            self.producer = DeadLetterProducer(self.kafka)
            self.producer.outage.logger = LOG
        LOG.info(
            "stream: following %s from %s", ",".join(self.kafka.topics), offsets or "the group's offsets"
        )

    def poll(self, policy: BatchPolicy) -> Batch | None:
        assert self.consumer is not None
        consumer = self.consumer
        if consumer.outage.down and not consumer.reachable(min(1.0, max(policy.poll_s, 0.1) * 5)):
            raise KafkaUnavailable(
                f"Kafka brokers {self.kafka.bootstrap_servers} unreachable for "
                f"{consumer.unavailable_for():.0f}s ({consumer.outage.last_error})",
                KafkaError._ALL_BROKERS_DOWN,
                "_ALL_BROKERS_DOWN",
            )
        self._commit_owed()
        records: list[KafkaRecord] = consumer.poll_batch(policy.max_records, policy.poll_s)
        if not records:
            return None
        deadline = time.monotonic() + policy.max_wait_s
        while len(records) < policy.max_records and time.monotonic() < deadline:
            wait = max(0.0, deadline - time.monotonic())
            try:
                records.extend(consumer.poll_batch(policy.max_records - len(records), wait))
            except TierflowError as err:
                if not isinstance(err, Transient):
                    raise
                # The records read so far are this consumer's to index: dropping them would skip them.
                LOG.warning(
                    "stream: %s; closing the micro-batch with the %d record(s) read", err, len(records)
                )
                break
        positions: dict[str, str] = {}
        for record in records:
            key = source_key(record.topic, record.partition)
            positions[key] = str(max(record.offset, int(positions.get(key, -1))))
        decode = self.decoder or consumer.decode
        items = [item for item in map(decode, records) if item is not None]
        produced = [r.timestamp_ms / 1000 for r in records if r.timestamp_ms is not None]
        return Batch(items, positions, ack=next_offsets_of(records), received_at=produced)

    def acknowledge(self, batch: Batch) -> None:
        assert self.consumer is not None
        for tp, offset in batch.ack.items():
            self._owed[tp] = max(offset, self._owed.get(tp, 0))
        self.consumer.resume_at(self._owed)
        self._commit_owed()
        for (topic, partition), lag in self.consumer.lag().items():
            metrics.KAFKA_CONSUMER_LAG.labels(topic, str(partition)).set(lag)

    def _commit_owed(self) -> None:
        """Commit the owed offsets of the partitions this consumer holds; a transient failure keeps them
        owed (the index holds their records: a later commit, or a restart from the index, covers them)."""
        assert self.consumer is not None
        if not self._owed or self._letters is not None:
            return
        held = self.consumer.assignment()
        offsets = {tp: offset for tp, offset in self._owed.items() if tp in held}
        if not offsets:
            return
        try:
            self.consumer.commit(offsets, timeout_s=min(10.0, self._wait_s))
        except TierflowError as err:
            if not isinstance(err, Transient):
                raise
            if not self._commit_failing:
                LOG.warning(
                    "stream: committing offsets failed (%s); the index holds their records, so they stay "
                    "owed and are committed once the brokers answer",
                    err,
                )
            self._commit_failing = True
            return
        if self._commit_failing:
            LOG.warning("stream: owed offsets committed: %s", offsets)
        self._commit_failing = False
        for tp, offset in offsets.items():
            if self._owed.get(tp) == offset:
                del self._owed[tp]

    def dead_letters(self, letters: list[DeadLetter]) -> None:
        if self.producer is None:
            return
        if self._letters is letters:  # a retry: re-send only what failed, confirm the rest
            self.producer.retry_failed()
        else:
            for letter in letters:
                self.producer.send(letter)
            self._letters = letters
        self.producer.flush(self._wait_s)
        self._letters = None

    def close(self) -> None:
        try:
            if self.consumer is not None:
                self.consumer.close(self._wait_s)
        finally:
            if self.producer is not None:
                try:
                    self.producer.close(self._wait_s)
                except TierflowError as err:
                    LOG.error("stream: dead letters not confirmed by the brokers at close: %s", err)


class QueueSource:
    """The webhook receiver's local durable queue as a :class:`StreamSource`. The queue is owned by the
    receiver in the same process (one process may hold a queue directory); its consumer offset is
    committed after the index commit, and the index's manifest position wins on restart."""

    def __init__(self, queue: LocalQueue, name: str = "webhooks") -> None:
        self.queue = queue
        self.key = f"queue:{name}"
        self.next = 0

    def start(self, resume: dict[str, str]) -> None:
        held = resume.get(self.key)
        self.next = max(self.queue.committed(), int(held) + 1 if held and held.isdigit() else 0)

    def poll(self, policy: BatchPolicy) -> Batch | None:
        records = self.queue.read(self.next, policy.max_records, wait_s=policy.poll_s)
        if not records:
            return None
        deadline = time.monotonic() + policy.max_wait_s
        while len(records) < policy.max_records and time.monotonic() < deadline:
            start = records[-1][0] + 1
            records.extend(
                self.queue.read(start, policy.max_records - len(records), wait_s=deadline - time.monotonic())
            )
        items: list[DocumentEvent | DeadLetter] = []
        for offset, body in records:
            try:
                items.append(decode_record(body))
            except (TierflowError, ValueError) as err:
                position = SourcePosition("queue", self.key, str(offset))
                items.append(DeadLetter("corrupt_record", str(err), "decode", position, body))
        last = records[-1][0]
        return Batch(items, {self.key: str(last)}, ack=last + 1)

    def acknowledge(self, batch: Batch) -> None:
        self.queue.commit(batch.ack)
        self.next = batch.ack

    def dead_letters(self, letters: list[DeadLetter]) -> None:
        """The index's dead-letter files are this source's dead-letter sink; nothing more to do."""

    def close(self) -> None:
        """The receiver that owns the queue closes it."""
