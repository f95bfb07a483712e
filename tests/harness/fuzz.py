"""Fuzz harness: one atheris target per parser, each held to the bad-input contract on every input.

    python -m tests.harness.fuzz --target all --runs 2000 --seed 1                # short mode (CI)
    python -m tests.harness.fuzz --target all --runs 200000 --out fuzz.json       # long mode (release)
    python -m tests.harness.fuzz --target kafka --reproduce FILE...               # replay saved inputs

Targets, and what one input is (its first byte picks a variant, see each target):

- ``kafka``: a Kafka record (key, value, content-type header) for ``kafka_documents.decode_message``.
- ``debezium``: a Debezium record (key, value) for ``debezium.decode_change``, under four mappings.
- ``wal2json``: wal2json change rows for ``postgres_cdc.group_transactions`` and ``decode_transaction``.
- ``webhook``: a whole delivery (headers and body, signed or not, Content-Length or chunked) through
  the receiver's HTTP handler, with an in-memory queue; also ``verify_github``.
- ``files``: a JSONL line, a BEIR corpus line, a text/Markdown file or a Parquet file for
  ``files.plan_splits`` and ``read_split``.
- ``config``: a TOML file or ``TIERFLOW__*`` variables for ``tierflow.config.load_settings`` of every
  settings class (ingest, webhook, kafka, postgres, cold, lifecycle).

The contract, checked on every input: the parser returns well-formed events (an id, a known op, text that
is UTF-8, JSON-serialisable metadata, a version that fits 64 bits) or rejects the input with one of its
documented reason codes, as a dead letter that explains itself, serialises and keeps the raw input, or
as the ``TierflowError`` subclass its API documents. Any other exception (``KeyError``,
``RecursionError`` ...), a broken contract, or an input running past ``--timeout-per-input`` is a
finding. Each bad input is also sent between valid documents (a fault injected into a good stream:
the same file, transaction or receiver), and those must come through unchanged; each that does not is a
document lost.

When the top bit of an input's first byte is set, the rest is run-length expanded (``\\xff n c`` is
``c`` repeated ``64 * (n + 1)`` times, up to 1 MiB), so short inputs reach deep nesting and long runs.

Atheris runs one target per process: each target runs in a child process that writes its counts to a
JSON file; the parent sums them, prints them, writes ``--out`` and exits 1 on any finding or lost document.
The inputs behind findings are kept under ``--artifacts`` for ``--reproduce``; once fixed, one goes to
``tests/harness/regressions/<target>-<what>``, where the harness starts from it and the tests replay it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures"
REGRESSIONS = Path(__file__).resolve().parent / "regressions"  # <target>-<what>: inputs that once broke it
TARGETS = ("kafka", "debezium", "wal2json", "webhook", "files", "config")
EXPAND_LIMIT = 1 << 20
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
DEFAULT_SEED = 20261129
FILES_MTIME_NS = 1_714_564_800_000_000_000
SPLIT_VARIANT_MAX = 64 << 10  # 64-byte splits of a 1 MiB input would be 16384 reads of up to 1 MiB each
LIBFUZZER_TIMEOUT_EXIT = 70


class Finding(AssertionError):
    """A parser broke its contract on an input. ``code`` names the broken rule (it groups findings)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


@dataclass
class Outcome:
    """What one input did: documents it gave, its rejections, and the valid documents sent with it."""

    events: int = 0
    reasons: list[str] = field(default_factory=list)
    companions: int = 0
    lost: int = 0


# --- input framing ---------------------------------------------------------------------------------


def expand(payload: bytes) -> bytes:
    """Run-length expansion: ``\\xff n c`` is ``c`` repeated ``64 * (n + 1)`` times (at most 1 MiB)."""
    out = bytearray()
    i = 0
    while i < len(payload) and len(out) < EXPAND_LIMIT:
        if payload[i] == 0xFF and i + 2 < len(payload):
            out += payload[i + 2 : i + 3] * (64 * (payload[i + 1] + 1))
            i += 3
        else:
            out.append(payload[i])
            i += 1
    return bytes(out[:EXPAND_LIMIT])


def expanded(seed: bytes) -> bytes:
    """``seed`` with its payload marked for run-length expansion (see :func:`expand`)."""
    return bytes([seed[0] | 0x80]) + seed[1:]


DEEP = b"\xff\x1f[" + b"\xff\x1f]"  # 2048 nested arrays, once expanded: past what json.loads takes
NESTED = b"\xff\x0a[" + b"\xff\x0a]"  # 704: parsed, then walked by the parser's own checks
LONG_DIGITS = b"\xff\x4f9"  # a 5120-digit integer, once expanded


def split_flags(data: bytes) -> tuple[int, bytes]:
    """(the variant byte, the payload), the payload expanded when the variant's top bit is set."""
    if not data:
        return 0, b""
    flags, payload = data[0], data[1:]
    return flags, expand(payload) if flags & 0x80 else payload


def kafka_input(
    key: bytes | None,
    value: bytes | None,
    *,
    content_type: bytes | None = None,
    small_limit: bool = False,
    no_timestamp: bool = False,
) -> bytes:
    """The kafka target's input for one record (the inverse of its framing; keys of up to 255 bytes)."""
    flags = (key is None) | (value is None) << 1 | (content_type is not None) << 2
    flags |= small_limit << 3 | no_timestamp << 4
    key_bytes = key or b""
    header = (content_type or b"") + b"\n" if content_type is not None else b""
    return bytes([flags, len(key_bytes)]) + key_bytes + header + (value or b"")


def debezium_input(
    key: bytes | None, value: bytes | None, mapping: int = 0, tombstone_version: bool = False
) -> bytes:
    """The debezium target's input: ``mapping`` indexes :attr:`DebeziumTarget.mappings`."""
    flags = (key is None) | (value is None) << 1 | (mapping & 3) << 2 | tombstone_version << 4
    key_bytes = key or b""
    return bytes([flags]) + len(key_bytes).to_bytes(2, "big") + key_bytes + (value or b"")


def wal2json_input(rows: Iterable[str], config: int = 0) -> bytes:
    """The wal2json target's input: change rows (one JSON text each), ``config`` picks the mapping."""
    return bytes([config & 3]) + "\n".join(rows).encode("utf-8")


def webhook_input(
    body: bytes,
    *,
    chunked: bool = False,
    stale: bool = False,
    bad_signature: bool = False,
    small: bool = False,
) -> bytes:
    """The webhook target's input for a delivery the harness signs (unless ``bad_signature``)."""
    flags = chunked << 1 | stale << 2 | bad_signature << 3 | small << 4
    return bytes([flags]) + body


def webhook_raw_input(head: bytes, body: bytes = b"", *, small: bool = False) -> bytes:
    """The webhook target's input for a raw request: header lines (``\\r\\n``-separated) and a body.

    In the header block, ``{now}`` becomes the current unix time, ``{len}`` the body's length,
    ``{sig}`` a valid ``webhook-signature`` and ``{ghsig}`` a valid ``X-Hub-Signature-256``.
    """
    return bytes([0x01 | small << 4]) + head + b"\r\n\r\n" + body


def files_input(payload: bytes, variant: int = 0) -> bytes:
    """The files target's input: ``variant`` indexes :attr:`FilesTarget.VARIANTS`."""
    return bytes([variant & 7]) + payload


def config_input(payload: bytes, section: int = 0, *, env: bool = False) -> bytes:
    """The config target's input: TOML text (or ``NAME=value`` lines when ``env``) for one section
    (``section`` indexes :attr:`ConfigTarget.SECTIONS`; 6 loads every section)."""
    return bytes([section & 7 | env << 3]) + payload


# --- the contract ----------------------------------------------------------------------------------


def _utf8(value: Any, what: str) -> None:
    if not isinstance(value, str):
        raise Finding("not_a_string", f"{what} is a {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Finding(
            "not_utf8_accepted", f"{what} holds an unpaired surrogate: it cannot be stored"
        ) from None


def check_event(event: Any, system: str) -> None:
    """A document event as every later stage needs it; raises :class:`Finding` otherwise."""
    from tierflow.records import OPS, DocumentEvent

    if not isinstance(event, DocumentEvent):
        raise Finding("not_an_event", f"got a {type(event).__name__}")
    _utf8(event.doc_id, "doc_id")
    if not event.doc_id.strip():
        raise Finding("empty_id_accepted", repr(event.doc_id))
    if event.op not in OPS:
        raise Finding("bad_op_accepted", repr(event.op))
    _utf8(event.text, "text")
    _utf8(event.title, "title")
    if not isinstance(event.metadata, dict):
        raise Finding("metadata_not_a_dict", type(event.metadata).__name__)
    try:
        json.dumps(event.metadata, ensure_ascii=False, allow_nan=False).encode("utf-8")  # RFC 8259
    except (TypeError, ValueError, RecursionError) as err:
        raise Finding("metadata_not_storable", f"{type(err).__name__}: {err}") from None
    if isinstance(event.version, bool) or not isinstance(event.version, int):
        raise Finding("version_not_an_int", type(event.version).__name__)
    if not INT64_MIN <= event.version <= INT64_MAX:
        raise Finding("version_out_of_int64", f"{str(event.version)[:40]}")
    if event.event_time is not None and not (
        isinstance(event.event_time, float) and math.isfinite(event.event_time)
    ):
        raise Finding("bad_event_time", repr(event.event_time)[:60])
    if event.source.system != system:
        raise Finding("wrong_source", f"{event.source.system!r}, expected {system!r}")


def check_dead_letter(letter: Any, reasons: Iterable[str], stage: str, system: str) -> None:
    """A rejection the dead-letter sink can take: documented reason, an explanation, the raw input kept."""
    from tierflow.deadletter import DeadLetter

    if not isinstance(letter, DeadLetter):
        raise Finding("not_a_dead_letter", f"got a {type(letter).__name__}")
    if letter.reason not in tuple(reasons):
        raise Finding("undocumented_reason", repr(letter.reason))
    if not isinstance(letter.detail, str) or not letter.detail.strip():
        raise Finding("unexplained_rejection", f"reason {letter.reason!r} has no detail")
    if letter.stage != stage or letter.source.system != system:
        raise Finding("wrong_stage_or_source", f"{letter.stage!r} / {letter.source.system!r}")
    if letter.doc_id is not None:
        _utf8(letter.doc_id, "the dead letter's doc_id")
    try:
        line = letter.to_json()
        line.encode("utf-8")
    except (TypeError, ValueError) as err:
        raise Finding("dead_letter_not_writable", f"{type(err).__name__}: {err}") from None
    back = DeadLetter.from_json_dict(json.loads(line))
    if _raw_bytes(back.raw) != _raw_bytes(letter.raw):
        raise Finding("dead_letter_loses_raw", f"reason {letter.reason!r}")


def _raw_bytes(raw: bytes | str) -> bytes:
    return raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw


def _same(event: Any, expected: Any) -> bool:
    """``event`` is a document event with the expected id, op, text, title and version."""
    from tierflow.records import DocumentEvent

    fields = ("doc_id", "op", "text", "title", "version")
    return isinstance(event, DocumentEvent) and all(getattr(event, f) == getattr(expected, f) for f in fields)


# --- targets ---------------------------------------------------------------------------------------


class Target:
    """One parser under test. ``setup`` imports it (under atheris' instrumentation in a fuzz run)."""

    name = ""
    instrument: tuple[str, ...] = ()

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)

    def setup(self) -> None:
        raise NotImplementedError

    def seeds(self) -> list[bytes]:
        raise NotImplementedError

    def check(self, data: bytes) -> Outcome:
        raise NotImplementedError


class KafkaTarget(Target):
    """Variant byte: 0x01 null key, 0x02 null value (tombstone), 0x04 a content-type header (the
    payload's first line after the key), 0x08 ``max_bytes=256``, 0x10 no Kafka timestamp. Payload: key
    length (1 byte), key, [header line], value."""

    name = "kafka"
    instrument = (
        "connectors.kafka_documents",
        "tierflow.jsonparse",
        "tierflow.records",
        "tierflow.deadletter",
    )

    def setup(self) -> None:
        from connectors import kafka_documents

        self.module = kafka_documents
        self.companion = kafka_documents.encode_document(
            "companion-kafka", "A valid document sent after the bad one.", title="Companion", version=9
        )
        self.expected = kafka_documents.decode_message("docs", 0, 42, *self.companion, 1_718_000_000_000)

    def seeds(self) -> list[bytes]:
        doc = json.dumps(
            {
                "op": "upsert",
                "text": "Body text.",
                "title": "T",
                "metadata": {"lang": "en", "n": [1, 2.5, None]},
                "version": 42,
                "event_time": 1718000000.5,
            }
        ).encode()
        return [
            kafka_input(b"doc-1", doc, content_type=b"application/json; charset=utf-8"),
            kafka_input(b"doc-2", b'{"text": "Hello."}'),
            kafka_input(b"doc-3", b'{"op": "delete", "version": 7}'),
            kafka_input(b"doc-4", None),
            kafka_input(None, b'{"text": "no key"}'),
            kafka_input(b"doc-5", b'{"text": "x", "extra": 1}', content_type=b"text/plain"),
            kafka_input(b"doc-6", b'{"text": 5, "version": -1, "event_time": "now", "op": "merge"}'),
            kafka_input(b"doc-7", b'{"text": "a", "text": "b"}', small_limit=True),
            kafka_input(b"\xff\xfe", b'{"text": "\\ud800"}', no_timestamp=True),
            kafka_input(b"doc-8", b'\xef\xbb\xbf{"text": NaN, "version": 1e999}'),
            kafka_input(b"doc-9", b"[" * 64 + b"]" * 64),
            expanded(
                kafka_input(b"deep", b'{"text": "a", "metadata": {"x": ' + NESTED + b', "y": "\\u00e9"}}')
            ),
            expanded(kafka_input(b"long", b'{"text": "\xff\xffa", "version": ' + LONG_DIGITS + b"}")),
            expanded(kafka_input(b"time", b'{"text": "a", "event_time": \xff\x05' + b"7}")),
        ]

    def check(self, data: bytes) -> Outcome:
        from tierflow.deadletter import DeadLetter
        from tierflow.errors import BadRecord

        module = self.module
        flags, payload = split_flags(data)
        key_len = payload[0] if payload else 0
        key: bytes | None = payload[1 : 1 + key_len]
        rest = payload[1 + key_len :]
        headers = None
        if flags & 0x04:
            content_type, _, rest = rest.partition(b"\n")
            headers = [("content-type", content_type)]
        if flags & 0x01:
            key = None
        value = None if flags & 0x02 else rest
        max_bytes = 256 if flags & 0x08 else module.DEFAULT_MAX_BYTES
        timestamp = None if flags & 0x10 else 1_718_000_000_000
        result = module.decode_message("docs", 0, 41, key, value, timestamp, max_bytes, headers=headers)
        outcome = Outcome()
        if isinstance(result, DeadLetter):
            check_dead_letter(result, module.REASONS, "parse", "kafka")
            kept = (value or b"")[: module.RAW_KEEP_BYTES] if result.reason == "too_large" else value or b""
            if result.raw != kept:
                raise Finding("dead_letter_loses_raw", "raw is not the value as received")
            outcome.reasons.append(result.reason)
        else:
            check_event(result, "kafka")
            assert key is not None
            if result.doc_id != key.decode("utf-8"):
                raise Finding("id_is_not_the_key", repr(result.doc_id))
            try:
                again_key, again_value = module.encode_document(
                    result.doc_id,
                    result.text,
                    result.title,
                    result.metadata,
                    result.version,
                    result.event_time,
                    result.op,
                )
            except BadRecord as err:
                raise Finding("accepted_event_does_not_reencode", str(err)) from None
            again = module.decode_message("docs", 0, 41, again_key, again_value, None)
            if not _same(again, result) or again.event_time != result.event_time:
                raise Finding("no_round_trip", f"{result!r:.200} became {again!r:.200}")
            if result.op == "upsert" and again.metadata != result.metadata:
                raise Finding("no_round_trip", "metadata changed")
            outcome.events = 1
        outcome.companions = 1
        companion = module.decode_message("docs", 0, 42, *self.companion, 1_718_000_000_000)
        outcome.lost = 0 if _same(companion, self.expected) else 1
        return outcome


class DebeziumTarget(Target):
    """Variant byte: 0x01 null key, 0x02 null value, bits 2-3 the mapping, 0x10 ``tombstone_version=7``.
    Payload: key length (2 bytes, big-endian), key, value."""

    name = "debezium"
    instrument = ("connectors.debezium", "tierflow.jsonparse", "tierflow.records", "tierflow.deadletter")

    def setup(self) -> None:
        from connectors import debezium
        from tierflow.records import SourcePosition

        self.module = debezium
        self.mappings = [
            debezium.DebeziumMapping(),
            debezium.DebeziumMapping(
                id_columns=("id",), text_column=("summary", "text"), title_column="title"
            ),
            debezium.DebeziumMapping(text_column="email", title_column="first_name", id_prefix="inventory:"),
            debezium.DebeziumMapping(id_columns=("id", "part"), metadata_columns=("lang",)),
        ]
        self.position = SourcePosition("kafka", "dbserver1.inventory.customers/0", "57")
        after = {"id": "companion-debezium", "text": "A valid change sent after the bad one.", "lang": "en"}
        self.companion = (
            b'{"id": "companion-debezium"}',
            json.dumps(
                {"op": "c", "after": after, "source": {"connector": "postgresql", "lsn": 4096}}
            ).encode(),
        )
        self.expected = debezium.decode_change(*self.companion, self.position, self.mappings[0])

    def seeds(self) -> list[bytes]:
        seeds = []
        for mapping, value in [
            (
                0,
                {
                    "op": "c",
                    "after": {"id": 1, "text": "Hi"},
                    "source": {"connector": "postgresql", "lsn": 100},
                },
            ),
            (
                1,
                {
                    "op": "u",
                    "before": {"id": 1},
                    "after": {"id": 1, "summary": "S", "text": "B", "title": None},
                    "source": {"connector": "mysql", "file": "mysql-bin.000003", "pos": 154},
                },
            ),
            (0, {"op": "d", "before": {"id": 1}, "source": {"lsn": "0/16B3748"}, "ts_ms": 1700000000000}),
            (
                0,
                {
                    "op": "r",
                    "after": {"id": 2, "text": "__debezium_unavailable_value"},
                    "source": {"ts_sec": 5},
                },
            ),
            (3, {"op": "c", "after": {"id": 3, "part": 1.0, "text": "x", "lang": "en"}}),
            (0, {"op": "t", "source": {"db": "inventory", "schema": "public", "table": "customers"}}),
            (0, {"op": "m", "message": {"prefix": "p"}}),
            (0, {"status": "BEGIN", "id": "571:53195829", "event_count": None}),
            (0, {"ts_ms": 1700000000000}),
            (0, {"ddl": "ALTER TABLE customers ADD COLUMN x int"}),
            (
                0,
                {
                    "schema": {"type": "struct"},
                    "payload": {"op": "c", "after": {"id": 4, "text": "enveloped"}},
                },
            ),
        ]:
            seeds.append(debezium_input(b'{"id": 1}', json.dumps(value).encode(), mapping))
        seeds += [
            debezium_input(b'{"schema": null, "payload": {"id": 9}}', None),
            debezium_input(b"1004", b"null", tombstone_version=True),
            debezium_input(None, b'{"op": "c", "after": {"text": "no id"}}'),
            debezium_input(b'"\\ud800"', b'{"op": "x"}', 1),
            expanded(
                debezium_input(
                    b"1", b'{"op": "c", "after": {"id": 1, "m": ' + NESTED + b', "text": "x\\ud83d"}}'
                )
            ),
            expanded(
                debezium_input(
                    b"1",
                    b'{"op": "c", "after": {"id": 1, "text": "x"}, "source": '
                    b'{"lsn": "' + LONG_DIGITS + b'", "ts_ms": \xff\x052}}',
                )
            ),
            expanded(
                debezium_input(b"1", b'{"op": "d", "before": {"id": 1}, "source": {"ts_ms": \xff\x052}}')
            ),
            expanded(
                debezium_input(b"1", b'{"op": "c", "after": {"id": 1, "text": "x"}, "ts_ms": 9\xff\x009}')
            ),
        ]
        for path in sorted(FIXTURES.glob("debezium/*/*.json")):
            if path.name.endswith(".key.json"):
                continue
            stem = path.name.split(".")[0]
            key_file = path.with_name(f"{stem}.key.json")
            key = key_file.read_bytes() if key_file.exists() else None
            seeds.append(debezium_input(key, path.read_bytes(), 2))
        return seeds

    def check(self, data: bytes) -> Outcome:
        from tierflow.deadletter import DeadLetter

        module = self.module
        flags, payload = split_flags(data)
        key_len = int.from_bytes(payload[:2], "big")
        key: bytes | None = None if flags & 0x01 else payload[2 : 2 + key_len]
        value: bytes | None = None if flags & 0x02 else payload[2 + key_len :]
        mapping = self.mappings[(flags >> 2) & 3]
        version = 7 if flags & 0x10 else 0
        result = module.decode_change(key, value, self.position, mapping, tombstone_version=version)
        outcome = Outcome()
        if isinstance(result, DeadLetter):
            check_dead_letter(result, module.REASONS, module.STAGE, "kafka")
            outcome.reasons.append(result.reason)
        elif result is not None:
            check_event(result, "kafka")
            outcome.events = 1
        outcome.companions = 1
        companion = module.decode_change(*self.companion, self.position, self.mappings[0])
        outcome.lost = 0 if _same(companion, self.expected) else 1
        return outcome


class Wal2jsonTarget(Target):
    """Variant byte: bits 0-1 the configuration. Payload: change rows, one per line (UTF-8, as the
    server sends them; invalid bytes are replaced). The rows go between two valid inserts of one
    transaction (``B`` and ``C`` rows among them are left out there), and also on their own."""

    name = "wal2json"
    instrument = (
        "connectors.postgres_cdc",
        "tierflow.jsonparse",
        "tierflow.records",
        "tierflow.deadletter",
    )

    def setup(self) -> None:
        from connectors import postgres_cdc as cdc

        self.module = cdc
        articles = cdc.TableMapping(text_column="body", title_column="title")
        dsn = "host=db dbname=app user=cdc"
        self.configs = [
            cdc.PostgresCdcConfig(dsn, slot="fuzz", mappings={"public.articles": articles}),
            cdc.PostgresCdcConfig(
                dsn,
                slot="fuzz",
                tables=(),
                mappings={
                    "public.articles": cdc.TableMapping(
                        text_column="body", table_prefix=True, id_prefix="pg:"
                    ),
                    "public.notes": cdc.TableMapping(id_columns=("id",), text_column=("summary", "body")),
                },
            ),
            cdc.PostgresCdcConfig(
                dsn,
                slot="fuzz",
                mappings={
                    "articles": cdc.TableMapping(
                        id_columns=("id", "rev"), text_column="body", metadata_columns=("lang",)
                    )
                },
            ),
            cdc.PostgresCdcConfig(
                dsn, slot="fuzz", mappings={"articles": cdc.TableMapping(text_column=("summary", "body"))}
            ),
        ]
        self.companions = [self._insert(name) for name in ("companion-a", "companion-b")]
        self.expected = []
        for config in self.configs:
            txn = cdc.Transaction(10_001, 1714564800.0, 77, [cdc.Change(11, self.companions[0])])
            (first,) = cdc.decode_transaction(txn, config)
            txn.changes = [cdc.Change(10_000, self.companions[1])]
            (second,) = cdc.decode_transaction(txn, config)
            self.expected.append((first, second))

    @staticmethod
    def _insert(doc_id: str) -> str:
        columns = [
            {"name": "id", "type": "text", "value": doc_id},
            {"name": "rev", "type": "integer", "value": 1},
            {"name": "title", "type": "text", "value": "Companion"},
            {"name": "summary", "type": "text", "value": None},
            {"name": "body", "type": "text", "value": f"A valid row ({doc_id}) around the bad ones."},
            {"name": "lang", "type": "text", "value": "en"},
        ]
        return json.dumps(
            {
                "action": "I",
                "schema": "public",
                "table": "articles",
                "columns": columns,
                "pk": [{"name": "id", "type": "text"}],
            }
        )

    def seeds(self) -> list[bytes]:
        cols = '[{"name":"id","type":"integer","value":1},{"name":"body","type":"text","value":"Text"}]'
        pk = '[{"name":"id","type":"integer"}]'
        rows = [
            f'{{"action":"I","schema":"public","table":"articles","columns":{cols},"pk":{pk}}}',
            f'{{"action":"U","schema":"public","table":"articles","columns":{cols},"pk":{pk},'
            '"identity":[{"name":"id","type":"integer","value":2}]}',
            '{"action":"D","schema":"public","table":"articles","identity":[{"name":"id","type":"integer",'
            '"value":1}],"pk":[{"name":"id","type":"integer"}]}',
            '{"action":"T","schema":"public","table":"articles"}',
            '{"action":"M","transactional":true,"prefix":"p","content":"x"}',
            '{"action":"B","xid":7,"timestamp":"2024-05-01 12:00:00.123456+00"}',
            '{"action":"C","xid":7}',
            f'{{"action":"I","schema":"public","table":"notes","columns":{cols}}}',
            '{"action":"I","table":"articles","columns":[{"name":"id","value":null}]}',
            '{"action":"I","schema":"public","table":"articles","columns":'
            '[{"name":"id","type":"integer","value":3},{"name":"body","type":"text","value":"t"},'
            '{"name":"doc","type":"json","value":{"a":"\\ud800"}}],'
            '"pk":[{"name":"id","type":"integer"}]}',
        ]
        return [wal2json_input([row], config) for config in range(4) for row in rows] + [
            wal2json_input(rows, 0),
            wal2json_input(["{not json", "[1]", '{"action":"I","columns":{}}'], 1),
            expanded(
                bytes([0]) + b'{"action":"I","table":"articles","columns":' + DEEP + b"}\n"
                b'{"action":"B","xid":' + LONG_DIGITS + b"}"
            ),
        ]

    def check(self, data: bytes) -> Outcome:
        from tierflow.deadletter import DeadLetter
        from tierflow.records import DocumentEvent

        cdc = self.module
        flags, payload = split_flags(data)
        index = flags & 3
        config = self.configs[index]
        rows = payload.decode("utf-8", "replace").split("\n")[:64]
        # on their own: grouping must not trip over rows outside transactions or odd B/C rows
        alone = [cdc.Change(100 + i, row) for i, row in enumerate(rows)]
        for txn in cdc.group_transactions(alone):
            for item in cdc.decode_transaction(txn, config):
                self._check_item(item)
        # between two valid inserts of one transaction
        inside = [row for row in rows if _wal2json_action(row) not in ("B", "C")]
        changes = [
            cdc.Change(10, '{"action":"B","xid":77,"timestamp":"2024-05-01 12:00:00+00"}'),
            cdc.Change(11, self.companions[0]),
            *(cdc.Change(100 + i, row) for i, row in enumerate(inside)),
            cdc.Change(10_000, self.companions[1]),
            cdc.Change(10_001, '{"action":"C","xid":77}'),
        ]
        txns = list(cdc.group_transactions(changes))
        if len(txns) != 1 or len(txns[0].changes) != len(inside) + 2:
            raise Finding("transaction_lost_changes", f"{len(txns)} transactions from one")
        items = cdc.decode_transaction(txns[0], config)
        outcome = Outcome(companions=2)
        companion_positions = {"lsn:11", "lsn:10000"}
        fuzz_ids = set()
        for item in items:
            self._check_item(item)
            if item.source.position in companion_positions:
                continue
            fuzz_ids.add(item.doc_id)
            if isinstance(item, DeadLetter):
                outcome.reasons.append(item.reason)
            else:
                outcome.events += 1
        first, second = self.expected[index]
        found = [
            i for i in items if isinstance(i, DocumentEvent) and i.source.position in companion_positions
        ]
        for expected in (first, second):
            superseded = expected is first and expected.doc_id in fuzz_ids  # a later change of that row
            if not superseded and not any(_same(e, expected) for e in found):
                outcome.lost += 1
        return outcome

    def _check_item(self, item: Any) -> None:
        from tierflow.deadletter import DeadLetter

        if isinstance(item, DeadLetter):
            check_dead_letter(item, self.module.REASONS, self.module.STAGE, "postgres")
        else:
            check_event(item, "postgres")


def _wal2json_action(row: str) -> Any:
    try:
        data = json.loads(row)
    except (ValueError, RecursionError):
        return None
    return data.get("action") if isinstance(data, dict) else None


class _Connection:
    """The socket a refused upload lingers on: nothing more to read."""

    def shutdown(self, how: int) -> None:
        return None

    def settimeout(self, seconds: float) -> None:
        return None

    def recv(self, size: int) -> bytes:
        return b""


class _MemorySink:
    """An in-memory :class:`~connectors.webhooks.EventSink`."""

    def __init__(self) -> None:
        self.records: list[bytes] = []

    def append(self, record: bytes) -> int:
        self.records.append(record)
        return len(self.records) - 1

    def read(self, from_offset: int, max_records: int = 100, wait_s: float = 0.0) -> list[tuple[int, bytes]]:
        chunk = self.records[from_offset : from_offset + max_records]
        return [(from_offset + i, record) for i, record in enumerate(chunk)]

    @property
    def start_offset(self) -> int:
        return 0


WEBHOOK_KEY = b"tierflow fuzz harness webhook key"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
GITHUB_SECRET = "tierflow fuzz harness github secret"
# 4xx answers that are dead-lettered (connectors/webhooks.py's table); 429 is answered, not dead-lettered
WEBHOOK_REASONS = (
    "bad_framing",
    "incomplete_body",
    "duplicate_header",
    "too_large",
    "missing_headers",
    "malformed_id",
    "malformed_timestamp",
    "timestamp_too_old",
    "timestamp_too_new",
    "bad_signature",
    "replayed",
    "not_utf8",
    "malformed_json",
    "not_an_object",
    "missing_id",
    "wrong_type",
    "bad_op",
)
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


class WebhookTarget(Target):
    """Variant byte: 0x01 raw request (header block, blank line, body; see :func:`webhook_raw_input`),
    else the payload is the body of a delivery the harness frames and signs: 0x02 chunked, 0x04 a stale
    timestamp, 0x08 a wrong signature. 0x10: a receiver with ``max_body_bytes=256``. Each delivery goes to
    a fresh receiver, after a valid one and before another."""

    name = "webhook"
    instrument = ("connectors.webhooks", "tierflow.jsonparse", "tierflow.records", "tierflow.deadletter")

    def setup(self) -> None:
        from connectors import webhooks

        self.module = webhooks
        secrets = [WEBHOOK_SECRET, *(v["secret"] for v in _webhook_vectors() if _is_secret(v.get("secret")))]
        self.configs = {
            small: webhooks.WebhookConfig(
                port=0, secrets=tuple(secrets), max_body_bytes=256 if small else 1 << 20
            )
            for small in (False, True)
        }
        self.github_secrets = [GITHUB_SECRET, *(v["secret"] for v in _github_vectors() if v.get("secret"))]
        self.counter = 0

    def seeds(self) -> list[bytes]:
        body = b'{"doc_id": "doc-1", "version": 3, "text": "Body.", "title": "T", "metadata": {"lang": "en"}}'
        seeds = [
            webhook_input(body),
            webhook_input(body, chunked=True),
            webhook_input(b'{"doc_id": 7, "op": "delete", "version": 4, "event_time": 1718000000.5}'),
            webhook_input(b'{"doc_id": "", "version": true, "text": 5}', small=True),
            webhook_input(b'{"doc_id": "d", "version": 1, "op": "merge", "extra": [1, {"a": null}]}'),
            webhook_input(b"[1, 2]", stale=True),
            webhook_input(b'\xff{"doc_id": "\\ud800"}', bad_signature=True),
            webhook_raw_input(
                b"webhook-id: msg_1\r\nwebhook-timestamp: {now}\r\nwebhook-signature: {sig}\r\n"
                b"Content-Length: {len}\r\nX-Hub-Signature-256: {ghsig}",
                body,
            ),
            webhook_raw_input(
                b"webhook-id: msg_2\r\nwebhook-timestamp: {now}\r\nwebhook-signature: v1,abc {sig}\r\n"
                b"Transfer-Encoding: chunked",
                b"5;ext=1\r\n"
                + body[:5]
                + b"\r\n"
                + format(len(body) - 5, "x").encode()
                + b"\r\n"
                + body[5:]
                + b"\r\n0\r\nTrailer: x\r\n\r\n",
            ),
            webhook_raw_input(b"Content-Length: 10\r\nTransfer-Encoding: chunked", b"0\r\n\r\n"),
            webhook_raw_input(b"Content-Length: 99999\r\nExpect: 100-continue", b"", small=True),
            webhook_raw_input(b"Content-Length: \xb2\r\nExpect: 100-continue", b"xx"),
            webhook_raw_input(b"webhook-id: a\r\nwebhook-id: b\r\nContent-Length: 2", b"{}"),
            webhook_raw_input(
                b"webhook-id: \xe9t\xe9\r\nwebhook-timestamp: 1e9\r\nwebhook-signature: v1", b""
            ),
            webhook_raw_input(b"Transfer-Encoding: gzip, chunked", b"zz"),
            webhook_raw_input(b"Content-Length: 1" + b"0" * 30, b"x"),
            expanded(webhook_input(b'{"doc_id": "d", "version": ' + LONG_DIGITS + b', "x": ' + DEEP + b"}")),
            expanded(webhook_input(b'{"doc_id": "d", "version": 1, "x": ' + NESTED + b', "y": "\\ud800"}')),
        ]
        for vector in _webhook_vectors():
            if {"msg_id", "timestamp", "payload", "expected_signature"} <= vector.keys():
                payload = str(vector["payload"]).encode()
                head = (
                    f"webhook-id: {vector['msg_id']}\r\nwebhook-timestamp: {vector['timestamp']}\r\n"
                    f"webhook-signature: {vector['expected_signature']}\r\nContent-Length: {len(payload)}"
                )
                seeds.append(webhook_raw_input(head.encode("latin-1", "replace"), payload))
        for vector in _github_vectors():
            header = vector.get("expected_header", {}).get("X-Hub-Signature-256", "")
            payload = str(vector.get("payload", "")).encode()
            seeds.append(
                webhook_raw_input(
                    f"X-Hub-Signature-256: {header}\r\nContent-Length: {{len}}".encode(), payload
                )
            )
        return seeds

    def check(self, data: bytes) -> Outcome:
        from connectors.webhooks import WebhookReceiver

        flags, payload = split_flags(data)
        letters: list[Any] = []
        sink = _MemorySink()
        receiver = WebhookReceiver(self.configs[bool(flags & 0x10)], sink=sink, dead_letters=letters.append)
        outcome = Outcome(companions=2)
        outcome.lost += self._companion(receiver, sink, letters)
        if flags & 0x01:
            head, _, body = payload.partition(b"\r\n\r\n")
            head = self._fill(head, body)
            self._github(head, body)
        else:
            head, body = self._frame(payload, flags)
        before_records, before_letters = len(sink.records), len(letters)
        answer = self._deliver(receiver, head, body)
        if answer is not None:
            status, reply = answer
            new_records, new_letters = sink.records[before_records:], letters[before_letters:]
            if status == 202:
                if len(new_records) != 1 or new_letters:
                    raise Finding(
                        "accepted_but_not_stored", f"{len(new_records)} records, {len(new_letters)} letters"
                    )
                event = self.module.decode_record(new_records[0])
                check_event(event, "webhook")
                if reply.get("accepted") != event.source.position:
                    raise Finding("wrong_acceptance", repr(reply)[:100])
                outcome.events = 1
            elif status == 429:
                outcome.reasons.append("rate_limited")
            elif 400 <= status < 500:
                if new_records or len(new_letters) != 1:
                    raise Finding("rejection_not_dead_lettered", f"{status}: {len(new_letters)} dead letters")
                letter = new_letters[0]
                check_dead_letter(letter, WEBHOOK_REASONS, letter.stage, "webhook")
                if letter.reason != reply.get("error") or letter.status != status or not reply.get("detail"):
                    raise Finding("answer_and_dead_letter_differ", f"{status} {reply!r:.100}")
                outcome.reasons.append(letter.reason)
            else:
                raise Finding("unexpected_status", str(status))
        outcome.lost += self._companion(receiver, sink, letters)
        if receiver._pending or receiver._inflight:
            raise Finding("receiver_state_leaked", f"pending ids {list(receiver._pending)[:3]}")
        return outcome

    def _frame(self, body: bytes, flags: int) -> tuple[bytes, bytes]:
        self.counter += 1
        msg_id = f"msg_fuzz_{self.counter}"
        stamp = str(int(time.time()) - (10_000 if flags & 0x04 else 0))
        signature = _standard_signature(msg_id, stamp, body)
        if flags & 0x08:
            signature = signature[:-4] + "AAA="
        lines = [f"webhook-id: {msg_id}", f"webhook-timestamp: {stamp}", f"webhook-signature: {signature}"]
        lines.append("Content-Type: application/json")
        if flags & 0x02:
            lines.append("Transfer-Encoding: chunked")
            pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
            body = (
                b"".join(format(len(p), "x").encode() + b"\r\n" + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
            )
        else:
            lines.append(f"Content-Length: {len(body)}")
        return "\r\n".join(lines).encode(), body

    def _fill(self, head: bytes, body: bytes) -> bytes:
        head = head.replace(b"{now}", str(int(time.time())).encode()).replace(
            b"{len}", str(len(body)).encode()
        )
        if b"{sig}" in head:
            parsed = _parse_headers(head)
            if parsed is not None:
                msg_id, stamp = parsed.get("webhook-id", ""), parsed.get("webhook-timestamp", "")
                signature = _standard_signature(msg_id, stamp.strip(), body)
                head = head.replace(b"{sig}", signature.encode("latin-1", "replace"))
        if b"{ghsig}" in head:
            head = head.replace(b"{ghsig}", self.module.sign_github(GITHUB_SECRET, body).encode())
        return head

    def _github(self, head: bytes, body: bytes) -> None:
        from connectors.webhooks import WebhookRejected

        parsed = _parse_headers(head)
        if parsed is None:
            return
        try:
            self.module.verify_github(self.github_secrets, parsed.get("X-Hub-Signature-256"), body)
        except WebhookRejected as err:
            if err.reason not in ("missing_headers", "bad_signature") or err.status != 401 or not err.detail:
                raise Finding("undocumented_reason", f"verify_github: {err}") from None

    def _deliver(self, receiver: Any, head: bytes, body: bytes) -> tuple[int, dict[str, Any]] | None:
        """Run one request through the receiver's handler as its HTTP server would: (status, JSON answer),
        or None when the standard library refuses the header block before the handler runs."""
        from connectors.webhooks import EVENTS_PATH, _Handler

        headers = _parse_headers(head)
        if headers is None:
            return None
        handler = _Handler.__new__(_Handler)
        handler.server = SimpleNamespace(receiver=receiver)
        handler.headers = headers
        handler.rfile = io.BytesIO(body)
        handler.wfile = io.BytesIO()
        handler.connection = _Connection()
        handler.client_address = ("198.51.100.7", 40000)
        handler.command, handler.path = "POST", EVENTS_PATH
        handler.request_version = "HTTP/1.1"
        handler.requestline = f"POST {EVENTS_PATH} HTTP/1.1"
        handler.close_connection = False
        if headers.get("Expect", "").lower() == "100-continue" and not handler.handle_expect_100():
            return None
        handler.do_POST()
        written = handler.wfile.getvalue()
        statuses = [int(code) for code in _STATUS.findall(written) if code != b"100"]
        if not statuses:
            raise Finding("no_answer", f"the handler wrote {written[:80]!r}")
        reply = json.loads(written.rsplit(b"\r\n\r\n", 1)[1] or b"{}")
        return statuses[-1], reply

    def _companion(self, receiver: Any, sink: _MemorySink, letters: list[Any]) -> int:
        """Deliver a valid document; 1 when it is not stored (lost), else 0."""
        self.counter += 1
        doc_id = f"companion-{self.counter}"
        body = json.dumps(
            {"doc_id": doc_id, "version": 1, "text": "A valid delivery around the bad one."}
        ).encode()
        head, body = self._frame(body, 0)
        before = len(sink.records)
        answer = self._deliver(receiver, head, body)
        if answer is None or answer[0] != 202 or len(sink.records) != before + 1:
            return 1
        event = self.module.decode_record(sink.records[-1])
        return 0 if event.doc_id == doc_id else 1


def _standard_signature(msg_id: str, stamp: str, body: bytes) -> str:
    signed = f"{msg_id}.{stamp}.".encode("utf-8", "surrogatepass") + body
    return "v1," + base64.b64encode(hmac.new(WEBHOOK_KEY, signed, hashlib.sha256).digest()).decode()


def _parse_headers(head: bytes) -> Any:
    try:
        return http.client.parse_headers(io.BytesIO(head + b"\r\n\r\n"))
    except http.client.HTTPException:  # line too long, too many headers: answered by http.server itself
        return None


def _is_secret(value: Any) -> bool:
    from connectors.webhooks import decode_secret
    from tierflow.errors import ConfigError

    if not isinstance(value, str):
        return False
    try:
        decode_secret(value)
    except ConfigError:
        return False
    return True


def _webhook_vectors() -> list[dict[str, Any]]:
    return _fixture_list(FIXTURES / "webhooks" / "standard_webhooks_vectors.json")


def _github_vectors() -> list[dict[str, Any]]:
    return _fixture_list(FIXTURES / "webhooks" / "github_vectors.json")


def _fixture_list(path: Path) -> list[dict[str, Any]]:
    """The ``vectors`` of a shared fixture file, or none when the fixtures are not checked out."""
    try:
        vectors = json.loads(path.read_text(encoding="utf-8")).get("vectors", [])
    except (OSError, ValueError):
        return []
    return [v for v in vectors if isinstance(v, dict)]


@dataclass(frozen=True)
class _FilesVariant:
    layout: str  # "jsonl": one file; "beir": dir/corpus.jsonl; "dir": the fuzz file next to a companion
    suffix: str
    settings: dict[str, Any]
    companions: tuple[dict[str, Any], ...] = ()


class FilesTarget(Target):
    """Variant byte: bits 0-2 index :attr:`VARIANTS`. JSONL and BEIR: the payload is written as the
    line(s) between two valid lines; text and Parquet: the payload is a whole file, next to a valid one.
    The source is read with ``plan_splits`` and ``read_split``, every split."""

    name = "files"
    instrument = (
        "connectors.files",
        "connectors.objectstore",
        "tierflow.jsonparse",
        "tierflow.records",
        "tierflow.deadletter",
    )
    _TEXT = "A valid record around the bad one."
    VARIANTS = (
        _FilesVariant(
            "jsonl",
            ".jsonl",
            {},
            ({"_id": "companion-a", "text": _TEXT}, {"_id": "companion-b", "text": _TEXT}),
        ),
        _FilesVariant(
            "jsonl",
            ".jsonl",
            {"id_field": "id", "op_field": "op", "version_field": "updated_at", "metadata_fields": ("lang",)},
            (
                {"id": "companion-a", "op": "upsert", "text": _TEXT, "updated_at": 5, "lang": "en"},
                {"id": "companion-b", "text": _TEXT, "updated_at": "2024-05-01T12:00:00+02:00"},
            ),
        ),
        _FilesVariant(
            "beir",
            ".jsonl",
            {"format": "beir"},
            ({"_id": "companion-a", "title": "T", "text": _TEXT, "metadata": {"url": "u"}},),
        ),
        _FilesVariant("dir", ".md", {"glob": "*.md"}),
        _FilesVariant("dir", ".parquet", {}),
        _FilesVariant(
            "jsonl",
            ".jsonl",
            {"split_bytes": 64, "max_record_bytes": 512},
            ({"_id": "companion-a", "text": _TEXT}, {"_id": "companion-b", "text": "B"}),
        ),
        _FilesVariant("dir", ".txt", {"max_record_bytes": 256, "glob": "*.txt"}),
        _FilesVariant(
            "jsonl",
            ".jsonl",
            {"op_field": "op", "version_field": "v"},
            ({"_id": "companion-a", "text": _TEXT, "v": 1.5}, {"_id": "companion-b", "text": "B", "v": 2}),
        ),
    )

    def setup(self) -> None:
        from connectors import files

        self.module = files
        self.expected: list[list[Any]] = []
        for index, variant in enumerate(self.VARIANTS):
            root = self.workdir / f"v{index}"
            root.mkdir(parents=True, exist_ok=True)
            if variant.layout == "dir":
                self._write_companion(root, variant.suffix)
            self._write(index, None)
            events = self._read(index)
            self.expected.append(events)

    def _write_companion(self, root: Path, suffix: str) -> None:
        path = root / f"companion{suffix}"
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"_id": ["companion-a"], "text": [self._TEXT], "title": ["T"]}), path)
        else:
            path.write_text(f"# Companion\n\n{self._TEXT}\n", encoding="utf-8")
        os.utime(path, ns=(FILES_MTIME_NS, FILES_MTIME_NS))

    def _source(self, index: int) -> Path:
        variant = self.VARIANTS[index]
        root = self.workdir / f"v{index}"
        return root / "docs.jsonl" if variant.layout == "jsonl" else root

    def _write(self, index: int, payload: bytes | None) -> None:
        variant = self.VARIANTS[index]
        root = self.workdir / f"v{index}"
        if variant.layout in ("jsonl", "beir"):
            lines = [json.dumps(c).encode() for c in variant.companions]
            if payload is not None:
                lines.insert(1, payload)
            path = root / ("docs.jsonl" if variant.layout == "jsonl" else "corpus.jsonl")
            path.write_bytes(b"\n".join(lines) + b"\n")
            os.utime(path, ns=(FILES_MTIME_NS, FILES_MTIME_NS))  # the version of records without one
        else:
            fuzz = root / f"fuzz{variant.suffix}"
            if payload is None:
                fuzz.unlink(missing_ok=True)
            else:
                fuzz.write_bytes(payload)

    def _read(self, index: int) -> list[Any]:
        from connectors.files import FileSourceConfig

        config = FileSourceConfig(str(self._source(index)), **self.VARIANTS[index].settings)
        items: list[Any] = []
        for split in self.module.plan_splits(config):
            items.extend(self.module.read_split(split))
        return items

    def seeds(self) -> list[bytes]:
        seeds = [
            files_input(b'{"_id": "d1", "text": "Body", "title": "T", "lang": "en"}', 0),
            files_input(
                b'{"_id": 5, "text": null}\n\n{"_id": true}\n[1]\n{"text": "no id"}\n\xef\xbb\xbf{}', 0
            ),
            files_input(b'{"id": "d2", "op": "delete", "updated_at": "2024-01-01", "lang": "de"}', 1),
            files_input(
                b'{"id": "d3", "op": "merge", "updated_at": 1e300}\n{"id": "d4", "updated_at": "x"}', 1
            ),
            files_input(b'{"_id": "b1", "title": "T", "text": "x", "metadata": {"a": 1}}', 2),
            files_input(b"# Title ##\n\n```\n# not a title\n```\nBody\n", 3),
            files_input(b"plain text, no heading\r\n\xff", 6),
            files_input(b'{"_id": "s1", "text": "' + b"x" * 600 + b'"}\n{"_id": "s2", "text": "y"}', 5),
            files_input(
                b'{"_id": "v1", "v": "9999-12-31T23:59:59-14:00"}\n{"_id": "v2", "v": -1.5, "op": null}', 7
            ),
            files_input(
                b'{"_id": "n", "text": "\\ud800"}\n{"_id": "n2", "x": ' + b"[" * 40 + b"]" * 40 + b"}", 0
            ),
            expanded(files_input(b'{"_id": "d", "x": ' + DEEP + b', "v": ' + LONG_DIGITS + b"}", 7)),
            expanded(files_input(b'{"_id": "d", "x": ' + NESTED + b', "y": "\\ud800"}', 0)),
            expanded(files_input(b"# a" + b"\xff\xff " * 4 + b"b\n# Title\n", 3)),
        ]
        import pyarrow as pa
        import pyarrow.parquet as pq

        for table in (
            pa.table({"_id": ["p1", "p2"], "text": ["a", None], "title": ["T", "U"], "n": [1, 2]}),
            pa.table({"_id": [1.5], "text": [b"\xff"]}),
        ):
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            seeds.append(files_input(buffer.getvalue(), 4))
        return seeds

    def check(self, data: bytes) -> Outcome:
        from tierflow.deadletter import DeadLetter

        flags, payload = split_flags(data)
        index = flags & 7
        variant = self.VARIANTS[index]
        if "split_bytes" in variant.settings:
            payload = payload[:SPLIT_VARIANT_MAX]
        self._write(index, payload)
        items = self._read(index)
        outcome = Outcome(companions=len(self.expected[index]))
        positions: Counter[tuple[str, str]] = Counter()
        for item in items:
            if isinstance(item, DeadLetter):
                check_dead_letter(item, (*_FILES_REASONS, "unreadable"), "parse", "file")
            else:
                check_event(item, "file")
            positions[(item.source.uri, item.source.position)] += 1
            if isinstance(item, DeadLetter):
                outcome.reasons.append(item.reason)
            elif not any(_same(item, e) for e in self.expected[index]):
                outcome.events += 1
        if variant.layout != "dir":
            twice = [p for p, n in positions.items() if n > 1]
            if twice:
                raise Finding("record_read_twice", f"{twice[:2]}")
        for expected in self.expected[index]:
            if not any(not isinstance(i, DeadLetter) and _same(i, expected) for i in items):
                outcome.lost += 1
        return outcome


_FILES_REASONS = (
    "not_utf8",
    "malformed_json",
    "not_an_object",
    "missing_id",
    "wrong_type",
    "bad_op",
    "too_large",
)


class ConfigTarget(Target):
    """Variant byte: bits 0-2 the settings class (:attr:`SECTIONS`; 6 and 7: all of them), 0x08: the
    payload is ``NAME=value`` lines read as ``TIERFLOW__NAME`` variables (with an empty file), else it
    is the TOML file."""

    name = "config"
    instrument = (
        "tierflow.config",
        "tomllib",
        "connectors.webhooks",
        "connectors.kafka_client",
        "connectors.postgres_cdc",
        "indexing.cold",
        "lifecycle.policy",
    )
    SECTIONS = ("ingest", "webhook", "kafka", "postgres", "cold", "lifecycle")

    def setup(self) -> None:
        from connectors.kafka_client import KafkaConfig
        from connectors.postgres_cdc import PostgresCdcConfig
        from connectors.webhooks import WebhookConfig
        from indexing.cold import ColdConfig
        from lifecycle.policy import LifecycleConfig
        from tierflow import config

        self.module = config
        self.classes: list[tuple[type[Any], str | None]] = [
            (config.IngestConfig, None),
            (WebhookConfig, "webhook"),
            (KafkaConfig, "kafka"),
            (PostgresCdcConfig, "postgres"),
            (ColdConfig, "cold"),
            (LifecycleConfig, "lifecycle"),
        ]
        self.toml = self.workdir / "tierflow.toml"
        self.empty = self.workdir / "empty.toml"
        self.empty.write_text("")
        self.good = self.workdir / "good.toml"
        self.good.write_text(
            'sync = "full"\n[chunking]\nmax_tokens = 128\n[dedup]\nnum_perm = 64\nbands = 8\n'
        )
        self.expected = config.load_settings(config.IngestConfig, None, self.good, None, {})

    def seeds(self) -> list[bytes]:
        toml = [
            (
                0,
                b'index_dir = "x"\nsync = "full"\n[chunking]\nmax_tokens = 64\noverlap_tokens = 8\n'
                b'[index]\ntype = "hnsw"\n',
            ),
            (0, b"[dedup]\nthreshold = 1e999\nnum_perm = 10\nbands = 3\n[embedding]\ndevice = 'tpu'\n"),
            (
                1,
                b'[webhook]\nport = 70000\nsecrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "bad"]\n'
                b"tolerance_s = -1\n",
            ),
            (
                2,
                b'[kafka]\nbootstrap_servers = "localhost:9092"\ntopics = ["docs", "bad topic!"]\n'
                b'[kafka.security]\n"sasl.password" = "x"\n'
                b'[kafka.consumer_properties]\n"enable.auto.commit" = true\n',
            ),
            (
                3,
                b'[postgres]\ndsn = "host=db dbname=app"\nslot = "s"\ntables = "public.a, b"\n'
                b'[postgres.mappings."public.a"]\ntext_column = ["summary", "body"]\nid_columns = "id"\n',
            ),
            (4, b'[cold]\nuri = "s3://bucket/../x"\nvector_dtype = "float8"\nnprobes = -1\n'),
            (
                5,
                b'[lifecycle]\ncold_after = "30x"\nhot_max_bytes = "1.5TiB"\n'
                b'[[lifecycle.rules]]\nsource_system = "file"\n',
            ),
            (6, b"a = " + b"[" * 50 + b"]" * 50 + b"\n[chunking\n\xff\n"),
            (0, b"[chunking]\nmax_tokens = inf\n[dedup]\nthreshold = 1" + b"0" * 400 + b"\n"),
            (2, b""),
        ]
        env = [
            (0, b"CHUNKING__MAX_TOKENS=64\nINDEX__TYPE=flat\nSYNC=sideways"),
            (1, b"WEBHOOK__SECRETS=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,nope\nWEBHOOK__PORT=99999999999"),
            (3, b"POSTGRES__DSN=host=db\nPOSTGRES__MAPPINGS=articles\nPOSTGRES__TABLES=a,b"),
            (6, b"INDEX=x\nINDEX__TYPE=hnsw\nKAFKA__MAX_MESSAGE_BYTES=1e3"),
        ]
        deep = [expanded(config_input(b"a = " + DEEP + b"\n[dedup]\nthreshold = " + LONG_DIGITS, 0))]
        return [config_input(t, s) for s, t in toml] + [config_input(t, s, env=True) for s, t in env] + deep

    def check(self, data: bytes) -> Outcome:
        from tierflow.errors import ConfigError

        flags, payload = split_flags(data)
        which = flags & 7
        chosen = self.classes if which >= len(self.classes) else [self.classes[which]]
        if flags & 0x08:
            path, environ = self.empty, _environ(payload)
        else:
            self.toml.write_bytes(payload)
            path, environ = self.toml, {}
        outcome = Outcome(companions=1)
        for cls, section in chosen:
            try:
                value = self.module.load_settings(cls, section, path, None, environ)
            except ConfigError as err:
                if not str(err).strip():
                    raise Finding("unexplained_rejection", "an empty ConfigError") from None
                outcome.reasons.append(_config_reason(str(err)))
                continue
            if not isinstance(value, cls):
                raise Finding("wrong_settings_type", f"{type(value).__name__} for {cls.__name__}")
            outcome.events += 1
        again = self.module.load_settings(self.module.IngestConfig, None, self.good, None, {})
        outcome.lost = 0 if again == self.expected else 1
        return outcome


def _environ(payload: bytes) -> dict[str, str]:
    """``NAME=value`` lines as ``TIERFLOW__NAME`` variables (no NUL: the OS cannot hold one)."""
    environ = {}
    for line in payload.decode("utf-8", "surrogateescape").split("\n")[:32]:
        name, sep, value = line.partition("=")
        if sep and "\x00" not in line:
            environ["TIERFLOW__" + name.upper()] = value
    return environ


def _config_reason(message: str) -> str:
    """A short label for a ConfigError's message (ConfigError has no reason code; this is only for counts)."""
    for needle, label in (
        ("is not UTF-8", "not_utf8"),
        ("is not valid TOML", "invalid_toml"),
        ("unknown setting", "unknown_setting"),
        ("both set", "env_conflict"),
        ("must be a table", "not_a_table"),
        ("must be a ", "wrong_type"),
    ):
        if needle in message:
            return label
    return "invalid_value"


TARGET_CLASSES: dict[str, type[Target]] = {
    cls.name: cls
    for cls in (KafkaTarget, DebeziumTarget, Wal2jsonTarget, WebhookTarget, FilesTarget, ConfigTarget)
}


def make_target(name: str, workdir: Path) -> Target:
    """The target ``name`` (not set up yet: call ``setup()``, under instrumentation when fuzzing)."""
    return TARGET_CLASSES[name](workdir)


# --- counting ----------------------------------------------------------------------------------------


@dataclass
class Stats:
    """The figures of one target's run, as the JSON summary holds them."""

    target: str
    inputs: int = 0
    accepted: int = 0  # inputs that gave documents and no rejection
    rejected: int = 0  # inputs with at least one rejection
    ignored: int = 0  # inputs that gave neither: control messages, blank lines
    documents: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    faults_injected: int = 0  # bad inputs sent among valid documents
    companions: int = 0
    documents_lost: int = 0
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)
    slowest_input_s: float = 0.0
    complete: bool = False

    def run(self, target: Target, data: bytes, timeout_s: float, artifacts: Path | None) -> None:
        start = time.monotonic()
        try:
            outcome = target.check(data)
        except Finding as err:
            self._finding(f"contract {err.code}", "contract", str(err), data, artifacts)
            outcome = None
        except Exception as err:  # anything the parser let escape is a finding
            where = _where(err)
            self._finding(f"{type(err).__name__} at {where}", "exception", _describe(err), data, artifacts)
            outcome = None
        elapsed = time.monotonic() - start
        self.inputs += 1
        self.slowest_input_s = max(self.slowest_input_s, elapsed)
        if elapsed > timeout_s:
            self._finding("slow input", "hang", f"{elapsed:.1f} s (limit {timeout_s} s)", data, artifacts)
        if outcome is None:
            return
        self.documents += outcome.events
        self.rejections.update(outcome.reasons)
        if outcome.reasons:
            self.rejected += 1
        elif outcome.events:
            self.accepted += 1
        else:
            self.ignored += 1
        if outcome.companions:
            self.faults_injected += 1
            self.companions += outcome.companions
            self.documents_lost += outcome.lost
            if outcome.lost:
                self._finding(
                    "documents lost", "lost", f"{outcome.lost} valid document(s) lost", data, artifacts
                )

    def _finding(self, signature: str, kind: str, detail: str, data: bytes, artifacts: Path | None) -> None:
        entry = self.findings.get(signature)
        if entry is None:
            artifact = ""
            if artifacts is not None:
                artifacts.mkdir(parents=True, exist_ok=True)
                path = artifacts / f"{self.target}-{kind}-{hashlib.sha1(data).hexdigest()[:16]}"
                path.write_bytes(data)
                artifact = str(path)
            entry = self.findings[signature] = {
                "kind": kind,
                "detail": detail[:2000],
                "artifact": artifact,
                "count": 0,
            }
            print(f"FINDING [{self.target}] {signature}: {detail[:2000]}", file=sys.stderr, flush=True)
        entry["count"] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "inputs": self.inputs,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "ignored": self.ignored,
            "documents": self.documents,
            "rejections": dict(sorted(self.rejections.items())),
            "faults_injected": self.faults_injected,
            "companions": self.companions,
            "documents_lost": self.documents_lost,
            "findings": sum(f["count"] for f in self.findings.values()),
            "finding_details": [{"signature": s, **f} for s, f in self.findings.items()],
            "slowest_input_s": round(self.slowest_input_s, 3),
            "complete": self.complete,
        }

    def write(self, path: Path) -> None:
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        partial.replace(path)


def _where(err: BaseException) -> str:
    """The innermost frame of the error inside the repository (outside this harness), as ``file:line``."""
    frames = traceback.extract_tb(err.__traceback__)
    here = Path(__file__).resolve()
    inside = [
        f
        for f in frames
        if Path(f.filename).resolve() != here and str(REPO) in f.filename and ".venv" not in f.filename
    ]
    frame = (inside or frames or [None])[-1]
    if frame is None:
        return "?"
    return f"{os.path.relpath(frame.filename, REPO)}:{frame.lineno} ({frame.name})"


def _describe(err: BaseException) -> str:
    return "".join(traceback.format_exception(type(err), err, err.__traceback__, limit=-6))[-2000:]


# --- the child: one target under atheris ---------------------------------------------------------------


def run_child(args: argparse.Namespace) -> int:
    """Fuzz one target in this process (atheris runs one target per process); write counts to --out."""
    import atheris

    logging.disable(logging.WARNING)  # parsers log what they skip; at this rate that is only noise
    workdir = Path(args.workdir)
    out = Path(args.out)
    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)  # libFuzzer refuses to start without it
    target = make_target(args.target, workdir / "scratch")
    with atheris.instrument_imports(include=list(target.instrument)):
        target.setup()
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    regressions = [path.read_bytes() for path in sorted(REGRESSIONS.glob(f"{args.target}-*"))]
    for i, seed in enumerate([*target.seeds(), *regressions]):
        (corpus / f"seed-{i:03d}").write_bytes(seed)
    stats = Stats(args.target)
    stats.write(out)
    last_flush = time.monotonic()

    def test_one_input(data: bytes) -> None:
        nonlocal last_flush
        stats.run(target, data, args.timeout_per_input, artifacts)
        if stats.inputs >= args.runs:
            stats.complete = True
            stats.write(out)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1 if stats.findings else 0)  # libFuzzer would exit without running Python's exit hooks
        if time.monotonic() - last_flush > 2.0:
            stats.write(out)
            last_flush = time.monotonic()

    libfuzzer = [
        sys.argv[0],
        f"-runs={args.runs * 2 + 1000}",  # the harness stops itself at --runs inputs
        f"-seed={args.seed}",
        f"-max_len={args.max_len}",
        f"-timeout={int(max(2 * args.timeout_per_input, args.timeout_per_input + 10))}",
        f"-artifact_prefix={artifacts}/{args.target}-",
        "-rss_limit_mb=4096",
        str(corpus),
    ]
    atheris.Setup(libfuzzer, test_one_input)
    atheris.Fuzz()
    stats.complete = True
    stats.write(out)
    return 1 if stats.findings else 0


# --- the parent: every target in its own process ------------------------------------------------------


def run_target(
    name: str,
    runs: int,
    seed: int,
    max_len: int,
    timeout_s: float,
    workdir: Path,
    artifacts: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Fuzz one target in a child process; its figures, with a finding for a child that died (a hang
    past the per-input limit, a crash in native code, memory exhaustion)."""
    work = workdir / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = work / "stats.json"
    log = work / "libfuzzer.log"
    command = [
        sys.executable,
        "-m",
        "tests.harness.fuzz",
        "--child",
        "--target",
        name,
        "--runs",
        str(runs),
        "--seed",
        str(seed),
        "--max-len",
        str(max_len),
        "--timeout-per-input",
        str(timeout_s),
        "--workdir",
        str(work),
        "--out",
        str(out),
        "--artifacts",
        str(artifacts),
    ]
    say(f"{name}: fuzzing {runs} inputs (seed {seed}, max_len {max_len})")
    start = time.monotonic()
    with open(log, "wb") as handle:
        returncode = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - start
    result: dict[str, Any] = Stats(name).to_dict()
    if out.exists():
        result = json.loads(out.read_text())
    if not result["complete"]:
        kind = "hang" if returncode == LIBFUZZER_TIMEOUT_EXIT else "crash"
        dumped = sorted(
            str(p) for p in artifacts.glob(f"{name}-*") if p.name.split("-")[1] in ("timeout", "crash", "oom")
        )
        tail = log.read_text(errors="replace")[-3000:]
        result["finding_details"].append(
            {
                "signature": f"child died ({kind}, exit {returncode})",
                "kind": kind,
                "detail": tail,
                "artifact": dumped[-1] if dumped else "",
                "count": 1,
            }
        )
        result["findings"] += 1
        say(f"{name}: the fuzzing process died (exit {returncode}); log tail:\n{tail}")
    result.update(seed=seed, runs=runs, max_len=max_len, seconds=round(seconds, 1), exit=returncode)
    return result


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    rejections: Counter[str] = Counter()
    for result in results:
        rejections.update(result["rejections"])
    return {
        "targets": results,
        "runs": len(results),
        "inputs": sum(r["inputs"] for r in results),
        "accepted": sum(r["accepted"] for r in results),
        "rejected": sum(r["rejected"] for r in results),
        "ignored": sum(r["ignored"] for r in results),
        "rejections": dict(sorted(rejections.items())),
        "faults_injected": sum(r["faults_injected"] for r in results),
        "documents_lost": sum(r["documents_lost"] for r in results),
        "findings": sum(r["findings"] for r in results),
        "seconds": round(sum(r["seconds"] for r in results), 1),
    }


def _table(summary: dict[str, Any]) -> str:
    lines = [
        f"{'target':<10}{'inputs':>9}{'accepted':>10}{'rejected':>10}{'ignored':>9}{'injected':>10}"
        f"{'lost':>6}{'findings':>10}{'seconds':>9}  rejections by reason"
    ]
    for r in [*summary["targets"], {**summary, "target": "all"}]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["rejections"].items(), key=lambda kv: -kv[1]))
        lines.append(
            f"{r['target']:<10}{r['inputs']:>9}{r['accepted']:>10}{r['rejected']:>10}{r['ignored']:>9}"
            f"{r['faults_injected']:>10}{r['documents_lost']:>6}{r['findings']:>10}{r['seconds']:>9}"
            f"  {reasons}"
        )
    return "\n".join(lines)


def reproduce(name: str, paths: list[str]) -> int:
    """Run saved inputs through a target in this process, without atheris, and report each one."""
    with tempfile.TemporaryDirectory(prefix="tierflow-fuzz-") as scratch:
        target = make_target(name, Path(scratch))
        target.setup()
        failed = 0
        for path in paths:
            data = Path(path).read_bytes()
            try:
                outcome = target.check(data)
            except Exception:
                failed += 1
                print(f"{path}: FINDING\n{traceback.format_exc()}")
                continue
            print(f"{path}: {outcome}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    parser.add_argument("--runs", type=int, default=2000, help="inputs per target (release checks: 200000)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--max-len", type=int, default=4096, help="longest input libFuzzer makes (bytes)")
    parser.add_argument("--timeout-per-input", type=float, default=10.0, help="seconds; longer is a finding")
    parser.add_argument("--out", help="write the JSON summary here")
    parser.add_argument("--workdir", default="", help="scratch directory (default: a temporary one)")
    parser.add_argument(
        "--artifacts",
        default=str(REPO / "tierflow-data" / "fuzz-findings"),
        help="where finding inputs are kept",
    )
    parser.add_argument("--reproduce", nargs="+", metavar="FILE", help="run saved inputs through --target")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args)
    if args.reproduce:
        if args.target == "all":
            parser.error("--reproduce needs one --target")
        return reproduce(args.target, args.reproduce)
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # the files target writes a file per input
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tierflow-fuzz-", dir=shm))
    workdir.mkdir(parents=True, exist_ok=True)
    artifacts = Path(args.artifacts).resolve()
    targets = TARGETS if args.target == "all" else (args.target,)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results = [
        run_target(t, args.runs, args.seed, args.max_len, args.timeout_per_input, workdir, artifacts, say)
        for t in targets
    ]
    summary = summarize(results)
    summary["artifacts"] = str(artifacts) if artifacts.exists() and any(artifacts.iterdir()) else ""
    if artifacts.exists() and not summary["artifacts"]:
        artifacts.rmdir()
    print(_table(summary))
    text = json.dumps(summary, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if summary["findings"] or summary["documents_lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
