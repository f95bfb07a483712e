"""The ``tierflow`` command as a user runs it: ingest, search (table and JSON), lineage, eval, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import DEMO, demo_docs, write_jsonl
from tierflow.cli import main

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    corpus = write_jsonl(root / "docs.jsonl", demo_docs(), mtime_ns=1_000)
    assert main(["ingest", str(corpus), "--index", str(root / "hot"), "--json"]) == 0
    return root / "hot"


def test_ingest_prints_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_jsonl(tmp_path / "d.jsonl", [*demo_docs()[:3], b"not json"])
    assert main(["ingest", str(corpus), "--index", str(tmp_path / "hot")]) == 0
    out = capsys.readouterr().out
    assert "committed generation 1" in out and "chunks_embedded" in out
    assert "malformed_json" in out and "dead-letter file:" in out


def test_search_table_and_json(index_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["search", "sourdough starter and wild yeast", "-k", "3", "--index", str(index_dir)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["#", "score", "doc_id", "tier"]
    assert table[1].split()[2] == "cook-1"

    assert (
        main(["search", "sourdough starter and wild yeast", "-k", "3", "--index", str(index_dir), "--json"])
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert [r["doc_id"] for r in results][0] == "cook-1" and len(results) == 3
    top = results[0]
    assert top["score"] > results[1]["score"] and top["tier"] == "hot" and "Sourdough" in top["text"]
    assert top["lineage"]["source"]["uri"].endswith("docs.jsonl")
    assert top["lineage"]["model"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"run_id", "code_version", "content_hash", "validation_suite", "dedup", "ingest_time"} <= set(
        top["lineage"]
    )


def test_lineage_by_doc_id_and_vector_id(index_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["lineage", "kafka-2", "--index", str(index_dir)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "canonical" and record["source"]["position"].startswith("byte:")
    vector = record["vectors"][0]["vector_id"]
    assert main(["lineage", str(vector), "--index", str(index_dir)]) == 0
    by_vector = json.loads(capsys.readouterr().out)
    assert by_vector["doc_id"] == "kafka-2" and by_vector["vector"]["chunk_id"] == "kafka-2#0"
    assert main(["lineage", "no-such-doc", "--index", str(index_dir)]) == 1


def test_eval_on_an_existing_index_writes_reports(
    index_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main(["eval", "--dataset", str(DEMO), "--out", str(out), "--index", str(index_dir)]) == 0
    assert "nDCG@10" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["mean"]["recall@10"] > 0.9
    assert report["provenance"]["dataset"]["checksums"] and report["provenance"]["model"]["revision"]
    assert "| ndcg |" in (out / "report.md").read_text()


def test_bad_configuration_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tierflow.toml"
    config.write_text('[index]\ntype = "ivfpq"\n')
    assert main(["search", "x", "--config", str(config), "--index", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "index.type" in err and "ivfpq" in err
    config.write_text("[chunking]\nmax_tokns = 100\n")
    assert main(["search", "x", "--config", str(config)]) == 2
    assert "max_tokns" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "missing.jsonl"), "--index", str(tmp_path / "hot")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
