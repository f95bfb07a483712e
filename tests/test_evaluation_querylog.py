"""Tests for evaluation.querylog: importing a clicked/accepted query log as a BEIR evaluation set."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from evaluation import evaluate, load_beir
from evaluation.querylog import (
    QueryLogFields,
    import_query_log,
    normalise_query,
    query_id,
    querylog_main,
)
from tierflow.deadletter import DeadLetter, read_dead_letter_files
from tierflow.errors import ConfigError

Line = dict[str, Any] | str | bytes


def write_log(path: Path, lines: Sequence[Line]) -> Path:
    """Writes one line per item: dicts as JSON, str as text, bytes as they are."""
    data = b""
    for line in lines:
        if isinstance(line, dict):
            data += json.dumps(line).encode("utf-8")
        elif isinstance(line, str):
            data += line.encode("utf-8")
        else:
            data += line
        data += b"\n"
    path.write_bytes(data)
    return path


def write_corpus(path: Path, ids: list[str]) -> Path:
    path.write_text(
        "".join(json.dumps({"_id": doc, "title": "", "text": f"text of {doc}"}) + "\n" for doc in ids),
        encoding="utf-8",
    )
    return path


def read_qrels(root: Path, split: str = "test") -> dict[str, dict[str, int]]:
    lines = (root / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    qrels: dict[str, dict[str, int]] = {}
    for line in lines[1:]:
        qid, doc, score = line.split("\t")
        qrels.setdefault(qid, {})[doc] = int(score)
    return qrels


def read_queries(root: Path) -> dict[str, str]:
    lines = (root / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    return {record["_id"]: record["text"] for record in map(json.loads, lines)}


def letters(root: Path) -> list[DeadLetter]:
    return read_dead_letter_files([str(root / "deadletter.jsonl")])


def qid(text: str) -> str:
    return query_id(normalise_query(text))


def test_accepted_beats_clicked_and_grades_are_max_over_the_log(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "log.jsonl",
        [
            {
                "query": "renewal terms",
                "clicked": ["d12", "d7"],
                "accepted": ["d7"],
                "shown": ["d12", "d7", "d3"],
            },
            {"query": "renewal terms", "clicked": ["d3"]},
            {"query": "renewal terms", "accepted": ["d3"]},
            {"query": "other", "clicked": [5]},
        ],
    )
    summary = import_query_log(log, tmp_path / "out")
    assert read_qrels(tmp_path / "out") == {
        qid("renewal terms"): {"d12": 1, "d3": 2, "d7": 2},
        qid("other"): {"5": 1},
    }
    assert summary["judgments"] == {"total": 4, "by_grade": {"2": 2, "1": 2}}
    assert summary["queries"] == 2 and summary["interactions_used"] == 4
    assert not (tmp_path / "out" / "corpus.jsonl").exists()


def test_queries_group_by_normalised_text_with_stable_ids(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "log.jsonl",
        [
            {"query": "Vendor  Contracts", "clicked": ["a"]},
            {"query": "vendor contracts", "clicked": ["b"]},
            {"query": "  VENDOR\tcontracts ", "clicked": ["c"]},
            {"query": "vendor contracts", "clicked": ["c"]},
            {"query": "Ｖｅｎｄｏｒ contracts", "accepted": ["a"]},  # fullwidth: NFKC folds it
        ],
    )
    import_query_log(log, tmp_path / "out")
    key = "q-" + hashlib.sha256(b"vendor contracts").hexdigest()[:16]
    assert key == qid("VENDOR contracts")
    assert read_queries(tmp_path / "out") == {key: "vendor contracts"}  # the most frequent form
    assert read_qrels(tmp_path / "out") == {key: {"a": 2, "b": 1, "c": 1}}


def test_ids_are_stable_across_reimport_and_a_grown_log(tmp_path: Path) -> None:
    first = [{"query": "alpha", "clicked": ["a"]}, {"query": "beta", "clicked": ["b"]}]
    import_query_log(write_log(tmp_path / "v1.jsonl", first), tmp_path / "v1")
    grown = [*first, {"query": "Gamma", "clicked": ["g"]}, {"query": "ALPHA", "accepted": ["a2"]}]
    import_query_log(write_log(tmp_path / "v2.jsonl", grown), tmp_path / "v2")
    old, new = read_queries(tmp_path / "v1"), read_queries(tmp_path / "v2")
    assert set(old) <= set(new) and len(new) == 3
    assert read_qrels(tmp_path / "v2")[qid("alpha")] == {"a": 1, "a2": 2}
    # Re-importing into the same directory replaces the earlier import and keeps the ids.
    import_query_log(tmp_path / "v1.jsonl", tmp_path / "v2")
    assert read_queries(tmp_path / "v2") == old


def test_min_clicks_counts_clicks_per_query_and_doc(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "log.jsonl",
        [
            {"query": "q", "clicked": ["twice", "once"], "session": "s1"},
            {"query": "Q", "clicked": ["twice"], "session": "s1"},
            {"query": "q", "accepted": ["accepted-once"], "session": "s1"},
            {"query": "lonely", "clicked": ["x"]},
        ],
    )
    summary = import_query_log(log, tmp_path / "out", min_clicks=2)
    assert read_qrels(tmp_path / "out") == {qid("q"): {"accepted-once": 2, "twice": 1}}
    assert summary["dropped"]["judgments_below_threshold"] == 2
    assert summary["dropped"]["queries_no_relevant_docs"] == 1


def test_min_sessions_needs_distinct_sessions(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "log.jsonl",
        [
            {"query": "q", "clicked": ["same-session"], "session": "s1"},
            {"query": "q", "clicked": ["same-session"], "session": "s1"},
            {"query": "q", "clicked": ["two-sessions"], "session": "s1"},
            {"query": "q", "accepted": ["two-sessions"], "session": 2},
            {"query": "q", "clicked": ["no-session-ids"]},
            {"query": "q", "clicked": ["no-session-ids"]},
        ],
    )
    summary = import_query_log(log, tmp_path / "out", min_sessions=2)
    assert read_qrels(tmp_path / "out") == {qid("q"): {"no-session-ids": 1, "two-sessions": 2}}
    assert summary["dropped"]["judgments_below_threshold"] == 1


def test_time_filters_keep_since_inclusive_until_exclusive(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "log.jsonl",
        [
            {"query": "q", "clicked": ["before"], "ts": "2026-11-19T23:59:59Z"},
            {"query": "q", "clicked": ["at-since"], "ts": "2026-11-20T00:00:00Z"},
            {"query": "q", "clicked": ["offset"], "ts": "2026-11-20T09:00:00+02:00"},
            {"query": "q", "clicked": ["epoch"], "ts": 1795204800},  # 2026-11-20T20:00:00Z
            {"query": "q", "clicked": ["at-until"], "ts": "2026-11-21T00:00:00Z"},
            {"query": "q", "clicked": ["no-time"]},
            {"query": "q", "clicked": ["bad-time"], "ts": "yesterday"},
        ],
    )
    summary = import_query_log(log, tmp_path / "out", since="2026-11-20T00:00:00Z", until="2026-11-21")
    assert read_qrels(tmp_path / "out") == {qid("q"): {"at-since": 1, "epoch": 1, "offset": 1}}
    assert summary["dropped"]["filtered_by_time"] == 2
    assert summary["dropped"]["bad_lines"] == {"total": 2, "by_reason": {"bad_time": 1, "missing_time": 1}}
    assert summary["options"]["since"] == "2026-11-20T00:00:00+00:00"
    # Without a filter a line without a time is fine, but an unparseable time is still a bad line.
    unfiltered = import_query_log(log, tmp_path / "all")
    assert unfiltered["dropped"]["bad_lines"]["by_reason"] == {"bad_time": 1}
    assert len(read_qrels(tmp_path / "all")[qid("q")]) == 6


def test_unknown_doc_ids_are_dropped_and_dead_lettered(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", ["d1", "d2", "7"])
    log = write_log(
        tmp_path / "log.jsonl",
        [
            {"query": "q", "clicked": ["d1", "ghost"], "accepted": ["d2"]},
            {"query": "p", "clicked": [7, "ghost", "phantom"]},
            {"query": "only ghosts", "accepted": ["ghost"]},
        ],
    )
    summary = import_query_log(log, tmp_path / "out", corpus=tmp_path)  # a dataset dir works too
    out = tmp_path / "out"
    assert read_qrels(out) == {qid("q"): {"d1": 1, "d2": 2}, qid("p"): {"7": 1}}
    assert summary["dropped"]["unknown_doc_ids"] == 4
    assert summary["dropped"]["unknown_doc_ids_distinct"] == 2
    assert summary["dropped"]["queries_no_relevant_docs"] == 1
    assert summary["dropped"]["bad_lines"]["total"] == 0
    assert summary["corpus"]["documents"] == 3
    dead = letters(out)
    assert [(d.reason, d.doc_id, d.source.position) for d in dead] == [
        ("unknown_doc", "ghost", "line:1"),
        ("unknown_doc", "ghost", "line:2"),
        ("unknown_doc", "phantom", "line:2"),
        ("unknown_doc", "ghost", "line:3"),
    ]
    assert json.loads(dead[0].raw) == {"query": "q", "clicked": ["d1", "ghost"], "accepted": ["d2"]}
    assert (out / "corpus.jsonl").is_symlink() and (out / "corpus.jsonl").resolve() == corpus.resolve()
    import_query_log(log, tmp_path / "copied", corpus=corpus, link_corpus=False)
    corpus_copy = tmp_path / "copied" / "corpus.jsonl"
    assert not corpus_copy.is_symlink() and corpus_copy.read_bytes() == corpus.read_bytes()


def test_every_kind_of_bad_line_is_dead_lettered_and_good_lines_still_import(tmp_path: Path) -> None:
    bad_bytes = b'{"query": "caf\xe9", "clicked": ["d1"]}'
    log = write_log(
        tmp_path / "log.jsonl",
        [
            {"query": "good one", "clicked": ["d1"]},
            bad_bytes,  # line 2: latin-1, not UTF-8
            '{"query": "broken", "clicked": [',  # 3
            '["query", "clicked"]',  # 4: a JSON array
            "",  # 5: blank, skipped
            '"just a string"',  # 6
            {"clicked": ["d1"]},  # 7
            {"query": "   ", "clicked": ["d1"]},  # 8
            {"query": 42, "clicked": ["d1"]},  # 9
            {"query": "q", "clicked": "d1"},  # 10
            {"query": "q", "accepted": ["d1", 1.5]},  # 11
            {"query": "q", "clicked": [True]},  # 12
            {"query": "q", "shown": {"d1": 1}},  # 13
            {"query": "q", "clicked": [""]},  # 14
            {"query": "q", "clicked": ["d1"], "session": ["s"]},  # 15
            {"query": "q", "clicked": ["d1"], "ts": [2026]},  # 16
            {"query": "good two", "accepted": ["d2"]},  # 17
        ],
    )
    summary = import_query_log(log, tmp_path / "out")
    out = tmp_path / "out"
    assert read_qrels(out) == {qid("good one"): {"d1": 1}, qid("good two"): {"d2": 2}}
    dead = letters(out)
    assert [(d.source.position, d.reason) for d in dead] == [
        ("line:2", "not_utf8"),
        ("line:3", "malformed_json"),
        ("line:4", "not_object"),
        ("line:6", "not_object"),
        ("line:7", "missing_query"),
        ("line:8", "missing_query"),
        ("line:9", "wrong_type"),
        ("line:10", "wrong_type"),
        ("line:11", "wrong_type"),
        ("line:12", "wrong_type"),
        ("line:13", "wrong_type"),
        ("line:14", "wrong_type"),
        ("line:15", "wrong_type"),
        ("line:16", "bad_time"),
    ]
    assert dead[0].raw == bad_bytes  # replayable byte for byte
    stored = json.loads((out / "deadletter.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert stored["raw_encoding"] == "base64" and base64.b64decode(stored["raw"]) == bad_bytes
    assert dead[2].raw == '["query", "clicked"]' and "array" in dead[2].detail
    assert all(d.detail and d.source.uri == str(log) for d in dead)
    assert summary["lines_read"] == 17 and summary["blank_lines"] == 1
    assert summary["interactions_used"] == 2
    assert summary["dropped"]["bad_lines"] == {
        "total": 14,
        "by_reason": {
            "bad_time": 1,
            "malformed_json": 1,
            "missing_query": 2,
            "not_object": 2,
            "not_utf8": 1,
            "wrong_type": 7,
        },
    }
    assert summary["deadletters"] == {"file": "deadletter.jsonl", "count": 14}


def test_two_imports_are_byte_identical(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus.jsonl", ["d1", "d2", "d3"])
    log = write_log(
        tmp_path / "log.jsonl",
        [
            {"query": "zeta", "clicked": ["d3", "d1"], "accepted": ["d2"]},
            {"query": "Alpha", "clicked": ["d2", "missing"]},
            b"\xff\xfe",
            {"query": "ünïcode", "accepted": ["d1"]},
        ],
    )
    names = ["queries.jsonl", "qrels/dev.tsv", "import.json", "deadletter.jsonl", "corpus.jsonl"]
    outputs = []
    for name in ("a", "b"):
        import_query_log(log, tmp_path / name, corpus=tmp_path / "corpus.jsonl", split="dev")
        outputs.append({file: (tmp_path / name / file).read_bytes() for file in names})
    assert outputs[0] == outputs[1]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        ["corpus.jsonl", "deadletter.jsonl", "import.json", "qrels", "queries.jsonl"]
    )
    query_ids = [json.loads(line)["_id"] for line in outputs[0]["queries.jsonl"].decode().splitlines()]
    assert query_ids == sorted(query_ids)
    pairs = [line.split("\t")[:2] for line in outputs[0]["qrels/dev.tsv"].decode().splitlines()[1:]]
    assert pairs == sorted(pairs)


def test_output_loads_with_load_beir_and_evaluates(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus.jsonl", ["d1", "d2", "d3"])
    log = write_log(
        tmp_path / "log.jsonl",
        [
            {"query": "first", "clicked": ["d1", "d2"], "accepted": ["d2"]},
            {"query": "second", "clicked": ["d3"]},
            {"query": "unjudged", "shown": ["d1"]},
        ],
    )
    summary = import_query_log(log, tmp_path / "out", corpus=tmp_path / "corpus.jsonl")
    dataset = load_beir(tmp_path / "out", "test")
    assert dataset.queries == {qid("first"): "first", qid("second"): "second"}
    assert dataset.qrels == {qid("first"): {"d1": 1, "d2": 2}, qid("second"): {"d3": 1}}
    assert [record["_id"] for record in dataset.iter_corpus()] == ["d1", "d2", "d3"]
    assert summary["interactions_without_feedback"] == 1
    run = {qid("first"): {"d2": 3.0, "d1": 2.0, "d3": 1.0}, qid("second"): {"d1": 2.0, "d3": 1.0}}
    scores = evaluate(run, dataset.qrels, ks=(1, 3))
    assert scores.per_query[qid("first")]["ndcg@3"] == pytest.approx(1.0)
    assert scores.per_query[qid("second")]["mrr@3"] == pytest.approx(0.5)
    assert scores.mean["p@1"] == pytest.approx(0.5)


def test_import_json_records_source_and_options(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.jsonl", [{"q": "x", "clicks": ["d1"], "when": "2026-01-01T00:00:00"}])
    fields = QueryLogFields(query="q", clicked="clicks", time="when")
    summary = import_query_log(log, tmp_path / "out", fields=fields, since="2025-12-31T00:00:00")
    stored = json.loads((tmp_path / "out" / "import.json").read_text(encoding="utf-8"))
    assert stored == summary
    assert summary["source"]["sha256"] == hashlib.sha256(log.read_bytes()).hexdigest()
    assert summary["options"]["fields"]["query"] == "q" and summary["corpus"] is None
    assert read_qrels(tmp_path / "out") == {qid("x"): {"d1": 1}}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_clicks": 0}, "min_clicks must be an integer >= 1"),
        ({"min_sessions": True}, "min_sessions must be an integer >= 1"),
        ({"since": "not a time"}, "since must be an ISO 8601 time"),
        ({"since": "2026-02-01", "until": "2026-01-01"}, "must be before until"),
        ({"split": "../test"}, "split must be a plain file name"),
        ({"corpus": "nowhere/corpus.jsonl"}, "corpus nowhere/corpus.jsonl does not exist"),
    ],
)
def test_configuration_errors(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    log = write_log(tmp_path / "log.jsonl", [{"query": "q", "clicked": ["d1"]}])
    with pytest.raises(ConfigError, match=message):
        import_query_log(log, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_directory_that_is_not_an_import(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.jsonl", [{"query": "q", "clicked": ["d1"]}])
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "queries.jsonl").write_text("precious\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        import_query_log(log, tmp_path / "dataset")
    assert (tmp_path / "dataset" / "queries.jsonl").read_text(encoding="utf-8") == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "log.jsonl"]  # no staging left


def test_querylog_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_corpus(tmp_path / "corpus.jsonl", ["d1"])
    log = write_log(
        tmp_path / "log.jsonl",
        [{"text": "Q", "clicked": ["d1", "d9"], "ts": "2026-11-20T10:00:00Z"}, "not json"],
    )
    out = tmp_path / "out"
    argv = [str(log), str(out), "--corpus", str(tmp_path / "corpus.jsonl"), "--query-field", "text"]
    assert querylog_main([*argv, "--split", "dev", "--min-clicks", "1", "--since", "2026-11-01"]) == 0
    printed = capsys.readouterr().out
    assert "imported 1 queries and 1 judgments" in printed and "1 unknown doc ids" in printed
    assert "malformed_json 1" in printed
    assert load_beir(out, "dev").qrels == {qid("q"): {"d1": 1}}

    assert querylog_main([str(tmp_path / "missing.jsonl"), str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("tierflow: error: query log ")
    assert querylog_main([*argv, "--min-sessions", "0"]) == 2
    assert "tierflow: error: min_sessions must be an integer >= 1" in capsys.readouterr().err
    assert querylog_main([*argv, "--until", "soon"]) == 2
    assert "tierflow: error: until must be an ISO 8601 time" in capsys.readouterr().err
    assert querylog_main([str(log)]) == 2  # argparse usage error
    assert "required: OUT" in capsys.readouterr().err
    assert querylog_main(["--help"]) == 0
