"""PostgreSQL logical-replication CDC (wal2json, format 2) against a real throwaway cluster: row changes
become document events, peeking consumes nothing, the slot advances only on acknowledge, a restart skips
what the index holds, bad rows and TRUNCATE become dead letters, configuration errors are clear; and end
to end through the streaming pipeline into the hot tier."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

import connectors.postgres_cdc as cdc
from connectors.postgres_cdc import (
    PostgresCdcConfig,
    PostgresCdcSource,
    TableMapping,
    Transaction,
    decode_transaction,
    format_lsn,
    load_postgres_config,
    parse_lsn,
    redact_dsn,
)
from indexing.hot import HotIndex
from pipelines.stream import Batch, BatchPolicy, MicroBatchStream
from tests.helpers import config, demo_docs, live_docs, live_vectors, top_doc
from tierflow import metrics
from tierflow.deadletter import DeadLetter
from tierflow.errors import ConfigError
from tierflow.records import DocumentEvent

POLICY = BatchPolicy(max_records=100, max_wait_s=0.0, poll_s=0.5)
ARTICLES = "CREATE TABLE articles (id int PRIMARY KEY, slug text, title text, body text, tags text, n int)"


def _slot() -> str:
    return f"s_{uuid.uuid4().hex[:12]}"


def _config(dsn: str, slot: str, mapping: TableMapping | None = None, **overrides: Any) -> PostgresCdcConfig:
    values: dict[str, Any] = {
        "mappings": {"articles": mapping or TableMapping(text_column="body", title_column="title")},
        "create_slot": True,
    }
    values.update(overrides)
    return PostgresCdcConfig(dsn, slot=slot, **values)


def _started(cfg: PostgresCdcConfig, resume: dict[str, str] | None = None) -> PostgresCdcSource:
    source = PostgresCdcSource(cfg)
    source.start(resume or {})
    return source


def _sql(dsn: str, *statements: str) -> None:
    """Each statement in its own transaction (autocommit)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _txn(dsn: str, *statements: str) -> None:
    """All statements in one transaction."""
    with psycopg.connect(dsn) as conn:
        for statement in statements:
            conn.execute(statement)


def _confirmed(dsn: str, slot: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    assert row is not None, f"slot {slot} is gone"
    return parse_lsn(row[0])


def _events(batch: Batch | None) -> list[DocumentEvent]:
    assert batch is not None, "no batch arrived"
    return [item for item in batch.items if isinstance(item, DocumentEvent)]


def _letters(batch: Batch | None) -> list[DeadLetter]:
    assert batch is not None, "no batch arrived"
    return [item for item in batch.items if isinstance(item, DeadLetter)]


# --- without a server --------------------------------------------------------------------------------


def test_lsn_text_form_round_trips() -> None:
    assert parse_lsn("0/1929AA8") == 0x1929AA8
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    with pytest.raises(ValueError):
        parse_lsn("12345")


def test_config_hides_the_password_and_validates() -> None:
    for dsn in (
        "host=db port=5433 dbname=app user=cdc password=hunter2-secret",
        "postgresql://cdc:hunter2-secret@db:5433/app",
    ):
        cfg = PostgresCdcConfig(dsn, mappings={"articles": TableMapping(text_column="body")})
        for shown in (repr(cfg), str(cfg), redact_dsn(dsn)):
            assert "hunter2-secret" not in shown
            assert "password=***" in shown and "db" in shown
        assert cfg.key == "postgres:tierflow"
        assert list(cfg.mappings) == ["public.articles"]
        assert cfg.add_tables() == "public.articles"
    with pytest.raises(ConfigError, match="dsn is not set"):
        PostgresCdcConfig("", mappings={"a": TableMapping()})
    with pytest.raises(ConfigError, match="slot must be"):
        PostgresCdcConfig("host=db", slot="Bad-Slot", mappings={"a": TableMapping()})
    with pytest.raises(ConfigError, match="at least one table"):
        PostgresCdcConfig("host=db")
    with pytest.raises(ConfigError, match="without a mapping"):
        PostgresCdcConfig("host=db", mappings={"a": TableMapping()}, tables=("a", "b"))
    with pytest.raises(ConfigError, match="text_column"):
        TableMapping(text_column=())
    weird = PostgresCdcConfig(
        "host=db", mappings={"my schema.a,b": TableMapping()}, tables=("my schema.a,b", "x.*")
    )
    assert weird.add_tables() == "my\\ schema.a\\,b,x.*"


def test_load_postgres_config_from_toml_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "tierflow.toml"
    path.write_text(
        """
[postgres]
dsn = "postgresql://cdc:s3cret@db/app"
slot = "from_file"
create_slot = true
tables = ["public.articles"]

[postgres.mappings."public.articles"]
id_columns = ["id"]
text_column = ["summary", "body"]
title_column = "title"
table_prefix = true
"""
    )
    cfg = load_postgres_config(path, environ={"TIERFLOW__POSTGRES__SLOT": "from_env"})
    assert cfg.slot == "from_env" and cfg.create_slot is True
    assert cfg.mappings["public.articles"] == TableMapping(
        id_columns=("id",), text_column=("summary", "body"), title_column="title", table_prefix=True
    )
    assert cfg.tables == ("public.articles",)
    with pytest.raises(ConfigError, match="unknown setting"):
        load_postgres_config(path, overrides={"mappings": {"articles": {"text": "body"}}})


def test_decoding_rejects_malformed_changes_with_reasons() -> None:
    cfg = PostgresCdcConfig("host=db", slot="s", mappings={"articles": TableMapping(text_column="body")})
    txn = Transaction(1000, None, 7)
    rows = [
        "{not json",
        "[1, 2]",
        '{"action":"X","schema":"public","table":"articles"}',
        '{"action":"I","schema":"public","table":"articles","columns":{"id":1}}',
        '{"action":"I","schema":"public","table":"articles","columns":[{"name":"id","type":"jsonb",'
        '"value":{"a":1}},{"name":"body","type":"text","value":"x"}],"pk":[{"name":"id","type":"jsonb"}]}',
        '{"action":"I","schema":"public","table":"articles","columns":[{"name":"id","type":"int","value":8},'
        '{"name":"score","type":"float8","value":NaN}],"pk":[{"name":"id","type":"integer"}]}',
        '{"action":"I","schema":"public","table":"articles","columns":[{"name":"id","type":"int","value":9},'
        '{"name":"body","type":"text","value":"fine"}],"pk":[{"name":"id","type":"integer"}]}',
    ]
    txn.changes = [cdc.Change(100 + i, raw) for i, raw in enumerate(rows)]
    items = decode_transaction(txn, cfg)
    letters = [i for i in items if isinstance(i, DeadLetter)]
    assert [letter.reason for letter in letters] == [
        "malformed_json",
        "not_an_object",
        "unknown_op",
        "wrong_type",
        "wrong_type",
        "malformed_json",
    ]
    assert [letter.raw for letter in letters] == rows[:6]
    assert all(letter.stage == "decode" and letter.source.key == "postgres:s" for letter in letters)
    (event,) = [i for i in items if isinstance(i, DocumentEvent)]
    assert (event.doc_id, event.text, event.version, event.metadata["xid"]) == ("9", "fine", 1000, 7)
    assert set(cdc.REASONS) >= {letter.reason for letter in letters}


def test_missing_postgres_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import postgres_server as server

    monkeypatch.setattr(server, "wal2json_library", lambda bindir: None)
    reason = server.unavailable_reason()
    assert reason is not None and "wal2json" in reason and "infra/install-postgres.sh" in reason
    monkeypatch.setattr(server, "find_bindir", lambda: None)
    reason = server.unavailable_reason()
    assert reason is not None and "initdb" in reason
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        server.skip_or_fail(reason)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        server.skip_or_fail(reason)


# --- against a real cluster --------------------------------------------------------------------------


@pytest.mark.postgres
def test_row_changes_become_document_events(postgres_db: str) -> None:
    _sql(postgres_db, ARTICLES)
    slot = _slot()
    mapping = TableMapping(text_column=("title", "body"), title_column="title", table_prefix=True)
    source = _started(_config(postgres_db, slot, mapping, tables=("public.articles",)))
    try:
        assert source.poll(POLICY) is None
        started = time.time()
        _sql(
            postgres_db,
            "INSERT INTO articles (id, title, body, tags, n) VALUES (1, 'One', 'first body', 'a', 10)",
            "INSERT INTO articles (id, title, body, tags, n) VALUES (2, 'Two', 'second body', NULL, 20)",
            "INSERT INTO articles (id, title, body) VALUES (3, NULL, 'third body')",
            "UPDATE articles SET body = 'first body, revised' WHERE id = 1",
            "DELETE FROM articles WHERE id = 2",
            "CREATE TABLE unrelated (x int)",
            "INSERT INTO unrelated VALUES (1)",
        )
        batch = source.poll(POLICY)
        events = _events(batch)
        assert batch is not None and not _letters(batch)
        assert [(e.doc_id, e.op) for e in events] == [
            ("public.articles:1", "upsert"),
            ("public.articles:2", "upsert"),
            ("public.articles:3", "upsert"),
            ("public.articles:1", "upsert"),
            ("public.articles:2", "delete"),
        ]
        versions = [e.version for e in events]
        assert versions == sorted(versions) and len(set(versions)) == 5, "one commit LSN per transaction"
        assert events[0].text == "One\n\nfirst body" and events[0].title == "One"
        assert events[2].text == "third body" and events[2].title == ""
        assert events[3].text == "One\n\nfirst body, revised"
        assert events[4].text == "" and events[4].metadata["op"] == "delete"
        assert events[0].metadata == {
            "slug": None,
            "tags": "a",
            "n": 10,
            "table": "public.articles",
            "op": "insert",
            "xid": events[0].metadata["xid"],
        }
        assert all(
            e.source.key == f"postgres:{slot}" and e.source.position.startswith("lsn:") for e in events
        )
        assert all(e.event_time is not None and abs(e.event_time - started) < 30 for e in events)
        # The batch covers the itemless transactions after the last event too (DDL, an unmapped table).
        assert int(batch.positions[f"postgres:{slot}"]) > versions[-1]
        assert len(batch.received_at) == len(batch.items)
    finally:
        source.close()


@pytest.mark.postgres
def test_peek_consumes_nothing_and_acknowledge_advances_the_slot(postgres_db: str) -> None:
    _sql(postgres_db, ARTICLES)
    slot = _slot()
    source = _started(_config(postgres_db, slot))
    try:
        created_at = _confirmed(postgres_db, slot)
        _sql(postgres_db, *(f"INSERT INTO articles (id, body) VALUES ({i}, 'body {i}')" for i in range(3)))
        behind = source.lag_bytes()
        assert behind > 0, "three inserts not yet acknowledged: the slot lags the server"
        first, again = source.poll(POLICY), source.poll(POLICY)
        assert metrics.REGISTRY.get_sample_value("tierflow_cdc_slot_lag_bytes", {"slot": slot}) >= behind
        assert [e.doc_id for e in _events(first)] == ["0", "1", "2"]
        assert again is not None and first is not None
        assert [(e.doc_id, e.version) for e in _events(again)] == [
            (e.doc_id, e.version) for e in _events(first)
        ]
        assert again.positions == first.positions
        assert _confirmed(postgres_db, slot) == created_at, "peeking must not move the slot"

        source.acknowledge(first)
        position = int(first.positions[f"postgres:{slot}"])
        assert _confirmed(postgres_db, slot) == position == source.confirmed_lsn()
        assert source.lag_bytes() < behind
        assert source.poll(POLICY) is None
        _sql(postgres_db, "UPDATE articles SET body = 'body 1, new' WHERE id = 1")
        following = _events(source.poll(POLICY))
        assert [(e.doc_id, e.text) for e in following] == [("1", "body 1, new")]
        assert following[0].version > position
        # A repeated acknowledge (a replayed batch) never moves the slot backwards.
        source.acknowledge(first)
        assert _confirmed(postgres_db, slot) == position
    finally:
        source.close()


@pytest.mark.postgres
def test_a_lost_connection_is_transient_and_the_next_poll_reconnects(postgres_db: str) -> None:
    _sql(postgres_db, ARTICLES)
    slot = _slot()
    source = _started(_config(postgres_db, slot))
    try:
        _sql(
            postgres_db,
            "INSERT INTO articles (id, body) VALUES (1, 'one')",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = '{cdc.APPLICATION_NAME}' AND datname = current_database()",
        )
        with pytest.raises(cdc.PostgresUnavailable, match="lost the connection"):
            source.poll(POLICY)
        assert [e.doc_id for e in _events(source.poll(POLICY))] == ["1"], "nothing lost: read again"
    finally:
        source.close()


@pytest.mark.postgres
def test_restart_skips_what_the_index_holds(postgres_db: str) -> None:
    _sql(postgres_db, ARTICLES)
    slot = _slot()
    cfg = _config(postgres_db, slot)
    crashed = _started(cfg)
    _sql(
        postgres_db,
        "INSERT INTO articles (id, body) VALUES (1, 'one')",
        "INSERT INTO articles (id, body) VALUES (2, 'two')",
    )
    held = crashed.poll(POLICY)
    assert [e.doc_id for e in _events(held)] == ["1", "2"]
    assert held is not None
    crashed.close()  # the index committed `held`, then the process died before acknowledging it
    unadvanced = _confirmed(postgres_db, slot)
    assert unadvanced < int(held.positions[f"postgres:{slot}"])

    _sql(postgres_db, "INSERT INTO articles (id, body) VALUES (3, 'three')")
    resumed = _started(cfg, dict(held.positions))
    try:
        batch = resumed.poll(POLICY)
        assert [e.doc_id for e in _events(batch)] == ["3"], "what the index holds is skipped"
        assert batch is not None
        resumed.acknowledge(batch)
        assert _confirmed(postgres_db, slot) == int(batch.positions[f"postgres:{slot}"])
    finally:
        resumed.close()

    # Resumed beyond everything the slot holds: nothing is delivered, and the slot catches up.
    _sql(postgres_db, "INSERT INTO articles (id, body) VALUES (4, 'four')")
    ahead = _started(cfg, {f"postgres:{slot}": str(1 << 40)})
    try:
        assert ahead.poll(POLICY) is None
        assert _confirmed(postgres_db, slot) > int(batch.positions[f"postgres:{slot}"])
    finally:
        ahead.close()
    with pytest.raises(ConfigError, match="expected an LSN"):
        _started(cfg, {f"postgres:{slot}": "0/1929AA8"})


@pytest.mark.postgres
def test_transactions_stay_whole_and_a_row_keeps_its_last_change(postgres_db: str) -> None:
    _sql(postgres_db, ARTICLES)
    slot = _slot()
    source = _started(_config(postgres_db, slot))
    try:
        _txn(
            postgres_db,
            "INSERT INTO articles (id, body) VALUES (1, 'draft')",
            "UPDATE articles SET body = 'final' WHERE id = 1",
            "INSERT INTO articles (id, body) VALUES (2, 'two')",
            "DELETE FROM articles WHERE id = 2",
            "INSERT INTO articles (id, body) VALUES (2, 'two again')",
            "INSERT INTO articles (id, body) VALUES (3, 'three')",
        )
        _sql(
            postgres_db,
            "UPDATE articles SET id = 30 WHERE id = 3",
            "INSERT INTO articles (id, body) VALUES (4, 'four')",
            "INSERT INTO articles (id, body) VALUES (5, 'five')",
        )
        small = BatchPolicy(max_records=2, max_wait_s=0.0, poll_s=0.5)
        first = source.poll(small)
        # One transaction of three documents is never split, even past max_records.
        assert sorted((e.doc_id, e.op, e.text) for e in _events(first)) == [
            ("1", "upsert", "final"),
            ("2", "upsert", "two again"),
            ("3", "upsert", "three"),
        ]
        assert first is not None
        source.acknowledge(first)
        second = source.poll(small)
        moved = _events(second)
        assert [(e.doc_id, e.op) for e in moved] == [("3", "delete"), ("30", "upsert")]
        assert moved[0].version == moved[1].version and moved[0].metadata["moved_to"] == "30"
        assert second is not None
        source.acknowledge(second)
        assert [e.doc_id for e in _events(source.poll(small))] == ["4", "5"]
    finally:
        source.close()


@pytest.mark.postgres
def test_truncate_and_bad_rows_are_dead_letters_and_the_rest_is_delivered(postgres_db: str) -> None:
    _sql(
        postgres_db,
        ARTICLES,
        "CREATE TABLE counters (id int PRIMARY KEY, n int)",
        "CREATE TABLE slugged (id int PRIMARY KEY, slug text, body text)",
        "CREATE TABLE unmapped (id int PRIMARY KEY, body text)",
    )
    slot = _slot()
    mappings = {
        "articles": TableMapping(text_column="body", title_column="title"),
        "public.counters": TableMapping(text_column="n"),
        "slugged": TableMapping(id_columns=("slug",), text_column="body"),
    }
    source = _started(
        PostgresCdcConfig(postgres_db, slot=slot, mappings=mappings, tables=(), create_slot=True)
    )
    try:
        _sql(
            postgres_db,
            "INSERT INTO articles (id, body) VALUES (1, 'good one')",
            "INSERT INTO articles (id, body) VALUES (2, NULL)",
            "INSERT INTO counters VALUES (1, 42)",
            "INSERT INTO slugged VALUES (1, NULL, 'no slug')",
            "INSERT INTO slugged VALUES (2, 'kept', 'has a slug')",
            "DELETE FROM slugged WHERE id = 2",
            "INSERT INTO unmapped VALUES (1, 'nobody maps me')",
            "INSERT INTO articles (id, title, body) VALUES (3, 'T', 'good three')",
            "TRUNCATE counters",
        )
        batch = source.poll(POLICY)
        assert batch is not None
        assert [(e.doc_id, e.op) for e in _events(batch)] == [
            ("1", "upsert"),
            ("kept", "upsert"),
            ("3", "upsert"),
        ]
        letters = {(letter.reason, letter.doc_id): letter for letter in _letters(batch)}
        assert set(letters) == {
            ("missing_text", "2"),
            ("wrong_type", "1"),
            ("missing_id", None),
            ("unknown_table", None),
            ("unsupported_op", None),
        }
        assert len(_letters(batch)) == 6, "two missing_id: a null slug, and a delete without the slug"
        truncate = letters[("unsupported_op", None)]
        assert "public.counters" in truncate.detail and json.loads(truncate.raw)["action"] == "T"
        assert "public.unmapped" in letters[("unknown_table", None)].detail
        missing = [letter for letter in _letters(batch) if letter.reason == "missing_id"]
        assert any("REPLICA IDENTITY" in letter.detail for letter in missing)
        for letter in _letters(batch):
            raw = json.loads(letter.raw)
            assert raw["action"] in "IUDT" and letter.stage == "decode"
            assert (
                letter.source.key == f"postgres:{slot}"
                and letter.source.position == f"lsn:{parse_lsn(raw['lsn'])}"
            )
    finally:
        source.close()


@pytest.mark.postgres
def test_unchanged_toasted_text_needs_replica_identity_full(postgres_db: str) -> None:
    _sql(
        postgres_db,
        ARTICLES,
        "ALTER TABLE articles ALTER COLUMN body SET STORAGE EXTERNAL",  # out of line, uncompressed
    )
    slot = _slot()
    source = _started(_config(postgres_db, slot))
    long_body = "lorem ipsum " * 2000
    try:
        _sql(
            postgres_db,
            f"INSERT INTO articles (id, title, body) VALUES (1, 'a', '{long_body}')",
            "UPDATE articles SET title = 'b' WHERE id = 1",
        )
        batch = source.poll(POLICY)
        assert [e.text == long_body for e in _events(batch)] == [True]
        (letter,) = _letters(batch)
        assert letter.reason == "missing_text" and "REPLICA IDENTITY FULL" in letter.detail
        assert batch is not None
        source.acknowledge(batch)

        _sql(
            postgres_db,
            "ALTER TABLE articles REPLICA IDENTITY FULL",
            "UPDATE articles SET title = 'c' WHERE id = 1",
        )
        (event,) = _events(source.poll(POLICY))
        assert (event.title, event.text) == ("c", long_body)
    finally:
        source.close()


@pytest.mark.postgres
def test_configuration_errors_are_clear(
    postgres_server: Any, postgres_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.postgres_server import dsn_for, free_port

    mapping = {"articles": TableMapping(text_column="body")}
    closed = free_port()
    with pytest.raises(ConfigError) as refused:
        _started(PostgresCdcConfig(dsn_for(closed, "hunter2-secret"), mappings=mapping))
    assert f"127.0.0.1:{closed}" in str(refused.value) and "hunter2-secret" not in str(refused.value)

    wrong = dsn_for(postgres_server.port, "not-the-password-xyz")
    with pytest.raises(ConfigError) as denied:
        _started(PostgresCdcConfig(wrong, mappings=mapping))
    message = str(denied.value)
    assert f"127.0.0.1:{postgres_server.port}" in message and "not-the-password-xyz" not in message
    assert "password authentication failed" in message

    with pytest.raises(ConfigError, match="does not exist.*create_slot = true"):
        _started(PostgresCdcConfig(postgres_db, slot=_slot(), mappings=mapping))

    monkeypatch.setattr(cdc, "PLUGIN", "wal2json_not_installed")
    with pytest.raises(ConfigError, match=r"not installed.*apt-get install postgresql-15-wal2json"):
        _started(PostgresCdcConfig(postgres_db, slot=_slot(), mappings=mapping, create_slot=True))
    monkeypatch.undo()

    other = _slot()
    _sql(postgres_db, f"SELECT pg_create_logical_replication_slot('{other}', 'test_decoding')")
    with pytest.raises(ConfigError, match="decodes with 'test_decoding', not 'wal2json'"):
        _started(PostgresCdcConfig(postgres_db, slot=other, mappings=mapping))


@pytest.mark.postgres
def test_wal_level_must_be_logical(postgres_server: Any) -> None:
    from tests.postgres_server import run_postgres

    with run_postgres(wal_level="replica") as replica:
        cfg = PostgresCdcConfig(replica.dsn, mappings={"articles": TableMapping()}, create_slot=True)
        with pytest.raises(ConfigError, match="wal_level is 'replica'.*wal_level = logical"):
            _started(cfg)


# --- end to end --------------------------------------------------------------------------------------


def _drain(stream: MicroBatchStream, limit: int = 10) -> list[dict[str, Any]]:
    summaries = []
    for _ in range(limit):
        summary = stream.run_once()
        if summary is None:
            return summaries
        summaries.append(summary)
    raise AssertionError("the stream kept producing batches")


@pytest.mark.postgres
@pytest.mark.model
def test_stream_into_the_hot_tier_and_acknowledge_after_the_commit(postgres_db: str, tmp_path: Path) -> None:
    docs = demo_docs()[:6]
    _sql(postgres_db, "CREATE TABLE docs (id text PRIMARY KEY, title text, body text NOT NULL, lang text)")
    slot = _slot()
    cfg = PostgresCdcConfig(
        postgres_db,
        slot=slot,
        mappings={"docs": TableMapping(text_column="body", title_column="title")},
        create_slot=True,
    )
    index_dir = tmp_path / "hot"
    policy = BatchPolicy(max_records=200, max_wait_s=0.2, poll_s=0.5)
    key = f"postgres:{slot}"

    def stream() -> MicroBatchStream:
        return MicroBatchStream(PostgresCdcSource(cfg), config(index_dir, write_shards=1), policy)

    first = stream()
    first.start()  # creates the slot: changes from here on are followed
    with psycopg.connect(postgres_db) as conn:
        for doc in docs:
            conn.execute(
                "INSERT INTO docs VALUES (%s, %s, %s, 'en')", (doc["_id"], doc["title"], doc["text"])
            )
    assert len(_drain(first)) == 1
    assert set(live_docs(index_dir)) == {d["_id"] for d in docs}
    manifest = HotIndex(index_dir).manifest()
    assert _confirmed(postgres_db, slot) == int(manifest.sources[key])
    before = live_vectors(index_dir)
    commits = len(manifest.history)

    # An update and a delete; the update's new text is searchable, only it is re-embedded.
    _sql(
        postgres_db,
        f"UPDATE docs SET body = 'Logical replication slots keep WAL until confirmed. Revised.' "
        f"WHERE id = '{docs[0]['_id']}'",
        f"UPDATE docs SET lang = 'de' WHERE id = '{docs[2]['_id']}'",  # metadata only: same content
        f"DELETE FROM docs WHERE id = '{docs[1]['_id']}'",
    )
    _drain(first)
    first.source.close()
    state = live_docs(index_dir)
    assert docs[1]["_id"] not in state and set(state) == {d["_id"] for d in docs} - {docs[1]["_id"]}
    after = live_vectors(index_dir)
    assert any("Revised." in text for text in after.values())
    assert len(after) == len(before) - 1
    manifest = HotIndex(index_dir).manifest()
    assert sum(h["counts"].get("chunks_embedded", 0) for h in manifest.history[commits:]) == 1
    assert _confirmed(postgres_db, slot) == int(manifest.sources[key])
    assert top_doc(index_dir, "replication slots keep WAL until confirmed", config(index_dir), k=1) == [
        docs[0]["_id"]
    ]

    # A crash after the index commit, before the slot advance: the restart resumes from the manifest,
    # applies nothing twice, and the slot catches up.
    _sql(
        postgres_db, f"UPDATE docs SET body = 'Crash-safe CDC. Revised twice.' WHERE id = '{docs[3]['_id']}'"
    )
    crashing = stream()

    def crash(batch: Batch) -> None:
        raise RuntimeError("crashed before the slot advance")

    crashing.source.acknowledge = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="crashed before the slot advance"):
        crashing.run_once()
    crashing.source.close()
    manifest = HotIndex(index_dir).manifest()
    assert _confirmed(postgres_db, slot) < int(manifest.sources[key])
    commits = len(manifest.history)
    restarted = stream()
    assert _drain(restarted) == []
    restarted.source.close()
    manifest = HotIndex(index_dir).manifest()
    assert len(manifest.history) == commits, "nothing re-applied"
    assert _confirmed(postgres_db, slot) == int(manifest.sources[key])
