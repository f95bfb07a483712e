"""File connector for scheduled batch runs: plan splits of local files or S3 objects, read each into events.

Splits are planned when the pipeline is built and read in a ``ParDo``, so the connector needs nothing
beyond Create/ParDo and runs on every Beam runner, Dask's included::

    splits = plan_splits(FileSourceConfig("s3://bucket/docs/", format="jsonl"))
    records = pipeline | beam.Create(splits) | beam.FlatMap(read_split)

``read_split`` yields :class:`~tierflow.records.DocumentEvent` and, for input it cannot use,
:class:`~tierflow.deadletter.DeadLetter` (stage ``parse``) with one of these reasons:

- ``not_utf8``: the line (file) is not valid UTF-8, or a JSON string holds an unpaired surrogate.
- ``malformed_json``: the line is not JSON.
- ``not_an_object``: the line is JSON but not an object.
- ``missing_id``: the id field is absent, null or empty.
- ``wrong_type``: the id is not a string or integer, text/title not a string, or the version is bad.
- ``bad_op``: the op field is neither ``upsert`` nor ``delete``.
- ``too_large``: the record is over ``max_record_bytes``; raw keeps its first 64 KiB, detail its size.
- ``unreadable``: the file (or split) cannot be read at all, or its format cannot be told.

Configuration errors raise :class:`~tierflow.errors.ConfigError` from :func:`plan_splits`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from connectors.objectstore import ObjectInfo, ObjectStore, open_store
from tierflow import jsonparse
from tierflow.deadletter import DeadLetter
from tierflow.errors import ConfigError
from tierflow.jsonparse import json_type
from tierflow.records import OPS, DocumentEvent, SourcePosition
from tierflow.s3 import ObjectStoreError, ObjectStoreUnavailable, ObjectUnreadable, is_s3_uri, traversal

__all__ = ["FORMATS", "FileSourceConfig", "FileSplit", "plan_splits", "read_split", "source_uris"]

FORMATS: tuple[str, ...] = ("beir", "jsonl", "text", "parquet", "auto")
EXTENSION_FORMATS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".md": "text",
    ".markdown": "text",
}
BEIR_CORPUS = "corpus.jsonl"
RAW_KEEP_BYTES = 64 << 10
STAGE = "parse"

_BLOCK_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_VERSION = (1 << 63) - 1  # versions are stored as int64
_FENCE = re.compile(r"(```|~~~)")


@dataclass(frozen=True)
class FileSourceConfig:
    """Where the files are and how their records map onto document events.

    Args:
        path: A local file or directory, or ``s3://bucket/key`` (one object) / ``s3://bucket/prefix``.
        format: ``beir``, ``jsonl``, ``text``, ``parquet``, or ``auto`` (a directory holding
            ``corpus.jsonl`` is BEIR; otherwise by extension: .jsonl/.ndjson, .parquet/.pq, .txt/.md).
        id_field: Field holding the document id (a string, or an integer made a string).
        text_field: Field holding the body text.
        title_field: Field holding the title.
        op_field: Optional field holding ``upsert`` or ``delete``; absent or null means upsert.
        version_field: Optional field holding the version: an integer (an ordering number), a float
            (epoch seconds) or an ISO-8601 timestamp (naive means UTC); timestamps become epoch
            nanoseconds. Without it every record's version is its file's mtime in ns.
        metadata_fields: Fields copied into ``metadata``; ``()`` copies every field not mapped above.
        glob: For directories and prefixes: fnmatch pattern on the path relative to the root (``*``
            crosses ``/``). Hidden names (starting with ``.``) are never read.
        split_bytes: JSONL files larger than this are read as several newline-aligned byte ranges.
        max_record_bytes: A line (text file, Parquet row text) over this is dead-lettered unparsed.
        s3_endpoint_url: S3 endpoint for S3-compatible services; None for AWS.
        s3_region: S3 region; None for the usual AWS environment/config.

    Files are read only inside ``path``: one that resolves outside it (a symlink, ``..``) is
    dead-lettered ``unreadable``, and an ``s3://`` path with a ``.`` or ``..`` segment is refused.

    Raises:
        ConfigError: An unknown format, a non-positive size, or an ``s3://`` path with ``.``/``..``.

    Example:
        >>> FileSourceConfig("data/docs.jsonl", id_field="id", op_field="op", version_field="updated_at")
    """

    path: str
    format: str = "auto"
    id_field: str = "_id"
    text_field: str = "text"
    title_field: str = "title"
    op_field: str | None = None
    version_field: str | None = None
    metadata_fields: tuple[str, ...] = ()
    glob: str = "*"
    split_bytes: int = 8 << 20
    max_record_bytes: int = 4 << 20
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("FileSourceConfig.path is empty: set it to a local path or an s3:// uri")
        if is_s3_uri(self.path) and (reason := traversal(self.path)):
            raise ConfigError(f"FileSourceConfig.path: {reason}")
        if self.format not in FORMATS:
            raise ConfigError(
                f"unknown format {self.format!r} for {self.path}: set format to one of {', '.join(FORMATS)}"
            )
        for name in ("split_bytes", "max_record_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"FileSourceConfig.{name} must be positive (source {self.path})")
        object.__setattr__(self, "metadata_fields", tuple(self.metadata_fields))


@dataclass(frozen=True)
class FileSplit:
    """One unit of reading work: small and picklable, made by :func:`plan_splits`.

    Args:
        uri: The file (absolute local path or ``s3://`` uri).
        format: ``beir``, ``jsonl``, ``text``, ``parquet``, or ``auto`` when it could not be told (the
            split then yields one ``unreadable`` dead letter).
        start: JSONL/BEIR: first byte of the range; Parquet: first row group; others 0.
        end: JSONL/BEIR: end of the byte range (exclusive); Parquet: end row group (exclusive; -1 for
            all, when planning could not read the footer); others the file size.
        mtime_ns: The file's modification time when planned, in ns.
        config: The source configuration, with ``path`` made absolute.
        size: The file's size in bytes when planned.
        etag: Its S3 ETag when planned (empty for local files).

    Example:
        >>> split = plan_splits(FileSourceConfig("docs.jsonl"))[0]
        >>> events = list(read_split(split))
    """

    uri: str
    format: str
    start: int
    end: int
    mtime_ns: int
    config: FileSourceConfig
    size: int = 0
    etag: str = ""


def plan_splits(config: FileSourceConfig) -> list[FileSplit]:
    """List the source's files and cut them into splits, in a deterministic order (by uri, then offset).

    Args:
        config: The source.

    Returns:
        The splits; each file gives at least one.

    Raises:
        ConfigError: The path does not exist or matches no file, the format cannot be told, a BEIR
            directory lacks corpus.jsonl, or S3 cannot be used (missing bucket, credentials, endpoint).
    """
    config = _absolute(config)
    store = _store(config)
    splits: list[FileSplit] = []
    for info, fmt in _resolve(config, store):
        splits.extend(_splits_of(info, fmt, config, store))
    return splits


def source_uris(config: FileSourceConfig) -> list[str]:
    """The files this source covers now (for full-sync runs: documents from any other file are gone).

    Raises:
        ConfigError: As :func:`plan_splits`.
    """
    config = _absolute(config)
    return [info.uri for info, _ in _resolve(config, _store(config))]


def read_split(split: FileSplit) -> Iterator[DocumentEvent | DeadLetter]:
    """Read one split: its events, and a dead letter for each record (or file) it cannot use.

    Bad input never raises; only a transient store failure does (:class:`ObjectStoreUnavailable`),
    so the runner retries the bundle.

    Args:
        split: From :func:`plan_splits`.

    Yields:
        DocumentEvent or DeadLetter, in file order.
    """
    store = _store(split.config)
    whole_file = SourcePosition(store.system, split.uri, "file")
    if split.format == "auto":
        suffix = PurePosixPath(split.uri).suffix or "(none)"
        yield _unreadable(
            whole_file,
            f"cannot tell the format from the extension {suffix}; set format= or narrow glob= to skip it",
        )
        return
    reason = store.refusal(split.uri)
    if reason:
        yield _unreadable(whole_file, reason)
        return
    if split.format in ("jsonl", "beir"):
        yield from _read_jsonl(split, store)
    elif split.format == "text":
        yield from _read_text(split, store)
    else:
        yield from _read_parquet(split, store)


def _absolute(config: FileSourceConfig) -> FileSourceConfig:
    """The config with a local path made absolute, so splits mean the same on any worker."""
    if is_s3_uri(config.path):
        return config
    path = os.path.abspath(os.path.expanduser(config.path))
    return config if path == config.path else dataclasses.replace(config, path=path)


def _store(config: FileSourceConfig) -> ObjectStore:
    return open_store(
        config.path, endpoint_url=config.s3_endpoint_url, region=config.s3_region, root=config.path
    )


def _format_of(uri: str) -> str:
    return EXTENSION_FORMATS.get(PurePosixPath(uri).suffix.lower(), "auto")


def _resolve(config: FileSourceConfig, store: ObjectStore) -> list[tuple[ObjectInfo, str]]:
    """The files the source covers, each with its format."""
    single = store.stat(config.path)
    if single is not None:
        fmt = config.format if config.format != "auto" else _format_of(single.uri)
        if fmt == "auto":
            raise ConfigError(
                f"cannot tell the format of {config.path} from its extension: "
                f"set format= to one of {', '.join(FORMATS[:-1])}"
            )
        return [(single, fmt)]
    if config.format in ("beir", "auto"):
        corpus = store.stat(store.join(config.path, BEIR_CORPUS))
        if corpus is not None:
            return [(corpus, "beir")]
    infos = store.list(config.path, config.glob)
    if config.format == "beir":
        raise ConfigError(
            f"{config.path} is not a BEIR dataset: it has no {BEIR_CORPUS}; point path at the directory "
            "that holds it, or set format='jsonl'"
        )
    if not infos:
        raise ConfigError(f"no files under {config.path} match glob {config.glob!r}: check path and glob")
    return [(info, config.format if config.format != "auto" else _format_of(info.uri)) for info in infos]


def _splits_of(info: ObjectInfo, fmt: str, config: FileSourceConfig, store: ObjectStore) -> list[FileSplit]:
    def split(start: int, end: int) -> FileSplit:
        return FileSplit(info.uri, fmt, start, end, info.mtime_ns, config, info.size, info.etag)

    if fmt in ("jsonl", "beir") and not store.refusal(info.uri):
        step = config.split_bytes
        return [split(start, min(start + step, info.size)) for start in range(0, max(info.size, 1), step)]
    if fmt == "parquet" and not store.refusal(info.uri):
        import pyarrow as pa

        try:
            groups = _row_group_count(store, info.uri)
        except ObjectStoreUnavailable:
            raise
        except (ObjectStoreError, OSError, ValueError, pa.ArrowException):
            # The read reports it, as one dead letter for the file. (ArrowNotImplementedError, for one, is
            # neither an OSError nor a ValueError.)
            return [split(0, -1)]
        return [split(group, group + 1) for group in range(groups)] or [split(0, 0)]
    return [split(0, info.size)]


def _row_group_count(store: ObjectStore, uri: str) -> int:
    import pyarrow.parquet as pq

    with store.open(uri) as file:
        return int(pq.ParquetFile(file).metadata.num_row_groups)


class _Reject(NamedTuple):
    reason: str
    detail: str
    doc_id: str | None = None


def _dead(reject: _Reject, position: SourcePosition, raw: bytes) -> DeadLetter:
    return DeadLetter(reject.reason, reject.detail, STAGE, position, raw, reject.doc_id)


def _unreadable(position: SourcePosition, detail: str) -> DeadLetter:
    return DeadLetter("unreadable", detail, STAGE, position, b"")


def _too_large(position: SourcePosition, raw: bytes, size: int, limit: int, what: str) -> DeadLetter:
    kept = raw[:RAW_KEEP_BYTES]
    return DeadLetter(
        "too_large",
        f"{what} is {size} bytes, over max_record_bytes={limit}; not parsed. raw holds its first {len(kept)} "
        "bytes only; raise max_record_bytes to read it",
        STAGE,
        position,
        kept,
    )


# --- JSONL and BEIR -------------------------------------------------------------------------------


def _lines(store: ObjectStore, uri: str, start: int, end: int, keep: int) -> Iterator[tuple[int, bytes, int]]:
    """The lines that start inside ``[start, end)``: (offset, bytes without the newline, full length).

    A split owns exactly the lines that start inside it (Hadoop-style), so splits of one file read
    every line once: a split starting mid-line skips to the next line, and the last line of a split is
    read past ``end`` to its newline. At most ``keep`` bytes of a line are held; the full length is
    still counted.
    """
    pos = start - 1 if start > 0 else 0
    seeking = start > 0  # drop everything through the first newline at or after start - 1
    line = bytearray()
    line_start: int | None = None
    line_len = 0
    while True:
        block = store.read(uri, pos, pos + _BLOCK_BYTES)
        i = 0
        if seeking:
            newline = block.find(b"\n")
            if newline < 0:
                # No newline up to here: no line starts inside the split once the block reaches its end.
                # Seeking on would make every split of one long line read to the line's end (quadratic).
                if len(block) < _BLOCK_BYTES or pos + len(block) >= end:
                    return
                pos += len(block)
                continue
            seeking = False
            i = newline + 1
            if pos + i >= end:
                return
        while i < len(block):
            if line_start is None:
                line_start, line_len = pos + i, 0
                line.clear()
            newline = block.find(b"\n", i)
            piece_end = newline if newline >= 0 else len(block)
            if len(line) < keep:
                line += block[i : min(piece_end, i + keep - len(line))]
            line_len += piece_end - i
            if newline < 0:
                break
            yield line_start, bytes(line), line_len
            line_start = None
            i = newline + 1
            if pos + i >= end:
                return
        if len(block) < _BLOCK_BYTES:
            if line_start is not None:
                yield line_start, bytes(line), line_len
            return
        pos += len(block)


def _read_jsonl(split: FileSplit, store: ObjectStore) -> Iterator[DocumentEvent | DeadLetter]:
    limit = split.config.max_record_bytes
    try:
        for offset, raw, size in _lines(
            store, split.uri, split.start, split.end, max(limit + 1, RAW_KEEP_BYTES)
        ):
            position = SourcePosition(store.system, split.uri, f"byte:{offset}")
            if size > limit:
                yield _too_large(position, raw, size, limit, "line")
                continue
            body = raw[len(_BOM) :] if offset == 0 and raw.startswith(_BOM) else raw
            if not body.strip():
                continue
            record = _parse_json_object(body)
            if isinstance(record, _Reject):
                yield _dead(record, position, raw)
                continue
            mapped = _map_record(record, split, position)
            yield _dead(mapped, position, raw) if isinstance(mapped, _Reject) else mapped
    except ObjectUnreadable as err:
        position = SourcePosition(store.system, split.uri, f"byte:{split.start}")
        yield _unreadable(position, f"cannot read bytes {split.start}-{split.end}: {err.message}")


def _parse_json_object(body: bytes) -> dict[str, Any] | _Reject:
    try:
        record = jsonparse.loads(body)
    except jsonparse.JsonRejected as err:
        return _Reject(err.reason, err.detail)
    if not isinstance(record, dict):
        return _Reject("not_an_object", f"a JSON {json_type(record)}, expected an object per line")
    return record


# --- mapping a record ------------------------------------------------------------------------------


def _map_record(
    record: Mapping[str, Any], split: FileSplit, position: SourcePosition
) -> DocumentEvent | _Reject:
    """One JSON object or Parquet row as an event, or why it cannot be one."""
    config = split.config
    if split.format == "beir":
        id_field, text_field, title_field = "_id", "text", "title"
    else:
        id_field, text_field, title_field = config.id_field, config.text_field, config.title_field

    raw_id = record.get(id_field)
    if raw_id is None:
        state = "absent" if id_field not in record else "null"
        return _Reject(
            "missing_id", f"id field {id_field!r} is {state}; set id_field= if the id is elsewhere"
        )
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        return _Reject(
            "wrong_type",
            f"id field {id_field!r} is a JSON {json_type(raw_id)}; expected a string or an integer",
        )
    doc_id = str(raw_id)
    if not doc_id.strip():
        return _Reject("missing_id", f"id field {id_field!r} is empty")

    op = "upsert"
    if config.op_field is not None:
        raw_op = record.get(config.op_field)
        if raw_op is not None:
            if raw_op not in OPS:
                return _Reject(
                    "bad_op",
                    f"op field {config.op_field!r} is {raw_op!r}; expected 'upsert' or 'delete'",
                    doc_id,
                )
            op = raw_op

    if config.version_field is None:
        version, event_time = split.mtime_ns, split.mtime_ns / 1e9
    else:
        parsed = _parse_version(record.get(config.version_field))
        if isinstance(parsed, str):
            return _Reject("wrong_type", f"version field {config.version_field!r}: {parsed}", doc_id)
        version, timestamp = parsed
        event_time = timestamp if timestamp is not None else split.mtime_ns / 1e9

    text = title = ""
    if op == "upsert":
        for field, name in ((text_field, "text"), (title_field, "title")):
            value = record.get(field)
            if value is not None and not isinstance(value, str):
                return _Reject(
                    "wrong_type",
                    f"{name} field {field!r} is a JSON {json_type(value)}; expected a string",
                    doc_id,
                )
        text, title = record.get(text_field) or "", record.get(title_field) or ""

    if config.metadata_fields:
        metadata = {name: record[name] for name in config.metadata_fields if name in record}
    else:
        mapped = {id_field, text_field, title_field, config.op_field, config.version_field}
        metadata = {name: value for name, value in record.items() if name not in mapped}
        nested = metadata.get("metadata")
        if split.format == "beir" and isinstance(nested, dict):  # BEIR corpora keep extras in "metadata"
            metadata = {**{k: v for k, v in metadata.items() if k != "metadata"}, **nested}
    return DocumentEvent(doc_id, op, text, title, metadata, position, version, event_time)  # type: ignore[arg-type]


def _parse_version(value: Any) -> tuple[int, float | None] | str:
    """(version, event time in epoch seconds if the value is a timestamp), or what is wrong with it."""
    if isinstance(value, bool) or value is None:
        return f"is a JSON {json_type(value)}; expected an integer, a float (epoch seconds) or an ISO-8601 timestamp"
    if isinstance(value, int):
        return _fits(value, None)
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"is {value}; expected a finite number"
        if not abs(value) < _MAX_VERSION / 1e9:  # value * 1e9 would overflow, or round() of it
            return f"is {value}; epoch seconds past 2262 do not fit a 64-bit version in nanoseconds"
        return _fits(round(value * 1_000_000_000), value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return f"{value!r} is not an ISO-8601 timestamp"
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    else:
        return f"is a JSON {json_type(value)}; expected an integer, a float (epoch seconds) or an ISO-8601 timestamp"
    nanos = (moment - _EPOCH) // timedelta(microseconds=1) * 1000
    return _fits(nanos, nanos / 1e9)


def _fits(version: int, timestamp: float | None) -> tuple[int, float | None] | str:
    """The version when it fits the 64 bits it is stored in, else what is wrong with it."""
    if -_MAX_VERSION - 1 <= version <= _MAX_VERSION:
        return version, timestamp
    shown = str(version) if len(str(version)) <= 24 else f"{str(version)[:20]}..."
    return f"is {shown}; a version must fit 64 bits (timestamps: years 1678 to 2262)"


# --- text ----------------------------------------------------------------------------------------


def _read_text(split: FileSplit, store: ObjectStore) -> Iterator[DocumentEvent | DeadLetter]:
    position = SourcePosition(store.system, split.uri, "file")
    limit = split.config.max_record_bytes
    doc_id = _relative_id(split)
    try:
        data = store.read(split.uri, 0, RAW_KEEP_BYTES if split.end > limit else limit + 1)
    except ObjectUnreadable as err:
        yield _unreadable(position, err.message)
        return
    if split.end > limit or len(data) > limit:
        yield _too_large(position, data, max(split.end, len(data)), limit, "file")
        return
    body = data[len(_BOM) :] if data.startswith(_BOM) else data
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        yield DeadLetter(
            "not_utf8", f"invalid UTF-8 at byte {err.start}: {err.reason}", STAGE, position, data, doc_id
        )
        return
    title = _markdown_title(text) or PurePosixPath(doc_id).stem
    yield DocumentEvent(doc_id, "upsert", text, title, {}, position, split.mtime_ns, split.mtime_ns / 1e9)


def _relative_id(split: FileSplit) -> str:
    """The file's path relative to the source root (posix); its name when the source is the file."""
    root = split.config.path.rstrip("/")
    if split.uri == root:
        return PurePosixPath(split.uri).name
    if is_s3_uri(root):
        return split.uri[len(root) + 1 :]
    return PurePosixPath(os.path.relpath(split.uri, root).replace(os.sep, "/")).as_posix()


def _markdown_title(text: str) -> str:
    """The first level-1 ATX heading (``# Title``) outside fenced code, or ''."""
    fenced = False
    for line in text.splitlines():
        stripped = line.strip()
        if _FENCE.match(stripped):
            fenced = not fenced
        elif not fenced and (heading := _heading(stripped)) is not None:
            return heading
    return ""


def _heading(line: str) -> str | None:
    """The text of a level-1 ATX heading (``# Title``, ``# Title ##``; ``line`` is stripped), or None.

    Done by hand: the regular expression it replaces took quadratic time on a long run of blanks.
    """
    if len(line) < 3 or line[0] != "#" or line[1] not in " \t":
        return None
    content = line[1:].lstrip(" \t")
    body = content.rstrip("#")
    if body != content and body != body.rstrip(" \t") and body.strip(" \t"):  # a closing sequence
        content = body.rstrip(" \t")
    return content.strip()


# --- Parquet -------------------------------------------------------------------------------------


def _read_parquet(split: FileSplit, store: ObjectStore) -> Iterator[DocumentEvent | DeadLetter]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    config = split.config
    row = 0
    position = SourcePosition(store.system, split.uri, "file")
    try:
        with store.open(split.uri) as file:
            parquet = pq.ParquetFile(file)
            meta = parquet.metadata
            stop = meta.num_row_groups if split.end < 0 else min(split.end, meta.num_row_groups)
            row = sum(meta.row_group(group).num_rows for group in range(split.start))
            names = set(parquet.schema_arrow.names)
            columns = None
            if config.metadata_fields:
                wanted = (
                    config.id_field,
                    config.text_field,
                    config.title_field,
                    config.op_field,
                    config.version_field,
                )
                columns = [c for c in dict.fromkeys((*wanted, *config.metadata_fields)) if c in names]
            for group in range(split.start, stop):
                position = SourcePosition(store.system, split.uri, f"row:{row}")
                group_rows = meta.row_group(group).num_rows
                if config.id_field not in names:
                    detail = (
                        f"column {config.id_field!r} is not in the file, so rows {row}-{row + group_rows - 1} "
                        f"(row group {group}) have no id; set id_field= to one of {sorted(names)}"
                    )
                    yield DeadLetter("missing_id", detail, STAGE, position, b"")
                    row += group_rows
                    continue
                for batch in parquet.iter_batches(batch_size=4096, row_groups=[group], columns=columns):
                    for record in batch.to_pylist():
                        position = SourcePosition(store.system, split.uri, f"row:{row}")
                        yield _parquet_record(record, split, position)
                        row += 1
    except ObjectUnreadable as err:
        yield _unreadable(position, err.message)
    except (OSError, pa.ArrowException, ValueError) as err:
        yield _unreadable(position, f"not a readable Parquet file: {err}")


def _parquet_record(
    record: dict[str, Any], split: FileSplit, position: SourcePosition
) -> DocumentEvent | DeadLetter:
    mapped = _map_record(record, split, position)
    if isinstance(mapped, _Reject):
        return _dead(mapped, position, _row_bytes(record))
    limit = split.config.max_record_bytes
    if len(mapped.text) + len(mapped.title) > limit // 4:  # a character is at most 4 UTF-8 bytes
        size = len(mapped.text.encode("utf-8")) + len(mapped.title.encode("utf-8"))
        if size > limit:
            dead = _too_large(position, _row_bytes(record), size, limit, "row text")
            dead.doc_id = mapped.doc_id
            return dead
    mapped.metadata = {name: _jsonable(value) for name, value in mapped.metadata.items()}
    return mapped


def _row_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(_jsonable(record), ensure_ascii=False).encode("utf-8")


def _jsonable(value: Any) -> Any:
    """A Parquet value as JSON-serialisable data (timestamps as ISO-8601, decimals as strings)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return str(value)
