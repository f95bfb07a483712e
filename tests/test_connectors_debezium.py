"""Debezium decoder: every shared fixture decodes to its expected event, both JsonConverter forms agree,
tombstones and control messages, every rejection reason, the mapping options, and version order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from connectors.debezium import REASONS, STAGE, UNAVAILABLE_VALUE, DebeziumMapping, decode_change
from pipelines.reconcile import newest
from tierflow.deadletter import DeadLetter
from tierflow.errors import ConfigError
from tierflow.records import DocumentEvent, SourcePosition

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "debezium"
POSITION = SourcePosition("kafka", "dbserver1.inventory.customers/0", "42")

# The fixtures' customers rows (id, first_name, last_name, email): text from two columns, title the email.
CUSTOMERS = DebeziumMapping(text_column=("first_name", "last_name"), title_column="email")
# The same for payload-only captures that come without their record key: the id from the row.
CUSTOMERS_BY_ROW = DebeziumMapping(
    id_columns=("id",), text_column=("first_name", "last_name"), title_column="email"
)
PRODUCTS = DebeziumMapping(id_columns=("id",), text_column="description", title_column="name")
MAPPINGS = {"customers": CUSTOMERS, "customers_by_row": CUSTOMERS_BY_ROW, "products": PRODUCTS}


def binlog(index: int, pos: int, streamed: bool = True) -> int:
    """The documented MySQL version: 2 * (file index * 2**32 + pos) + (1 streamed, 0 snapshot read)."""
    return 2 * (index * 2**32 + pos) + int(streamed)


def lsn(value: int, streamed: bool = True) -> int:
    """The documented PostgreSQL version: 2 * lsn + (1 streamed, 0 snapshot read)."""
    return 2 * value + int(streamed)


def fixture(connector: str, name: str) -> bytes:
    path = FIXTURES / connector / name
    if not path.is_file():
        pytest.skip(f"shared Debezium fixture {path} is absent (../shared/fixtures/debezium not checked out)")
    return path.read_bytes()


def decode_fixture(
    connector: str, value_file: str, key_file: str | None, mapping: DebeziumMapping, **kwargs: Any
) -> DocumentEvent | DeadLetter | None:
    key = fixture(connector, key_file) if key_file else None
    return decode_change(key, fixture(connector, value_file), POSITION, mapping, **kwargs)


def event_of(result: DocumentEvent | DeadLetter | None) -> DocumentEvent:
    assert isinstance(result, DocumentEvent), result
    return result


def dead_of(result: DocumentEvent | DeadLetter | None) -> DeadLetter:
    assert isinstance(result, DeadLetter), result
    return result


PG_TABLE = "postgres.public.customers"
PG_INVENTORY = "postgres.inventory.customers"
MY_TABLE = "inventory.customers"
ANNE = "Anne\n\nKretchmar"
ANNE_MARIE = "Anne Marie\n\nKretchmar"
ANNE_MAIL = "annek@noanswer.org"

# (connector, value file, key file, mapping): (doc_id, op, version, text, title, event_time, table,
# connector name, Debezium op). The PostgreSQL docs show one key (row id 1, a string "1" in the doc
# example): it is the key of create, update, delete and tombstone alike.
EXPECTED: dict[tuple[str, str, str | None, str], tuple[Any, ...]] = {
    # --- postgresql ---
    ("postgresql", "create.json", "create.key.json", "customers"): (
        "1", "upsert", lsn(24023128), ANNE, ANNE_MAIL, 1559033904.863, PG_TABLE, "postgresql", "c",
    ),
    ("postgresql", "create.payload.json", "create.key.json", "customers"): (
        "1", "upsert", lsn(24023128), ANNE, ANNE_MAIL, 1559033904.863, PG_TABLE, "postgresql", "c",
    ),
    ("postgresql", "update.json", "create.key.json", "customers"): (
        "1", "upsert", lsn(24023128), ANNE_MARIE, ANNE_MAIL, 1559033904.863, PG_TABLE, "postgresql", "u",
    ),
    ("postgresql", "update.payload.json", "create.key.json", "customers"): (
        "1", "upsert", lsn(24023128), ANNE_MARIE, ANNE_MAIL, 1559033904.863, PG_TABLE, "postgresql", "u",
    ),
    ("postgresql", "delete.json", "delete.key.json", "customers"): (
        "1", "delete", lsn(46523128), "", "", 1559033904.863, PG_TABLE, "postgresql", "d",
    ),
    ("postgresql", "delete.payload.json", "delete.key.json", "customers"): (
        "1", "delete", lsn(46523128), "", "", 1559033904.863, PG_TABLE, "postgresql", "d",
    ),
    ("postgresql", "read.payload.json", None, "customers_by_row"): (
        "1001", "upsert", lsn(33816576, streamed=False), "Sally\n\nThomas", "sally.thomas@acme.com",
        1582540780.807, PG_INVENTORY, "postgresql", "r",
    ),
    ("postgresql", "read.last_row.payload.json", None, "customers_by_row"): (
        "1004", "upsert", lsn(33816576, streamed=False), ANNE, ANNE_MAIL, 1582540780.812, PG_INVENTORY,
        "postgresql", "r",
    ),
    ("postgresql", "create.kafka-ssl.payload.json", None, "customers_by_row"): (
        "1005", "upsert", lsn(34466480), "Bob\n\nMarley", "bob@marley.com", 1733906311.010, PG_INVENTORY,
        "postgresql", "c",
    ),
    # Hand-trimmed source block without an lsn: the version falls back to source.ts_ms.
    ("postgresql", "read.openlineage.payload.json", None, "products"): (
        "101", "upsert", 2 * 1678901234000, "Small 2-wheel scooter", "scooter", 1678901234.0,
        "postgres.inventory.products", "postgresql", "r",
    ),
    # --- mysql ---
    # Tutorial snapshot read: old-style source (no connector name, ts_sec 0): connector inferred from
    # file/pos, event time from the envelope ts_ms.
    ("mysql", "read.json", "read.key.json", "customers"): (
        "1004", "upsert", binlog(3, 154, streamed=False), ANNE, ANNE_MAIL, 1486500577.691, MY_TABLE, "mysql", "r",
    ),
    ("mysql", "read.payload.json", "read.key.json", "customers"): (
        "1004", "upsert", binlog(3, 154, streamed=False), ANNE, ANNE_MAIL, 1486500577.691, MY_TABLE, "mysql", "r",
    ),
    # create.key.json is another doc example (id 1001) than the row (id 1004): the row's value wins.
    # source.ts_ms is 0 in these examples: the event time falls back to the envelope ts_ms.
    ("mysql", "create.json", "create.key.json", "customers"): (
        "1004", "upsert", binlog(3, 154), ANNE, ANNE_MAIL, 1465491411.815, MY_TABLE, "mysql", "c",
    ),
    ("mysql", "create.payload.json", "create.key.json", "customers"): (
        "1004", "upsert", binlog(3, 154), ANNE, ANNE_MAIL, 1465491411.815, MY_TABLE, "mysql", "c",
    ),
    ("mysql", "create.docs.json", "create.key.json", "customers"): (
        "1004", "upsert", binlog(3, 154), ANNE, ANNE_MAIL, 1465491411.815, MY_TABLE, "mysql", "c",
    ),
    ("mysql", "update.json", "update.key.json", "customers"): (
        "1004", "upsert", binlog(3, 484), ANNE_MARIE, ANNE_MAIL, 1465581029.1, MY_TABLE, "mysql", "u",
    ),
    ("mysql", "update.payload.json", "update.key.json", "customers"): (
        "1004", "upsert", binlog(3, 484), ANNE_MARIE, ANNE_MAIL, 1465581029.1, MY_TABLE, "mysql", "u",
    ),
    ("mysql", "update.alt.payload.json", None, "customers_by_row"): (
        "1004", "upsert", binlog(3, 154), ANNE, ANNE_MAIL, 1465491411.815, MY_TABLE, "mysql", "u",
    ),
    # Tutorial u/d: no connector name and ts_sec instead of ts_ms.
    ("mysql", "update.tutorial.payload.json", "update.key.json", "customers"): (
        "1004", "upsert", binlog(3, 364), ANNE_MARIE, ANNE_MAIL, 1486501486.0, MY_TABLE, "mysql", "u",
    ),
    ("mysql", "delete.json", "delete.key.json", "customers"): (
        "1004", "delete", binlog(3, 805), "", "", 1465581902.3, MY_TABLE, "mysql", "d",
    ),
    ("mysql", "delete.payload.json", "delete.key.json", "customers"): (
        "1004", "delete", binlog(3, 805), "", "", 1465581902.3, MY_TABLE, "mysql", "d",
    ),
    ("mysql", "delete.tutorial.payload.json", "delete.key.json", "customers"): (
        "1004", "delete", binlog(3, 725), "", "", 1486501558.0, MY_TABLE, "mysql", "d",
    ),
}  # fmt: skip

TOMBSTONES = {
    ("postgresql", "tombstone.json", "tombstone.key.json"): "1",
    ("mysql", "tombstone.json", "tombstone.key.json"): "1004",
    ("mysql", "tombstone.tutorial-rendering.json", "tombstone.key.json"): "1004",
}
IGNORED = [
    ("postgresql", "transaction_begin.json"),
    ("postgresql", "transaction_end.json"),
    ("mysql", "transaction_begin.json"),
    ("mysql", "transaction_end.json"),
]
KEYS = {
    ("postgresql", "create.key.json"): "1",
    ("postgresql", "delete.key.json"): "1",
    ("postgresql", "tombstone.key.json"): "1",
    ("mysql", "create.key.json"): "1001",
    ("mysql", "read.key.json"): "1004",
    ("mysql", "update.key.json"): "1004",
    ("mysql", "delete.key.json"): "1004",
    ("mysql", "tombstone.key.json"): "1004",
}
# Payload-only files and the enveloped (schemas.enable=true) file they were taken from.
PAYLOAD_PAIRS = [
    ("postgresql", "create.payload.json", "create.json", "create.key.json"),
    ("postgresql", "update.payload.json", "update.json", "create.key.json"),
    ("postgresql", "delete.payload.json", "delete.json", "delete.key.json"),
    ("mysql", "read.payload.json", "read.json", "read.key.json"),
    ("mysql", "create.payload.json", "create.json", "create.key.json"),
    ("mysql", "update.payload.json", "update.json", "update.key.json"),
    ("mysql", "delete.payload.json", "delete.json", "delete.key.json"),
]


def test_every_fixture_file_has_an_expectation() -> None:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared Debezium fixtures are absent at {FIXTURES}")
    covered = (
        {(c, v) for c, v, _, _ in EXPECTED} | {(c, v) for c, v, _ in TOMBSTONES} | set(IGNORED) | set(KEYS)
    )
    on_disk = {(d.name, f.name) for d in FIXTURES.iterdir() if d.is_dir() for f in d.glob("*.json")}
    assert on_disk, "no fixture files found"
    assert on_disk == covered


@pytest.mark.parametrize(
    ("case", "expected"), list(EXPECTED.items()), ids=lambda v: "/".join(map(str, v))[:80]
)
def test_fixture_decodes_to_expected_event(
    case: tuple[str, str, str | None, str], expected: tuple[Any, ...]
) -> None:
    connector, value_file, key_file, mapping = case
    event = event_of(decode_fixture(connector, value_file, key_file, MAPPINGS[mapping]))
    doc_id, op, version, text, title, event_time, table, connector_name, debezium_op = expected
    assert (event.doc_id, event.op, event.version, event.text, event.title) == (
        doc_id,
        op,
        version,
        text,
        title,
    )
    assert event.event_time == pytest.approx(event_time)
    assert event.source == POSITION
    extra = {"weight": 3.14} if mapping == "products" else {}
    assert event.metadata == {**extra, "table": table, "connector": connector_name, "op": debezium_op}


@pytest.mark.parametrize(("connector", "payload_file", "enveloped_file", "key_file"), PAYLOAD_PAIRS)
def test_payload_only_form_decodes_like_the_envelope(
    connector: str, payload_file: str, enveloped_file: str, key_file: str
) -> None:
    plain = decode_fixture(connector, payload_file, key_file, CUSTOMERS)
    enveloped = decode_fixture(connector, enveloped_file, key_file, CUSTOMERS)
    assert isinstance(plain, DocumentEvent)
    assert plain == enveloped
    assert json.loads(fixture(connector, enveloped_file))["payload"] is not None  # it really is enveloped


def test_current_mysql_doc_example_decodes_like_the_serde_test_resource() -> None:
    # create.docs.json (current docs, source.ts_us/ts_ns/query) and create.json (serde test resource)
    # describe the same insert.
    assert decode_fixture("mysql", "create.docs.json", None, CUSTOMERS_BY_ROW) == decode_fixture(
        "mysql", "create.json", None, CUSTOMERS_BY_ROW
    )


@pytest.mark.parametrize(
    ("case", "doc_id"), list(TOMBSTONES.items()), ids=lambda v: "/".join(v) if isinstance(v, tuple) else v
)
def test_tombstone_deletes_its_keys_document(case: tuple[str, str, str], doc_id: str) -> None:
    connector, value_file, key_file = case
    key = fixture(connector, key_file)
    from_file = event_of(decode_change(key, fixture(connector, value_file), POSITION, CUSTOMERS))
    on_the_wire = event_of(decode_change(key, None, POSITION, CUSTOMERS))  # a Kafka null value
    assert from_file == on_the_wire
    assert (on_the_wire.doc_id, on_the_wire.op, on_the_wire.text, on_the_wire.version) == (
        doc_id,
        "delete",
        "",
        0,
    )
    assert on_the_wire.metadata == {"op": "tombstone"}
    assert on_the_wire.event_time is None
    assert on_the_wire.source == POSITION
    assert event_of(decode_change(key, b"", POSITION, CUSTOMERS)) == on_the_wire


@pytest.mark.parametrize(
    ("case", "doc_id"), list(KEYS.items()), ids=lambda v: "/".join(v) if isinstance(v, tuple) else v
)
def test_every_key_fixture_names_its_row(case: tuple[str, str], doc_id: str) -> None:
    connector, key_file = case
    event = event_of(decode_change(fixture(connector, key_file), None, POSITION, DebeziumMapping()))
    assert event.doc_id == doc_id
    prefixed = DebeziumMapping(id_columns=("id",), id_prefix=f"{connector}.inventory.customers:")
    event = event_of(decode_change(fixture(connector, key_file), None, POSITION, prefixed))
    assert event.doc_id == f"{connector}.inventory.customers:{doc_id}"


@pytest.mark.parametrize(("connector", "value_file"), IGNORED)
def test_transaction_metadata_is_ignored(connector: str, value_file: str) -> None:
    assert decode_change(None, fixture(connector, value_file), POSITION, CUSTOMERS) is None


# --- tombstone versions and the reconcile order ------------------------------------------------------


def test_tombstone_version_never_beats_a_newer_change() -> None:
    create = event_of(decode_fixture("postgresql", "create.json", "create.key.json", CUSTOMERS))
    delete = event_of(decode_fixture("postgresql", "delete.json", "delete.key.json", CUSTOMERS))
    key = fixture("postgresql", "tombstone.key.json")
    reinsert = event_of(
        decode_change(key, change("c", after=ROW, source={**PG_SOURCE, "lsn": 46523200}), POSITION, CUSTOMERS)
    )
    assert reinsert.doc_id == delete.doc_id == create.doc_id == "1"

    # Default (0): a no-op after its delete; it can never beat the create or a re-insert.
    tombstone = event_of(decode_change(key, None, POSITION, CUSTOMERS))
    assert newest([create, delete, tombstone]) is delete
    assert newest([delete, tombstone, reinsert]) is reinsert
    # The documented limit: with the delete compacted away, 0 loses to the upsert it follows.
    assert newest([create, tombstone]) is create

    # With the version the caller knows (the preceding delete's): it ties with that delete (a delete wins
    # ties), removes the create on its own, and still loses to the re-insert.
    known = event_of(decode_change(key, None, POSITION, CUSTOMERS, tombstone_version=delete.version))
    assert known.version == delete.version
    assert newest([create, known]) is known
    assert newest([known, reinsert]) is reinsert
    assert newest([delete, known]).op == "delete"

    with pytest.raises(ValueError):
        decode_change(key, None, POSITION, CUSTOMERS, tombstone_version=-1)


def test_versions_follow_source_order_in_the_fixtures() -> None:
    def version(connector: str, value_file: str, key_file: str | None = None) -> int:
        return event_of(decode_fixture(connector, value_file, key_file, CUSTOMERS_BY_ROW)).version

    # MySQL docs example: insert at pos 154, update at 484, delete at 805 of mysql-bin.000003.
    assert version("mysql", "create.json") < version("mysql", "update.json") < version("mysql", "delete.json")
    # MySQL tutorial: snapshot read at 154, update at 364, delete at 725.
    tutorial = ("read.json", "update.tutorial.payload.json", "delete.tutorial.payload.json")
    assert version("mysql", tutorial[0]) < version("mysql", tutorial[1]) < version("mysql", tutorial[2])
    # A snapshot read and a streamed change at the same binlog position: the streamed change is newer.
    assert version("mysql", "read.json") + 1 == version("mysql", "create.json")
    # update.alt.payload.json is a fabricated serde test resource that reuses the insert's position
    # (its source.query is even the INSERT): it ties with create.json, not a real ordering.
    assert version("mysql", "update.alt.payload.json") == version("mysql", "create.json")

    # PostgreSQL docs: the delete (lsn 46523128) is after the create (lsn 24023128). The docs' update
    # example reuses the create example's lsn 24023128 (independent illustrations, not one session), so
    # that pair ties instead of ordering; real updates of a row have a higher LSN than its insert.
    assert version("postgresql", "create.json") < version("postgresql", "delete.json")
    assert version("postgresql", "update.json") == version("postgresql", "create.json")
    assert version("postgresql", "update.json") < version("postgresql", "delete.json")
    # Rows of one snapshot share its LSN (different documents, so no conflict).
    assert version("postgresql", "read.payload.json") == version("postgresql", "read.last_row.payload.json")
    # The kafka-ssl capture streamed an insert after that snapshot (lsn 34466480 > 33816576).
    assert version("postgresql", "read.payload.json") < version("postgresql", "create.kafka-ssl.payload.json")


# --- synthetic events ----------------------------------------------------------------------------------

PG_SOURCE: dict[str, Any] = {
    "version": "2.5.0.Final",
    "connector": "postgresql",
    "name": "pg",
    "ts_ms": 1700000000000,
    "snapshot": "false",
    "db": "app",
    "schema": "public",
    "table": "articles",
    "txId": 1,
    "lsn": 1000,
}
ROW: dict[str, Any] = {"id": 1, "first_name": "Anne", "last_name": "Kretchmar", "email": ANNE_MAIL}
ARTICLE: dict[str, Any] = {"id": 7, "title": "Title", "body": "Body.", "lang": "en", "views": 3}
ARTICLES = DebeziumMapping(id_columns=("id",), text_column="body", title_column="title")


def change(op: str | None = "c", *, envelope: bool = False, **fields: Any) -> bytes:
    payload: dict[str, Any] = {
        "before": None,
        "after": None,
        "source": PG_SOURCE,
        "op": op,
        "ts_ms": 1700000000500,
    }
    payload.update(fields)
    if op is None:
        del payload["op"]
    return json.dumps({"schema": {"type": "struct"}, "payload": payload} if envelope else payload).encode()


def decode(value: bytes | None, mapping: DebeziumMapping = ARTICLES, key: bytes | None = None) -> Any:
    return decode_change(key, value, POSITION, mapping)


def test_mapping_id_prefix_title_text_and_metadata() -> None:
    event = event_of(decode(change("c", after=ARTICLE)))
    assert (event.doc_id, event.text, event.title, event.version) == ("7", "Body.", "Title", 2001)
    assert event.metadata == {
        "lang": "en",
        "views": 3,
        "table": "app.public.articles",
        "connector": "postgresql",
        "op": "c",
    }
    assert event.event_time == 1700000000.0

    chosen = DebeziumMapping(
        id_columns=("lang", "id"),
        text_column="body",
        metadata_columns=("views", "missing"),
        id_prefix="pg.a:",
    )
    event = event_of(decode(change("u", after=ARTICLE), chosen))
    assert (event.doc_id, event.title) == ("pg.a:en:7", "")
    assert event.metadata == {
        "views": 3,
        "table": "app.public.articles",
        "connector": "postgresql",
        "op": "u",
    }


def test_text_from_several_columns_skips_null_and_empty_values() -> None:
    mapping = DebeziumMapping(id_columns=("id",), text_column=["title", "summary", "body", "note"])  # type: ignore[arg-type]
    assert mapping.text_column == ("title", "summary", "body", "note")
    row = {**ARTICLE, "summary": None, "note": ""}
    assert event_of(decode(change("c", after=row), mapping)).text == "Title\n\nBody."
    # A null single text column is empty text: the validation stage rejects it (empty_text).
    assert event_of(decode(change("c", after={**ARTICLE, "body": None}))).text == ""


def test_id_from_key_fields_in_key_order_and_row_values_first() -> None:
    row = {"tenant": "acme", "no": 5, "body": "x"}
    key = json.dumps({"schema": {"type": "struct"}, "payload": {"no": 5, "tenant": "acme"}}).encode()
    event = event_of(decode(change("c", after=row), DebeziumMapping(text_column="body"), key=key))
    assert event.doc_id == "5:acme"
    assert event.metadata == {"table": "app.public.articles", "connector": "postgresql", "op": "c"}
    # A key column the row lacks (e.g. added by a routing SMT) comes from the key.
    key = json.dumps({"no": 5, "__dbz__physicalTableIdentifier": "app.t1"}).encode()
    assert (
        event_of(decode(change("c", after=row), DebeziumMapping(text_column="body"), key=key)).doc_id
        == "5:app.t1"
    )


@pytest.mark.parametrize(
    ("key", "doc_id"),
    [
        (b"plain-key", "plain-key"),  # StringConverter
        (b'"quoted-key"', "quoted-key"),  # JSON string
        (b"1004", "1004"),  # JSON number without envelope
        (b'{"schema": {"type": "int32", "optional": false}, "payload": 1004}', "1004"),
        (b'{"schema": null, "payload": 10.0}', "10"),
        (b'{"a": 1, "b": "x"}', "1:x"),
        (b'{"b": "x", "a": 1}', "x:1"),
    ],
)
def test_key_forms(key: bytes, doc_id: str) -> None:
    assert event_of(decode(None, DebeziumMapping(), key=key)).doc_id == doc_id


def test_delete_takes_its_id_from_the_key_when_before_is_null() -> None:
    key = b'{"id": 7}'
    event = event_of(decode(change("d", before=None), DebeziumMapping(), key=key))
    assert (event.doc_id, event.op, event.version) == ("7", "delete", 2001)
    assert event.metadata == {"table": "app.public.articles", "connector": "postgresql", "op": "d"}
    assert event_of(decode(change("d", before=None), ARTICLES, key=key)).doc_id == "7"
    assert event_of(decode(change("d", before={"id": 8}), ARTICLES, key=key)).doc_id == "8"


@pytest.mark.parametrize("envelope", [False, True])
def test_control_messages_are_ignored(envelope: bool) -> None:
    def wrap(payload: dict[str, Any], name: str) -> bytes:
        return json.dumps(
            {"schema": {"type": "struct", "name": name}, "payload": payload} if envelope else payload
        ).encode()

    heartbeat = wrap({"ts_ms": 1700000000000}, "io.debezium.connector.common.Heartbeat")
    assert decode_change(b'{"serverName": "pg"}', heartbeat, POSITION, ARTICLES) is None
    schema_change = wrap(
        {
            "source": PG_SOURCE,
            "ts_ms": 1,
            "databaseName": "app",
            "ddl": "ALTER TABLE t ADD c int",
            "tableChanges": [],
        },
        "io.debezium.connector.mysql.SchemaChangeValue",
    )
    assert decode(schema_change) is None
    assert decode(wrap({"databaseName": "app", "historyRecord": "{}"}, "history")) is None
    assert decode(wrap({"status": "BEGIN", "id": "1:2", "ts_ms": 1}, "TransactionMetadataValue")) is None
    assert decode(change("m", envelope=envelope, message={"prefix": "x", "content": "eA=="})) is None


def test_big_and_fallback_versions() -> None:
    # MySQL by fields when the connector name is missing; binlog file index and pos.
    source = {
        "file": "mysql-bin.000012",
        "pos": 2**32 - 1,
        "row": 0,
        "ts_sec": 1486501486,
        "db": "d",
        "table": "t",
    }
    event = event_of(decode(change("u", after=ARTICLE, source=source)))
    assert event.version == binlog(12, 2**32 - 1)
    assert event.version < 2**63
    assert event.metadata["connector"] == "mysql"
    # Another connector (SQL Server): source.ts_ms; numeric strings are accepted.
    # PostgreSQL's text form of an LSN reads as the same number.
    text_lsn = {**PG_SOURCE, "lsn": "0/16B3748"}
    assert event_of(decode(change("u", after=ARTICLE, source=text_lsn))).version == lsn(0x16B3748)
    sqlserver = {"connector": "sqlserver", "ts_ms": "1700000000123", "change_lsn": "00000025:00000d98:0002"}
    assert event_of(decode(change("u", after=ARTICLE, source=sqlserver))).version == 2 * 1700000000123 + 1
    # No source timestamps at all: the envelope ts_ms, then the Kafka offset of the position.
    assert event_of(decode(change("c", after=ARTICLE, source={}))).version == 2 * 1700000000500 + 1
    no_time = json.dumps({"op": "r", "after": ARTICLE}).encode()
    event = event_of(decode(no_time))
    assert (event.version, event.event_time) == (2 * 42, None)
    assert event.metadata == {"lang": "en", "views": 3, "table": None, "connector": None, "op": "r"}


# --- rejections ------------------------------------------------------------------------------------


def rejected(
    value: bytes | None, reason: str, mapping: DebeziumMapping = ARTICLES, key: bytes | None = None
) -> DeadLetter:
    dead = dead_of(decode_change(key, value, POSITION, mapping))
    assert dead.reason == reason, dead.detail
    assert dead.stage == STAGE == "decode"
    assert dead.source == POSITION
    assert dead.raw == (value if value is not None else key or b"")
    return dead


BAD_INPUTS: list[tuple[str, bytes | None, bytes | None, DebeziumMapping]] = [
    ("not_utf8", b'{"op": "c", "after": {"id": 1, "body": "\xff"}}', None, ARTICLES),
    ("not_utf8", b'{"op": "c", "after": {"id": 1, "body": "\\ud800"}}', None, ARTICLES),
    ("not_utf8", None, b"\xff\xfe", DebeziumMapping()),
    ("not_utf8", None, b'{"id": "\xff"}', DebeziumMapping()),
    ("malformed_json", b'{"op": "c", ', None, ARTICLES),
    ("malformed_json", None, b'{"id": ', DebeziumMapping()),
    ("malformed_json", b'{"op": "c", "after": {"id": 1, "body": "b", "score": NaN}}', None, ARTICLES),
    ("malformed_json", b'{"op": "c", "after": {"id": 1, "body": "b", "score": Infinity}}', None, ARTICLES),
    ("malformed_json", b'{"op": "c", "after": {"id": 1, "body": "b", "score": -1e999}}', None, ARTICLES),
    ("malformed_json", None, b'{"id": NaN}', DebeziumMapping()),
    ("not_an_object", b"[1, 2]", None, ARTICLES),
    ("not_an_object", b'"text"', None, ARTICLES),
    ("not_an_object", b'{"schema": {"type": "array"}, "payload": [1]}', None, ARTICLES),
    ("not_an_object", None, b"[1]", DebeziumMapping()),
    ("unknown_op", b'{"op": "x", "after": {"id": 1, "body": "b"}}', None, ARTICLES),
    ("unknown_op", b'{"op": 5, "after": {"id": 1, "body": "b"}}', None, ARTICLES),
    ("unknown_op", b'{"before": null, "after": {"id": 1, "body": "b"}, "source": {}}', None, ARTICLES),
    ("unknown_op", b'{"id": 1, "body": "flattened by ExtractNewRecordState"}', None, ARTICLES),
    ("unknown_op", b"{}", None, ARTICLES),
    ("unsupported_op", b'{"op": "t", "source": {"db": "app", "table": "articles"}}', None, ARTICLES),
    ("missing_id", b'{"op": "c", "after": {"body": "b"}}', None, ARTICLES),
    ("missing_id", b'{"op": "c", "after": {"id": null, "body": "b"}}', b'{"other": 1}', ARTICLES),
    ("missing_id", b'{"op": "c", "after": {"id": 1, "body": "b"}}', None, DebeziumMapping(text_column="body")),
    ("missing_id", b'{"op": "c", "after": {"id": "", "body": "b"}}', None, ARTICLES),
    ("missing_id", b'{"op": "d", "before": null}', None, ARTICLES),
    ("missing_id", None, None, ARTICLES),
    ("missing_id", None, b'{"other": 1}', ARTICLES),
    ("missing_text", b'{"op": "c", "after": {"id": 1, "text": "b"}}', None, ARTICLES),
    ("missing_text", b'{"op": "c", "after": null}', b'{"id": 1}', ARTICLES),
    ("missing_text", b'{"op": "u", "after": {"id": 1, "body": "__debezium_unavailable_value"}}', None, ARTICLES),
    ("missing_text", b'{"op": "u", "after": {"id": 1, "body": "b", "title": "__debezium_unavailable_value"}}', None, ARTICLES),
    ("wrong_type", b'{"op": "c", "after": {"id": 1, "body": 5}}', None, ARTICLES),
    ("wrong_type", b'{"op": "c", "after": {"id": 1, "body": "b", "title": ["t"]}}', None, ARTICLES),
    ("wrong_type", b'{"op": "c", "after": [1]}', None, ARTICLES),
    ("wrong_type", b'{"op": "c", "after": {"id": {"a": 1}, "body": "b"}}', None, ARTICLES),
    ("wrong_type", b'{"op": "c", "after": {"id": true, "body": "b"}}', None, ARTICLES),
    ("wrong_type", b'{"op": "c", "after": {"id": 1, "body": "b"}, "source": {"connector": "postgresql", "lsn": "16B3748"}}', None, ARTICLES),
    ("wrong_type", b'{"op": "c", "after": {"id": 1, "body": "b"}, "source": {"connector": "mysql", "file": "binlog", "pos": 4}}', None, ARTICLES),
    ("wrong_type", b'{"op": "c", "after": {"id": 1, "body": "b"}, "source": {"connector": "mysql", "file": "b.000001", "pos": -4}}', None, ARTICLES),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reason", "value", "key", "mapping"), BAD_INPUTS, ids=lambda v: v if isinstance(v, str) else None
)
def test_bad_input_is_dead_lettered_with_its_reason(
    reason: str, value: bytes | None, key: bytes | None, mapping: DebeziumMapping
) -> None:
    dead = rejected(value, reason, mapping, key)
    assert dead.detail
    assert json.loads(dead.to_json())["reason"] == reason


def test_every_reason_code_is_exercised() -> None:
    assert {reason for reason, *_ in BAD_INPUTS} == set(REASONS)


def test_rejection_details_say_what_to_fix() -> None:
    dead = rejected(change("u", after={"id": 1, "body": UNAVAILABLE_VALUE}), "missing_text")
    assert "REPLICA IDENTITY FULL" in dead.detail and dead.doc_id == "1"
    dead = rejected(change("c", after={"id": 1, "text": "x"}), "missing_text")
    assert "'body'" in dead.detail and "'text'" in dead.detail and dead.doc_id == "1"
    dead = rejected(b'{"op": "t", "source": {"db": "app", "table": "articles"}}', "unsupported_op")
    assert "app.articles" in dead.detail
    dead = rejected(b'{"id": 1, "body": "x"}', "unknown_op")
    assert "ExtractNewRecordState" in dead.detail
    dead = rejected(None, "not_utf8", DebeziumMapping(), b"\xff")
    assert "key" in dead.detail


def test_unavailable_metadata_columns_are_left_out() -> None:
    event = event_of(decode(change("u", after={**ARTICLE, "lang": UNAVAILABLE_VALUE})))
    assert "lang" not in event.metadata and event.metadata["views"] == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"text_column": ()},
        {"text_column": ""},
        {"id_columns": ("id", "")},
        {"metadata_columns": ("",)},
        {"title_column": ""},
    ],
)
def test_mapping_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DebeziumMapping(**kwargs)
