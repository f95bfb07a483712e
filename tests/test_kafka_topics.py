"""infra/kafka/topics.yaml and connectors.kafka_topics: the file agrees with the connector's limits, and
applying it to a real broker (Tansu) creates the topics as defined, is idempotent, reports drift without
changing anything, alters only when asked and never deletes.

Tansu stores topic configs but does not enforce compaction, retention or size limits
(``../shared/kafka-test-broker.md``), so these tests assert what the broker stores and reports.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from connectors.kafka_client import KafkaConfig
from connectors.kafka_documents import DEFAULT_MAX_BYTES
from connectors.kafka_topics import (
    DEAD_LETTER,
    DOCUMENTS,
    TopicSpec,
    apply_topics,
    describe_topic_configs,
    load_topics,
    main,
    required_max_message_bytes,
)
from tests.kafka_broker import unique
from tierflow.errors import ConfigError

TOPICS_FILE = Path(__file__).resolve().parents[1] / "infra" / "kafka" / "topics.yaml"


def test_topics_file_matches_the_connector() -> None:
    specs = {spec.kind: spec for spec in load_topics(TOPICS_FILE)}
    documents, dead = specs[DOCUMENTS], specs[DEAD_LETTER]
    producer_limit = KafkaConfig("unused:9092").producer_settings()["message.max.bytes"]
    assert producer_limit == required_max_message_bytes() > DEFAULT_MAX_BYTES
    for spec in (documents, dead):
        assert int(spec.config["max.message.bytes"]) >= producer_limit
        assert 1 < int(spec.config["min.insync.replicas"]) < spec.replication_factor
        assert spec.config["unclean.leader.election.enable"] == "false"
    assert documents.config["cleanup.policy"] == "compact"
    assert dead.config["cleanup.policy"] == "delete"
    assert int(dead.config["retention.ms"]) > int(documents.config["delete.retention.ms"])
    # The names the deployment uses (infra/k8s tierflow.toml [kafka]) are the ones defined here.
    assert (documents.name, dead.name) == ("documents", "documents.dlq")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    return path


GOOD_DOCS = """
  - name: docs
    kind: documents
    partitions: 3
    replication_factor: 3
    config: {cleanup.policy: compact, max.message.bytes: 4259840, min.insync.replicas: 2}
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "topics:\n  - {name: d, kind: documents, partitions: 1, replication_factor: 1,"
            " config: {cleanup.policy: delete, max.message.bytes: 4259840}}\n",
            "must be 'compact'",
        ),
        (
            "topics:\n  - {name: d, kind: documents, partitions: 1, replication_factor: 1,"
            " config: {cleanup.policy: compact, max.message.bytes: 1048576}}\n",
            "at least 4259840",
        ),
        (
            "topics:" + GOOD_DOCS + "  - {name: q, kind: dead_letter, partitions: 1, replication_factor: 1,"
            " config: {cleanup.policy: compact, max.message.bytes: 4259840, retention.ms: 1}}\n",
            "must be 'delete'",
        ),
        (
            "topics:" + GOOD_DOCS + "  - {name: q, kind: dead_letter, partitions: 1, replication_factor: 1,"
            " config: {cleanup.policy: delete, max.message.bytes: 4259840}}\n",
            "needs retention.ms",
        ),
        (
            "topics:\n  - {name: d, kind: documents, partitions: 1, replication_factor: 1,"
            " config: {cleanup.policy: compact, max.message.bytes: 4259840, min.insync.replicas: 2}}\n",
            "min.insync.replicas is 2",
        ),
        ("topics:" + GOOD_DOCS + "  - {name: docs, kind: documents, partitions: 1}\n", "replication_factor"),
        ("topics:" + GOOD_DOCS.replace("partitions: 3", "partitions: 3\n    retention: 1"), "unknown key"),
        ("topics:\n  - {name: 'bad name', kind: documents}\n", "not a valid Kafka topic name"),
        ("topics:\n  - {name: d, kind: queue}\n", "kind must be one of"),
        ("topics: [\n", "not valid YAML"),
        ("other: []\n", "one key, 'topics'"),
    ],
)
def test_bad_topics_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_topics(_write(tmp_path, text))


def test_duplicate_names_and_larger_document_limit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="more than once"):
        load_topics(_write(tmp_path, "topics:" + GOOD_DOCS + GOOD_DOCS))
    # A larger kafka.max_message_bytes needs larger topics: the file's 4259840 is then too small.
    with pytest.raises(ConfigError, match="at least"):
        load_topics(TOPICS_FILE, max_document_bytes=8 << 20)


def test_effective_replication_factor_lowers_min_insync() -> None:
    spec = TopicSpec("t", DOCUMENTS, 3, 3, {"min.insync.replicas": "2", "cleanup.policy": "compact"})
    single = spec.effective(1)
    assert (single.replication_factor, single.config["min.insync.replicas"]) == (1, "1")
    assert spec.effective(None) is spec


# --- against the broker ---------------------------------------------------------------------------


def _renamed(specs: list[TopicSpec]) -> list[TopicSpec]:
    return [dataclasses.replace(spec, name=unique(spec.name.replace(".", "-"))) for spec in specs]


@pytest.fixture
def admin(kafka_broker: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(KafkaConfig(kafka_broker).admin_settings())


def _stored(admin: Any, specs: list[TopicSpec]) -> dict[str, tuple[int, set[int], dict[str, str]]]:
    metadata = admin.list_topics(timeout=10)
    configs = describe_topic_configs(admin, [spec.name for spec in specs])
    return {
        spec.name: (
            len(metadata.topics[spec.name].partitions),
            {len(p.replicas) for p in metadata.topics[spec.name].partitions.values()},
            configs[spec.name],
        )
        for spec in specs
    }


@pytest.mark.kafka
def test_apply_creates_topics_as_defined_and_is_idempotent(admin: Any) -> None:
    specs = _renamed(load_topics(TOPICS_FILE))
    names = [spec.name for spec in specs]

    report = apply_topics(admin, specs, dry_run=True)
    assert report.created == names and not report.drift
    assert not set(names) & set(admin.list_topics(timeout=10).topics), "a dry run created topics"

    report = apply_topics(admin, specs)
    assert (report.created, report.unchanged, report.drift) == (names, [], [])
    stored = _stored(admin, specs)
    for spec in specs:
        partitions, replicas, config = stored[spec.name]
        assert (partitions, replicas) == (spec.partitions, {spec.replication_factor})
        assert {k: config.get(k) for k in spec.config} == dict(spec.config)

    again = apply_topics(admin, specs)
    assert (again.created, again.unchanged, again.drift, again.altered) == ([], names, [], [])


@pytest.mark.kafka
def test_apply_with_replication_override_for_a_one_broker_cluster(admin: Any) -> None:
    specs = _renamed(load_topics(TOPICS_FILE))
    apply_topics(admin, specs, replication_factor=1)
    for spec in specs:
        partitions, replicas, config = _stored(admin, [spec])[spec.name]
        assert (partitions, replicas) == (spec.partitions, {1})
        assert config["min.insync.replicas"] == "1"
        assert config["cleanup.policy"] == spec.config["cleanup.policy"]
    # Checked against the same override, the topics are as defined.
    assert not apply_topics(admin, specs, replication_factor=1).drift


@pytest.mark.kafka
def test_drift_is_reported_never_deleted_and_altered_only_when_asked(admin: Any) -> None:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, ResourceType

    documents, dead = _renamed(load_topics(TOPICS_FILE))
    # Someone created the document topic by hand with the wrong policy and fewer partitions.
    wrong = {"cleanup.policy": "delete", "max.message.bytes": "1048576"}
    admin.create_topics([NewTopic(documents.name, 2, 3, config=wrong)])[documents.name].result(10)
    apply_topics(admin, [dead])
    shortened = ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, dead.name, incremental_configs=[shortened])
    admin.incremental_alter_configs([resource])[resource].result(10)

    report = apply_topics(admin, [documents, dead])
    assert report.created == [] and report.unchanged == []
    found = {(d.topic, d.setting): (d.expected, d.actual) for d in report.drift}
    assert found[(documents.name, "partitions")] == ("12", "2")
    assert found[(documents.name, "cleanup.policy")] == ("compact", "delete")
    assert found[(documents.name, "max.message.bytes")] == ("4259840", "1048576")
    assert found[(documents.name, "delete.retention.ms")] == ("604800000", None)
    assert found[(dead.name, "retention.ms")] == ("2592000000", "1000")
    assert f"{documents.name}: cleanup.policy is 'delete', defined as 'compact'" in map(str, report.drift)
    stored = _stored(admin, [documents, dead])
    assert stored[documents.name][0] == 2 and stored[documents.name][2]["cleanup.policy"] == "delete"
    assert stored[dead.name][2]["retention.ms"] == "1000", "drift was changed without alter_drift"

    fixed = apply_topics(admin, [documents, dead], alter_drift=True)
    assert (dead.name, "retention.ms") in fixed.altered
    assert (documents.name, "cleanup.policy") in fixed.altered
    assert dead.name in fixed.unchanged
    # Partitions are reported, never changed.
    assert [(d.topic, d.setting) for d in fixed.drift] == [(documents.name, "partitions")]
    stored = _stored(admin, [documents, dead])
    assert stored[dead.name][2]["retention.ms"] == "2592000000"
    assert stored[documents.name][0] == 2
    assert stored[documents.name][2]["cleanup.policy"] == "compact"
    assert {documents.name, dead.name} <= set(admin.list_topics(timeout=10).topics)


@pytest.mark.kafka
def test_command_line(kafka_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = unique("cli")
    text = TOPICS_FILE.read_text().replace("name: documents", f"name: {prefix}.documents")
    path = _write(tmp_path, text)
    argv = [str(path), "--bootstrap", kafka_broker, "--replication-factor", "1"]
    assert main([*argv, "--dry-run"]) == 0
    assert f"would create {prefix}.documents" in capsys.readouterr().out
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"created {prefix}.documents\ncreated {prefix}.documents.dlq" in out
    assert main(argv) == 0
    assert f"ok {prefix}.documents" in capsys.readouterr().out
    # Checked against the file's replication factor (3), the one-replica topics drift: exit 1.
    assert main([str(path), "--bootstrap", kafka_broker]) == 1
    assert "replication_factor is '1', defined as '3'" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.yaml"), "--bootstrap", kafka_broker]) == 2
    assert "cannot be read" in capsys.readouterr().err
