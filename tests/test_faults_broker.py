"""Broker faults: the Kafka broker is SIGKILLed mid-stream and restarted on the same port (Tansu with its
data in S3 on a moto server, so the restarted broker serves what the killed one acknowledged), or stays
down past the stream's configured bound. Producers keep sending through the outage.

What must hold: every document whose latest record the broker acknowledged is in the index exactly once
at that version; the stream logs the outage and the recovery and goes on by itself, or (with
``kafka.unavailable_timeout_s``) stops with a clear error having committed nothing partial, and a rerun
finishes with nothing lost; a producer reports nothing delivered that was not, and delivers what it
buffered once the broker is back (or names what timed out so it can be sent again).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.kafka_client import DocumentProducer, KafkaConfig, KafkaRejected, KafkaUnavailable
from connectors.tansu import S3Storage, TansuBroker
from indexing.hot import HotIndex
from pipelines.stream import MicroBatchStream
from tests.helpers import REPO, assert_exactly_once, live_docs, live_vectors
from tests.kafka_broker import CONSUMER_PROPERTIES, consume, create_topic_factory, kafka_config
from tierflow.errors import SourceUnavailable
from tierflow.streams import Batch, BatchPolicy

pytestmark = [pytest.mark.kafka, pytest.mark.s3]

# Tansu's S3 storage answers a fetch with nothing when it cannot read the partition's batch objects within
# the fetch's max wait: with the 10 ms of the in-memory test settings, a consumer falls behind for good
# once a partition holds more than a few dozen batches (measured: 30 fine, 120 never read). 500 ms reads
# 1,500 batches in under a second. A Tansu limit of its S3 engine, not a client setting tierflow needs.
S3_CONSUMER_PROPERTIES = {**CONSUMER_PROPERTIES, "fetch.wait.max.ms": 500}


def s3_kafka_config(bootstrap: str, topics: tuple[str, ...], **overrides: Any) -> KafkaConfig:
    return kafka_config(bootstrap, topics, consumer_properties=dict(S3_CONSUMER_PROPERTIES), **overrides)


# --- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture
def broker(s3_server: str, tmp_path: Path) -> Iterator[TansuBroker]:
    """A Tansu broker keeping its data in a fresh bucket of the session's moto server; the test may
    ``kill()`` it and ``start()`` it again on the same port."""
    import boto3

    bucket = f"tansu-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    with TansuBroker(tmp_path / "broker", storage=S3Storage(bucket, s3_server)) as running:
        yield running


class AckedProducer:
    """A producer thread that keeps writing updates of DOCS documents (and some deletes) through any
    outage, and remembers what the broker acknowledged: per document, the newest acknowledged version
    (and its text, None for a delete). A document's records go to one partition in order, so its
    delivery reports arrive in the order it sent them."""

    def __init__(self, config: KafkaConfig, docs: int = 12, pause_s: float = 0.05) -> None:
        self.docs = docs
        self.pause_s = pause_s
        self.sent: dict[str, deque[tuple[int, str | None]]] = defaultdict(deque)
        self.acked: dict[str, tuple[int, str | None]] = {}
        self.failed: list[tuple[str, str]] = []
        self.n_sent = self.n_acked = 0
        self.ack_times: list[float] = []
        self.producer = DocumentProducer(config, on_delivery=self._delivered)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _delivered(self, doc_id: str, err: Any) -> None:
        version, text = self.sent[doc_id].popleft()
        if err is not None:
            self.failed.append((doc_id, err.name()))
            return
        self.n_acked += 1
        self.ack_times.append(time.monotonic())
        if doc_id not in self.acked or self.acked[doc_id][0] < version:
            self.acked[doc_id] = (version, text)

    def _run(self) -> None:
        version = 0
        while not self._stop.is_set():
            version += 1
            doc_id = f"doc-{version % self.docs}"
            if version % 11 == 0:
                self.sent[doc_id].append((version, None))
                self.producer.delete(doc_id, version=version)
            else:
                text = f"{doc_id} at version {version}: notes on broker restarts, topic {version % 97}"
                self.sent[doc_id].append((version, text))
                self.producer.send(doc_id, text, version=version)
            self.n_sent += 1
            self.producer.poll(self.pause_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self, flush_s: float = 60.0) -> None:
        self._stop.set()
        self._thread.join()
        self.producer.flush(flush_s)

    def live(self) -> dict[str, str]:
        return {doc_id: text for doc_id, (_, text) in self.acked.items() if text is not None}


def _write_config(tmp_path: Path, bootstrap: str, topic: str, group: str, **kafka: Any) -> Path:
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in kafka.items())
    consumer = "\n".join(f'"{k}" = {json.dumps(v)}' for k, v in S3_CONSUMER_PROPERTIES.items())
    path = tmp_path / "tierflow.toml"
    path.write_text(
        f'index_dir = "{tmp_path / "hot"}"\nwrite_shards = 1\n\n[kafka]\nbootstrap_servers = "{bootstrap}"\n'
        f'topics = "{topic}"\ngroup_id = "{group}"\n{extra}\n[kafka.consumer_properties]\n{consumer}\n'
    )
    return path


def _stream_command(config_file: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "tierflow.cli", "stream", "--config", str(config_file), "--max-wait", "0.3", *extra
    ]  # fmt: skip


def _committed_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    return {(tp.topic, tp.partition): tp.offset for tp in future.result(timeout=10).topic_partitions}


def _manifest_offsets(index_dir: Path) -> dict[tuple[str, int], int]:
    sources = HotIndex(index_dir).manifest().sources
    out = {}
    for key, position in sources.items():
        if key.startswith("kafka:"):
            topic, _, partition = key[len("kafka:") :].rpartition("/")
            out[(topic, int(partition))] = int(position) + 1
    return out


def _wait_for(
    predicate: Any, timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the stream exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.3)


def _index_matches(index_dir: Path, expected: dict[str, str]) -> bool:
    try:
        docs = live_docs(index_dir)
        texts = set(live_vectors(index_dir).values())
    except Exception:  # noqa: BLE001 - the index may not exist yet
        return False
    return set(docs) == set(expected) and all(text in texts for text in expected.values())


def _assert_index_holds(index_dir: Path, expected: dict[str, str]) -> None:
    assert set(live_docs(index_dir)) == set(expected)
    texts = list(live_vectors(index_dir).values())  # asserts no vector is live twice
    for doc_id, text in expected.items():
        assert texts.count(text) == 1, f"{doc_id} is not in the index exactly once at its newest version"
    assert_exactly_once(index_dir, expect_docs=set(expected))


# --- the stream ------------------------------------------------------------------------------------------


@pytest.mark.model
def test_stream_rides_out_a_broker_restart(broker: TansuBroker, tmp_path: Path) -> None:
    topic = create_topic_factory(broker.bootstrap)("restart", partitions=2)
    kafka = s3_kafka_config(broker.bootstrap, (topic,))
    config_file = _write_config(tmp_path, broker.bootstrap, topic, kafka.group_id)
    index_dir = tmp_path / "hot"
    log_path = tmp_path / "stream.log"
    producer = AckedProducer(kafka)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            _stream_command(config_file), cwd=REPO, env=dict(os.environ), stdout=log, stderr=log
        )
    try:
        producer.start()
        # The stream is up and indexing before the broker goes away.
        _wait_for(lambda: len(live_docs(index_dir)) >= 3, 240, "the first micro-batches", proc)
        generation_before = HotIndex(index_dir).manifest().generation
        acked_before = producer.n_acked
        broker.kill()
        killed_at = time.monotonic()
        time.sleep(6.0)  # down for 6 s: longer than the consumer's session timeout (2 s)
        sent_while_down = producer.n_sent
        broker.start()
        restarted_at = time.monotonic()
        time.sleep(3.0)  # and the producer keeps going for a while after the restart
        producer.stop()
        assert not producer.failed, f"deliveries failed: {producer.failed[:5]}"
        assert producer.n_acked == producer.n_sent, "every record was acknowledged in the end"
        acked_while_down = [t for t in producer.ack_times if killed_at < t < restarted_at]
        assert not acked_while_down, "nothing may be acknowledged while the broker is down"
        expected = producer.live()
        _wait_for(lambda: _index_matches(index_dir, expected), 240, "the stream to catch up", proc)
        assert proc.poll() is None, "the stream kept running through the outage"
        # Offsets owed during the outage are committed once the broker is back: up to the index's own.
        _wait_for(
            lambda: _committed_offsets(broker.bootstrap, kafka.group_id) == _manifest_offsets(index_dir),
            30,
            "the group's committed offsets to reach the index's positions",
            proc,
        )
    finally:
        proc.kill()
        proc.wait()
        if producer._thread.is_alive():
            producer._stop.set()
            producer._thread.join()
    log_text = log_path.read_text(errors="replace")
    _assert_index_holds(index_dir, expected)
    assert HotIndex(index_dir).manifest().generation > generation_before
    # The outage and its end are in the stream's log, once each (not a line per reconnect attempt),
    # whether the stream met it polling, committing offsets or fetching.
    # A restart may flap once or twice while librdkafka's connections come back one by one.
    assert 1 <= log_text.count("brokers unreachable") <= 4, log_text[-3000:]
    assert log_text.count("brokers unreachable") == log_text.count("brokers reachable again"), log_text[
        -3000:
    ]
    assert log_text.count("stream: source unavailable") == log_text.count("stream: source available again")
    assert log_text.count("stream: committing offsets failed") == log_text.count(
        "stream: owed offsets committed"
    )
    reconnect_lines = log_text.count("Connection refused")
    assert reconnect_lines < 40, f"{reconnect_lines} connection-failure lines for a 6 s outage"
    print(
        f"outage 6.0 s: {acked_before} acked before the kill, {sent_while_down - acked_before} sent around "
        f"the outage, {producer.n_acked} acked in all, {len(expected)} live documents, all in the index"
    )


@pytest.mark.model
def test_stream_stops_with_a_clear_error_after_its_outage_bound_and_a_rerun_loses_nothing(
    broker: TansuBroker, tmp_path: Path
) -> None:
    topic = create_topic_factory(broker.bootstrap)("outage", partitions=2)
    kafka = s3_kafka_config(broker.bootstrap, (topic,))
    config_file = _write_config(tmp_path, broker.bootstrap, topic, kafka.group_id, unavailable_timeout_s=4)
    index_dir = tmp_path / "hot"
    first = {f"a{i}": f"first wave document {i} about outage budgets" for i in range(6)}
    with DocumentProducer(kafka) as producer:
        for i, (doc_id, text) in enumerate(first.items()):
            producer.send(doc_id, text, version=i + 1)
    proc = subprocess.Popen(
        _stream_command(config_file),
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: _index_matches(index_dir, first), 240, "the first wave", proc)
        generation = HotIndex(index_dir).manifest().generation
        broker.kill()
        killed_at = time.monotonic()
        try:
            out, err = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # its threads' stacks (faulthandler), to see what it waits on
            time.sleep(2)
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(
                f"still running 150 s after the kill (bound 4 s):\n{err.decode(errors='replace')[-12000:]}"
            )
        stopped_after = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err.decode(errors="replace")
    assert proc.returncode == 2, stderr[-3000:]
    assert "tierflow: error:" in stderr and "unavailable for" in stderr, stderr[-3000:]
    assert "kafka.unavailable_timeout_s" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert 4 <= stopped_after < 120, f"stopped {stopped_after:.1f}s after the kill, bound 4 s"
    # Nothing partial was committed while the broker was down.
    assert HotIndex(index_dir).manifest().generation == generation
    _assert_index_holds(index_dir, first)

    # A producer sending while the broker is down buffers; the broker comes back; a rerun catches up.
    second = {f"b{i}": f"second wave document {i}, sent while the broker was down" for i in range(4)}
    acked: list[str] = []
    late = DocumentProducer(
        kafka, on_delivery=lambda doc_id, error: acked.append(doc_id) if error is None else None
    )
    for i, (doc_id, text) in enumerate(second.items()):
        late.send(doc_id, text, version=100 + i)
    with pytest.raises(KafkaUnavailable, match="still unacknowledged"):
        late.flush(1.0)
    assert acked == []
    broker.start()
    late.flush(30)
    assert sorted(acked) == sorted(second)
    rerun = subprocess.run(
        [*_stream_command(config_file), "--exit-when-idle", "10"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_index_holds(index_dir, {**first, **second})
    print(f"stopped {stopped_after:.1f}s after the kill (bound 4 s); rerun indexed {len(second)} more")


class FlakySource:
    """A stream source that is unavailable for its first ``failures`` polls, then idle."""

    def __init__(self, failures: int, max_outage_s: float | None = None) -> None:
        self.failures = failures
        self.max_outage_s = max_outage_s
        self.polls = 0
        self.closed = False

    def start(self, resume: dict[str, str]) -> None:
        pass

    def poll(self, policy: BatchPolicy) -> Batch | None:
        self.polls += 1
        if self.polls <= self.failures:
            raise KafkaUnavailable(f"brokers unreachable (poll {self.polls})")
        return None

    def acknowledge(self, batch: Batch) -> None:
        raise AssertionError("nothing to acknowledge")

    def dead_letters(self, letters: list[Any]) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_outage_retries_back_off_and_respect_the_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines import stream as stream_module
    from tests.helpers import config

    monkeypatch.setattr(stream_module, "RETRY_BACKOFF_S", 0.05)
    monkeypatch.setattr(stream_module, "RETRY_BACKOFF_MAX_S", 0.2)
    # Unbounded: retries until the source answers, logs the outage once and its end once.
    source = FlakySource(failures=6)
    stream = MicroBatchStream(source, config(tmp_path / "hot"))  # type: ignore[arg-type]
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="pipelines.stream"):
        assert stream.run(idle_exit_s=0.2) == 0
    waited = time.monotonic() - started
    assert source.polls > 6 and source.closed and stream.outages == 1
    assert 0.05 + 0.1 + 0.2 * 4 <= waited < 10, f"backoff: {waited:.2f}s for 6 failures"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("source unavailable" in m for m in messages) == 1
    assert sum("available again" in m for m in messages) == 1

    # Bounded: a clear error once the outage lasts longer than the bound; the source is closed.
    bounded = FlakySource(failures=10_000, max_outage_s=0.5)
    stream = MicroBatchStream(bounded, config(tmp_path / "hot"))  # type: ignore[arg-type]
    with pytest.raises(SourceUnavailable, match=r"unavailable for \d+s .* bound of 0.5s"):
        stream.run()
    assert bounded.closed and 3 <= bounded.polls < 20


# --- producers -------------------------------------------------------------------------------------------


def test_producer_buffers_through_an_outage_and_reports_only_real_deliveries(broker: TansuBroker) -> None:
    topic = create_topic_factory(broker.bootstrap)("produce", partitions=2)
    kafka = s3_kafka_config(broker.bootstrap, (topic,))
    reports: list[tuple[str, str | None]] = []
    producer = DocumentProducer(
        kafka, on_delivery=lambda doc_id, err: reports.append((doc_id, None if err is None else err.name()))
    )
    for i in range(5):
        producer.send(f"before-{i}", f"text {i}", version=i)
    producer.flush(10)
    assert len(reports) == 5 and all(err is None for _, err in reports)

    broker.kill()
    for i in range(5):
        producer.send(f"during-{i}", f"sent while the broker is down {i}", version=10 + i)
    with pytest.raises(KafkaUnavailable, match="still unacknowledged.*stay queued") as caught:
        producer.flush(2.0)
    assert "unreachable" in str(caught.value) or "slow or down" in str(caught.value)
    assert len(reports) == 5 and producer.pending() == 5, "nothing reported delivered while down"
    time.sleep(2.0)
    broker.start()
    producer.flush(30)
    assert sorted(d for d, err in reports[5:] if err is None) == [f"during-{i}" for i in range(5)]
    # Each record is on the topic exactly once (the idempotent producer's retries wrote no duplicates).
    keys = [r.key.decode() for r in consume(broker.bootstrap, topic, 11, timeout_s=4)]
    assert sorted(keys) == sorted([f"before-{i}" for i in range(5)] + [f"during-{i}" for i in range(5)])


def test_producer_names_what_timed_out_during_an_outage_and_can_send_it_again(broker: TansuBroker) -> None:
    topic = create_topic_factory(broker.bootstrap)("timeout", partitions=1)
    kafka = s3_kafka_config(
        broker.bootstrap,
        (topic,),
        # Records time out 3 s after they are sent; reconnects are tried at least every 0.5 s.
        producer_properties={"linger.ms": 5, "message.timeout.ms": 3000, "reconnect.backoff.max.ms": 500},
    )
    reports: list[tuple[str, str | None]] = []
    producer = DocumentProducer(
        kafka, on_delivery=lambda doc_id, err: reports.append((doc_id, None if err is None else err.name()))
    )
    producer.send("warm-up", "the producer knows the broker", version=1)
    producer.flush(10)
    broker.kill()
    for i in range(3):
        producer.send(f"lost-{i}", f"times out while the broker is down {i}", version=2 + i)
    with pytest.raises(KafkaUnavailable, match="3 record\\(s\\) were not delivered") as caught:
        producer.flush(10)
    assert sorted(caught.value.failed) == ["lost-0", "lost-1", "lost-2"]
    assert all(err == "_MSG_TIMED_OUT" for doc_id, err in reports if doc_id.startswith("lost-"))
    assert [d for d, err in reports if err is None] == ["warm-up"], (
        "no timed-out record was reported delivered"
    )

    broker.start()
    assert producer.retry_failed() == 3
    try:
        producer.flush(30)
    except KafkaRejected as err:
        # Tansu 0.6.0 fences an idempotent producer once librdkafka bumps its epoch after timed-out records
        # (KIP-360; Apache Kafka accepts the bump): the error is clear and terminal, nothing is reported
        # delivered, and a new producer sends the records again.
        assert err.name == "PRODUCER_FENCED" and sorted(err.failed) == ["lost-0", "lost-1", "lost-2"]
        assert [d for d, e in reports if e is None] == ["warm-up"]
        print("Tansu fenced the producer after the epoch bump; resent with a new producer")
        with DocumentProducer(kafka, on_delivery=producer._on_delivery) as fresh:
            for i in range(3):
                fresh.send(f"lost-{i}", f"times out while the broker is down {i}", version=2 + i)
    assert sorted(d for d, err in reports if err is None) == ["lost-0", "lost-1", "lost-2", "warm-up"]
    keys = [r.key.decode() for r in consume(broker.bootstrap, topic, 5, timeout_s=4)]
    assert sorted(keys) == ["lost-0", "lost-1", "lost-2", "warm-up"]


def test_an_outage_is_logged_when_it_starts_now_and_then_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from confluent_kafka import KafkaError

    from connectors.kafka_client import OUTAGE_REMINDER_S, Outage, _error_cb

    now = [100.0]
    outage = Outage("consumer g", clock=lambda: now[0])
    report = _error_cb("consumer", [], outage)
    with caplog.at_level("DEBUG", logger="connectors.kafka_client"):
        report(
            KafkaError(KafkaError._TRANSPORT, "127.0.0.1:9092/1: Disconnected (after 600000ms in state UP)")
        )
        assert not outage.down, "a reaped idle connection is no outage"
        report(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
        for _ in range(50):  # librdkafka's reconnect attempts
            now[0] += 0.5
            report(
                KafkaError(KafkaError._TRANSPORT, "Connect to ipv4#127.0.0.1:9092 failed: Connection refused")
            )
        now[0] += OUTAGE_REMINDER_S
        report(KafkaError(KafkaError._TRANSPORT, "Connect to ipv4#127.0.0.1:9092 failed: Connection refused"))
        assert outage.down and outage.seconds() == pytest.approx(25 + OUTAGE_REMINDER_S)
        outage.recovered()
        outage.recovered()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w.split(":")[1].strip() for w in warnings] == [
        "127.0.0.1",  # the idle disconnect, logged as before
        "brokers unreachable",
        "brokers still unreachable after 55 s (50 similar errors since)",
        "brokers reachable again after 55.0 s",
    ], warnings
    assert not outage.down and outage.outages == 1
