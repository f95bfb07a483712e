"""Property tests (hypothesis) over every parser, and the atheris fuzz harness in its short mode.

Each parser gets random bytes, structurally valid JSON (or TOML, or environment variables) with wrong
types and missing fields, and valid messages that must come back unchanged. The contract checked is the
harness's (:mod:`tests.harness.fuzz`): well-formed events, or a rejection with a documented reason that
lands in the dead-letter sink with its raw input; valid documents sent around a bad one are never lost.
Examples are derandomized, so CI sees the same ones on every run. Release checks run the harness long:
``python -m tests.harness.fuzz --target all --runs 200000``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import fuzz
from tests.harness.fuzz import Outcome, Target

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Target]]:
    root = tmp_path_factory.mktemp("fuzz-targets")
    made = {name: fuzz.make_target(name, root / name) for name in fuzz.TARGETS}
    for target in made.values():
        target.setup()
    yield made


def _holds(target: Target, data: bytes) -> Outcome:
    """The target's outcome; a broken contract or a stray exception fails the test with the input."""
    outcome = target.check(data)
    assert outcome.lost == 0, f"valid documents lost around {data[:200]!r}"
    return outcome


# --- strategies ------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


def objects_with(names: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects whose keys are mostly the contract's field names, with values of any type."""
    return st.dictionaries(st.sampled_from(names) | st.text(max_size=6), json_values, max_size=len(names) + 2)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


texts = st.text(max_size=40)
ids = st.text(min_size=1, max_size=20).filter(lambda s: s.strip() != "")
finite = st.floats(allow_nan=False, allow_infinity=False)
metadata = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        st.none() | st.booleans() | st.integers() | finite | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
        ),
        max_leaves=6,
    ),
    max_size=4,
)


# --- random bytes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", fuzz.TARGETS)
@PROPERTY
@given(data=st.binary(max_size=600))
def test_random_bytes_keep_the_contract(targets: dict[str, Target], name: str, data: bytes) -> None:
    _holds(targets[name], data)


@pytest.mark.parametrize("name", fuzz.TARGETS)
def test_every_seed_keeps_the_contract(targets: dict[str, Target], name: str) -> None:
    target = targets[name]
    outcomes = [_holds(target, seed) for seed in target.seeds()]
    assert any(o.events for o in outcomes) and any(o.reasons for o in outcomes)


# --- structurally valid JSON, wrong types, missing fields ----------------------------------------------

KAFKA_FIELDS = ("op", "text", "title", "metadata", "version", "event_time")


@PROPERTY
@given(record=objects_with(KAFKA_FIELDS), key=st.binary(max_size=8))
def test_kafka_wrong_types_are_rejected_with_reasons(
    targets: dict[str, Target], record: dict[str, Any], key: bytes
) -> None:
    from connectors.kafka_documents import REASONS, decode_message
    from tierflow.deadletter import DeadLetter

    value = _dumps(record)
    result = decode_message("docs", 0, 3, key, value, 1_000)
    if isinstance(result, DeadLetter):
        assert result.reason in REASONS and result.raw == value
    _holds(targets["kafka"], fuzz.kafka_input(key, value))


ROW_COLUMNS = ("id", "text", "title", "summary", "lang", "part", "email", "first_name")
SOURCE_FIELDS = ("connector", "lsn", "file", "pos", "ts_ms", "ts_sec", "db", "schema", "table")


@st.composite
def debezium_records(draw: st.DrawFn) -> tuple[bytes, bytes, int]:
    payload = draw(
        st.fixed_dictionaries(
            {"op": st.sampled_from(["c", "u", "r", "d", "m", "t", "x"]) | json_values},
            optional={
                "after": objects_with(ROW_COLUMNS) | json_values,
                "before": objects_with(ROW_COLUMNS) | json_values,
                "source": objects_with(SOURCE_FIELDS) | json_values,
                "ts_ms": json_values,
            },
        )
    )
    value = {"schema": {}, "payload": payload} if draw(st.booleans()) else payload
    key = draw(st.none() | objects_with(("id", "part")).map(_dumps) | st.binary(max_size=6))
    return key, _dumps(value), draw(st.integers(0, 3))


@PROPERTY
@given(record=debezium_records())
def test_debezium_wrong_types_are_rejected_with_reasons(
    targets: dict[str, Target], record: tuple[bytes, bytes, int]
) -> None:
    key, value, mapping = record
    _holds(targets["debezium"], fuzz.debezium_input(key, value, mapping))


column = st.fixed_dictionaries(
    {"name": st.sampled_from(["id", "rev", "body", "summary", "title", "lang"]) | json_values},
    optional={"type": st.just("text"), "value": json_values},
)
wal2json_rows = st.fixed_dictionaries(
    {"action": st.sampled_from(list("IUDTMBCX")) | json_values},
    optional={
        "schema": st.just("public") | json_values,
        "table": st.sampled_from(["articles", "notes"]) | json_values,
        "columns": st.lists(column, max_size=5) | json_values,
        "identity": st.lists(column, max_size=3) | json_values,
        "pk": st.lists(column, max_size=2) | json_values,
        "xid": json_values,
        "timestamp": st.just("2024-05-01 12:00:00+00") | json_values,
    },
)


@PROPERTY
@given(rows=st.lists(wal2json_rows, min_size=1, max_size=4), config=st.integers(0, 3))
def test_wal2json_wrong_types_are_rejected_with_reasons(
    targets: dict[str, Target], rows: list[dict[str, Any]], config: int
) -> None:
    lines = [json.dumps(row) for row in rows]
    _holds(targets["wal2json"], fuzz.wal2json_input(lines, config))


WEBHOOK_FIELDS = ("doc_id", "op", "text", "title", "metadata", "version", "event_time")


@PROPERTY
@given(body=objects_with(WEBHOOK_FIELDS) | json_values, chunked=st.booleans())
def test_webhook_wrong_types_are_rejected_with_reasons(
    targets: dict[str, Target], body: Any, chunked: bool
) -> None:
    outcome = _holds(targets["webhook"], fuzz.webhook_input(_dumps(body), chunked=chunked))
    assert outcome.events + len(outcome.reasons) == 1


FILE_FIELDS = ("_id", "id", "text", "title", "op", "updated_at", "v", "lang", "metadata")


@PROPERTY
@given(
    records=st.lists(objects_with(FILE_FIELDS) | json_values, min_size=1, max_size=4),
    variant=st.sampled_from([0, 1, 2, 5, 7]),
)
def test_file_records_with_wrong_types_are_rejected_with_reasons(
    targets: dict[str, Target], records: list[Any], variant: int
) -> None:
    lines = b"\n".join(_dumps(record) for record in records)
    outcome = _holds(targets["files"], fuzz.files_input(lines, variant))
    assert outcome.events + len(outcome.reasons) == len(records)


SETTINGS = {
    "": ("index_dir", "sync", "write_shards"),
    "chunking": ("max_tokens", "overlap_tokens", "include_title"),
    "dedup": ("near_duplicates", "threshold", "num_perm", "bands", "shingle_words"),
    "embedding": ("device", "batch_size", "normalize", "model_path"),
    "index": ("type",),
    "webhook": ("port", "secrets", "tolerance_s", "max_body_bytes", "name"),
    "kafka": ("bootstrap_servers", "topics", "group_id", "dead_letter_topic", "max_message_bytes"),
    "postgres": ("dsn", "slot", "tables", "create_slot", "mappings"),
    "cold": ("uri", "vector_dtype", "index", "nprobes"),
    "lifecycle": ("cold_after", "ttl", "age_from", "hot_max_bytes", "promote_hits"),
}
toml_scalars = st.integers() | st.floats() | st.booleans() | st.text(max_size=10)
toml_values = toml_scalars | st.lists(toml_scalars, max_size=3)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # inf, nan and 1e+16 are TOML too
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


@st.composite
def toml_files(draw: st.DrawFn) -> str:
    lines = []
    for section in draw(st.lists(st.sampled_from(sorted(SETTINGS)), unique=True, max_size=4)):
        if section:
            lines.append(f"[{section}]")
        names = st.sampled_from(SETTINGS[section]) | st.from_regex(r"[a-z_]{1,8}", fullmatch=True)
        for name, value in draw(st.dictionaries(names, toml_values, max_size=4)).items():
            lines.append(f"{name} = {_toml(value)}")
    return "\n".join(lines) + "\n"


@PROPERTY
@given(text=toml_files(), section=st.integers(0, 6))
def test_config_files_with_wrong_types_are_config_errors(
    targets: dict[str, Target], text: str, section: int
) -> None:
    _holds(targets["config"], fuzz.config_input(text.encode("utf-8", "surrogatepass"), section))


env_names = st.sampled_from([f"{s}__{k}".strip("_").upper() for s, keys in SETTINGS.items() for k in keys])


@PROPERTY
@given(
    variables=st.dictionaries(
        env_names | st.from_regex(r"[A-Z_]{1,12}", fullmatch=True), st.text(max_size=12), max_size=5
    ),
    section=st.integers(0, 6),
)
def test_config_variables_with_wrong_types_are_config_errors(
    targets: dict[str, Target], variables: dict[str, str], section: int
) -> None:
    lines = "\n".join(f"{name}={value}" for name, value in variables.items() if "\n" not in value)
    _holds(targets["config"], fuzz.config_input(lines.encode("utf-8", "surrogateescape"), section, env=True))


# --- valid messages round-trip -------------------------------------------------------------------------


@PROPERTY
@given(
    doc_id=ids,
    text=texts,
    title=texts,
    meta=metadata,
    version=st.none() | st.integers(0, (1 << 63) - 1),
    event_time=st.none() | finite,
    op=st.sampled_from(["upsert", "delete"]),
)
def test_kafka_documents_round_trip(
    doc_id: str,
    text: str,
    title: str,
    meta: dict[str, Any],
    version: int | None,
    event_time: float | None,
    op: str,
) -> None:
    from connectors.kafka_documents import decode_message, encode_document

    key, value = encode_document(doc_id, text, title, meta, version, event_time, op)
    event = decode_message("docs", 2, 77, key, value, 5_000, headers={"content-type": b"application/json"})
    upsert = op == "upsert"
    assert (event.doc_id, event.op, event.text, event.title) == (
        doc_id,
        op,
        text if upsert else "",
        title if upsert else "",
    )
    assert event.metadata == (meta if upsert else {})
    assert event.version == (77 if version is None else version)
    assert event.event_time == (5.0 if event_time is None else event_time)


@PROPERTY
@given(
    row_id=st.integers(-(1 << 40), 1 << 40) | ids,
    text=texts,
    lsn=st.integers(0, (1 << 62) - 1),
    op=st.sampled_from(["c", "u", "r", "d"]),
    enveloped=st.booleans(),
)
def test_debezium_changes_round_trip(
    row_id: int | str, text: str, lsn: int, op: str, enveloped: bool
) -> None:
    from connectors.debezium import DebeziumMapping, decode_change
    from tierflow.records import SourcePosition

    row = {"id": row_id, "text": text, "lang": "en"}
    payload: dict[str, Any] = {
        "op": op,
        "source": {"connector": "postgresql", "lsn": lsn, "ts_ms": 1_700_000_000_000},
    }
    payload["before" if op == "d" else "after"] = row
    value = {"schema": {"type": "struct"}, "payload": payload} if enveloped else payload
    key = json.dumps({"schema": None, "payload": {"id": row_id}} if enveloped else {"id": row_id}).encode()
    event = decode_change(key, _dumps(value), SourcePosition("kafka", "t/0", "9"), DebeziumMapping())
    assert event is not None and not hasattr(event, "reason")
    assert (event.doc_id, event.op) == (str(row_id), "delete" if op == "d" else "upsert")
    assert event.text == ("" if op == "d" else text)
    assert event.version == 2 * lsn + (0 if op == "r" else 1)
    assert event.event_time == 1_700_000_000.0


@PROPERTY
@given(
    row_id=st.integers(0, 1 << 40) | ids,
    body=texts,
    title=st.none() | texts,
    commit_lsn=st.integers(1, (1 << 63) - 1),
    action=st.sampled_from(["I", "U", "D"]),
)
def test_wal2json_changes_round_trip(
    row_id: int | str, body: str, title: str | None, commit_lsn: int, action: str
) -> None:
    from connectors import postgres_cdc as cdc

    config = cdc.PostgresCdcConfig(
        "host=db", slot="s", mappings={"articles": cdc.TableMapping(text_column="body", title_column="title")}
    )
    values = {"id": row_id, "body": body, "title": title}
    entries = [{"name": k, "type": "text", "value": v} for k, v in values.items()]
    change: dict[str, Any] = {
        "action": action,
        "schema": "public",
        "table": "articles",
        "pk": [{"name": "id", "type": "int"}],
    }
    change["identity" if action == "D" else "columns"] = entries[:1] if action == "D" else entries
    txn = cdc.Transaction(commit_lsn, 1714564800.0, 5, [cdc.Change(commit_lsn - 1, json.dumps(change))])
    (event,) = cdc.decode_transaction(txn, config)
    assert (event.doc_id, event.version, event.event_time) == (str(row_id), commit_lsn, 1714564800.0)
    if action == "D":
        assert event.op == "delete" and event.text == ""
    else:
        assert (event.op, event.text, event.title) == ("upsert", body, title or "")
        assert event.metadata == {
            "table": "public.articles",
            "op": {"I": "insert", "U": "update"}[action],
            "xid": 5,
        }


@PROPERTY
@given(
    doc_id=ids | st.integers(0, 1 << 40),
    text=texts,
    title=texts,
    meta=metadata,
    version=st.integers(-(1 << 63), (1 << 63) - 1),
    op=st.sampled_from(["upsert", "delete"]),
)
def test_webhook_deliveries_round_trip(
    targets: dict[str, Target],
    doc_id: str | int,
    text: str,
    title: str,
    meta: dict[str, Any],
    version: int,
    op: str,
) -> None:
    from connectors.webhooks import parse_event, sign, verify

    body = _dumps(
        {"doc_id": doc_id, "op": op, "text": text, "title": title, "metadata": meta, "version": version}
    )
    now = int(time.time())
    headers = {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(now),
        "Webhook-Signature": sign(fuzz.WEBHOOK_SECRET, "msg_1", now, body),
    }
    assert verify([fuzz.WEBHOOK_SECRET], headers, body, now) == "msg_1"
    event = parse_event(body, "msg_1", timestamp=now)
    upsert = op == "upsert"
    assert (event.doc_id, event.op, event.version) == (str(doc_id), op, version)
    assert (event.text, event.title) == ((text, title) if upsert else ("", ""))
    assert event.metadata == meta and event.event_time == float(now)
    assert _holds(targets["webhook"], fuzz.webhook_input(body)).events == 1


@PROPERTY
@given(
    docs=st.lists(
        st.tuples(ids, texts, texts, st.integers(0, 1 << 62)),
        min_size=1,
        max_size=6,
        unique_by=lambda d: d[0],
    ),
    split_bytes=st.integers(1, 200),
)
def test_jsonl_files_round_trip_across_splits(
    tmp_path_factory: pytest.TempPathFactory, docs: list[tuple[str, str, str, int]], split_bytes: int
) -> None:
    from connectors.files import FileSourceConfig, plan_splits, read_split

    path = tmp_path_factory.getbasetemp() / "round-trip.jsonl"
    lines = [{"id": d, "text": t, "title": ti, "updated_at": v, "lang": "en"} for d, t, ti, v in docs]
    path.write_bytes(b"\n".join(_dumps(line) for line in lines) + b"\n")
    config = FileSourceConfig(str(path), id_field="id", version_field="updated_at", split_bytes=split_bytes)
    events = [e for split in plan_splits(config) for e in read_split(split)]
    assert [(e.doc_id, e.text, e.title, e.version, e.metadata) for e in events] == [
        (d, t, ti, v, {"lang": "en"}) for d, t, ti, v in docs
    ]


@PROPERTY
@given(
    max_tokens=st.integers(16, 4096),
    overlap=st.floats(0, 0.49),
    bands=st.integers(1, 16),
    rows=st.integers(1, 8),
    threshold=st.floats(0.01, 1.0),
    sync=st.sampled_from(["incremental", "full"]),
    index_dir=st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), min_size=1, max_size=20),
    via_env=st.booleans(),
)
def test_valid_settings_round_trip(
    tmp_path_factory: pytest.TempPathFactory,
    max_tokens: int,
    overlap: float,
    bands: int,
    rows: int,
    threshold: float,
    sync: str,
    index_dir: str,
    via_env: bool,
) -> None:
    from tierflow.config import IngestConfig, load_settings

    overlap_tokens = int(overlap * (max_tokens // 2))
    values = {
        "CHUNKING__MAX_TOKENS": max_tokens,
        "CHUNKING__OVERLAP_TOKENS": overlap_tokens,
        "DEDUP__BANDS": bands,
        "DEDUP__NUM_PERM": bands * rows,
        "DEDUP__THRESHOLD": threshold,
        "SYNC": sync,
        "INDEX_DIR": index_dir,
    }
    path = tmp_path_factory.getbasetemp() / "round-trip.toml"
    if via_env:
        path.write_text("")
        environ = {
            f"TIERFLOW__{k}": str(v) if not isinstance(v, float) else repr(v) for k, v in values.items()
        }
    else:
        sections: dict[str, list[str]] = {}
        for name, value in values.items():
            section, _, key = name.lower().rpartition("__")
            sections.setdefault(section, []).append(f"{key} = {_toml(value)}")
        text = (
            "\n".join(sections.pop(""))
            + "\n"
            + "".join(f"[{s}]\n" + "\n".join(v) + "\n" for s, v in sections.items())
        )
        path.write_text(text, encoding="utf-8")
        environ = {}
    config = load_settings(IngestConfig, None, path, None, environ)
    assert (config.chunking.max_tokens, config.chunking.overlap_tokens) == (max_tokens, overlap_tokens)
    assert (config.dedup.bands, config.dedup.num_perm, config.dedup.threshold) == (
        bands,
        bands * rows,
        threshold,
    )
    assert (config.sync, config.index_dir) == (sync, index_dir)


# --- regressions: inputs that crashed or hung a parser before the fuzzers found them ------------------


@pytest.mark.parametrize("path", sorted(fuzz.REGRESSIONS.glob("*-*")), ids=lambda path: path.name)
def test_saved_fuzz_findings_stay_fixed(targets: dict[str, Target], path: Path) -> None:
    _holds(targets[path.name.split("-")[0]], path.read_bytes())


DIGITS = b"9" * 5000  # past int()'s 4300-digit limit: json.loads raised a bare ValueError


def _nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


@pytest.mark.parametrize(
    "value,reason",
    [
        (b'{"text": "a", "version": ' + DIGITS + b"}", "malformed_json"),
        (b'{"text": "a", "event_time": 1' + b"0" * 400 + b"}", "wrong_type"),  # math.isfinite overflowed
        (
            b'{"text": "a", "metadata": {"x": 1e999}}',
            "malformed_json",
        ),  # Infinity, which the contract refuses
        (b'{"text": "a", "metadata": {"x": ' + _nested(700) + b', "y": "\\ud800"}}', "not_utf8"),  # recursion
    ],
)
def test_kafka_regressions(value: bytes, reason: str) -> None:
    from connectors.kafka_documents import decode_message

    letter = decode_message("docs", 0, 1, b"doc", value, 0)
    assert letter.reason == reason and letter.detail


@pytest.mark.parametrize(
    "value,reason",
    [
        (b'{"op": "c", "after": {"id": 1, "text": ' + DIGITS + b"}}", "malformed_json"),
        (b'{"op": "c", "after": {"id": 1, "text": "a"}, "source": {"lsn": "' + DIGITS + b'"}}', "wrong_type"),
        (
            b'{"op": "c", "after": {"id": 1, "text": "a"}, "source": {"file": "b.'
            + DIGITS
            + b'", "pos": 4}}',
            "wrong_type",
        ),
        (b'{"op": "d", "before": {"id": 1}, "source": {"ts_ms": 1' + b"0" * 400 + b"}}", "wrong_type"),
        (
            b'{"op": "c", "after": {"id": 1, "text": "a"}, "ts_ms": 10000000000000000000}',
            "wrong_type",
        ),  # > int64
        (b'{"op": "c", "after": {"id": 1, "m": ' + _nested(700) + b', "text": "\\udc00"}}', "not_utf8"),
    ],
)
def test_debezium_regressions(value: bytes, reason: str) -> None:
    from connectors.debezium import DebeziumMapping, decode_change
    from tierflow.records import SourcePosition

    letter = decode_change(b'{"id": 1}', value, SourcePosition("kafka", "t/0", "1"), DebeziumMapping())
    assert letter is not None and letter.reason == reason


def test_wal2json_regressions() -> None:
    from connectors import postgres_cdc as cdc

    config = cdc.PostgresCdcConfig(
        "host=db", slot="s", mappings={"articles": cdc.TableMapping(text_column="body")}
    )
    rows = [
        _nested(100_000).decode(),  # RecursionError in _action (group_transactions) and in decoding
        '{"action": "I", "xid": ' + DIGITS.decode() + "}",
        '{"action":"I","schema":"public","table":"articles","columns":[{"name":"id","type":"int","value":1},'
        '{"name":"body","type":"text","value":"x"},{"name":"doc","type":"json","value":{"a":"\\ud800"}}],'
        '"pk":[{"name":"id","type":"int"}]}',
        '{"action": ["I"], "table": "articles"}',  # a list is unhashable: `in _OPS` raised TypeError
    ]
    changes = [cdc.Change(1, '{"action":"B","xid":5}'), *(cdc.Change(2 + i, r) for i, r in enumerate(rows))]
    (txn,) = cdc.group_transactions([*changes, cdc.Change(9, '{"action":"C","xid":5}')])
    letters = cdc.decode_transaction(txn, config)
    assert [letter.reason for letter in letters] == [
        "malformed_json",
        "malformed_json",
        "not_utf8",
        "unknown_op",
    ]


@pytest.mark.parametrize(
    "head,body,status,reason",
    [
        (b"Content-Length: \xb2", b"xx", 400, "bad_framing"),  # '²'.isdigit(), but int('²') raised
        (b"Content-Length: \xb2\r\nExpect: 100-continue", b"xx", 400, "bad_framing"),
        (b"Content-Length: 1" + b"0" * 5000, b"x", 413, "too_large"),  # int() refused 5000 digits
        (b"Content-Length: 0000000000000000000000000000004", b"abcd", 401, "missing_headers"),
    ],
)
def test_webhook_framing_regressions(
    targets: dict[str, Target], head: bytes, body: bytes, status: int, reason: str
) -> None:
    target = targets["webhook"]
    assert isinstance(target, fuzz.WebhookTarget)
    from connectors.webhooks import WebhookReceiver

    letters: list[Any] = []
    receiver = WebhookReceiver(target.configs[False], sink=fuzz._MemorySink(), dead_letters=letters.append)
    answer = target._deliver(receiver, head, body)
    assert answer is not None and answer[0] == status and answer[1]["error"] == reason
    assert [letter.reason for letter in letters] == [reason]


@pytest.mark.parametrize(
    "body,reason",
    [
        (b'{"doc_id": "d", "version": ' + DIGITS + b"}", "malformed_json"),
        (b'{"doc_id": "d", "version": 9223372036854775808}', "wrong_type"),  # 2**63 does not fit the index
        (b'{"doc_id": "d", "version": 1, "event_time": 1' + b"0" * 400 + b"}", "wrong_type"),
        (b'{"doc_id": "d", "version": 1, "x": ' + _nested(700) + b', "y": "\\ud800"}', "not_utf8"),
    ],
)
def test_webhook_body_regressions(targets: dict[str, Target], body: bytes, reason: str) -> None:
    from connectors.webhooks import WebhookRejected, parse_event

    with pytest.raises(WebhookRejected) as rejected:
        parse_event(body, "msg_1")
    assert rejected.value.reason == reason and rejected.value.status == 400
    assert _holds(targets["webhook"], fuzz.webhook_input(body)).reasons == [reason]


@pytest.mark.parametrize(
    "line,reason",
    [
        (b'{"_id": "a", "v": 1e300}', "wrong_type"),  # round(inf) raised OverflowError
        (b'{"_id": "a", "v": 1e10}', "wrong_type"),  # 1e19 ns does not fit the index's int64
        (b'{"_id": "a", "v": 9223372036854775808}', "wrong_type"),
        (b'{"_id": "a", "v": "9999-12-31"}', "wrong_type"),
        (b'{"_id": "a", "v": ' + DIGITS + b"}", "malformed_json"),
        (b'{"_id": "a", "x": ' + _nested(700) + b', "y": "\\ud800"}', "not_utf8"),
    ],
)
def test_file_record_regressions(targets: dict[str, Target], line: bytes, reason: str) -> None:
    assert _holds(targets["files"], fuzz.files_input(line, 7)).reasons == [reason]


def test_markdown_title_of_a_long_blank_run_is_linear(tmp_path: Path) -> None:
    from connectors.files import FileSourceConfig, plan_splits, read_split

    path = tmp_path / "page.md"
    path.write_text("# a" + " " * 200_000 + "b\n\n# Title #\n")  # the old regex took minutes here
    start = time.monotonic()
    (event,) = [e for split in plan_splits(FileSourceConfig(str(path))) for e in read_split(split)]
    assert time.monotonic() - start < 5.0
    assert event.title == "a" + " " * 200_000 + "b"


def test_a_long_line_is_read_once_across_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors import objectstore
    from connectors.files import FileSourceConfig, plan_splits, read_split

    path = tmp_path / "one-line.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "' + b"x" * (8 << 20) + b'"}\n{"_id": "b", "text": "y"}\n')
    read: list[int] = []
    original = objectstore.LocalStore.read

    def counting(self: Any, uri: str, start: int, end: int) -> bytes:
        data = original(self, uri, start, end)
        read.append(len(data))
        return data

    monkeypatch.setattr(objectstore.LocalStore, "read", counting)
    items = [
        i
        for split in plan_splits(FileSourceConfig(str(path), split_bytes=1 << 20))
        for i in read_split(split)
    ]
    assert [getattr(i, "reason", None) or i.doc_id for i in items] == ["too_large", "b"]
    # every split used to read on to the end of the line it starts inside: quadratic in the line's length
    assert sum(read) < 3 * path.stat().st_size


HEADING = re.compile(r"#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*")  # what _heading replaces, for short lines


@PROPERTY
@given(line=st.text(alphabet="# \t#ab\x0c\u3000", max_size=12))
def test_markdown_heading_matches_the_regex_it_replaced(line: str) -> None:
    from connectors.files import _heading

    stripped = line.strip()
    match = HEADING.fullmatch(stripped)
    assert _heading(stripped) == (match.group(1).strip() if match else None)


@pytest.mark.parametrize(
    "content,environ,cls,message",
    [
        (b"sync = '\xff'\n", {}, "ingest", "not UTF-8"),
        (b"a = " + _nested(5000) + b"\n", {}, "ingest", "nested too deeply"),
        (b"[chunking]\nmax_tokens = inf\n", {}, "ingest", "chunking.max_tokens must be a int"),
        (b"[dedup]\nthreshold = 1" + b"0" * 400 + b"\n", {}, "ingest", "dedup.threshold must be a float"),
        (b"", {"TIERFLOW__INDEX": "x", "TIERFLOW__INDEX__TYPE": "hnsw"}, "ingest", "TIERFLOW__INDEX and"),
        (
            b"",
            {},
            "kafka",
            "missing setting(s) kafka.bootstrap_servers (or TIERFLOW__KAFKA__BOOTSTRAP_SERVERS)",
        ),
    ],
)
def test_config_regressions(
    tmp_path: Path, content: bytes, environ: dict[str, str], cls: str, message: str
) -> None:
    from connectors.kafka_client import KafkaConfig
    from tierflow.config import IngestConfig, load_settings
    from tierflow.errors import ConfigError

    path = tmp_path / "tierflow.toml"
    path.write_bytes(content)
    settings_class, section = (IngestConfig, None) if cls == "ingest" else (KafkaConfig, "kafka")
    with pytest.raises(ConfigError) as err:
        load_settings(settings_class, section, path, None, environ)
    assert message in str(err.value)


def test_expansion_reaches_deep_nesting_and_long_runs() -> None:
    assert fuzz.expand(b"a\xff\x00b\xff") == b"a" + b"b" * 64 + b"\xff"
    assert len(fuzz.expand(b"\xff\xffx" * 100)) == fuzz.EXPAND_LIMIT
    flags, payload = fuzz.split_flags(fuzz.expanded(b"\x00" + fuzz.DEEP))
    assert flags == 0x80 and payload == b"[" * 2048 + b"]" * 2048


# --- the atheris harness in short mode -------------------------------------------------------------------


@pytest.mark.fuzz
def test_fuzz_harness_short_mode_finds_nothing(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    command = [
        sys.executable, "-m", "tests.harness.fuzz", "--target", "all", "--runs", "300", "--seed", "1",
        "--out", str(out), "--workdir", str(tmp_path / "work"), "--artifacts", str(tmp_path / "findings"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=fuzz.REPO, capture_output=True, text=True, timeout=600)
    assert out.exists(), done.stderr[-3000:]
    summary = json.loads(out.read_text())
    details = [f for t in summary["targets"] for f in t["finding_details"]]
    assert summary["findings"] == 0, json.dumps(details, indent=2)[:5000]
    assert summary["documents_lost"] == 0 and done.returncode == 0, done.stdout[-3000:]
    assert [t["target"] for t in summary["targets"]] == list(fuzz.TARGETS)
    for result in summary["targets"]:
        assert result["inputs"] == 300 and result["faults_injected"] == 300 and result["complete"]
        assert result["rejected"] > 0 and sum(result["rejections"].values()) >= result["rejected"]
