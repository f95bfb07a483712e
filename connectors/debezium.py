"""Debezium change events, as they arrive from Kafka, decoded into document events.

A pure decoder: one Kafka record (key bytes, value bytes) in, one
:class:`~tierflow.records.DocumentEvent`, one :class:`~tierflow.deadletter.DeadLetter` or ``None`` out. It
does no I/O and never raises on bad input, so it can sit in any Beam ``Map``/``FlatMap``::

    mapping = DebeziumMapping(text_column="body", title_column="title", id_prefix="pg.public.articles:")
    result = decode_change(msg.key(), msg.value(), position, mapping)

Wire format
    Kafka Connect's ``JsonConverter``, with ``schemas.enable=true`` (``{"schema": ..., "payload": ...}``:
    an object with exactly those two members is unwrapped to its payload) or ``false`` (the payload
    itself). Both forms decode to the same event. The ``schema`` is not read: values are taken as the
    JSON holds them (Debezium's encodings of decimals, temporal types and bytes are not converted).
    Keys may be JSON with or without the envelope (an object of key columns, or a JSON scalar), or a
    plain string that is not JSON (``StringConverter``): a scalar or plain-string key is the id itself
    (a key not starting with ``{``, ``[`` or ``"`` is taken as its text, so ``1004`` is ``"1004"``).

Operations (``op``)
    - ``c`` (create), ``u`` (update), ``r`` (snapshot read): an upsert of the ``after`` row.
    - ``d`` (delete): a delete; the id comes from ``before`` (a full row, or only the primary key under
      PostgreSQL's ``REPLICA IDENTITY DEFAULT``) and, for columns ``before`` lacks or when it is null,
      from the record key.
    - A tombstone (a null value: ``None``, empty bytes, JSON ``null`` or ``{"schema": null, "payload":
      null}``) with a key: a delete of that key's document. Debezium sends one after each delete, for log
      compaction. Its version is ``tombstone_version`` (default 0): see :func:`decode_change` for why.

Recognised and ignored (``None`` is returned; they are not documents and not errors)
    - Heartbeats: a payload with no ``op`` whose only members are ``ts_ms`` (required), ``ts_us``,
      ``ts_ns`` (Debezium's ``io.debezium.connector.common.Heartbeat`` value).
    - Transaction metadata: a payload with no ``op``, ``status`` ``"BEGIN"`` or ``"END"``, and an ``id``.
    - Schema changes: a payload with no ``op`` holding ``ddl``, ``tableChanges`` or ``historyRecord``
      (the schema-change topic and the schema-history topic).
    - ``op`` ``m``: PostgreSQL logical-decoding messages (``pg_logical_emit_message``), not row changes.

    Any other payload without an ``op`` is dead-lettered (``unknown_op``), not ignored: a row flattened
    by the ``ExtractNewRecordState`` SMT looks exactly like that, and dropping it would lose documents
    silently.

Document id
    ``id_prefix`` + the id columns' values joined with ``":"``. With ``id_columns=()`` the id columns are
    the fields of the record key, in key order. Each value is read from the row (``after`` for upserts,
    ``before`` for deletes) and, where the row lacks it or holds null, from the record key. Strings are
    used as they are; integers (and integral floats) in decimal, so a key ``{"id": "1"}`` and a row
    ``{"id": 1}`` give the same id.

Version (a larger version is newer; see :func:`decode_change`)
    ``2 * P + s``, where ``s`` is 0 for a snapshot read (``r``) and 1 for a streamed change, and ``P``:

    - PostgreSQL (``source.connector == "postgresql"``, or a ``source.lsn`` and no connector name):
      ``source.lsn`` (an integer as Debezium sends it; a decimal string or the text form ``X/Y`` is read
      too).
    - MySQL/MariaDB (``"mysql"``/``"mariadb"``, or ``source.file`` and ``source.pos`` and no connector
      name): ``binlog file index * 2**32 + source.pos`` (``mysql-bin.000003`` has index 3; binlog
      positions are 32-bit).
    - Otherwise, or when those fields are absent or null: ``source.ts_ms`` (if positive), else
      ``source.ts_sec * 1000`` (old MySQL events), else the envelope ``ts_ms``, else the record's Kafka
      offset (the last integer of ``position.position``), else 0.

Event time
    ``source.ts_ms / 1000`` if positive, else ``source.ts_sec``, else the envelope ``ts_ms / 1000``
    (when the connector processed the change), else None.

Text and title
    ``text_column`` names one column, or a tuple of columns whose non-null, non-empty values are joined
    with a blank line (``"\\n\\n"``) in the order given. A text column absent from ``after`` is
    ``missing_text``; a null one counts as empty (validation rejects an upsert with empty text). The
    title is ``title_column``'s value, ``""`` when it is unset, absent or null.

Metadata
    Upserts: ``metadata_columns`` of ``after`` (``()``: every column that is not an id, text or title
    column), then ``table`` (``db.schema.table``, or ``db.table`` for MySQL: the parts the source names),
    ``connector`` (``source.connector``, else inferred from the position fields, else None) and ``op``
    (Debezium's letter). These three win over row columns of the same name. Columns holding the
    unavailable-value placeholder are left out. Deletes: only ``table``, ``connector``, ``op``.
    Tombstones: ``{"op": "tombstone"}``.

Rejections: :class:`~tierflow.deadletter.DeadLetter`, stage ``decode``, ``raw`` the value bytes exactly
as received (the key bytes for a tombstone), with one of these reasons:

- ``not_utf8``: the value (or a key that is needed) is not UTF-8, or a JSON string holds an unpaired
  surrogate escape.
- ``malformed_json``: the value is not JSON, or a needed key starts like JSON (``{``, ``[``, ``"``) but
  is not.
- ``not_an_object``: the value (its payload, if enveloped) is JSON but not an object, or a needed key
  is a JSON array.
- ``unknown_op``: ``op`` is not one of ``c u r d m t`` (or not a string), or a payload has no ``op`` and
  is none of the recognised control messages above.
- ``unsupported_op``: ``op`` ``t`` (a table truncate): it cannot be applied document by document; the
  detail names the table (re-sync it).
- ``missing_id``: an id column is absent or null in the row and in the key, the record has no key when
  the id comes from it, or the id is empty.
- ``missing_text``: a text column is absent from ``after``, an upsert has no ``after`` row, or a text
  or title column holds the unavailable-value placeholder (``__debezium_unavailable_value``: PostgreSQL
  omits unchanged TOASTed values unless the table has ``REPLICA IDENTITY FULL``). A partial row is not
  indexed: the stored text would be the placeholder.
- ``wrong_type``: a text or title value is not a string, ``after`` is not an object, an id value is not
  a string or number, or a position field the version is made of (``lsn``, ``file``, ``pos``) is not a
  non-negative integer (a decimal string is accepted, and ``X/Y`` for an LSN) or is out of range, or
  the change's timestamp (``ts_ms``, ``ts_sec``) is over 2**62 ms.

Configuration errors (an empty column name, an empty text tuple) raise
:class:`~tierflow.errors.ConfigError` from :class:`DebeziumMapping`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from tierflow import jsonparse
from tierflow.deadletter import DeadLetter
from tierflow.errors import ConfigError
from tierflow.jsonparse import json_type
from tierflow.records import DocumentEvent, SourcePosition

__all__ = [
    "IGNORED_OPS",
    "REASONS",
    "STAGE",
    "UNAVAILABLE_VALUE",
    "UPSERT_OPS",
    "DebeziumMapping",
    "decode_change",
]

STAGE = "decode"
UNAVAILABLE_VALUE = "__debezium_unavailable_value"
UPSERT_OPS: tuple[str, ...] = ("c", "u", "r")
DELETE_OP = "d"
IGNORED_OPS: tuple[str, ...] = ("m",)
TRUNCATE_OP = "t"
REASONS: tuple[str, ...] = (
    "not_utf8",
    "malformed_json",
    "not_an_object",
    "unknown_op",
    "unsupported_op",
    "missing_id",
    "missing_text",
    "wrong_type",
)
TEXT_SEPARATOR = "\n\n"
ID_SEPARATOR = ":"

_MAX_LSN = 1 << 62  # 2 * lsn + 1 must fit in a signed 64-bit version
_MAX_BINLOG_FILE = 1 << 30  # (index * 2**32 + pos) * 2 + 1 < 2**63
_MAX_POS = 1 << 32
_HEARTBEAT_FIELDS = frozenset({"ts_ms", "ts_us", "ts_ns"})
_SCHEMA_CHANGE_FIELDS = ("ddl", "tableChanges", "historyRecord")
_ENVELOPE = frozenset({"schema", "payload"})
_BINLOG_INDEX = re.compile(r".*\.(\d+)")
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
_TRAILING_INTEGER = re.compile(r"(\d+)\s*$")
_TEXT_LSN = re.compile(r"\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*")


@dataclass(frozen=True)
class DebeziumMapping:
    """How one table's rows map onto documents.

    Args:
        id_columns: Columns forming the document id, joined with ``":"``; ``()`` uses the fields of the
            record key (the primary key, or ``message.key.columns``) in key order.
        text_column: The body column, or a tuple of columns joined with a blank line (``"\\n\\n"``),
            skipping null and empty values. Every column named must exist in ``after``.
        title_column: The title column; None for no title.
        metadata_columns: Columns copied into ``metadata``; ``()`` copies every column that is not an id,
            text or title column.
        id_prefix: Prepended to every id, e.g. ``"pg.public.articles:"``, to keep ids of several tables
            apart in one index.
        unavailable_value: Debezium's ``unavailable.value.placeholder`` (change it only if the connector
            sets another one).

    Raises:
        ConfigError: An empty column name, or no text column.

    Example:
        >>> mapping = DebeziumMapping(
        ...     id_columns=("id",), text_column=("summary", "body"), title_column="title"
        ... )
    """

    id_columns: tuple[str, ...] = ()
    text_column: str | tuple[str, ...] = "text"
    title_column: str | None = None
    metadata_columns: tuple[str, ...] = ()
    id_prefix: str = ""
    unavailable_value: str = UNAVAILABLE_VALUE

    def __post_init__(self) -> None:
        for name in ("id_columns", "metadata_columns"):
            value = getattr(self, name)
            columns = (value,) if isinstance(value, str) else tuple(value)
            if any(not isinstance(c, str) or not c for c in columns):
                raise ConfigError(f"DebeziumMapping.{name} must hold non-empty column names, got {value!r}")
            object.__setattr__(self, name, columns)
        text = self.text_column
        texts = (text,) if isinstance(text, str) else tuple(text)
        if not texts or any(not isinstance(c, str) or not c for c in texts):
            raise ConfigError(
                "DebeziumMapping.text_column must be a column name or a non-empty tuple of them, "
                f"got {text!r}"
            )
        object.__setattr__(self, "text_column", text if isinstance(text, str) else texts)
        if self.title_column is not None and (
            not isinstance(self.title_column, str) or not self.title_column
        ):
            raise ConfigError(
                f"DebeziumMapping.title_column must be a column name or None, got {self.title_column!r}"
            )

    @property
    def text_columns(self) -> tuple[str, ...]:
        """The text column(s) as a tuple."""
        return (self.text_column,) if isinstance(self.text_column, str) else self.text_column


class _Reject(NamedTuple):
    reason: str
    detail: str
    doc_id: str | None = None


_NO_KEY = object()  # the key has not been parsed yet


def decode_change(
    key: bytes | None,
    value: bytes | None,
    position: SourcePosition,
    mapping: DebeziumMapping,
    *,
    tombstone_version: int = 0,
) -> DocumentEvent | DeadLetter | None:
    """One Debezium Kafka record as a document event, a dead letter, or None for a control message.

    Never raises on bad input: see the module documentation for what is recognised, the id, text and
    metadata rules, and the rejection reasons.

    Why the version is the source position: Debezium keys a row's changes to one partition, so the
    Kafka offset also grows with each change of a row, but only as long as nothing is re-emitted. A
    connector restart re-sends changes since its last committed offset, and a topic that is re-created,
    re-partitioned or mirrored renumbers them, so an older change can arrive at a higher offset. The
    LSN (PostgreSQL) and the binlog coordinates (MySQL) are the database's own commit order: a replayed
    change keeps its position and loses to the newer state already indexed. A snapshot read carries the
    position its consistent snapshot was taken at, and a change streamed right after can carry that
    same position (MySQL's first binlog event after the snapshot does), hence ``2 * P + s``: at equal
    ``P`` the streamed change wins. Limits: versions of one row must come from one connector family
    (an LSN and a fallback ``ts_ms`` are not comparable); a MySQL failover to a server with other binlog
    coordinates, ``RESET MASTER``, or a PostgreSQL dump-and-restore into a new cluster restarts
    positions lower, and the index must then be rebuilt.

    Why a tombstone's version is ``tombstone_version`` (default 0): a tombstone has no source block, so
    this function cannot know its position. The right version is the preceding delete's (it equals
    that delete, wins the tie with it, and loses to any later re-insert, whose position is higher). A
    stateless decoder cannot know it; the alternatives are worse. The maximum version would make the
    delete beat every later re-insert of the key forever; the Kafka offset is on another scale than LSNs
    and binlog positions, so it may beat a re-insert just the same (an offset above the LSN) or lose to
    the upsert it should remove. 0 never overrides anything: in the normal flow the delete event, which
    carries its true version, has already removed the document and the tombstone changes nothing (a
    replayed delete is idempotent). It fails only where log compaction has removed the delete event but
    not yet its tombstone and the consumer still holds the row (a consumer lagging past the segment
    roll): there 0 loses to the indexed upsert. A caller that knows the document's latest version (a
    stateful step keyed by document id remembering the delete it saw, or the committed index state)
    passes it as ``tombstone_version``; the delete then wins the tie at that version, and a tombstone
    can still never beat a newer change. Tombstones are marked ``metadata["op"] == "tombstone"``.

    Args:
        key: The record key bytes (None for a null key).
        value: The record value bytes; None (or empty, or JSON null) is a tombstone.
        position: Where the record came from, e.g. ``SourcePosition("kafka", "<topic>/<partition>",
            "<offset>")``; it becomes the event's (or dead letter's) source.
        mapping: How the table's rows map onto documents.
        tombstone_version: The version a tombstone's delete gets (see above); must be >= 0.

    Returns:
        A :class:`DocumentEvent` (upsert or delete), a :class:`DeadLetter` (stage ``decode``), or None
        for a heartbeat, transaction marker, schema change or logical-decoding message.

    Example:
        >>> event = decode_change(b'{"id": 7}', b'{"op": "c", "after": {"id": 7, "text": "Hi"}, '
        ...     b'"source": {"connector": "postgresql", "lsn": 100}}', SourcePosition("kafka", "t/0", "5"),
        ...     DebeziumMapping())
        >>> event.doc_id, event.op, event.version
        ('7', 'upsert', 201)
    """
    if tombstone_version < 0:
        raise ValueError(f"tombstone_version must be >= 0, got {tombstone_version}")
    raw = value if value is not None else (key or b"")
    parsed = _parse_value(value)
    if isinstance(parsed, _Reject):
        return _dead(parsed, position, raw)
    if parsed is None:
        return _tombstone(key, position, mapping, tombstone_version, raw)
    event = _decode_payload(parsed, key, position, mapping)
    return _dead(event, position, raw) if isinstance(event, _Reject) else event


def _dead(reject: _Reject, position: SourcePosition, raw: bytes) -> DeadLetter:
    return DeadLetter(reject.reason, reject.detail, STAGE, position, raw, reject.doc_id)


# --- parsing ---------------------------------------------------------------------------------------


def _parse_json(data: bytes, what: str) -> tuple[str, Any] | _Reject:
    """(the text, its JSON value) or why it is not JSON."""
    try:
        parsed = jsonparse.loads(data)
    except jsonparse.JsonRejected as err:
        return _Reject(err.reason, f"{what} is not usable JSON: {err.detail}")
    return data.decode("utf-8"), parsed


def _unwrap(data: Any) -> Any:
    """The payload of a ``schemas.enable=true`` envelope; anything else as it is."""
    if isinstance(data, dict) and data.keys() == _ENVELOPE:
        return data["payload"]
    return data


def _parse_value(value: bytes | None) -> dict[str, Any] | None | _Reject:
    """The change payload, None for a tombstone, or why the value cannot be read."""
    if value is None or not value.strip():
        return None
    parsed = _parse_json(value, "the value")
    if isinstance(parsed, _Reject):
        return parsed
    payload = _unwrap(parsed[1])
    if payload is None:
        return None
    if not isinstance(payload, dict):
        where = "the payload" if isinstance(parsed[1], dict) else "the value"
        return _Reject(
            "not_an_object", f"{where} is a JSON {json_type(payload)}; expected a Debezium change object"
        )
    return payload


def _parse_key(key: bytes | None) -> dict[str, Any] | str | int | float | None | _Reject:
    """The record key: its fields (an object), a scalar id, None for no key, or why it is unusable.

    A key that starts like a JSON object, array or string is parsed as JSON (enveloped or not); any
    other key (a JSON number, or a plain string from ``StringConverter``) is its own text.
    """
    if key is None or not key.strip():
        return None
    if key.lstrip()[:1] not in (b"{", b"[", b'"'):
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError as err:
            return _Reject("not_utf8", f"the record key has invalid UTF-8 at byte {err.start}: {err.reason}")
    parsed = _parse_json(key, "the record key")
    if isinstance(parsed, _Reject):
        return parsed
    data = _unwrap(parsed[1])
    if data is None or isinstance(data, dict | str):
        return data
    if isinstance(data, int | float) and not isinstance(data, bool):
        return data
    return _Reject(
        "not_an_object",
        f"the record key is a JSON {json_type(data)}; expected an object of key columns, a scalar or a string",
    )


def _as_int(value: Any) -> int | None:
    """An integer from an int, an integral float or a decimal string; None otherwise (booleans too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        try:
            return int(value)
        except ValueError:  # more digits than int() converts: out of every range anyway
            return None
    return None


# --- control messages --------------------------------------------------------------------------------


def _control_kind(payload: Mapping[str, Any]) -> str | None:
    """``transaction``, ``heartbeat`` or ``schema_change`` for a recognised payload without ``op``."""
    if payload.get("status") in ("BEGIN", "END") and "id" in payload:
        return "transaction"
    if "ts_ms" in payload and payload.keys() <= _HEARTBEAT_FIELDS:
        return "heartbeat"
    if any(name in payload for name in _SCHEMA_CHANGE_FIELDS):
        return "schema_change"
    return None


# --- decoding ------------------------------------------------------------------------------------------


def _tombstone(
    key: bytes | None, position: SourcePosition, mapping: DebeziumMapping, version: int, raw: bytes
) -> DocumentEvent | DeadLetter:
    if key is None or not key.strip():
        return _dead(
            _Reject("missing_id", "a tombstone (null value) without a key names no document"), position, raw
        )
    resolved = _doc_id(None, "", key, mapping)
    if isinstance(resolved, _Reject):
        return _dead(resolved, position, raw)
    return DocumentEvent(resolved[0], "delete", "", "", {"op": "tombstone"}, position, version, None)


def _decode_payload(
    payload: dict[str, Any], key: bytes | None, position: SourcePosition, mapping: DebeziumMapping
) -> DocumentEvent | _Reject | None:
    op = payload.get("op")
    if op is None:
        if _control_kind(payload) is not None:
            return None
        hint = (
            "it has before/after/source but no op"
            if any(name in payload for name in ("before", "after", "source"))
            else "it is not a heartbeat, transaction or schema-change message either; if the "
            "ExtractNewRecordState SMT flattens the events, remove it: tierflow needs the change envelope"
        )
        return _Reject("unknown_op", f"the payload has no 'op' field: {hint}")
    if op in IGNORED_OPS:
        return None
    source = payload.get("source")
    source = source if isinstance(source, dict) else {}
    table = _table(source)
    if op == TRUNCATE_OP:
        return _Reject(
            "unsupported_op",
            f"op 't' (truncate of {table or 'an unnamed table'}) cannot be applied document by document: "
            "run a full re-sync (new snapshot) of the table",
        )
    if not isinstance(op, str) or op not in (*UPSERT_OPS, DELETE_OP):
        return _Reject("unknown_op", f"op is {op!r}; expected one of 'c', 'u', 'r', 'd' (or 'm', 't')")

    upsert = op in UPSERT_OPS
    row_name = "after" if upsert else "before"
    row = payload.get(row_name)
    if upsert and row is not None and not isinstance(row, dict):
        return _Reject("wrong_type", f"'after' is a JSON {json_type(row)}; expected an object (the row)")
    resolved = _doc_id(row if isinstance(row, dict) else None, row_name, key, mapping)
    if isinstance(resolved, _Reject):
        return resolved
    doc_id, id_names = resolved

    version = _version(payload, source, op, position)
    if isinstance(version, str):
        return _Reject("wrong_type", version, doc_id)
    event_time = _event_time(payload, source)
    if isinstance(event_time, str):
        return _Reject("wrong_type", event_time, doc_id)
    info = {"table": table, "connector": _connector(source), "op": op}
    if not upsert:
        return DocumentEvent(doc_id, "delete", "", "", info, position, version, event_time)
    if not isinstance(row, dict):
        return _Reject("missing_text", f"op {op!r} carries no 'after' row", doc_id)

    text = _text(row, mapping)
    if isinstance(text, _Reject):
        return text._replace(doc_id=doc_id)
    title = _title(row, mapping)
    if isinstance(title, _Reject):
        return title._replace(doc_id=doc_id)
    metadata = _metadata(row, mapping, id_names)
    metadata.update(info)
    return DocumentEvent(doc_id, "upsert", text, title, metadata, position, version, event_time)


def _doc_id(
    row: Mapping[str, Any] | None, row_name: str, key: bytes | None, mapping: DebeziumMapping
) -> tuple[str, tuple[str, ...]] | _Reject:
    """(the document id, the id column names used) or why there is none."""
    parsed_key: Any = _NO_KEY

    def record_key() -> Any:
        nonlocal parsed_key
        if parsed_key is _NO_KEY:
            parsed_key = _parse_key(key)
            if isinstance(parsed_key, _Reject) and key is not None:
                shown = key[:200]
                parsed_key = parsed_key._replace(
                    detail=f"{parsed_key.detail} (key bytes: {shown!r}{'...' if len(key) > 200 else ''})"
                )
        return parsed_key

    names = mapping.id_columns
    if not names:
        found = record_key()
        if isinstance(found, _Reject):
            return found
        if found is None:
            return _Reject(
                "missing_id",
                "the record has no key (a table without a primary key?), and DebeziumMapping.id_columns is "
                "empty: set id_columns to the columns that identify a row",
            )
        if not isinstance(found, dict):
            part = _id_part(found, "the record key")
            if isinstance(part, _Reject):
                return part
            return _finish_id(mapping.id_prefix + part, ())
        if not found:
            return _Reject("missing_id", "the record key is an empty object: set DebeziumMapping.id_columns")
        names = tuple(found)

    parts: list[str] = []
    for name in names:
        value = row.get(name) if row is not None else None
        if value is None:
            found = record_key()
            if isinstance(found, dict):
                value = found.get(name)
            elif found is not None and not isinstance(found, _Reject) and len(names) == 1:
                value = found
        if value is None:
            where = f"the '{row_name}' row and the record key" if row_name else "the record key"
            return _Reject("missing_id", f"id column {name!r} is absent or null in {where}")
        part = _id_part(value, f"id column {name!r}")
        if isinstance(part, _Reject):
            return part
        parts.append(part)
    return _finish_id(mapping.id_prefix + ID_SEPARATOR.join(parts), names)


def _finish_id(doc_id: str, names: tuple[str, ...]) -> tuple[str, tuple[str, ...]] | _Reject:
    if not doc_id.strip():
        return _Reject("missing_id", "the document id is empty")
    return doc_id, names


def _id_part(value: Any, what: str) -> str | _Reject:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return _Reject("wrong_type", f"{what} is a JSON {json_type(value)}; expected a string or a number")


def _family(source: Mapping[str, Any]) -> str:
    """``postgresql``, ``binlog`` (MySQL/MariaDB) or ``other``: which position fields order the events."""
    name = source.get("connector")
    if isinstance(name, str) and name:
        if name == "postgresql":
            return "postgresql"
        return "binlog" if name in ("mysql", "mariadb") else "other"
    if "lsn" in source:
        return "postgresql"
    return "binlog" if "file" in source and "pos" in source else "other"


def _connector(source: Mapping[str, Any]) -> str | None:
    name = source.get("connector")
    if isinstance(name, str) and name:
        return name
    return {"postgresql": "postgresql", "binlog": "mysql"}.get(_family(source))


def _table(source: Mapping[str, Any]) -> str | None:
    parts = [source.get(name) for name in ("db", "schema", "table")]
    named = [part for part in parts if isinstance(part, str) and part]
    return ".".join(named) or None


def _version(
    payload: Mapping[str, Any], source: Mapping[str, Any], op: str, position: SourcePosition
) -> int | str:
    """The event's version (see the module documentation), or what is wrong with its position fields."""
    streamed = 0 if op == "r" else 1
    family = _family(source)
    if family == "postgresql" and source.get("lsn") is not None:
        lsn = _as_lsn(source["lsn"])
        if lsn is None or not 0 <= lsn < _MAX_LSN:
            return (
                f"source.lsn is {source['lsn']!r}; expected a non-negative integer below 2**62 "
                "(or PostgreSQL's text form X/Y)"
            )
        return 2 * lsn + streamed
    if family == "binlog" and source.get("file") is not None and source.get("pos") is not None:
        file, pos_value = source["file"], source["pos"]
        match = _BINLOG_INDEX.fullmatch(file) if isinstance(file, str) else None
        index = _as_int(match.group(1)) if match else None
        if index is None or index >= _MAX_BINLOG_FILE:
            return (
                f"source.file is {file!r}; expected a binlog file name ending in its index (mysql-bin.000003)"
            )
        pos = _as_int(pos_value)
        if pos is None or not 0 <= pos < _MAX_POS:
            return f"source.pos is {pos_value!r}; expected a binlog position (an integer in 0..2**32-1)"
        return 2 * (index * _MAX_POS + pos) + streamed
    millis = _timestamp_ms(payload, source)
    if isinstance(millis, str):
        return millis
    if millis is None:
        offset = _TRAILING_INTEGER.search(position.position)
        millis = int(offset.group(1)) if offset else 0
    return 2 * millis + streamed


def _as_lsn(value: Any) -> int | None:
    """A PostgreSQL LSN: an integer (Debezium's form), a decimal string, or the text form ``X/Y`` (hex)."""
    if isinstance(value, str):
        match = _TEXT_LSN.fullmatch(value)
        if match:
            return (int(match.group(1), 16) << 32) | int(match.group(2), 16)
    return _as_int(value)


def _first_positive(*candidates: tuple[Any, int]) -> int | None:
    for value, scale in candidates:
        number = _as_int(value)
        if number is not None and number > 0:
            return number * scale
    return None


def _timestamp_ms(payload: Mapping[str, Any], source: Mapping[str, Any]) -> int | None | str:
    """The change's epoch ms (``source.ts_ms``, ``source.ts_sec``, the envelope ``ts_ms``), None when none
    is given, or what is wrong with it."""
    millis = _first_positive(
        (source.get("ts_ms"), 1), (source.get("ts_sec"), 1000), (payload.get("ts_ms"), 1)
    )
    if millis is not None and millis >= _MAX_LSN:
        return "the change's timestamp (source.ts_ms, source.ts_sec or ts_ms) is over 2**62 ms: not epoch ms"
    return millis


def _event_time(payload: Mapping[str, Any], source: Mapping[str, Any]) -> float | None | str:
    millis = _timestamp_ms(payload, source)
    if isinstance(millis, str):
        return millis
    return millis / 1000 if millis is not None else None


def _unavailable(column: str, what: str) -> _Reject:
    return _Reject(
        "missing_text",
        f"{what} column {column!r} holds Debezium's unavailable-value placeholder: the value did not change "
        "and PostgreSQL did not send it (a TOASTed column). Set REPLICA IDENTITY FULL on the table so "
        "updates carry every column, or re-snapshot the row",
    )


def _text(row: Mapping[str, Any], mapping: DebeziumMapping) -> str | _Reject:
    parts: list[str] = []
    for column in mapping.text_columns:
        if column not in row:
            present = ", ".join(map(repr, row)) or "none"
            return _Reject(
                "missing_text",
                f"text column {column!r} is absent from 'after' (its columns: {present}); set "
                "DebeziumMapping.text_column",
            )
        value = row[column]
        if value is None:
            continue
        if not isinstance(value, str):
            return _Reject(
                "wrong_type", f"text column {column!r} is a JSON {json_type(value)}; expected a string"
            )
        if value == mapping.unavailable_value:
            return _unavailable(column, "text")
        if value:
            parts.append(value)
    return TEXT_SEPARATOR.join(parts)


def _title(row: Mapping[str, Any], mapping: DebeziumMapping) -> str | _Reject:
    column = mapping.title_column
    if column is None:
        return ""
    value = row.get(column)
    if value is None:
        return ""
    if not isinstance(value, str):
        return _Reject(
            "wrong_type", f"title column {column!r} is a JSON {json_type(value)}; expected a string"
        )
    if value == mapping.unavailable_value:
        return _unavailable(column, "title")
    return value


def _metadata(row: Mapping[str, Any], mapping: DebeziumMapping, id_names: tuple[str, ...]) -> dict[str, Any]:
    if mapping.metadata_columns:
        columns: tuple[str, ...] = tuple(c for c in mapping.metadata_columns if c in row)
    else:
        mapped = {*id_names, *mapping.text_columns, mapping.title_column}
        columns = tuple(c for c in row if c not in mapped)
    return {c: row[c] for c in columns if row[c] != mapping.unavailable_value}
