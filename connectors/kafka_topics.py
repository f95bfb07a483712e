"""Kafka topic definitions for tierflow (``infra/kafka/topics.yaml``): load them, check them against the
connector's limits, and apply them to a cluster with confluent-kafka's ``AdminClient``.

Applying creates the topics that are missing and reports drift on the ones that exist: a partition
count, replication factor or config value other than the file's. It never deletes a topic, never adds
partitions (a document id would move to another partition, and the offsets that order its versions by
default would stop being comparable), and changes a drifted config value only when asked
(``alter_drift=True``, ``--alter``).

Command line::

    python -m connectors.kafka_topics infra/kafka/topics.yaml --config tierflow.toml   # [kafka] brokers
    python -m connectors.kafka_topics infra/kafka/topics.yaml --bootstrap 127.0.0.1:9092 \\
        --replication-factor 1 [--dry-run] [--alter]

It exits 0 when every topic exists as defined, 1 when drift is left, 2 on a bad file or a broker error.

Example:
    >>> specs = load_topics("infra/kafka/topics.yaml")
    >>> admin = AdminClient(KafkaConfig("broker:9092").admin_settings())  # doctest: +SKIP
    >>> report = apply_topics(admin, specs)  # doctest: +SKIP
    >>> report.drift  # doctest: +SKIP
    []
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from connectors.kafka_client import KafkaClientError, KafkaConfig, _check_topic, kafka_error
from tierflow.errors import ConfigError

__all__ = [
    "DEAD_LETTER",
    "DOCUMENTS",
    "TopicDrift",
    "TopicSpec",
    "TopicsReport",
    "apply_topics",
    "describe_topic_configs",
    "load_topics",
    "main",
    "required_max_message_bytes",
]

DOCUMENTS = "documents"
DEAD_LETTER = "dead_letter"
KINDS = (DOCUMENTS, DEAD_LETTER)
_TOPIC_KEYS = frozenset({"name", "kind", "partitions", "replication_factor", "config", "description"})


def required_max_message_bytes(max_document_bytes: int | None = None) -> int:
    """The smallest topic ``max.message.bytes`` that takes every record tierflow's producers send: the
    producer's ``message.max.bytes`` (the largest document value plus room for key, headers and framing).

    Args:
        max_document_bytes: ``[kafka] max_message_bytes``; None for the connector's default (4 MiB).
    """
    config = KafkaConfig("unused:9092")
    if max_document_bytes is not None:
        config = replace(config, max_message_bytes=max_document_bytes)
    return int(config.producer_settings()["message.max.bytes"])


@dataclass(frozen=True)
class TopicSpec:
    """One topic as defined in the topics file.

    Args:
        name: The topic name.
        kind: ``documents`` (the document contract: compacted, keyed by document id) or ``dead_letter``.
        partitions: Partition count at creation; never changed afterwards.
        replication_factor: Replicas of each partition.
        config: Topic configs, as Kafka's strings (``cleanup.policy``, ``retention.ms`` ...).
        description: What the topic is for (documentation only).
    """

    name: str
    kind: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def effective(self, replication_factor: int | None = None) -> TopicSpec:
        """This spec with ``replication_factor`` overridden (a small dev cluster), ``min.insync.replicas``
        lowered to fit it."""
        if replication_factor is None:
            return self
        config = dict(self.config)
        if "min.insync.replicas" in config:
            config["min.insync.replicas"] = str(min(int(config["min.insync.replicas"]), replication_factor))
        return replace(self, replication_factor=replication_factor, config=config)


@dataclass(frozen=True)
class TopicDrift:
    """A setting of an existing topic that differs from its definition (``actual`` None: not set)."""

    topic: str
    setting: str
    expected: str
    actual: str | None

    def __str__(self) -> str:
        actual = "not set" if self.actual is None else repr(self.actual)
        return f"{self.topic}: {self.setting} is {actual}, defined as {self.expected!r}"


@dataclass
class TopicsReport:
    """What :func:`apply_topics` found and did.

    Args:
        created: Topics created (or, on a dry run, that would be).
        unchanged: Existing topics that match their definition.
        drift: Differences left on existing topics.
        altered: ``(topic, config)`` pairs set back to their definition (``alter_drift``).
    """

    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: list[TopicDrift] = field(default_factory=list)
    altered: list[tuple[str, str]] = field(default_factory=list)

    def lines(self, dry_run: bool = False) -> list[str]:
        verb = "would create" if dry_run else "created"
        out = [f"{verb} {name}" for name in self.created]
        out += [f"ok {name}" for name in self.unchanged]
        out += [f"altered {topic}: {setting}" for topic, setting in self.altered]
        out += [f"drift {item}" for item in self.drift]
        return out


def _config_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    raise ConfigError(f"{where} must be a string, an integer or a boolean, got {value!r}")


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    return value


def _int_setting(config: Mapping[str, str], name: str, where: str) -> int | None:
    if name not in config:
        return None
    try:
        return int(config[name])
    except ValueError:
        raise ConfigError(f"{where}.{name} must be an integer, got {config[name]!r}") from None


def _check_spec(spec: TopicSpec, where: str, max_document_bytes: int | None) -> None:
    config = spec.config
    policy = config.get("cleanup.policy")
    if spec.kind == DOCUMENTS and policy != "compact":
        raise ConfigError(
            f"{where}.config cleanup.policy is {policy!r}: a document topic must be 'compact' (documents "
            "are keyed by id and the newest version wins; 'delete' would drop documents that were "
            "never updated, so the topic could no longer rebuild the index)"
        )
    if spec.kind == DEAD_LETTER:
        if policy != "delete":
            raise ConfigError(
                f"{where}.config cleanup.policy is {policy!r}: a dead-letter topic must be 'delete' "
                "(dead letters are not keyed by a document; compaction would drop rejected records)"
            )
        if "retention.ms" not in config:
            raise ConfigError(f"{where}.config needs retention.ms: how long rejected records are kept")
    size = _int_setting(config, "max.message.bytes", f"{where}.config")
    needed = required_max_message_bytes(max_document_bytes)
    if size is None or size < needed:
        raise ConfigError(
            f"{where}.config max.message.bytes is {size}: it must be at least {needed}, the producers' "
            "message.max.bytes (kafka.max_message_bytes plus key, headers and framing; "
            "see KafkaConfig.producer_settings)"
        )
    insync = _int_setting(config, "min.insync.replicas", f"{where}.config")
    if insync is not None and not 1 <= insync <= spec.replication_factor:
        raise ConfigError(
            f"{where}.config min.insync.replicas is {insync}: it must be in [1, replication_factor="
            f"{spec.replication_factor}], or acks=all producers could never write"
        )


def load_topics(path: str | Path, max_document_bytes: int | None = None) -> list[TopicSpec]:
    """Read and check a topics file (YAML: ``topics:`` a list of name, kind, partitions,
    replication_factor, config, description).

    Args:
        path: The file, e.g. ``infra/kafka/topics.yaml``.
        max_document_bytes: ``[kafka] max_message_bytes`` if it differs from the default; every topic's
            ``max.message.bytes`` must take it (see :func:`required_max_message_bytes`).

    Raises:
        ConfigError: The file is missing or not YAML, a key is unknown, a value is invalid, a document
            topic is not compacted, a dead-letter topic is, or a size is below the connector's limit.
    """
    import yaml

    file = Path(path)
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"topics file {file} cannot be read: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"topics file {file} is not valid YAML: {err}") from None
    if (
        not isinstance(document, dict)
        or set(document) != {"topics"}
        or not isinstance(document["topics"], list)
    ):
        raise ConfigError(f"topics file {file} must hold one key, 'topics', a list of topic definitions")
    specs: list[TopicSpec] = []
    for i, entry in enumerate(document["topics"]):
        where = f"{file}: topics[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping")
        unknown = sorted(set(entry) - _TOPIC_KEYS)
        if unknown:
            raise ConfigError(f"{where} has unknown key(s) {unknown}; known: {sorted(_TOPIC_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{where}.name must be a topic name, got {name!r}")
        _check_topic(name, f"{where}.name")
        where = f"{file}: topic {name}"
        kind = entry.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"{where}.kind must be one of {KINDS}, got {kind!r}")
        config = entry.get("config") or {}
        if not isinstance(config, dict):
            raise ConfigError(f"{where}.config must be a mapping of topic configs")
        spec = TopicSpec(
            name=name,
            kind=kind,
            partitions=_positive_int(entry.get("partitions"), f"{where}.partitions"),
            replication_factor=_positive_int(entry.get("replication_factor"), f"{where}.replication_factor"),
            config={str(k): _config_value(v, f"{where}.config.{k}") for k, v in config.items()},
            description=str(entry.get("description") or ""),
        )
        _check_spec(spec, where, max_document_bytes)
        specs.append(spec)
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"topics file {file} defines {duplicates} more than once")
    if not any(spec.kind == DOCUMENTS for spec in specs):
        raise ConfigError(f"topics file {file} defines no document topic")
    return specs


def _raise_combined(errors: Sequence[KafkaClientError], doing: str) -> None:
    if not errors:
        return
    first = errors[0]
    shown = "; ".join(str(err) for err in errors)
    raise type(first)(f"{doing}: {shown}", first.code, first.name)


def describe_topic_configs(
    admin: Any, topics: Iterable[str], timeout_s: float = 30.0
) -> dict[str, dict[str, str]]:
    """Each topic's config values as the brokers report them (name -> value; unset values left out).

    Raises:
        KafkaClientError: A describe failed (all failures in one error).
    """
    from confluent_kafka.admin import ConfigResource, ResourceType

    resources = [ConfigResource(ResourceType.TOPIC, name) for name in topics]
    if not resources:
        return {}
    futures = admin.describe_configs(resources, request_timeout=timeout_s)
    out: dict[str, dict[str, str]] = {}
    errors: list[KafkaClientError] = []
    for resource, future in futures.items():
        try:
            entries = future.result(timeout=timeout_s)
        except Exception as err:
            errors.append(kafka_error(err, f"describing the configs of topic {resource.name}"))
            continue
        out[resource.name] = {name: entry.value for name, entry in entries.items() if entry.value is not None}
    _raise_combined(errors, "describing topic configs")
    return out


def apply_topics(
    admin: Any,
    specs: Sequence[TopicSpec],
    *,
    replication_factor: int | None = None,
    alter_drift: bool = False,
    dry_run: bool = False,
    timeout_s: float = 30.0,
) -> TopicsReport:
    """Create the missing topics and report drift on the existing ones; never delete or repartition.

    Args:
        admin: A ``confluent_kafka.admin.AdminClient``.
        specs: The definitions (:func:`load_topics`).
        replication_factor: Override every topic's replication factor (a one-broker dev cluster: 1);
            ``min.insync.replicas`` is lowered to fit it.
        alter_drift: Set drifted config values back to their definition (partitions and replication
            factor are only reported).
        dry_run: Report what would be created and what drifted; change nothing.
        timeout_s: Per admin request.

    Returns:
        The :class:`TopicsReport`.

    Raises:
        KafkaUnavailable: The brokers could not be reached (retrying may help).
        KafkaRejected: A create or alter was refused (all refusals in one error).
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, ResourceType

    wanted = [spec.effective(replication_factor) for spec in specs]
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as err:
        raise kafka_error(err, "listing topics") from None
    report = TopicsReport()
    missing = [spec for spec in wanted if spec.name not in metadata.topics]
    existing = [spec for spec in wanted if spec.name in metadata.topics]

    if missing and not dry_run:
        futures = admin.create_topics(
            [
                NewTopic(
                    spec.name,
                    num_partitions=spec.partitions,
                    replication_factor=spec.replication_factor,
                    config=dict(spec.config),
                )
                for spec in missing
            ],
            request_timeout=timeout_s,
        )
        errors: list[KafkaClientError] = []
        raced: list[TopicSpec] = []
        for spec in missing:
            try:
                futures[spec.name].result(timeout=timeout_s)
            except KafkaException as err:
                inner = err.args[0] if err.args else None
                if isinstance(inner, KafkaError) and inner.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    raced.append(spec)  # created by someone else since we listed: check it like the others
                    continue
                errors.append(kafka_error(err, f"creating topic {spec.name}"))
        _raise_combined(errors, "creating topics")
        if raced:
            existing.extend(raced)
            metadata = admin.list_topics(timeout=timeout_s)
        missing = [spec for spec in missing if spec not in raced]
    report.created = [spec.name for spec in missing]

    configs = describe_topic_configs(admin, [spec.name for spec in existing], timeout_s)
    to_alter: dict[str, list[tuple[str, str]]] = {}
    for spec in existing:
        topic = metadata.topics[spec.name]
        drift: list[TopicDrift] = []
        partitions = len(topic.partitions)
        if partitions != spec.partitions:
            drift.append(TopicDrift(spec.name, "partitions", str(spec.partitions), str(partitions)))
        replicas = {len(partition.replicas) for partition in topic.partitions.values()}
        if replicas and replicas != {spec.replication_factor}:
            shown = ",".join(str(n) for n in sorted(replicas))
            drift.append(TopicDrift(spec.name, "replication_factor", str(spec.replication_factor), shown))
        actual = configs.get(spec.name, {})
        for name, expected in sorted(spec.config.items()):
            if actual.get(name) != expected:
                if alter_drift and not dry_run:
                    to_alter.setdefault(spec.name, []).append((name, expected))
                else:
                    drift.append(TopicDrift(spec.name, name, expected, actual.get(name)))
        if drift:
            report.drift.extend(drift)
        elif spec.name not in to_alter:
            report.unchanged.append(spec.name)

    if to_alter:
        resources = [
            ConfigResource(
                ResourceType.TOPIC,
                name,
                incremental_configs=[
                    ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                    for key, value in pairs
                ],
            )
            for name, pairs in to_alter.items()
        ]
        futures = admin.incremental_alter_configs(resources, request_timeout=timeout_s)
        errors = []
        for resource, future in futures.items():
            try:
                future.result(timeout=timeout_s)
            except Exception as err:
                errors.append(kafka_error(err, f"altering the configs of topic {resource.name}"))
                continue
            report.altered.extend((resource.name, key) for key, _ in to_alter[resource.name])
            if not any(item.topic == resource.name for item in report.drift):
                report.unchanged.append(resource.name)
        _raise_combined(errors, "altering topic configs")
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m connectors.kafka_topics``: apply a topics file (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m connectors.kafka_topics",
        description="Create missing Kafka topics from a topics file and report drift; never deletes.",
    )
    parser.add_argument("file", help="topics file, e.g. infra/kafka/topics.yaml")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: [kafka] bootstrap_servers)")
    parser.add_argument("--config", help="TOML config file with a [kafka] table (brokers, security)")
    parser.add_argument(
        "--replication-factor", type=int, help="override every topic's replication factor (dev: 1)"
    )
    parser.add_argument("--alter", action="store_true", help="set drifted config values to the file's")
    parser.add_argument("--dry-run", action="store_true", help="report only; create and alter nothing")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per admin request")
    args = parser.parse_args(argv)

    from confluent_kafka.admin import AdminClient

    from tierflow.config import load_settings

    try:
        overrides = {"bootstrap_servers": args.bootstrap} if args.bootstrap else {}
        kafka: KafkaConfig = load_settings(KafkaConfig, "kafka", args.config, overrides)
        specs = load_topics(args.file, kafka.max_message_bytes)
        report = apply_topics(
            AdminClient(kafka.admin_settings()),
            specs,
            replication_factor=args.replication_factor,
            alter_drift=args.alter,
            dry_run=args.dry_run,
            timeout_s=args.timeout,
        )
    except (ConfigError, KafkaClientError) as err:
        print(f"kafka_topics: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(report.lines(args.dry_run)))
    return 1 if report.drift else 0


if __name__ == "__main__":
    sys.exit(main())
