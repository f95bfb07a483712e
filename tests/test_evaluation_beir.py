"""Tests for evaluation.beir: loading, filtering, checksums and errors for BEIR-format datasets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from evaluation import load_beir
from tierflow.errors import ConfigError, Terminal

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"


def write_dataset(
    root: Path, qrels: str = "query-id\tcorpus-id\tscore\nq2\td1\t1\nq1\td2\t2\nq1\td1\t0\n"
) -> Path:
    (root / "qrels").mkdir(parents=True)
    corpus = [{"_id": "d1", "title": "One", "text": "first"}, {"_id": "d2", "title": "", "text": "second"}]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus), encoding="utf-8")
    queries = [{"_id": "q2", "text": "two"}, {"_id": "q3", "text": "unjudged"}, {"_id": "q1", "text": "one"}]
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries), encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return root


def test_loads_queries_with_qrels_in_file_order(tmp_path: Path) -> None:
    dataset = load_beir(write_dataset(tmp_path))
    assert list(dataset.queries.items()) == [("q2", "two"), ("q1", "one")]
    assert dataset.qrels == {"q2": {"d1": 1}, "q1": {"d2": 2, "d1": 0}}
    assert dataset.corpus_path == tmp_path / "corpus.jsonl"
    assert [record["_id"] for record in dataset.iter_corpus()] == ["d1", "d2"]


def test_checksums_are_sha256_of_each_file(tmp_path: Path) -> None:
    dataset = load_beir(write_dataset(tmp_path), split="test")
    assert dataset.checksums == {
        name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv")
    }


def test_missing_file_names_path_and_layout(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    with pytest.raises(ConfigError) as raised:
        load_beir(tmp_path, split="dev")
    message = str(raised.value)
    assert f"BEIR dataset at {tmp_path} is missing qrels/dev.tsv" in message
    assert (
        f"expected layout: {tmp_path}/corpus.jsonl, {tmp_path}/queries.jsonl, {tmp_path}/qrels/dev.tsv"
        in message
    )
    assert isinstance(raised.value, Terminal)


def test_malformed_qrels_line_is_reported(tmp_path: Path) -> None:
    write_dataset(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(
        ConfigError, match=r"test\.tsv:2: expected 'query-id<TAB>corpus-id<TAB>integer score'"
    ):
        load_beir(tmp_path)


def test_qrels_for_unknown_query_is_reported(tmp_path: Path) -> None:
    write_dataset(tmp_path, qrels="query-id\tcorpus-id\tscore\nq9\td1\t1\n")
    with pytest.raises(ConfigError, match=r"judges queries missing from .*queries\.jsonl: \['q9'\]"):
        load_beir(tmp_path)


@pytest.mark.skipif(not SCIFACT.is_dir(), reason=f"SciFact not found at {SCIFACT}")
def test_scifact_test_split() -> None:
    dataset = load_beir(SCIFACT)
    assert len(dataset.queries) == 300
    assert sum(len(judged) for judged in dataset.qrels.values()) == 339
    assert dataset.queries.keys() == dataset.qrels.keys()
    assert sorted(dataset.checksums) == ["corpus.jsonl", "qrels/test.tsv", "queries.jsonl"]
