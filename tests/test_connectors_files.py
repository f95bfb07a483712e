"""File connector on local files: formats, field mapping, splits, dead letters, configuration errors."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import connectors.files as files
from connectors.files import FileSourceConfig, FileSplit, plan_splits, read_split, source_uris
from tierflow.deadletter import DeadLetter
from tierflow.errors import ConfigError
from tierflow.records import DocumentEvent

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"


def read_all(config: FileSourceConfig) -> list[DocumentEvent | DeadLetter]:
    return [record for split in plan_splits(config) for record in read_split(split)]


def events_of(records: list[DocumentEvent | DeadLetter]) -> list[DocumentEvent]:
    return [r for r in records if isinstance(r, DocumentEvent)]


def dead_of(records: list[DocumentEvent | DeadLetter]) -> list[DeadLetter]:
    return [r for r in records if isinstance(r, DeadLetter)]


def jsonl(*records: dict[str, Any] | bytes) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def offsets(data: bytes) -> list[int]:
    """The byte offset of every line of ``data``."""
    starts, pos = [], 0
    for line in data.split(b"\n")[: -1 if data.endswith(b"\n") else None]:
        starts.append(pos)
        pos += len(line) + 1
    return starts


# --- JSONL ----------------------------------------------------------------------------------------


def test_jsonl_maps_fields_positions_and_mtime_version(tmp_path: Path) -> None:
    data = jsonl(
        {"id": "a", "body": "Alpha.", "name": "A", "lang": "en", "tags": ["x"]},
        {"id": 7, "body": "Seven.", "lang": "fr"},
    )
    path = tmp_path / "docs.jsonl"
    path.write_bytes(data)
    mtime_ns = path.stat().st_mtime_ns

    records = read_all(FileSourceConfig(str(path), id_field="id", text_field="body", title_field="name"))

    assert dead_of(records) == []
    first, second = events_of(records)
    assert (first.doc_id, first.op, first.text, first.title) == ("a", "upsert", "Alpha.", "A")
    assert first.metadata == {"lang": "en", "tags": ["x"]}
    assert (second.doc_id, second.title, second.metadata) == ("7", "", {"lang": "fr"})
    assert [e.source.position for e in (first, second)] == [f"byte:{o}" for o in offsets(data)]
    assert {(e.source.system, e.source.uri) for e in (first, second)} == {("file", str(path))}
    assert {e.version for e in (first, second)} == {mtime_ns}
    assert first.event_time == pytest.approx(mtime_ns / 1e9)


def test_metadata_fields_copies_only_the_named_fields(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_bytes(jsonl({"_id": "a", "text": "t", "lang": "en", "secret": "s"}))
    [event] = read_all(FileSourceConfig(str(tmp_path / "d.jsonl"), metadata_fields=("lang", "absent")))
    assert isinstance(event, DocumentEvent)
    assert event.metadata == {"lang": "en"}


def test_op_and_version_fields(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_bytes(
        jsonl(
            {"_id": "int", "text": "t", "v": 5, "op": "upsert", "extra": 1},
            {"_id": "float", "text": "t", "v": 1.5},
            {"_id": "iso", "text": "t", "v": "2024-05-01T12:00:00Z"},
            {"_id": "naive", "text": "t", "v": "2024-05-01T12:00:00"},
            {"_id": "date", "text": "t", "v": "2024-05-01"},
            {"_id": "gone", "text": "old body", "title": "old", "v": 9, "op": "delete"},
            {"_id": "null-op", "text": "t", "v": 1, "op": None},
        )
    )
    mtime_s = (tmp_path / "d.jsonl").stat().st_mtime_ns / 1e9
    config = FileSourceConfig(str(tmp_path / "d.jsonl"), op_field="op", version_field="v")
    by_id = {e.doc_id: e for e in events_of(read_all(config))}

    noon = 1714564800
    assert (by_id["int"].version, by_id["int"].event_time) == (5, pytest.approx(mtime_s))
    assert by_id["int"].metadata == {"extra": 1}
    assert (by_id["float"].version, by_id["float"].event_time) == (1_500_000_000, 1.5)
    assert (by_id["iso"].version, by_id["iso"].event_time) == (noon * 10**9, noon)
    assert by_id["naive"].version == noon * 10**9
    assert by_id["date"].version == (noon - 12 * 3600) * 10**9
    gone = by_id["gone"]
    assert (gone.op, gone.text, gone.title, gone.version) == ("delete", "", "", 9)
    assert by_id["null-op"].op == "upsert"


GOOD_BEFORE = {"_id": "before", "text": "B", "v": 1, "op": "upsert"}
GOOD_AFTER = {"_id": "after", "text": "A", "v": 2, "op": "delete"}


@pytest.mark.parametrize(
    ("reason", "line", "options"),
    [
        ("not_utf8", b'{"_id": "x", "text": "caf\xe9"}', {}),
        ("not_utf8", b'{"_id": "x", "text": "\\ud800 lone surrogate"}', {}),
        ("malformed_json", b'{"_id": "x", "text": ', {}),
        ("malformed_json", b"not json at all", {}),
        ("malformed_json", b"[" * 100_000 + b"]" * 100_000, {}),
        ("not_an_object", b"[1, 2]", {}),
        ("not_an_object", b'"a string"', {}),
        ("not_an_object", b"42", {}),
        ("missing_id", b'{"text": "no id"}', {}),
        ("missing_id", b'{"_id": null, "text": "t"}', {}),
        ("missing_id", b'{"_id": "", "text": "t"}', {}),
        ("missing_id", b'{"_id": "   ", "text": "t"}', {}),
        ("wrong_type", b'{"_id": 1.5, "text": "t"}', {}),
        ("wrong_type", b'{"_id": true, "text": "t"}', {}),
        ("wrong_type", b'{"_id": ["a"], "text": "t"}', {}),
        ("wrong_type", b'{"_id": "x", "text": 3}', {}),
        ("wrong_type", b'{"_id": "x", "text": "t", "title": {"a": 1}}', {}),
        ("wrong_type", b'{"_id": "x", "text": "t", "v": "yesterday"}', {"version_field": "v"}),
        ("wrong_type", b'{"_id": "x", "text": "t", "v": true}', {"version_field": "v"}),
        ("malformed_json", b'{"_id": "x", "text": "t", "v": NaN}', {"version_field": "v"}),
        ("malformed_json", b'{"_id": "x", "text": "t", "meta": {"score": NaN}}', {}),
        ("malformed_json", b'{"_id": "x", "text": "t", "meta": [Infinity]}', {}),
        ("malformed_json", b'{"_id": "x", "text": "t", "score": -Infinity}', {}),
        ("malformed_json", b'{"_id": "x", "text": "t", "score": 1e999}', {}),
        ("malformed_json", b'{"_id": "x", "text": "t", "_id": "y"}', {}),
        ("wrong_type", b'{"_id": "x", "text": "t"}', {"version_field": "v"}),
        ("bad_op", b'{"_id": "x", "text": "t", "op": "remove"}', {"op_field": "op"}),
        ("bad_op", b'{"_id": "x", "text": "t", "op": 1}', {"op_field": "op"}),
        ("too_large", b'{"_id": "x", "text": "' + b"y" * 5000 + b'"}', {"max_record_bytes": 1000}),
        ("too_large", b"\xff" * 5000, {"max_record_bytes": 1000}),
    ],
)
def test_each_bad_record_is_dead_lettered_and_the_rest_read(
    tmp_path: Path, reason: str, line: bytes, options: dict[str, Any]
) -> None:
    data = jsonl(GOOD_BEFORE, line, GOOD_AFTER)
    (tmp_path / "d.jsonl").write_bytes(data)

    records = read_all(FileSourceConfig(str(tmp_path / "d.jsonl"), **options))

    assert [e.doc_id for e in events_of(records)] == ["before", "after"]
    [dead] = dead_of(records)
    assert (dead.reason, dead.stage) == (reason, "parse")
    assert dead.detail
    assert dead.source.position == f"byte:{offsets(data)[1]}"
    assert dead.raw == (line[: files.RAW_KEEP_BYTES] if reason == "too_large" else line)
    assert isinstance(records[1], DeadLetter), "dead letters keep their place in file order"


def test_dead_letter_names_the_id_when_it_was_read(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_bytes(jsonl({"_id": "x", "text": 3}))
    [dead] = read_all(FileSourceConfig(str(tmp_path / "d.jsonl")))
    assert isinstance(dead, DeadLetter)
    assert dead.doc_id == "x"
    assert "'text'" in dead.detail


@pytest.mark.parametrize("split_bytes", [1_000, 8 << 20])
def test_too_large_keeps_the_first_64_kib_and_the_size(tmp_path: Path, split_bytes: int) -> None:
    huge = b'{"_id": "big", "text": "' + b"z" * 200_000 + b'"}'
    (tmp_path / "d.jsonl").write_bytes(jsonl(GOOD_BEFORE, huge, GOOD_AFTER))

    records = read_all(
        FileSourceConfig(str(tmp_path / "d.jsonl"), max_record_bytes=100_000, split_bytes=split_bytes)
    )

    assert [e.doc_id for e in events_of(records)] == ["before", "after"]
    [dead] = dead_of(records)
    assert dead.reason == "too_large"
    assert dead.raw == huge[: 64 * 1024]
    assert str(len(huge)) in dead.detail


def test_empty_lines_crlf_bom_and_no_final_newline(tmp_path: Path) -> None:
    data = (
        b"\xef\xbb\xbf"
        + b'{"_id": "a", "text": "x"}\r\n'
        + b"\n   \n\r\n"
        + b'{"_id": "b", "text": "y"}\n\n'
        + b'{"_id": "c", "text": "z"}'
    )
    (tmp_path / "d.jsonl").write_bytes(data)
    records = read_all(FileSourceConfig(str(tmp_path / "d.jsonl")))
    assert [(r.doc_id, r.text) for r in events_of(records)] == [("a", "x"), ("b", "y"), ("c", "z")]
    assert dead_of(records) == []


def _random_jsonl(rng: random.Random, trailing_newline: bool) -> bytes:
    lines: list[bytes] = []
    for n in range(rng.randint(1, 60)):
        kind = rng.random()
        if kind < 0.1:
            lines.append(b"" if rng.random() < 0.5 else b"  ")
        elif kind < 0.15:
            lines.append(b'{"_id": broken')
        elif kind < 0.18:
            lines.append(b'{"_id": "big", "text": "' + b"q" * rng.randint(300, 900) + b'"}')
        else:
            text = "".join(rng.choice("ab c\u00e9\u4e2d\U0001f600") for _ in range(rng.randint(0, 80)))
            lines.append(json.dumps({"_id": f"d{n}", "text": text}, ensure_ascii=False).encode())
    data = b"\n".join(lines)
    return data + b"\n" if trailing_newline else data


def _view(records: list[DocumentEvent | DeadLetter]) -> list[tuple[Any, ...]]:
    return [
        (r.doc_id, r.source.position, r.text)
        if isinstance(r, DocumentEvent)
        else (r.reason, r.source.position, r.raw)
        for r in records
    ]


@pytest.mark.parametrize("block_bytes", [5, 64, 1 << 20])
@pytest.mark.parametrize("seed", range(4))
def test_any_split_size_reads_every_line_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, block_bytes: int
) -> None:
    monkeypatch.setattr(files, "_BLOCK_BYTES", block_bytes)
    rng = random.Random(seed)
    path = tmp_path / "d.jsonl"
    path.write_bytes(_random_jsonl(rng, trailing_newline=seed % 2 == 0))
    size = path.stat().st_size
    whole = read_all(FileSourceConfig(str(path), max_record_bytes=256, split_bytes=1 << 30))
    assert len(plan_splits(FileSourceConfig(str(path), split_bytes=1 << 30))) == 1

    for split_bytes in sorted({1, 2, 3, 7, 13, 37, 64, 100, 257, rng.randint(1, size), size - 1, size}):
        if (
            split_bytes * block_bytes < 30
        ):  # thousands of splits each seeking in 5-byte reads: slow, no new case
            continue
        config = FileSourceConfig(str(path), max_record_bytes=256, split_bytes=max(split_bytes, 1))
        splits = plan_splits(config)
        assert splits[0].start == 0 and splits[-1].end == size
        assert all(a.end == b.start for a, b in zip(splits, splits[1:], strict=False))
        assert _view(read_all(config)) == _view(whole), f"split_bytes={split_bytes}"


def test_empty_jsonl_file_gives_one_split_and_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    splits = plan_splits(FileSourceConfig(str(tmp_path / "empty.jsonl")))
    assert [(s.start, s.end) for s in splits] == [(0, 0)]
    assert list(read_split(splits[0])) == []


# --- BEIR ----------------------------------------------------------------------------------------


def test_beir_directory_reads_only_the_corpus(tmp_path: Path) -> None:
    (tmp_path / "corpus.jsonl").write_bytes(
        jsonl(
            {"_id": "d1", "title": "T1", "text": "one", "metadata": {"url": "u1"}},
            {"_id": "d2", "title": "", "text": "two"},
        )
    )
    (tmp_path / "queries.jsonl").write_bytes(jsonl({"_id": "q1", "text": "query"}))

    splits = plan_splits(FileSourceConfig(str(tmp_path)))
    assert {(s.format, Path(s.uri).name) for s in splits} == {("beir", "corpus.jsonl")}
    # BEIR's own field names apply whatever the mapping says.
    records = read_all(FileSourceConfig(str(tmp_path), format="beir", id_field="ignored"))
    assert [(e.doc_id, e.title, e.text, e.metadata) for e in events_of(records)] == [
        ("d1", "T1", "one", {"url": "u1"}),
        ("d2", "", "two", {}),
    ]


def test_beir_format_needs_a_corpus(tmp_path: Path) -> None:
    (tmp_path / "other.jsonl").write_bytes(jsonl({"_id": "a"}))
    with pytest.raises(ConfigError, match="corpus.jsonl"):
        plan_splits(FileSourceConfig(str(tmp_path), format="beir"))


def test_scifact_corpus_reads_5183_events() -> None:
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip(f"SciFact is not at {SCIFACT}")
    records = read_all(FileSourceConfig(str(SCIFACT)))
    assert dead_of(records) == []
    events = events_of(records)
    assert len(events) == len({e.doc_id for e in events}) == 5183
    split_up = read_all(FileSourceConfig(str(SCIFACT), split_bytes=1 << 20))
    assert [(e.doc_id, e.source.position) for e in events_of(split_up)] == [
        (e.doc_id, e.source.position) for e in events
    ]


# --- text ----------------------------------------------------------------------------------------


def test_text_directory_ids_titles_and_positions(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("Intro line\n# Title A #\n\nBody.\n# Second\n")
    (root / "sub" / "b.txt").write_text("no heading here\n")
    (root / "sub" / "c.md").write_text("```sh\n# not a title\n```\n## Sub\n# Real Title\n")
    (root / ".hidden.md").write_text("# hidden\n")
    (root / ".git").mkdir()
    (root / ".git" / "x.md").write_text("# hidden\n")

    records = read_all(FileSourceConfig(str(root), format="text"))

    assert dead_of(records) == []
    by_id = {e.doc_id: e for e in events_of(records)}
    assert sorted(by_id) == ["a.md", "sub/b.txt", "sub/c.md"]
    assert [by_id[i].title for i in sorted(by_id)] == ["Title A", "b", "Real Title"]
    assert by_id["a.md"].text == (root / "a.md").read_text()
    assert by_id["a.md"].source.position == "file"
    assert by_id["a.md"].source.uri == str(root / "a.md")
    assert by_id["a.md"].version == (root / "a.md").stat().st_mtime_ns


def test_text_single_file_is_named_by_its_file_name(tmp_path: Path) -> None:
    (tmp_path / "note.md").write_text("plain\n")
    [event] = read_all(FileSourceConfig(str(tmp_path / "note.md")))
    assert isinstance(event, DocumentEvent)
    assert (event.doc_id, event.title) == ("note.md", "note")


def test_text_dead_letters_and_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    outside = tmp_path / "outside.md"
    outside.write_text("# secret\n")
    (root / "good.md").write_text("# Good\n")
    (root / "latin1.txt").write_bytes(b"caf\xe9\n")
    (root / "big.txt").write_bytes(b"x" * 3000)
    (root / "escape.md").symlink_to(outside)
    (root / "inside.md").symlink_to(root / "good.md")
    (root / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    os.mkfifo(root / "pipe.md")

    records = read_all(FileSourceConfig(str(root), format="text", max_record_bytes=1000))

    assert sorted(e.doc_id for e in events_of(records)) == ["good.md", "inside.md"]
    dead = {Path(d.source.uri).name: d for d in dead_of(records)}
    assert {name: d.reason for name, d in dead.items()} == {
        "latin1.txt": "not_utf8",
        "big.txt": "too_large",
        "escape.md": "unreadable",
        "dangling.md": "unreadable",
        "pipe.md": "unreadable",
    }
    assert dead["latin1.txt"].raw == b"caf\xe9\n"
    assert dead["latin1.txt"].doc_id == "latin1.txt"
    assert dead["big.txt"].raw == b"x" * 3000 and "3000" in dead["big.txt"].detail
    assert "outside the source root" in dead["escape.md"].detail
    assert b"secret" not in dead["escape.md"].raw


def test_escaping_symlink_is_one_dead_letter_even_when_split(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (tmp_path / "outside.jsonl").write_bytes(jsonl(*({"_id": str(i), "text": "t"} for i in range(50))))
    (root / "link.jsonl").symlink_to(tmp_path / "outside.jsonl")
    (root / "ok.jsonl").write_bytes(jsonl({"_id": "ok", "text": "t"}))

    records = read_all(FileSourceConfig(str(root), split_bytes=64))

    assert [e.doc_id for e in events_of(records)] == ["ok"]
    assert [d.reason for d in dead_of(records)] == ["unreadable"]


# --- Parquet -------------------------------------------------------------------------------------


def write_parquet(path: Path, rows: list[dict[str, Any]], row_group_size: int = 2, **kwargs: Any) -> None:
    pq.write_table(pa.Table.from_pylist(rows, **kwargs), path, row_group_size=row_group_size)


def test_parquet_one_split_per_row_group_with_row_positions(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    rows = [
        {
            "doc": f"p{i}",
            "body": f"body {i}",
            "heading": f"T{i}",
            "updated": datetime(2024, 1, 1 + i, tzinfo=UTC),
            "score": i / 2,
        }
        for i in range(5)
    ]
    write_parquet(tmp_path / "t.parquet", rows)
    config = FileSourceConfig(
        str(tmp_path / "t.parquet"),
        id_field="doc",
        text_field="body",
        title_field="heading",
        version_field="updated",
    )

    splits = plan_splits(config)
    assert [(s.format, s.start, s.end) for s in splits] == [
        ("parquet", 0, 1),
        ("parquet", 1, 2),
        ("parquet", 2, 3),
    ]
    records = read_all(config)

    assert dead_of(records) == []
    events = events_of(records)
    assert [(e.doc_id, e.text, e.title, e.source.position) for e in events] == [
        (f"p{i}", f"body {i}", f"T{i}", f"row:{i}") for i in range(5)
    ]
    assert events[0].metadata == {"score": 0.0}
    expected = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    assert (events[0].version, events[0].event_time) == (int(expected) * 10**9, expected)


def test_parquet_metadata_all_other_columns_as_json_values(tmp_path: Path) -> None:
    from datetime import datetime

    write_parquet(
        tmp_path / "t.parquet",
        [{"_id": 1, "text": "t", "when": datetime(2024, 1, 2, 3, 4, 5), "blob": b"\xff\x00", "n": None}],
    )
    [event] = read_all(FileSourceConfig(str(tmp_path / "t.parquet")))
    assert isinstance(event, DocumentEvent)
    assert event.doc_id == "1"
    assert event.metadata == {"when": "2024-01-02T03:04:05", "blob": "/wA=", "n": None}
    json.dumps(event.metadata)


def test_parquet_bad_rows_are_dead_lettered(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"_id": "a", "text": "ok", "op": "upsert"},
        {"_id": None, "text": "no id", "op": "upsert"},
        {"_id": "c", "text": "ok", "op": "remove"},
        {"_id": "d", "text": "x" * 5000, "op": None},
        {"_id": "e", "text": "gone", "op": "delete"},
    ]
    write_parquet(tmp_path / "t.parquet", rows)
    records = read_all(FileSourceConfig(str(tmp_path / "t.parquet"), op_field="op", max_record_bytes=1000))

    assert [(e.doc_id, e.op, e.text) for e in events_of(records)] == [
        ("a", "upsert", "ok"),
        ("e", "delete", ""),
    ]
    dead = dead_of(records)
    assert [(d.reason, d.source.position) for d in dead] == [
        ("missing_id", "row:1"),
        ("bad_op", "row:2"),
        ("too_large", "row:3"),
    ]
    assert json.loads(dead[0].raw) == rows[1]


def test_parquet_wrong_column_type_and_missing_id_column(tmp_path: Path) -> None:
    write_parquet(tmp_path / "ints.parquet", [{"_id": "a", "text": 1}, {"_id": "b", "text": 2}])
    write_parquet(tmp_path / "noid.parquet", [{"key": str(i), "text": "t"} for i in range(5)])

    records = read_all(FileSourceConfig(str(tmp_path), glob="*.parquet"))

    assert events_of(records) == []
    reasons = [(Path(d.source.uri).name, d.reason, d.source.position) for d in dead_of(records)]
    assert reasons == [
        ("ints.parquet", "wrong_type", "row:0"),
        ("ints.parquet", "wrong_type", "row:1"),
        ("noid.parquet", "missing_id", "row:0"),
        ("noid.parquet", "missing_id", "row:2"),
        ("noid.parquet", "missing_id", "row:4"),
    ]
    assert "'_id'" in dead_of(records)[-1].detail


def test_corrupt_parquet_is_one_unreadable_dead_letter(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    write_parquet(tmp_path / "good.parquet", [{"_id": "g", "text": "t"}])
    records = read_all(FileSourceConfig(str(tmp_path)))
    assert [e.doc_id for e in events_of(records)] == ["g"]
    [dead] = dead_of(records)
    assert (dead.reason, Path(dead.source.uri).name) == ("unreadable", "bad.parquet")


def test_parquet_metadata_fields_project_columns(tmp_path: Path) -> None:
    write_parquet(tmp_path / "t.parquet", [{"_id": "a", "text": "t", "lang": "en", "huge": "x" * 100}])
    [event] = read_all(FileSourceConfig(str(tmp_path / "t.parquet"), metadata_fields=("lang",)))
    assert isinstance(event, DocumentEvent)
    assert event.metadata == {"lang": "en"}


# --- directories, auto format, planning ----------------------------------------------------------


def test_auto_format_by_extension_and_unknown_extensions(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(jsonl({"_id": "j", "text": "t"}))
    write_parquet(tmp_path / "b.parquet", [{"_id": "p", "text": "t"}])
    (tmp_path / "c.md").write_text("# M\n")
    (tmp_path / "d.csv").write_text("id,text\n")

    splits = plan_splits(FileSourceConfig(str(tmp_path)))
    assert [(Path(s.uri).name, s.format) for s in splits] == [
        ("a.jsonl", "jsonl"),
        ("b.parquet", "parquet"),
        ("c.md", "text"),
        ("d.csv", "auto"),
    ]
    records = read_all(FileSourceConfig(str(tmp_path)))
    assert [e.doc_id for e in events_of(records)] == ["j", "p", "c.md"]
    [dead] = dead_of(records)
    assert dead.reason == "unreadable" and ".csv" in dead.detail


def test_glob_matches_the_relative_path_at_any_depth(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("a.jsonl", "sub/b.jsonl", "sub/c.txt"):
        (tmp_path / name).write_bytes(jsonl({"_id": name, "text": "t"}))
    config = FileSourceConfig(str(tmp_path), glob="*.jsonl")
    assert source_uris(config) == [str(tmp_path / "a.jsonl"), str(tmp_path / "sub" / "b.jsonl")]
    assert [e.doc_id for e in events_of(read_all(config))] == ["a.jsonl", "sub/b.jsonl"]
    assert source_uris(FileSourceConfig(str(tmp_path), glob="sub/*")) == [
        str(tmp_path / "sub" / "b.jsonl"),
        str(tmp_path / "sub" / "c.txt"),
    ]


def test_splits_are_picklable_deterministic_and_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "d.jsonl").write_bytes(jsonl(*({"_id": str(i), "text": "t" * i} for i in range(40))))
    monkeypatch.chdir(tmp_path)
    config = FileSourceConfig("d.jsonl", split_bytes=100)

    splits = plan_splits(config)

    assert len(splits) > 5
    assert splits == plan_splits(config)
    assert pickle.loads(pickle.dumps(splits)) == splits
    assert all(s.uri == str(tmp_path / "d.jsonl") and s.config.path == s.uri for s in splits)
    monkeypatch.chdir(tmp_path.parent)  # a worker with another working directory reads the same
    assert len(events_of([r for s in splits for r in read_split(s)])) == 40


def test_source_uris_of_a_beir_directory(tmp_path: Path) -> None:
    (tmp_path / "corpus.jsonl").write_bytes(jsonl({"_id": "a"}))
    assert source_uris(FileSourceConfig(str(tmp_path))) == [str(tmp_path / "corpus.jsonl")]


def test_a_split_whose_file_vanished_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_bytes(jsonl({"_id": "a", "text": "t"}))
    [split] = plan_splits(FileSourceConfig(str(tmp_path / "d.jsonl")))
    os.remove(split.uri)
    [dead] = list(read_split(split))
    assert isinstance(dead, DeadLetter)
    assert (dead.reason, dead.source.position) == ("unreadable", "byte:0")


# --- configuration errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"format": "csv"}, "unknown format 'csv'"),
        ({"split_bytes": 0}, "split_bytes"),
        ({"max_record_bytes": -1}, "max_record_bytes"),
    ],
)
def test_invalid_config_is_refused_when_built(tmp_path: Path, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FileSourceConfig(str(tmp_path), **options)


def test_missing_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="does not exist") as err:
        plan_splits(FileSourceConfig(str(missing)))
    assert str(missing) in str(err.value)
    with pytest.raises(ConfigError):
        source_uris(FileSourceConfig(str(missing)))


def test_empty_directory_or_unmatched_glob_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no files under"):
        plan_splits(FileSourceConfig(str(tmp_path)))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"glob '\*.jsonl'"):
        plan_splits(FileSourceConfig(str(tmp_path), glob="*.jsonl"))


def test_single_file_of_unknown_extension_needs_a_format(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(ConfigError, match="set format="):
        plan_splits(FileSourceConfig(str(tmp_path / "data.csv")))
    [split] = plan_splits(FileSourceConfig(str(tmp_path / "data.csv"), format="text"))
    assert isinstance(split, FileSplit) and split.format == "text"
