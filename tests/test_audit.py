"""The audit log: every commit, lifecycle move, compaction and gc of an index, in generation order,
with who/what/when and source positions; a crash between publish and append loses no line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from indexing import audit
from indexing.cold import ColdConfig
from indexing.docs_table import DELETED, DocState
from indexing.hot import CommitRequest, HotIndex
from lifecycle.policy import LifecycleConfig
from lifecycle.run import run_lifecycle
from lifecycle.synthetic import build_synthetic_index, doc_name

DAY = 86400.0


def test_every_change_is_audited_in_generation_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        sys, "argv", ["tierflow", "ingest", "--sasl-password", "hunter2-planted", "docs.jsonl"]
    )
    root = tmp_path / "hot"
    now = time.time()
    build_synthetic_index(
        root, 600, 1, 16, ingest_time=lambda i: now - (60 * DAY if i % 2 else 0), segment_docs=200
    )
    index = HotIndex(root)
    index.commit(
        CommitRequest(
            "deletes", updates=[DocState(doc_name(i), 2, DELETED) for i in range(0, 600, 3)],
            sources={"kafka:docs/0": "1042"},
        )
    )  # fmt: skip
    run_lifecycle(root, LifecycleConfig(cold_after="30d"), ColdConfig(uri=str(tmp_path / "cold")))
    index.compact()
    index.collect_garbage(keep_generations=1, min_age_s=0)

    records = list(audit.read(root))
    actions = [r["action"] for r in records]
    assert actions[:4] == ["commit", "commit", "commit", "commit"] and "retier" in actions
    assert actions[-2:] == ["compact", "gc"], actions
    generations = [r["generation"] for r in records]
    assert generations == sorted(generations) and len(set(generations[:-1])) == len(generations) - 1
    assert generations[-2] == index.manifest().generation
    deletes = records[3]
    assert deletes["run_id"] == "deletes" and deletes["sources"] == {"kafka:docs/0": "1042"}
    assert deletes["applied"] == 200
    for record in records:
        assert record["actor"]["command"] == "tierflow ingest"
        assert record["actor"]["pid"] and record["actor"]["host"] and record["actor"]["user"]
        assert record["ts"].endswith("Z")
    compact = records[-2]
    assert compact["segments"]["removed"] and len(compact["segments"]["added"]) >= 1
    assert records[-1]["removed"], "gc names the files it deleted"
    assert "hunter2-planted" not in (root / audit.AUDIT_FILE).read_text()


def test_a_generation_published_without_its_line_is_recovered_from_history(tmp_path: Path) -> None:
    root = tmp_path / "hot"
    build_synthetic_index(root, 300, 1, 16, segment_docs=100)  # generations 1..3
    path = root / audit.AUDIT_FILE
    lines = path.read_text().splitlines()
    # A crash after publishing generation 3, before its line: the line is missing; and a torn write.
    path.write_text("\n".join(lines[:2]) + '\n{"generation": 3, "act')
    HotIndex(root).commit(CommitRequest("after-crash", updates=[DocState(doc_name(0), 5, DELETED)]))
    records = list(audit.read(root))
    assert [r["generation"] for r in records] == [1, 2, 3, 4]
    assert records[2]["recovered"] is True and "actor" not in records[2]
    assert records[3]["run_id"] == "after-crash" and "recovered" not in records[3]
    assert json.loads(path.read_text().splitlines()[-1])["generation"] == 4
