"""PostgreSQL logical replication (wal2json) as a change source for the streaming pipeline.

:class:`PostgresCdcSource` follows a logical replication slot with the ``wal2json`` output plugin
(format version 2) over plain SQL, and turns the row changes of mapped tables into
:class:`~tierflow.records.DocumentEvent` s::

    config = PostgresCdcConfig(
        dsn="host=db port=5432 dbname=app user=cdc password=...",
        slot="tierflow",
        mappings={"public.articles": TableMapping(text_column="body", title_column="title")},
        create_slot=True,
    )
    MicroBatchStream(PostgresCdcSource(config), ingest_config).run(stop_event)

Durable before acknowledged (design invariant 4)
    Changes are read with ``pg_logical_slot_peek_changes``, which consumes nothing: every poll reads
    again from the slot's ``confirmed_flush_lsn``. Only :meth:`PostgresCdcSource.acknowledge`, called
    after the index commit that holds the batch, moves the slot on (``pg_replication_slot_advance``).
    A crash between that commit and the advance leaves the slot behind the index; the index manifest
    records the batch's position (``postgres:<slot>`` -> the LSN as a decimal integer), and a source
    started with those positions skips every transaction at or below it. Nothing is lost, nothing is
    applied twice (and a replay would be a no-op anyway: equal versions, equal content).

Transactions, positions and versions
    Logical decoding emits whole transactions in commit order (``B``, the changes, ``C``); a batch
    holds whole transactions. Each transaction is identified by its *commit LSN*: the end of its commit
    record (wal2json's ``nextlsn``; the ``lsn`` of the ``C`` row). It is

    - the ``version`` of every event of the transaction (it grows with commit order, so it is monotonic
      per row);
    - what a batch's position records (the highest commit LSN of the batch);
    - what the slot is advanced to: decoding restarts after the last transaction committed at or
      below it.

    Within one transaction only a row's last change is emitted (keyed by document id): the others
    were never visible outside the transaction, and one version cannot order them. A transaction that
    contains no mapped change (DDL, other tables) yields no item; when a poll finds nothing else, the
    slot is advanced past such transactions at once (nothing of theirs needs to reach the index), so
    an idle stream does not hold WAL back.

    ``event_time`` is the commit timestamp; the event's source position is
    ``SourcePosition("postgres", <slot>, "lsn:<the change's own LSN>")``.

Operations
    - ``I`` (insert), ``U`` (update): an upsert of the new row. For an update, columns that wal2json
      leaves out (unchanged TOASTed values) are taken from the old row when the table has
      ``REPLICA IDENTITY FULL``. An update that changes the id columns also deletes the old document
      (same version), when the old row carries them: primary-key id columns, or ``REPLICA IDENTITY
      FULL``; its metadata names the new id (``moved_to``).
    - ``D`` (delete): a delete; the id comes from the old row (``identity``), which under
      ``REPLICA IDENTITY DEFAULT`` holds only the primary key.
    - ``T`` (truncate): dead letter ``unsupported_op`` naming the table (it cannot be applied document
      by document: re-sync the table).
    - ``B``/``C`` (begin/commit): transaction boundaries, no items. ``M`` (logical messages): ignored.

Mapping (:class:`TableMapping`, one per table, keyed ``schema.table``)
    The document id is ``id_prefix`` + (``schema.table:`` when ``table_prefix``) + the id columns'
    values joined with ``":"`` (strings as they are, integers in decimal). ``id_columns=()`` uses the
    table's primary key. The text is the text column, or the non-null text columns joined with a blank
    line; the title is the title column (``""`` when unset or null). Metadata: ``metadata_columns``
    (``()``: every column that is not an id, text or title column), then ``table`` (``schema.table``),
    ``op`` (``insert``/``update``/``delete``) and ``xid``, which win over row columns of the same name.

Rejections: :class:`~tierflow.deadletter.DeadLetter`, stage ``decode``, ``raw`` the change's wal2json
JSON exactly as received, source position as above, with one of these reasons (:data:`REASONS`):

- ``malformed_json``: the change is not JSON.
- ``not_utf8``: a JSON string holds an unpaired surrogate escape (``\\ud800``; a ``json`` column can
  hold one), which no later stage could store as UTF-8.
- ``not_an_object``: the change is JSON but not an object.
- ``unknown_op``: an ``action`` other than ``B C I U D T M``.
- ``unsupported_op``: a ``TRUNCATE`` (the detail names the table).
- ``unknown_table``: a change of a table without a mapping (only when ``tables=()`` follows every
  table).
- ``missing_id``: an id column is absent or null (for a delete: not in the old row; under
  ``REPLICA IDENTITY DEFAULT`` only primary-key columns are), the table has no primary key and
  ``id_columns`` is empty, or the id is empty.
- ``missing_text``: a text column is absent from the row (for an update: an unchanged TOASTed value
  and no ``REPLICA IDENTITY FULL``), or every text column is null; a title column absent from an
  update's row.
- ``wrong_type``: a text or title value is not a string, an id value is not a string or number, or
  the change's ``columns``/``identity``/``pk`` are not what wal2json writes.

Empty (but non-null) text is passed on; the validation stage rejects it.

Configuration errors (:class:`~tierflow.errors.ConfigError`, raised by :meth:`PostgresCdcSource.start`
or by the config): the server cannot be reached (host and port named, never the password),
``wal_level`` is not ``logical``, wal2json is not installed on the server, the slot is missing and
``create_slot`` is false, the slot belongs to another database or plugin, an invalid DSN, slot name,
table name or mapping. A lost connection while following the slot raises :class:`PostgresUnavailable`
(transient: retry).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tierflow import jsonparse, metrics
from tierflow.config import build, load_settings
from tierflow.deadletter import DeadLetter
from tierflow.errors import ConfigError, TierflowError, Transient
from tierflow.jsonparse import json_type
from tierflow.records import DocumentEvent, SourcePosition

if TYPE_CHECKING:  # imported where used: the pipeline assembly may import this module
    from tierflow.streams import Batch, BatchPolicy

__all__ = [
    "PLUGIN",
    "REASONS",
    "STAGE",
    "SYSTEM",
    "PostgresCdcConfig",
    "PostgresCdcSource",
    "PostgresUnavailable",
    "TableMapping",
    "decode_transaction",
    "format_lsn",
    "load_postgres_config",
    "parse_lsn",
    "redact_dsn",
    "source_key",
]

LOG = logging.getLogger(__name__)

SYSTEM = "postgres"
PLUGIN = "wal2json"
STAGE = "decode"
REASONS: tuple[str, ...] = (
    "malformed_json",
    "not_utf8",
    "not_an_object",
    "unknown_op",
    "unsupported_op",
    "unknown_table",
    "missing_id",
    "missing_text",
    "wrong_type",
)
TEXT_SEPARATOR = "\n\n"
ID_SEPARATOR = ":"
DEFAULT_SCHEMA = "public"
APPLICATION_NAME = "tierflow-postgres-cdc"
# wal2json options: format 2 (one JSON object per change), with LSNs, commit timestamps, xids and the
# primary key's column names (the default id columns).
PEEK_OPTIONS: tuple[str, ...] = (
    "format-version",
    "2",
    "include-lsn",
    "1",
    "include-timestamp",
    "1",
    "include-xids",
    "1",
    "include-pk",
    "1",
)
_IDLE_SLEEP_S = 0.05
_FILL_SLEEP_S = 0.05
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
_TEXT_LSN = re.compile(r"\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*")
_OPS = {"I": "insert", "U": "update", "D": "delete"}
# SQLSTATEs the source tells apart.
_UNDEFINED_FILE = "58P01"  # could not access file "wal2json"
_OBJECT_IN_USE = "55006"  # the slot is active for another process
_UNDEFINED_OBJECT = "42704"  # the slot does not exist
_DUPLICATE_OBJECT = "42710"  # the slot already exists
_INVALID_PARAMETER = "22023"  # an option wal2json does not know


class PostgresUnavailable(TierflowError, Transient):
    """The server went away, or the slot is in use by another process, while following it: retry."""


# --- LSNs, keys, DSNs --------------------------------------------------------------------------------


def parse_lsn(value: str) -> int:
    """PostgreSQL's text form of an LSN (``X/Y``, hex) as an integer.

    Example:
        >>> parse_lsn("0/1929AA8")
        26385064
    """
    match = _TEXT_LSN.fullmatch(value)
    if match is None:
        raise ValueError(f"not an LSN: {value!r}")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    """An integer LSN in PostgreSQL's text form.

    Example:
        >>> format_lsn(26385064)
        '0/1929AA8'
    """
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFF_FFFF:X}"


def source_key(slot: str) -> str:
    """The stream key of a slot, as :attr:`SourcePosition.key` and index manifests spell it.

    Example:
        >>> source_key("tierflow")
        'postgres:tierflow'
    """
    return SourcePosition(SYSTEM, slot).key


def _conninfo(dsn: str) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict

    return dict(conninfo_to_dict(dsn))


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***`` (key=value form), for logs and reprs.

    Example:
        >>> redact_dsn("postgresql://app:secret@db:5432/app")
        'user=app password=*** dbname=app host=db port=5432'
    """
    from psycopg.conninfo import make_conninfo

    try:
        params = _conninfo(dsn)
    except Exception:  # psycopg.ProgrammingError; its message may quote the DSN
        return "<invalid dsn>"
    if params.get("password") is not None:
        params["password"] = "***"
    return make_conninfo("", **params)


def _server_name(dsn: str) -> str:
    """``host:port (database D, user U)`` as far as the DSN and the environment say, no password."""
    import os

    try:
        params = _conninfo(dsn)
    except Exception:
        return "<invalid dsn>"
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    database = params.get("dbname") or os.environ.get("PGDATABASE")
    user = params.get("user") or os.environ.get("PGUSER")
    details = ", ".join(
        part
        for part in (f"database {database!r}" if database else "", f"user {user!r}" if user else "")
        if part
    )
    return f"{host}:{port}" + (f" ({details})" if details else "")


def _scrub(message: str, dsn: str) -> str:
    """``message`` without the DSN's password, in case a server or driver message quotes it."""
    try:
        password = _conninfo(dsn).get("password")
    except Exception:
        password = None
    return message.replace(password, "***") if password else message


# --- configuration -----------------------------------------------------------------------------------


def _qualify(name: str, where: str) -> str:
    """``schema.table`` (a bare table name is in ``public``)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where} must be a table name (schema.table), got {name!r}")
    name = name.strip()
    schema, dot, table = name.partition(".")
    if not dot:
        return f"{DEFAULT_SCHEMA}.{name}"
    if not schema or not table:
        raise ConfigError(f"{where} must be a table name (schema.table), got {name!r}")
    return name


def _columns(value: Any, where: str, allow_empty: bool = True) -> tuple[str, ...]:
    columns = (
        (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list | tuple) else None
    )
    if columns is None or any(not isinstance(c, str) or not c for c in columns):
        raise ConfigError(f"{where} must hold non-empty column names, got {value!r}")
    if not allow_empty and not columns:
        raise ConfigError(f"{where} must name at least one column, got {value!r}")
    return columns


@dataclass(frozen=True)
class TableMapping:
    """How one table's rows map onto documents.

    Args:
        id_columns: Columns forming the document id, joined with ``":"``; ``()`` uses the primary key.
            For deletes under ``REPLICA IDENTITY DEFAULT`` only primary-key columns are available.
        text_column: The body column, or a tuple of columns whose non-null values are joined with a
            blank line (``"\\n\\n"``).
        title_column: The title column; None for no title.
        metadata_columns: Columns copied into ``metadata``; ``()`` copies every column that is not an id,
            text or title column.
        table_prefix: Prefix ids with ``schema.table:`` (keeps the ids of several tables apart).
        id_prefix: A literal prefix before everything else.

    Raises:
        ConfigError: An empty column name, or no text column.

    Example:
        >>> mapping = TableMapping(text_column=("summary", "body"), title_column="title", table_prefix=True)
    """

    id_columns: tuple[str, ...] = ()
    # tuple first: tierflow.config.build coerces to the first member of a union, and str(list) is wrong
    text_column: tuple[str, ...] | str = "text"
    title_column: str | None = None
    metadata_columns: tuple[str, ...] = ()
    table_prefix: bool = False
    id_prefix: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "id_columns", _columns(self.id_columns, "TableMapping.id_columns"))
        object.__setattr__(
            self, "metadata_columns", _columns(self.metadata_columns, "TableMapping.metadata_columns")
        )
        texts = _columns(self.text_column, "TableMapping.text_column", allow_empty=False)
        object.__setattr__(
            self, "text_column", self.text_column if isinstance(self.text_column, str) else texts
        )
        if self.title_column is not None and (
            not isinstance(self.title_column, str) or not self.title_column
        ):
            raise ConfigError(
                f"TableMapping.title_column must be a column name or None, got {self.title_column!r}"
            )
        if not isinstance(self.id_prefix, str):
            raise ConfigError(f"TableMapping.id_prefix must be a string, got {self.id_prefix!r}")

    @property
    def text_columns(self) -> tuple[str, ...]:
        """The text column(s) as a tuple."""
        return (self.text_column,) if isinstance(self.text_column, str) else self.text_column


@dataclass(frozen=True)
class PostgresCdcConfig:
    """Where to follow changes from, and how rows become documents (config section ``[postgres]``).

    Args:
        dsn: A libpq connection string or URI. Its password is never shown: ``repr`` redacts it.
        slot: The logical replication slot (lower-case letters, digits, ``_``); the stream key is
            ``postgres:<slot>``.
        mappings: ``schema.table`` (or a bare table name, in ``public``) -> :class:`TableMapping` (or a
            table of its settings, as in TOML).
        tables: The tables wal2json decodes (its ``add-tables`` filter; ``*`` wildcards allowed):
            None follows the mapped tables, ``()`` every table (changes of unmapped tables become
            ``unknown_table`` dead letters). A comma-separated string is accepted (environment).
        create_slot: Create the slot (plugin wal2json) when it does not exist; otherwise a missing
            slot is a :class:`ConfigError`.
        connect_timeout_s: libpq ``connect_timeout`` when the DSN sets none.

    Example:
        >>> PostgresCdcConfig("host=db dbname=app user=cdc password=s3cret", slot="tierflow",
        ...                   mappings={"articles": TableMapping(text_column="body")}, create_slot=True)
        PostgresCdcConfig(dsn='user=cdc password=*** dbname=app host=db', slot='tierflow', ...)
    """

    dsn: str = ""
    slot: str = "tierflow"
    mappings: Mapping[str, TableMapping] = field(default_factory=dict)
    tables: tuple[str, ...] | None = None
    create_slot: bool = False
    connect_timeout_s: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.dsn, str) or not self.dsn.strip():
            raise ConfigError("postgres.dsn is not set: give a libpq connection string or postgresql:// URI")
        try:
            _conninfo(self.dsn)
        except Exception:
            raise ConfigError(
                "postgres.dsn is not a valid libpq connection string or postgresql:// URI"
            ) from None
        if not isinstance(self.slot, str) or not _SLOT_NAME.fullmatch(self.slot):
            raise ConfigError(
                f"postgres.slot must be 1-63 lower-case letters, digits or underscores, got {self.slot!r}"
            )
        if not isinstance(self.mappings, Mapping) or not self.mappings:
            raise ConfigError(
                "postgres.mappings must map at least one table (schema.table) to a TableMapping"
            )
        mappings: dict[str, TableMapping] = {}
        for name, value in self.mappings.items():
            where = f"postgres.mappings.{name}"
            table = _qualify(name, where)
            if isinstance(value, dict):
                value = build(TableMapping, value, f"{where}.")
            if not isinstance(value, TableMapping):
                raise ConfigError(f"{where} must be a TableMapping or a table of its settings, got {value!r}")
            if table in mappings:
                raise ConfigError(f"{where}: table {table} is mapped twice")
            mappings[table] = value
        object.__setattr__(self, "mappings", mappings)
        tables = self.tables
        if isinstance(tables, str):
            tables = tuple(part for part in (p.strip() for p in tables.split(",")) if part)
        if tables is not None:
            if not isinstance(tables, list | tuple):
                raise ConfigError(f"postgres.tables must be a list of schema.table names, got {tables!r}")
            tables = tuple(_qualify(t, "postgres.tables") for t in tables)
            unmapped = [t for t in tables if "*" not in t and t not in mappings]
            if unmapped:
                raise ConfigError(
                    f"postgres.tables names {', '.join(unmapped)} without a mapping: add "
                    "postgres.mappings for them or leave them out"
                )
        object.__setattr__(self, "tables", tables)
        if not isinstance(self.create_slot, bool):
            raise ConfigError(f"postgres.create_slot must be true or false, got {self.create_slot!r}")
        if not isinstance(self.connect_timeout_s, int) or self.connect_timeout_s < 1:
            raise ConfigError(
                f"postgres.connect_timeout_s must be a positive integer, got {self.connect_timeout_s!r}"
            )

    def __repr__(self) -> str:
        return (
            f"PostgresCdcConfig(dsn={redact_dsn(self.dsn)!r}, slot={self.slot!r}, mappings={self.mappings!r}, "
            f"tables={self.tables!r}, create_slot={self.create_slot!r}, "
            f"connect_timeout_s={self.connect_timeout_s!r})"
        )

    __str__ = __repr__

    @property
    def key(self) -> str:
        """The stream key this slot's positions are recorded under (``postgres:<slot>``)."""
        return source_key(self.slot)

    def add_tables(self) -> str | None:
        """wal2json's ``add-tables`` value, or None for every table."""
        tables = tuple(self.mappings) if self.tables is None else self.tables
        if not tables:
            return None
        return ",".join(_escape_table(t) for t in tables)


def _escape_table(qualified: str) -> str:
    """``schema.table`` for wal2json's filter: a backslash before every character but letters, digits and
    ``_``; a part that is exactly ``*`` stays a wildcard."""
    schema, _, table = qualified.partition(".")

    def escape(part: str) -> str:
        if part == "*":
            return part
        return "".join(c if c.isalnum() or c == "_" else "\\" + c for c in part)

    return f"{escape(schema)}.{escape(table)}"


def load_postgres_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> PostgresCdcConfig:
    """Resolve ``[postgres]`` settings (see :func:`tierflow.config.load_settings`)."""
    config: PostgresCdcConfig = load_settings(PostgresCdcConfig, "postgres", path, overrides, environ)
    return config


# --- decoding ----------------------------------------------------------------------------------------


class Change(NamedTuple):
    """One row of ``pg_logical_slot_peek_changes``: the LSN column as an integer and wal2json's JSON."""

    lsn: int
    data: str


@dataclass
class Transaction:
    """A decoded transaction: its commit LSN, commit time, xid and its change rows (B/C excluded)."""

    commit_lsn: int
    commit_time: float | None = None
    xid: int | None = None
    changes: list[Change] = field(default_factory=list)


class _Reject(NamedTuple):
    reason: str
    detail: str
    doc_id: str | None = None


def decode_transaction(txn: Transaction, config: PostgresCdcConfig) -> list[DocumentEvent | DeadLetter]:
    """The items of one transaction: per document id only its last change, dead letters as they come.

    Never raises on bad input: see the module documentation for the rules and the rejection reasons.
    """
    keyed: dict[Any, DocumentEvent | DeadLetter] = {}
    for ordinal, change in enumerate(txn.changes):
        position = SourcePosition(SYSTEM, config.slot, f"lsn:{change.lsn}")
        for item in _decode_change(change.data, position, txn, config):
            key: Any = ("dead", ordinal, id(item)) if item.doc_id is None else item.doc_id
            keyed.pop(key, None)
            keyed[key] = item
    return list(keyed.values())


def _dead(reject: _Reject, position: SourcePosition, raw: str) -> DeadLetter:
    return DeadLetter(reject.reason, reject.detail, STAGE, position, raw, reject.doc_id)


def _decode_change(
    raw: str, position: SourcePosition, txn: Transaction, config: PostgresCdcConfig
) -> list[DocumentEvent | DeadLetter]:
    try:
        data = jsonparse.loads(raw)
    except jsonparse.JsonRejected as err:
        return [_dead(_Reject(err.reason, f"the change is not usable JSON: {err.detail}"), position, raw)]
    if not isinstance(data, dict):
        return [
            _dead(
                _Reject("not_an_object", f"the change is a JSON {json_type(data)}; expected an object"),
                position,
                raw,
            )
        ]
    result = _decode_object(data, position, txn, config)
    return [item if isinstance(item, DocumentEvent) else _dead(item, position, raw) for item in result]


def _decode_object(
    data: dict[str, Any], position: SourcePosition, txn: Transaction, config: PostgresCdcConfig
) -> list[DocumentEvent | _Reject]:
    action = data.get("action")
    table = _table_name(data)
    if action == "M":
        return []
    if action == "T":
        return [
            _Reject(
                "unsupported_op",
                f"TRUNCATE of {table or 'an unnamed table'} cannot be applied document by document: "
                "re-sync the table (delete its documents and re-ingest it)",
            )
        ]
    if not isinstance(action, str) or action not in _OPS:  # a list or an object is not hashable
        return [_Reject("unknown_op", f"action is {action!r}; expected one of 'I', 'U', 'D' (or 'T', 'M')")]
    if table is None:
        return [_Reject("wrong_type", "the change names no schema and table")]
    mapping = config.mappings.get(table)
    if mapping is None:
        return [
            _Reject(
                "unknown_table",
                f"no mapping for table {table}: add postgres.mappings.{table!r}, or leave it out of "
                "postgres.tables",
            )
        ]
    columns = _tuple(data, "columns")
    identity = _tuple(data, "identity")
    pk = _pk(data)
    for found in (columns, identity, pk):
        if isinstance(found, _Reject):
            return [found]
    assert (
        not isinstance(columns, _Reject) and not isinstance(identity, _Reject) and not isinstance(pk, _Reject)
    )
    id_names = mapping.id_columns or pk or ()
    if not id_names:
        return [
            _Reject(
                "missing_id",
                f"table {table} has no primary key and its mapping names no id_columns: set "
                f"postgres.mappings.{table!r}.id_columns",
            )
        ]
    version = txn.commit_lsn
    info = {"table": table, "op": _OPS[action], "xid": txn.xid}

    if action == "D":
        if identity is None:
            return [
                _Reject(
                    "missing_id",
                    f"the delete carries no old row ('identity'): table {table} has no replica identity; "
                    "give it a primary key or REPLICA IDENTITY FULL",
                )
            ]
        doc_id = _doc_id(identity, id_names, table, mapping, "delete")
        if isinstance(doc_id, _Reject):
            return [doc_id]
        return [DocumentEvent(doc_id, "delete", "", "", info, position, version, txn.commit_time)]

    if columns is None:
        return [_Reject("wrong_type", f"the {_OPS[action]} carries no 'columns'")]
    row = dict(columns) if identity is None else {**identity, **columns}
    doc_id = _doc_id(row, id_names, table, mapping, _OPS[action])
    if isinstance(doc_id, _Reject):
        return [doc_id]
    out: list[DocumentEvent | _Reject] = []
    if action == "U" and identity is not None and all(identity.get(n) is not None for n in id_names):
        old_id = _doc_id(identity, id_names, table, mapping, "update")
        if isinstance(old_id, str) and old_id != doc_id:
            moved = {**info, "op": "delete", "moved_to": doc_id}
            out.append(DocumentEvent(old_id, "delete", "", "", moved, position, version, txn.commit_time))
    text = _text(row, mapping, table, action)
    if isinstance(text, _Reject):
        return [*out, text._replace(doc_id=doc_id)]
    title = _title(row, mapping, table, action)
    if isinstance(title, _Reject):
        return [*out, title._replace(doc_id=doc_id)]
    metadata = _metadata(row, mapping, id_names)
    metadata.update(info)
    out.append(DocumentEvent(doc_id, "upsert", text, title, metadata, position, version, txn.commit_time))
    return out


def _table_name(data: Mapping[str, Any]) -> str | None:
    schema, table = data.get("schema"), data.get("table")
    if not isinstance(table, str) or not table:
        return None
    return f"{schema if isinstance(schema, str) and schema else DEFAULT_SCHEMA}.{table}"


def _tuple(data: Mapping[str, Any], name: str) -> dict[str, Any] | None | _Reject:
    """wal2json's ``columns``/``identity`` (a list of ``{"name", "type", "value"}``) as name -> value;
    None when absent; why it is unusable otherwise."""
    if name not in data:
        return None
    entries = data[name]
    if not isinstance(entries, list):
        return _Reject("wrong_type", f"'{name}' is a JSON {json_type(entries)}; expected an array of columns")
    row: dict[str, Any] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or "value" not in entry:
            return _Reject("wrong_type", f"'{name}' holds {entry!r}; expected {{'name', 'type', 'value'}}")
        row[entry["name"]] = entry["value"]
    return row


def _pk(data: Mapping[str, Any]) -> tuple[str, ...] | _Reject:
    entries = data.get("pk", [])
    if not isinstance(entries, list) or any(
        not isinstance(e, dict) or not isinstance(e.get("name"), str) for e in entries
    ):
        return _Reject("wrong_type", f"'pk' is {entries!r}; expected an array of {{'name', 'type'}}")
    return tuple(e["name"] for e in entries)


def _doc_id(
    row: Mapping[str, Any], names: tuple[str, ...], table: str, mapping: TableMapping, op: str
) -> str | _Reject:
    parts: list[str] = []
    for name in names:
        value = row.get(name)
        if value is None:
            hint = (
                " (a delete carries only the replica identity: under REPLICA IDENTITY DEFAULT the primary "
                f"key; use primary-key id_columns, or ALTER TABLE {table} REPLICA IDENTITY FULL)"
                if op == "delete" and name not in row
                else ""
            )
            where = "absent from" if name not in row else "null in"
            return _Reject("missing_id", f"id column {name!r} is {where} the {op} row of {table}{hint}")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return _Reject(
                "wrong_type", f"id column {name!r} is a JSON {json_type(value)}; expected a string or number"
            )
        if isinstance(value, float):
            if not math.isfinite(value):
                return _Reject("wrong_type", f"id column {name!r} is {value!r}; expected a finite number")
            parts.append(str(int(value)) if value.is_integer() else repr(value))
        else:
            parts.append(str(value))
    prefix = mapping.id_prefix + (f"{table}{ID_SEPARATOR}" if mapping.table_prefix else "")
    doc_id = prefix + ID_SEPARATOR.join(parts)
    if not ID_SEPARATOR.join(parts).strip():
        return _Reject("missing_id", f"the document id from {', '.join(names)} is empty")
    return doc_id


def _toast_hint(table: str) -> str:
    return (
        f" (wal2json leaves out unchanged TOASTed values: ALTER TABLE {table} REPLICA IDENTITY FULL "
        "so updates carry the old row)"
    )


def _text(row: Mapping[str, Any], mapping: TableMapping, table: str, action: str) -> str | _Reject:
    parts: list[str] = []
    present = False
    for column in mapping.text_columns:
        if column not in row:
            hint = _toast_hint(table) if action == "U" else f"; its columns: {', '.join(map(repr, row))}"
            return _Reject("missing_text", f"text column {column!r} is absent from the row of {table}{hint}")
        value = row[column]
        if value is None:
            continue
        if not isinstance(value, str):
            return _Reject(
                "wrong_type", f"text column {column!r} is a JSON {json_type(value)}; expected a string"
            )
        present = True
        if value:
            parts.append(value)
    if not present:
        return _Reject(
            "missing_text", f"text column(s) {', '.join(map(repr, mapping.text_columns))} are null in {table}"
        )
    return TEXT_SEPARATOR.join(parts)


def _title(row: Mapping[str, Any], mapping: TableMapping, table: str, action: str) -> str | _Reject:
    column = mapping.title_column
    if column is None:
        return ""
    if column not in row:
        if action == "U":
            return _Reject(
                "missing_text", f"title column {column!r} is absent from the update row{_toast_hint(table)}"
            )
        return ""
    value = row[column]
    if value is None:
        return ""
    if not isinstance(value, str):
        return _Reject(
            "wrong_type", f"title column {column!r} is a JSON {json_type(value)}; expected a string"
        )
    return value


def _metadata(row: Mapping[str, Any], mapping: TableMapping, id_names: tuple[str, ...]) -> dict[str, Any]:
    if mapping.metadata_columns:
        return {c: row[c] for c in mapping.metadata_columns if c in row}
    skip = {*id_names, *mapping.text_columns, mapping.title_column}
    return {c: v for c, v in row.items() if c not in skip}


def _commit_time(value: Any) -> float | None:
    """Epoch seconds of wal2json's timestamp (``2024-05-01 12:00:00.123456+00`` with DateStyle ISO)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except (ValueError, OverflowError):
        return None


def group_transactions(rows: list[Change]) -> Iterator[Transaction]:
    """Whole transactions (``B`` ... ``C``) of peeked rows, in commit order.

    A trailing transaction without its ``C`` (not expected: the SQL interface stops at transaction
    boundaries) is held back for the next peek. Rows outside a transaction are non-transactional
    logical messages (``M``): they carry no document and no commit, and are skipped.
    """
    current: Transaction | None = None
    for row in rows:
        action = _action(row.data)
        if action == "B":
            data = json.loads(row.data)
            xid = data.get("xid")
            current = Transaction(
                0, _commit_time(data.get("timestamp")), xid if isinstance(xid, int) else None
            )
        elif action == "C":
            if current is not None:
                current.commit_lsn = row.lsn
                yield current
            current = None
        elif current is not None:
            current.changes.append(row)
        elif action != "M":
            LOG.warning(
                "postgres cdc: a change outside a transaction at %s skipped: %.200s",
                format_lsn(row.lsn),
                row.data,
            )


def _action(raw: str) -> Any:
    """The ``action`` of a wal2json row, or None when the row is not a JSON object."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, a number too long, nested too deeply
        return None
    return data.get("action") if isinstance(data, dict) else None


# --- the source --------------------------------------------------------------------------------------


class PostgresCdcSource:
    """A logical replication slot (wal2json) as a :class:`~tierflow.streams.StreamSource`.

    Reads with ``pg_logical_slot_peek_changes`` (nothing consumed), advances the slot with
    ``pg_replication_slot_advance`` in :meth:`acknowledge`, after the index commit. See the module
    documentation for positions, versions and the mapping.

    Args:
        config: The server, slot and table mappings.
    """

    def __init__(self, config: PostgresCdcConfig) -> None:
        self.config = config
        self.key = config.key
        self._conn: Any = None
        self._floor = 0  # transactions committed at or below this LSN are in the index (or itemless)
        self._started = False

    # StreamSource -------------------------------------------------------------------------------------

    def start(self, resume: dict[str, str]) -> None:
        """Connect, check the server and the slot (creating it if configured), and skip what the index
        already holds: ``resume[postgres:<slot>]`` is the commit LSN (decimal) of its last batch.

        Raises:
            ConfigError: The server cannot be reached, ``wal_level`` is not ``logical``, wal2json is not
                installed, the slot is missing (and ``create_slot`` is false) or unusable, or the resume
                position is not an LSN.
        """
        position = resume.get(self.key)
        floor = 0
        if position is not None:
            if not position.isdigit():
                raise ConfigError(
                    f"the index records position {position!r} for {self.key}; expected an LSN as a decimal "
                    "integer"
                )
            floor = int(position)
        try:
            self._connect()
            self._check_wal_level()
            confirmed = self._ensure_slot()
            self._probe(confirmed)
        except BaseException:
            self.close()
            raise
        self._floor = floor
        self._started = True
        LOG.info(
            "postgres cdc: following slot %s on %s from %s (index holds up to %s)",
            self.config.slot,
            _server_name(self.config.dsn),
            format_lsn(confirmed) if confirmed is not None else "its start",
            format_lsn(floor) if floor else "nothing",
        )

    def poll(self, policy: BatchPolicy) -> Batch | None:
        """The next micro-batch of whole transactions after the slot's confirmed position (and after the
        resume position), or None when none arrived within ``policy.poll_s``. Polling again before
        :meth:`acknowledge` returns the same changes (and any that arrived since)."""
        self._require_started()
        metrics.CDC_SLOT_LAG.labels(self.config.slot).set(self.lag_bytes())
        deadline = time.monotonic() + policy.poll_s
        while True:
            batch, idle_lsn = self._read(policy.max_records)
            if batch is not None:
                break
            if idle_lsn is not None:
                self._advance(idle_lsn, "itemless transactions")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(_IDLE_SLEEP_S, remaining))
        fill_deadline = time.monotonic() + policy.max_wait_s
        while len(batch.items) < policy.max_records and time.monotonic() < fill_deadline:
            time.sleep(max(0.0, min(_FILL_SLEEP_S, fill_deadline - time.monotonic())))
            again, _ = self._read(policy.max_records)
            if again is not None and int(again.positions[self.key]) >= int(batch.positions[self.key]):
                batch = again
        return batch

    def acknowledge(self, batch: Batch) -> None:
        """The batch is in the index: advance the slot to its last commit LSN."""
        self._require_started()
        position = batch.positions.get(self.key)
        if position is None:
            return
        self._advance(int(position), "acknowledged batch")

    def dead_letters(self, letters: list[DeadLetter]) -> None:
        """Nothing to forward: PostgreSQL has no dead-letter sink; the index run's dead-letter files hold
        them."""
        if letters:
            LOG.info("postgres cdc: %d dead letters (in the index run's dead-letter files)", len(letters))

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
        self._started = False

    # extras -------------------------------------------------------------------------------------------

    def confirmed_lsn(self) -> int | None:
        """The slot's ``confirmed_flush_lsn`` (None when it has none)."""
        self._require_started()
        row = self._execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (self.config.slot,),
        ).fetchone()
        return parse_lsn(row[0]) if row and row[0] else None

    def lag_bytes(self) -> int:
        """WAL bytes between the server's current position and the slot's confirmed one: how far the
        index is behind the database (``tierflow_cdc_slot_lag_bytes``)."""
        self._require_started()
        row = self._execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (self.config.slot,),
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def __enter__(self) -> PostgresCdcSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # internals ----------------------------------------------------------------------------------------

    def _require_started(self) -> None:
        if not self._started:
            raise RuntimeError("PostgresCdcSource.start() has not been called (or the source was closed)")

    def _connect(self) -> None:
        """Connect (once). At :meth:`start` a failure is a ConfigError; reconnecting after a lost
        connection, it is :class:`PostgresUnavailable` (the server may be restarting)."""
        import psycopg

        if self._conn is not None:
            return
        extra: dict[str, Any] = {"application_name": APPLICATION_NAME}
        if "connect_timeout" not in _conninfo(self.config.dsn):
            extra["connect_timeout"] = self.config.connect_timeout_s
        try:
            conn = psycopg.connect(self.config.dsn, autocommit=True, **extra)
        except psycopg.Error as err:
            reason = _scrub(str(err).strip(), self.config.dsn)
            if self._started:
                raise PostgresUnavailable(
                    f"cannot reconnect to PostgreSQL at {_server_name(self.config.dsn)}: {reason}"
                ) from None
            raise ConfigError(
                f"cannot connect to PostgreSQL at {_server_name(self.config.dsn)}: {reason} "
                "(check postgres.dsn: host, port, user, password, database)"
            ) from None
        # wal2json writes commit timestamps in the session's time zone and DateStyle.
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("SET DateStyle = 'ISO, MDY'")
        self._conn = conn

    def _where(self) -> str:
        info = self._conn.info if self._conn is not None else None
        if info is None:
            return _server_name(self.config.dsn)
        return f"{info.host}:{info.port} (database {info.dbname!r})"

    def _execute(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        """Run ``query``; a lost connection or a busy slot becomes :class:`PostgresUnavailable`, a missing
        wal2json or slot a :class:`ConfigError`."""
        import psycopg

        if self._conn is None:
            self._connect()
        try:
            return self._conn.execute(query, params)
        except psycopg.Error as err:
            raise self._translate(err) from err

    def _translate(self, err: Exception) -> Exception:
        import psycopg

        where = self._where()
        message = _scrub(str(err).strip(), self.config.dsn)
        sqlstate = getattr(err, "sqlstate", None)
        if sqlstate == _UNDEFINED_FILE:
            return self._plugin_missing(message)
        if sqlstate == _UNDEFINED_OBJECT and "replication slot" in message:
            return self._slot_missing()
        if sqlstate == _INVALID_PARAMETER:
            return ConfigError(
                f"wal2json on {where} refused the options {PEEK_OPTIONS} / add-tables "
                f"{self.config.add_tables()!r}: {message} (tierflow needs wal2json 2.4 or later)"
            )
        if sqlstate == _OBJECT_IN_USE:
            return PostgresUnavailable(
                f"replication slot {self.config.slot!r} on {where} is in use: {message}"
            )
        if isinstance(err, psycopg.OperationalError) or self._conn is None or self._conn.closed:
            self._drop_connection()
            return PostgresUnavailable(f"lost the connection to PostgreSQL at {where}: {message}")
        return err

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken
                self._conn.close()
            self._conn = None

    def _plugin_missing(self, message: str) -> ConfigError:
        major = ""
        try:
            if self._conn is not None:
                major = str(self._conn.info.server_version // 10000)
        except Exception:
            pass
        package = f"postgresql-{major or '<major>'}-wal2json"
        return ConfigError(
            f"the {PLUGIN} output plugin is not installed on the PostgreSQL server at {self._where()} "
            f"({message}): install it on the server (Debian/Ubuntu: apt-get install {package}; "
            "see infra/install-postgres.sh)"
        )

    def _slot_missing(self) -> ConfigError:
        return ConfigError(
            f"replication slot {self.config.slot!r} does not exist on {self._where()}: create it with "
            f"SELECT pg_create_logical_replication_slot('{self.config.slot}', '{PLUGIN}'), or set "
            "postgres.create_slot = true"
        )

    def _check_wal_level(self) -> None:
        level = self._execute("SHOW wal_level").fetchone()[0]
        if level != "logical":
            raise ConfigError(
                f"wal_level is {level!r} on the PostgreSQL server at {self._where()}; logical decoding needs "
                "wal_level = logical: set it (ALTER SYSTEM SET wal_level = logical) and restart the server"
            )

    def _ensure_slot(self) -> int | None:
        """Check (or create) the slot; its ``confirmed_flush_lsn``."""
        import psycopg

        slot = self.config.slot
        row = self._execute(
            "SELECT plugin, slot_type, database, confirmed_flush_lsn::text, current_database() "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
        if row is None:
            if not self.config.create_slot:
                raise self._slot_missing()
            try:
                self._conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (slot, PLUGIN))
                LOG.info("postgres cdc: created replication slot %s (%s) on %s", slot, PLUGIN, self._where())
            except psycopg.Error as err:
                if getattr(err, "sqlstate", None) != _DUPLICATE_OBJECT:  # created meanwhile: check it below
                    raise self._translate(err) from None
            return self._ensure_slot_exists()
        return self._check_slot(row)

    def _ensure_slot_exists(self) -> int | None:
        row = self._execute(
            "SELECT plugin, slot_type, database, confirmed_flush_lsn::text, current_database() "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (self.config.slot,),
        ).fetchone()
        if row is None:
            raise self._slot_missing()
        return self._check_slot(row)

    def _check_slot(self, row: tuple[Any, ...]) -> int | None:
        plugin, slot_type, database, confirmed, current = row
        slot = self.config.slot
        if slot_type != "logical":
            raise ConfigError(
                f"replication slot {slot!r} on {self._where()} is a {slot_type} slot; tierflow needs a "
                f"logical slot with the {PLUGIN} plugin"
            )
        if plugin != PLUGIN:
            raise ConfigError(
                f"replication slot {slot!r} on {self._where()} decodes with {plugin!r}, not {PLUGIN!r}: "
                "use another postgres.slot (with create_slot = true), or drop and re-create this one"
            )
        if database != current:
            raise ConfigError(
                f"replication slot {slot!r} belongs to database {database!r}, but postgres.dsn connects to "
                f"{current!r}: connect to {database!r}, or use another slot"
            )
        return parse_lsn(confirmed) if confirmed else None

    def _peek_sql(self, upto_lsn: bool) -> tuple[str, tuple[Any, ...]]:
        options = list(PEEK_OPTIONS)
        tables = self.config.add_tables()
        if tables is not None:
            options += ["add-tables", tables]
        placeholders = ", ".join(["%s"] * len(options))
        upto = "%s::pg_lsn" if upto_lsn else "NULL"
        query = f"SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, {upto}, %s, {placeholders})"
        return query, tuple(options)

    def _probe(self, confirmed: int | None) -> None:
        """Load wal2json with our options without decoding anything new (upto_lsn = the confirmed
        position): a missing plugin or an option it refuses shows up here, as a ConfigError."""
        if confirmed is None:
            return
        query, options = self._peek_sql(upto_lsn=True)
        self._execute(query, (self.config.slot, format_lsn(confirmed), None, *options)).fetchall()

    def _peek(self, limit: int) -> list[Change]:
        query, options = self._peek_sql(upto_lsn=False)
        rows = self._execute(query, (self.config.slot, limit, *options)).fetchall()
        return [Change(parse_lsn(lsn), data) for lsn, data in rows]

    def _read(self, max_records: int) -> tuple[Batch | None, int | None]:
        """Peek and assemble a batch of whole transactions after the floor.

        Returns (the batch, None), or (None, the commit LSN of the last transaction seen) when every
        transaction seen was itemless or already in the index (None when there were none).
        """
        from tierflow.streams import Batch

        # Rows count B and C too, and peeking stops at a transaction boundary after at least `limit`.
        rows = self._peek(max(1, max_records) * 3 + 2)
        items: list[DocumentEvent | DeadLetter] = []
        received: list[float] = []
        covered: int | None = None  # commit LSN of the last transaction the batch accounts for
        for txn in group_transactions(rows):
            if txn.commit_lsn > self._floor:
                decoded = decode_transaction(txn, self.config)
                if items and len(items) + len(decoded) > max_records:
                    break
                items.extend(decoded)
                if txn.commit_time is not None:
                    received.extend([txn.commit_time] * len(decoded))
            covered = txn.commit_lsn
        if not items:
            return None, covered
        assert covered is not None
        return Batch(items, {self.key: str(covered)}, ack=covered, received_at=received), None

    def _advance(self, lsn: int, why: str) -> None:
        """Move the slot's confirmed position to ``lsn`` (never backwards)."""
        confirmed = self.confirmed_lsn()
        if confirmed is not None and lsn <= confirmed:
            self._floor = max(self._floor, lsn)
            return
        self._execute(
            "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.config.slot, format_lsn(lsn))
        )
        self._floor = max(self._floor, lsn)
        LOG.debug("postgres cdc: advanced slot %s to %s (%s)", self.config.slot, format_lsn(lsn), why)
