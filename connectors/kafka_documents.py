"""The Kafka document contract: how a team publishes documents to tierflow through a Kafka topic.

Each Kafka record is one change to one document.

Key
    The document id, as UTF-8 bytes (not empty, not only whitespace). Required: a record without a key
    cannot be tied to a document and is dead-lettered (``missing_id``). Kafka sends all records with one
    key to one partition, so a document's changes stay in order. Produce with the Java client's default
    partitioner (murmur2); librdkafka-based clients (confluent-kafka, Go, .NET, Node) must set
    ``partitioner=murmur2_random``, or they place the same key on another partition than Java producers.

Value
    Either null (a tombstone: the document is deleted) or a UTF-8 JSON object with these fields, and no
    others::

        {
          "op": "upsert",                  # "upsert" (default) or "delete"
          "text": "Body text ...",         # string; required for upserts, ignored for deletes
          "title": "Optional title",       # string, default ""
          "metadata": {"lang": "en"},      # object of any JSON values, default {}
          "version": 42,                   # integer >= 0 (at most 2**63 - 1), default: the record's offset
          "event_time": 1718000000.5       # epoch seconds (number), default: the record's Kafka timestamp
        }

    A field set to null counts as absent. Fields outside this list are rejected (``unknown_field``):
    put free-form data under ``metadata``. The value must be at most ``max_bytes`` (4 MiB by default),
    and is parsed strictly: no duplicate names, no ``NaN``/``Infinity``, no byte order mark.

Headers
    Optional ``content-type: application/json`` (parameters such as ``; charset=utf-8`` are allowed).
    A record with any other content type is dead-lettered (``bad_content_type``) unread; other headers
    are ignored, and so are the headers of tombstones.

Ordering (``version``)
    tierflow applies a document's changes in version order: an older version never overwrites a newer
    one, and a delete wins over older upserts and loses to newer ones. Without ``version``, the
    record's offset is its version. That is a correct order for a document as long as all its changes
    go to one topic with a fixed partition count, since one key maps to one partition and offsets grow
    within a partition. Set ``version`` explicitly (an ``updated_at`` in ms, a database LSN, a revision
    counter) when a document's changes come through more than one topic, or a topic is re-created or
    re-partitioned. Use one scheme per document: offsets and explicit versions are compared as plain
    integers. A tombstone cannot carry a version (its version is its offset), so producers that set
    versions send deletes as ``{"op": "delete", "version": N}``: :func:`encode_document` does so
    whenever a version is given, and writes a tombstone otherwise.

Source position
    Every event and dead letter carries ``SourcePosition("kafka", "<topic>/<partition>", "<offset>")``;
    an index manifest records the offset of the last record it contains under the stream key
    ``kafka:<topic>/<partition>`` (:func:`source_key`), and :func:`next_offsets` turns those entries
    back into the offsets a consumer resumes from.

Rejections
    :func:`decode_message` never raises on bad input: it returns a :class:`~tierflow.deadletter.DeadLetter`
    (stage ``parse``) holding the original value bytes and one of these reasons:

    - ``missing_id``: the key is null, empty or only whitespace.
    - ``not_utf8``: the key or the value is not valid UTF-8, or a JSON string holds an unpaired
      surrogate escape (``\\ud800``-``\\udfff``).
    - ``too_large``: the value is over ``max_bytes``; it is not parsed, ``raw`` keeps its first 64 KiB
      and the position says where the full record is.
    - ``bad_content_type``: a ``content-type`` header other than ``application/json``.
    - ``malformed_json``: the value is not JSON (or has duplicate names, ``NaN``, a byte order mark, a
      number too large for a double, or an integer of more than 4300 digits).
    - ``not_an_object``: the value is JSON but not an object.
    - ``unknown_field``: the object has fields outside the contract; the detail names them.
    - ``wrong_type``: a field has the wrong type (the detail names the field, its type and the expected
      one), or ``version`` is negative or too large, or ``event_time`` is not finite.
    - ``bad_op``: ``op`` is a string other than ``upsert`` or ``delete``.
    - ``missing_text``: an upsert without ``text``.

Example::

    key, value = encode_document("doc-1", "Body text", title="Title", version=7)
    producer.produce("documents", key=key, value=value, headers={"content-type": "application/json"})
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from tierflow import jsonparse
from tierflow.deadletter import DeadLetter
from tierflow.errors import BadRecord
from tierflow.jsonparse import is_finite_number, json_type
from tierflow.records import OPS, DocumentEvent, Op, SourcePosition

__all__ = [
    "CONTENT_TYPE",
    "CONTENT_TYPE_HEADER",
    "DEFAULT_MAX_BYTES",
    "FIELDS",
    "MAX_VERSION",
    "RAW_KEEP_BYTES",
    "REASONS",
    "SYSTEM",
    "decode_message",
    "encode_document",
    "next_offsets",
    "parse_source_key",
    "source_key",
]

SYSTEM = "kafka"
STAGE = "parse"
CONTENT_TYPE = "application/json"
CONTENT_TYPE_HEADER = "content-type"
FIELDS: tuple[str, ...] = ("op", "text", "title", "metadata", "version", "event_time")
DEFAULT_MAX_BYTES = 4 << 20
RAW_KEEP_BYTES = 64 << 10
MAX_VERSION = (1 << 63) - 1
REASONS: tuple[str, ...] = (
    "missing_id",
    "not_utf8",
    "too_large",
    "bad_content_type",
    "malformed_json",
    "not_an_object",
    "unknown_field",
    "wrong_type",
    "bad_op",
    "missing_text",
)

Headers = Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None]


def encode_document(
    doc_id: str,
    text: str,
    title: str = "",
    metadata: Mapping[str, Any] | None = None,
    version: int | None = None,
    event_time: float | None = None,
    op: str = "upsert",
) -> tuple[bytes, bytes | None]:
    """The Kafka key and value for one document change, following the contract above.

    A delete without a version or an event time becomes a tombstone (null value); with either, a JSON
    ``{"op": "delete", ...}``. ``text``, ``title`` and ``metadata`` are not written for deletes.

    Args:
        doc_id: The document id (the key).
        text: Body text (ignored for deletes).
        title: Optional title.
        metadata: JSON-serialisable free-form fields.
        version: Explicit ordering number (>= 0); None lets the record's offset order it.
        event_time: When the change happened (epoch seconds); None lets the Kafka timestamp stand.
        op: ``upsert`` or ``delete``.

    Returns:
        ``(key, value)``; value is None for a tombstone.

    Raises:
        BadRecord: The arguments would make a record consumers reject; ``reason`` is the reason code
            :func:`decode_message` would give it (``missing_id``, ``wrong_type``, ``bad_op``,
            ``not_utf8``).

    Example:
        >>> encode_document("d1", "Hello.", version=3)
        (b'd1', b'{"op":"upsert","text":"Hello.","version":3}')
        >>> encode_document("d1", "", op="delete")
        (b'd1', None)
    """
    if not isinstance(doc_id, str):
        raise BadRecord("wrong_type", f"doc_id is a {type(doc_id).__name__}; expected a string")
    if not doc_id.strip():
        raise BadRecord("missing_id", "doc_id is empty")
    if not isinstance(op, str):
        raise BadRecord("wrong_type", f"op is a {type(op).__name__}; expected 'upsert' or 'delete'")
    if op not in OPS:
        raise BadRecord("bad_op", f"op is {op!r}; expected 'upsert' or 'delete'")
    record: dict[str, Any] = {"op": op}
    if op == "upsert":
        record["text"] = text
        if title != "":
            record["title"] = title
        if isinstance(metadata, Mapping):
            if metadata:
                record["metadata"] = dict(metadata)
        elif metadata is not None:
            record["metadata"] = metadata  # refused below, as consumers would
    if version is not None:
        record["version"] = version
    if event_time is not None:
        record["event_time"] = event_time
    problem = _check_fields(record, op)
    if problem is not None:
        raise BadRecord(problem[0], problem[1])
    key = _utf8(doc_id, "doc_id")
    if op == "delete" and version is None and event_time is None:
        return key, None
    try:
        body = json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise BadRecord("wrong_type", f"metadata is not JSON-serialisable: {err}") from err
    return key, _utf8(body, "the document")


def decode_message(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    timestamp_ms: int | None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    *,
    headers: Headers | None = None,
) -> DocumentEvent | DeadLetter:
    """One Kafka record as a document event, or as a dead letter saying why it cannot be one.

    Never raises on bad input (see the reasons in the module documentation).

    Args:
        topic: The record's topic.
        partition: Its partition.
        offset: Its offset (the default version).
        key: Its key bytes (the document id).
        value: Its value bytes; None is a tombstone.
        timestamp_ms: Its Kafka timestamp in ms (the default event time); None or negative when absent.
        max_bytes: Values over this many bytes are dead-lettered unparsed.
        headers: The record's headers (a list of pairs or a mapping), to check ``content-type``.

    Returns:
        A :class:`DocumentEvent` with ``SourcePosition("kafka", "<topic>/<partition>", "<offset>")``, or a
        :class:`DeadLetter` with the same position and the original value bytes.

    Example:
        >>> decode_message("docs", 0, 17, b"d1", b'{"text": "Hello."}', 1718000000000).version
        17
    """
    position = SourcePosition(SYSTEM, f"{topic}/{partition}", str(offset))
    raw = value if value is not None else b""

    def dead(reason: str, detail: str, doc_id: str | None = None, kept: bytes = raw) -> DeadLetter:
        return DeadLetter(reason, detail, STAGE, position, kept, doc_id)

    if key is None or not key:
        state = "null" if key is None else "empty"
        return dead("missing_id", f"the record key is {state}; the key must be the document id (UTF-8)")
    try:
        doc_id = key.decode("utf-8")
    except UnicodeDecodeError as err:
        return dead(
            "not_utf8",
            f"the record key is not UTF-8 (byte {err.start}: {err.reason}); key bytes (hex): "
            f"{key[:256].hex()}{'...' if len(key) > 256 else ''}",
        )
    if not doc_id.strip():
        return dead("missing_id", "the record key is only whitespace; it must be the document id")

    if value is not None and len(value) > max_bytes:
        kept = raw[:RAW_KEEP_BYTES]
        return dead(
            "too_large",
            f"the value is {len(raw)} bytes, over max_bytes={max_bytes}; not parsed. raw holds its first "
            f"{len(kept)} bytes; the full record is at {topic}/{partition} offset {offset}",
            doc_id,
            kept,
        )
    event_time = timestamp_ms / 1000 if timestamp_ms is not None and timestamp_ms >= 0 else None
    if value is None:
        return DocumentEvent(doc_id, "delete", "", "", {}, position, offset, event_time)
    content_type = _content_type(headers)
    if content_type is not None and content_type.split(";")[0].strip().lower() != CONTENT_TYPE:
        return dead(
            "bad_content_type",
            f"content-type header is {content_type!r}; documents must be {CONTENT_TYPE} (or send no "
            "content-type header)",
            doc_id,
        )

    record = _parse_object(value)
    if isinstance(record, tuple):
        return dead(record[0], record[1], doc_id)
    unknown = sorted(name for name in record if name not in FIELDS)
    if unknown:
        return dead(
            "unknown_field",
            f"field(s) {', '.join(map(repr, unknown))} are not part of the document contract "
            f"(allowed: {', '.join(FIELDS)}); put free-form data under 'metadata'",
            doc_id,
        )
    op = record.get("op")
    if op is None:
        op = "upsert"
    problem = _check_fields(record, op)
    if problem is not None:
        return dead(problem[0], problem[1], doc_id)
    version = record.get("version")
    explicit_time = record.get("event_time")
    return DocumentEvent(
        doc_id,
        cast(Op, op),
        (record.get("text") or "") if op == "upsert" else "",
        (record.get("title") or "") if op == "upsert" else "",
        record.get("metadata") or {},
        position,
        offset if version is None else version,
        float(explicit_time) if explicit_time is not None else event_time,
    )


def source_key(topic: str, partition: int) -> str:
    """The stream key of a topic partition, as :attr:`SourcePosition.key` and index manifests spell it.

    Example:
        >>> source_key("docs", 2)
        'kafka:docs/2'
    """
    return SourcePosition(SYSTEM, f"{topic}/{partition}").key


def parse_source_key(key: str) -> tuple[str, int] | None:
    """``(topic, partition)`` of a ``kafka:<topic>/<partition>`` stream key; None for other keys.

    Example:
        >>> parse_source_key("kafka:docs/2")
        ('docs', 2)
    """
    prefix = f"{SYSTEM}:"
    if not key.startswith(prefix):
        return None
    topic, sep, partition = key[len(prefix) :].rpartition("/")
    if not sep or not topic or not partition.isdigit():
        return None
    return topic, int(partition)


def next_offsets(sources: Mapping[str, str]) -> dict[tuple[str, int], int]:
    """The offsets to resume from, given manifest sources (stream key -> offset of the last record held).

    Entries of other systems are ignored, as are Kafka entries whose position is not an offset.

    Example:
        >>> next_offsets({"kafka:docs/0": "41", "file:/x.jsonl": "complete"})
        {('docs', 0): 42}
    """
    offsets: dict[tuple[str, int], int] = {}
    for key, position in sources.items():
        parsed = parse_source_key(key)
        if parsed is not None and position.isdigit():
            offsets[parsed] = int(position) + 1
    return offsets


# --- helpers --------------------------------------------------------------------------------------


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRecord("not_utf8", f"{what} holds an unpaired surrogate at index {err.start}") from err


def _content_type(headers: Headers | None) -> str | None:
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name.lower() == CONTENT_TYPE_HEADER and value is not None:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


def _check_fields(record: Mapping[str, Any], op: Any) -> tuple[str, str] | None:
    """(reason, detail) for the first field that breaks the contract, or None."""
    if not isinstance(op, str):
        return "wrong_type", f"field 'op' is a JSON {json_type(op)}; expected the string 'upsert' or 'delete'"
    if op not in OPS:
        return "bad_op", f"field 'op' is {op!r}; expected 'upsert' or 'delete'"
    for name in ("text", "title"):
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            return "wrong_type", f"field {name!r} is a JSON {json_type(value)}; expected a string"
    metadata = record.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return "wrong_type", f"field 'metadata' is a JSON {json_type(metadata)}; expected an object"
    version = record.get("version")
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int):
            return "wrong_type", f"field 'version' is a JSON {json_type(version)}; expected an integer >= 0"
        if not 0 <= version <= MAX_VERSION:
            return "wrong_type", f"field 'version' is {version}; expected an integer in [0, 2**63 - 1]"
    event_time = record.get("event_time")
    if event_time is not None:
        if isinstance(event_time, bool) or not isinstance(event_time, int | float):
            return (
                "wrong_type",
                f"field 'event_time' is a JSON {json_type(event_time)}; expected epoch seconds",
            )
        if not is_finite_number(event_time):
            return "wrong_type", f"field 'event_time' is {event_time}; expected a finite number"
    if op == "upsert" and record.get("text") is None:
        state = "null" if "text" in record else "absent"
        return "missing_text", f"field 'text' is {state}; an upsert needs the document's text"
    return None


def _parse_object(value: bytes) -> dict[str, Any] | tuple[str, str]:
    """The value as a JSON object, or (reason, detail)."""
    try:
        record = jsonparse.loads(value)
    except jsonparse.JsonRejected as err:
        return err.reason, (f"the value: {err.detail}" if err.reason == "not_utf8" else err.detail)
    if not isinstance(record, dict):
        return "not_an_object", f"the value is a JSON {json_type(record)}; expected an object"
    return record
