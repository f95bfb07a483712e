"""The promotion gate on SciFact: a candidate index version that scores worse than the live one on the
labelled queries is refused (nothing switches), one that scores at least as well is promoted; the report
says why either way, with both versions' metrics and a plot.

The corpus is every SciFact document a test query is judged against plus 300 others (583 documents),
with all 300 test queries: the full corpus is the SciFact suite's (tests/test_scifact.py), and building
three versions of it would take this CPU several minutes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evaluation.promotion import PromoteConfig, promote
from indexing import audit, versions
from indexing.hot import HotIndex
from pipelines.reindex import build_candidate
from tests.helpers import SCIFACT, config, ingest, write_jsonl
from tierflow import cli

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def scifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BEIR directory: SciFact's test queries and qrels, its judged documents and 300 others."""
    base = tmp_path_factory.mktemp("gate") / "scifact"
    (base / "qrels").mkdir(parents=True)
    qrels = (SCIFACT / "qrels" / "test.tsv").read_text()
    judged = {line.split("\t")[1] for line in qrels.splitlines()[1:] if line.strip()}
    docs = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").read_text().splitlines()]
    kept = [d for d in docs if d["_id"] in judged] + [d for d in docs if d["_id"] not in judged][:300]
    write_jsonl(base / "corpus.jsonl", kept, mtime_ns=1_000)
    shutil.copy(SCIFACT / "queries.jsonl", base / "queries.jsonl")
    (base / "qrels" / "test.tsv").write_text(qrels)
    return base


def test_promote_refuses_a_worse_candidate_and_accepts_one_at_least_as_good(
    scifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "hot"
    cfg = config(root)
    ingest(scifact / "corpus.jsonl", cfg)
    gate = PromoteConfig(dataset=str(scifact))

    # 24-token windows without titles: worse on SciFact.
    tiny = config(root, chunking={"max_tokens": 24, "overlap_tokens": 0, "include_title": False})
    build_candidate(cfg, tiny, "tiny")
    live_head = HotIndex(root).manifest().generation
    refused = promote(cfg, "tiny", gate, tmp_path / "refused")
    assert not refused["switched"] and not refused["gate"]["passed"]
    live_score = refused["gate"]["live"]["mean"]["ndcg@10"]
    tiny_score = refused["gate"]["candidate"]["mean"]["ndcg@10"]
    assert tiny_score < live_score and "is below live v1" in refused["gate"]["reason"]
    assert refused["gate"]["dataset"]["queries"] == 300
    assert versions.load_registry(root).live == "v1" and HotIndex(root).manifest().generation == live_head
    for name in ("promotion.json", "promotion.md", "promotion.png"):
        assert (tmp_path / "refused" / name).stat().st_size > 0
    assert "Not switched" in (tmp_path / "refused" / "promotion.md").read_text()

    # Vectors left unnormalised (the model normalises its own output): scores at least as well.
    unnormalised = config(root, embedding={"normalize": False})
    build_candidate(cfg, unnormalised, "unnormalised")
    assert cli.main(
        ["promote", "--index", str(root), "--name", "unnormalised", "--dataset", str(scifact),
         "--out", str(tmp_path / "accepted")]
    ) == 0
    shown = capsys.readouterr().out
    assert "Switched" in shown and "at least as good as live v1" in shown
    accepted = json.loads((tmp_path / "accepted" / "promotion.json").read_text())
    assert accepted["switched"] and accepted["gate"]["passed"]
    assert accepted["gate"]["candidate"]["mean"]["ndcg@10"] >= accepted["gate"]["live"]["mean"]["ndcg@10"]
    assert versions.load_registry(root).live == "unnormalised"
    assert HotIndex(root).manifest().embedding["normalize"] is False
    assert [line["action"] for line in audit.read(root)][-1] == "promote"
    # A refused candidate stays a candidate: it can be rebuilt or promoted later.
    assert versions.load_registry(root).versions["tiny"]["state"] == "candidate"
