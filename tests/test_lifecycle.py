"""Lifecycle runs against the embedded default (a local directory as the cold tier), on synthetic indexes.

Every test checks the tiering invariant: each canonical document's vectors are findable exactly once
across hot, warm and cold, and a search finds them in the tier the plan put them in.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lifecycle.run as run_module
from indexing.access import AccessLog, compact_access, read_access
from indexing.cold import ColdConfig, ColdStore
from indexing.docs_table import CANONICAL, DELETED, DocState
from indexing.faiss_index import IndexSpec
from indexing.hot import CommitRequest, HotIndex
from indexing.manifest import MMAP
from indexing.search import Searcher
from indexing.segment import write_segment
from lifecycle.policy import LifecycleConfig, TierRule, plan_lifecycle
from lifecycle.report import storage_report
from lifecycle.run import run_lifecycle
from lifecycle.stats import read_history, tier_stats
from lifecycle.synthetic import SYNTHETIC_MODEL, build_synthetic_index, doc_name
from tests.helpers import assert_exactly_once
from tierflow.config import EmbeddingConfig, load_settings
from tierflow.errors import ConfigError, IndexCorrupt
from tierflow.records import chunk_id, vector_id
from tierflow.s3 import ObjectStoreUnavailable

DAY = 86400.0
DIM = 32
NOW = 1_800_000_000.0


def _aged(root: Path, n_docs: int = 200, **kwargs: object) -> dict[int, np.ndarray]:
    """Even documents are 60 days old, odd ones 1 day old."""
    return build_synthetic_index(
        root,
        n_docs,
        2,
        DIM,
        ingest_time=lambda i: NOW - (60 * DAY if i % 2 == 0 else DAY),
        **kwargs,  # type: ignore[arg-type]
    )


def _searcher(root: Path, cold: ColdConfig) -> Searcher:
    return Searcher(HotIndex(root), EmbeddingConfig(), cold)


def _find(searcher: Searcher, vector: np.ndarray) -> tuple[str, int, float]:
    hit = searcher.chunk_search(vector[None, :], 1)[0][0]
    return hit.tier, hit.vector_id, hit.score


def _vid(i: int, ordinal: int = 0) -> int:
    return vector_id(chunk_id(doc_name(i), ordinal))


def test_aged_documents_move_to_cold_and_stay_findable_exactly_once(tmp_path: Path) -> None:
    vectors = _aged(tmp_path / "hot")
    cold = ColdConfig(uri=str(tmp_path / "cold"))
    plan = plan_lifecycle(HotIndex(tmp_path / "hot"), LifecycleConfig(), NOW)
    assert plan.counts() == {"hot->cold": 100}
    assert all("cold_after" in m.reason for m in plan.moves)

    summary = run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    assert summary["applied"] == 100 and summary["moved"]["to_cold_vectors"] == 200
    assert summary["tiers"]["cold"] == {**summary["tiers"]["cold"], "documents": 100, "vectors": 200}
    assert_exactly_once(tmp_path / "hot", cold)

    searcher = _searcher(tmp_path / "hot", cold)
    for i in (0, 1, 42, 43):
        tier, vid, score = _find(searcher, vectors[_vid(i)])
        assert (tier, vid) == ("cold" if i % 2 == 0 else "hot", _vid(i))
        assert score == pytest.approx(1.0, abs=2e-3)  # fp16 storage: cosine within 1e-3
    rows = ColdStore(cold).rows(
        HotIndex(tmp_path / "hot").docs()[doc_name(0)].cold_batch or "", [doc_name(0)]
    )[0]
    assert json.loads(rows[0]["lineage"]) == {
        "source": "synthetic",
        "doc": 0,
    }  # lineage moved with the vectors

    again = run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    assert again["run_id"] is None and again["plan"] == {}
    assert ColdStore(cold).stats()["rows"] == 200
    assert_exactly_once(tmp_path / "hot", cold)


def test_warm_tier_is_memory_mapped_and_hits_promote_back_to_hot(tmp_path: Path) -> None:
    vectors = _aged(tmp_path / "hot", 40)
    cold = ColdConfig(uri=str(tmp_path / "cold"))
    config = LifecycleConfig(warm_after="7d", cold_after="", promote_hits=3, promote_window="1d")
    run_lifecycle(tmp_path / "hot", config, cold, NOW)
    index = HotIndex(tmp_path / "hot")
    warm = [live for live in index.manifest().segments if live.storage == MMAP]
    assert len(warm) == 1 and warm[0].n_live == 40
    assert _find(_searcher(tmp_path / "hot", cold), vectors[_vid(2)])[0] == "warm"
    stats = tier_stats(index, None)["tiers"]
    assert (
        stats["warm"]["documents"] == 20
        and stats["warm"]["ram_bytes"] == 0
        and stats["warm"]["flash_bytes"] > 0
    )
    assert stats["hot"]["ram_bytes"] > 0

    log = AccessLog(tmp_path / "hot")
    log.record([doc_name(2)] * 3, at=NOW - 60)
    log.record([doc_name(4)], at=NOW - 60)
    log.flush()
    plan = plan_lifecycle(HotIndex(tmp_path / "hot"), config, NOW)
    assert [(m.doc_id, m.source, m.target) for m in plan.moves] == [(doc_name(2), "warm", "hot")]
    run_lifecycle(tmp_path / "hot", config, cold, NOW)
    assert _find(_searcher(tmp_path / "hot", cold), vectors[_vid(2)])[0] == "hot"
    # The warm segment lost doc 2's vector to a tombstone and is still warm (memory-mapped).
    assert _find(_searcher(tmp_path / "hot", cold), vectors[_vid(4)])[0] == "warm"
    assert tier_stats(HotIndex(tmp_path / "hot"), None)["tiers"]["warm"]["documents"] == 19
    assert_exactly_once(tmp_path / "hot", cold)


def test_cold_documents_promote_update_and_delete_in_both_tiers(tmp_path: Path) -> None:
    vectors = _aged(tmp_path / "hot", 20)
    cold = ColdConfig(uri=str(tmp_path / "cold"))
    run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    index = HotIndex(tmp_path / "hot")
    assert index.docs()[doc_name(0)].cold_batch and index.docs()[doc_name(2)].cold_batch

    # An upsert of cold doc 0 (new vectors, version 2) and a delete of cold doc 2, committed by a pipeline.
    new_vector = -vectors[_vid(0)]
    rows = [
        {
            "vector_id": _vid(0),
            "chunk_id": chunk_id(doc_name(0), 0),
            "doc_id": doc_name(0),
            "ordinal": 0,
            "text": "updated",
            "content_hash": "hash-new",
            "lineage": "{}",
        }
    ]
    info = write_segment(index.segments_dir, rows, new_vector[None, :], IndexSpec(use_gpu="never"))
    index.commit(
        CommitRequest(
            "pipeline",
            [info],
            [
                DocState(
                    doc_name(0),
                    2,
                    CANONICAL,
                    "hash-new",
                    segment_id=info.segment_id,
                    n_chunks=1,
                    ingest_time=NOW,
                ),
                DocState(doc_name(2), 2, DELETED),
            ],
            embedding={**SYNTHETIC_MODEL, "dim": DIM},
        )
    )
    searcher = _searcher(tmp_path / "hot", cold)
    hits = searcher.chunk_search(vectors[_vid(0)][None, :], 40)[0]
    assert all(h.row["doc_id"] != doc_name(0) or h.tier == "hot" for h in hits)
    assert _find(searcher, new_vector)[:2] == ("hot", _vid(0))
    assert doc_name(2) not in {
        h.row["doc_id"] for h in searcher.chunk_search(vectors[_vid(2)][None, :], 40)[0]
    }
    assert_exactly_once(tmp_path / "hot", cold)

    # Promotion of cold doc 4 after 3 hits; the next run's cleanup deletes the stale cold rows.
    log = AccessLog(tmp_path / "hot")
    log.record([doc_name(4)] * 3, at=NOW)
    log.flush()
    summary = run_lifecycle(tmp_path / "hot", LifecycleConfig(promote_hits=3, keep_generations=1), cold, NOW)
    assert summary["plan"] == {"cold->hot": 1} and summary["moved"]["from_cold_vectors"] == 2
    assert _find(_searcher(tmp_path / "hot", cold), vectors[_vid(4)])[:2] == ("hot", _vid(4))
    placements = ColdStore(cold).placements()
    remaining = set().union(*placements.values())
    assert doc_name(0) not in remaining and doc_name(2) not in remaining and doc_name(4) not in remaining
    assert_exactly_once(tmp_path / "hot", cold)


def test_ttl_deletes_everywhere_and_holds_canonicals_with_live_duplicates(tmp_path: Path) -> None:
    _aged(tmp_path / "hot", 10)
    index = HotIndex(tmp_path / "hot")
    index.commit(
        CommitRequest(
            "dups",
            updates=[
                DocState(
                    "dup-of-0", 1, "duplicate", "h", canonical_id=doc_name(0), ingest_time=NOW, text="x"
                ),
            ],
        )
    )
    cold = ColdConfig(uri=str(tmp_path / "cold"))
    run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)  # old docs to cold first
    config = LifecycleConfig(ttl="30d")
    plan = plan_lifecycle(HotIndex(tmp_path / "hot"), config, NOW)
    assert {m.doc_id for m in plan.moves} == {doc_name(i) for i in (2, 4, 6, 8)}
    assert all(m.target == "deleted" for m in plan.moves)
    assert plan.held == [(doc_name(0), "ttl reached but 1 duplicate(s) live")]
    run_lifecycle(tmp_path / "hot", config, cold, NOW)
    docs = HotIndex(tmp_path / "hot").docs()
    assert docs[doc_name(2)].status == DELETED and docs[doc_name(0)].status == CANONICAL
    assert json.loads(docs[doc_name(2)].lineage)["lifecycle"]["action"] == "ttl_delete"
    assert_exactly_once(tmp_path / "hot", cold)


def test_caps_rules_and_pins(tmp_path: Path) -> None:
    build_synthetic_index(
        tmp_path / "hot",
        40,
        2,
        DIM,
        ingest_time=lambda i: NOW - i * 3600,  # doc 39 is the least recently updated
        source_system=lambda i: "legal" if i % 10 == 9 else "wiki",
        metadata=lambda i: {"team": "search" if i % 10 == 8 else "other"},
    )
    index = HotIndex(tmp_path / "hot")
    per_doc = tier_stats(index, None)["tiers"]["hot"]["ram_bytes"] / 40
    rules = (
        TierRule(name="legal", source_system="legal", pin="hot"),
        TierRule(name="search", metadata={"team": "search"}, cold_after="1h"),
    )
    config = LifecycleConfig(cold_after="", hot_max_bytes=str(int(per_doc * 30)), rules=rules)
    plan = plan_lifecycle(index, config, NOW)
    by_target: dict[str, set[int]] = {}
    for move in plan.moves:
        by_target.setdefault(move.target, set()).add(int(move.doc_id.split("-")[1]))
    assert by_target["cold"] == {8, 18, 28, 38}  # the team=search rule: idle >= 1h
    assert by_target["warm"] == {32, 33, 34, 35, 36, 37}  # the cap, least recently used first; 39 is pinned
    assert not {9, 19, 29, 39} & set().union(*by_target.values())  # pinned hot
    assert plan.after["hot"]["documents"] <= 30


def test_unknown_policy_fields_and_bad_values_fail_clearly(tmp_path: Path) -> None:
    toml = tmp_path / "tierflow.toml"
    toml.write_text('[lifecycle]\ncold_after = "30d"\nage_limit = "3d"\n')
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) lifecycle.age_limit"):
        load_settings(LifecycleConfig, "lifecycle", toml, environ={})
    toml.write_text('[lifecycle]\ncold_after = "30 days"\n')
    with pytest.raises(ConfigError, match="lifecycle.cold_after must be a duration"):
        load_settings(LifecycleConfig, "lifecycle", toml, environ={})
    toml.write_text('[[lifecycle.rules]]\nname = "x"\nsource_sytem = "kafka"\n')
    with pytest.raises(ConfigError, match=r"lifecycle.rules\[0\].source_sytem"):
        load_settings(LifecycleConfig, "lifecycle", toml, environ={})
    toml.write_text('[[lifecycle.rules]]\nname = "all"\ncold_after = "1d"\n')
    with pytest.raises(ConfigError, match="matches everything"):
        load_settings(LifecycleConfig, "lifecycle", toml, environ={})
    toml.write_text('[cold]\nvector_dtype = "int8"\n')
    with pytest.raises(ConfigError, match="cold.vector_dtype"):
        load_settings(ColdConfig, "cold", toml, environ={})
    rules = load_settings(
        LifecycleConfig,
        "lifecycle",
        None,
        environ={"TIERFLOW__LIFECYCLE__HOT_MAX_BYTES": "8GiB", "TIERFLOW__LIFECYCLE__PROMOTE_HITS": "5"},
    )
    assert rules.hot_max_bytes == "8GiB" and rules.promote_hits == 5


def test_cold_tier_that_cannot_be_used_fails_before_anything_moves(tmp_path: Path) -> None:
    _aged(tmp_path / "hot", 10)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    generation = HotIndex(tmp_path / "hot").manifest().generation
    with pytest.raises(ConfigError, match="cannot be created"):
        run_lifecycle(tmp_path / "hot", LifecycleConfig(), ColdConfig(uri=str(blocker / "cold")), NOW)
    assert HotIndex(tmp_path / "hot").manifest().generation == generation

    run_lifecycle(tmp_path / "hot", LifecycleConfig(), ColdConfig(uri=str(tmp_path / "cold")), NOW)
    with pytest.raises(ConfigError, match="cold documents live in"):
        run_lifecycle(tmp_path / "hot", LifecycleConfig(), ColdConfig(uri=str(tmp_path / "elsewhere")), NOW)


def test_failed_verification_moves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _aged(tmp_path / "hot", 10)
    cold = ColdConfig(uri=str(tmp_path / "cold"))
    monkeypatch.setattr(ColdStore, "batch_digest", lambda self, batch: (0, "corrupted"))
    with pytest.raises(IndexCorrupt, match="failed verification"):
        run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    monkeypatch.undo()
    assert all(s.cold_batch is None for s in HotIndex(tmp_path / "hot").docs().values())
    assert ColdStore(cold).stats()["rows"] == 0
    assert_exactly_once(tmp_path / "hot", cold)
    assert (
        run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)["applied"] == 5
    )  # the journal is gone


def test_document_changed_during_the_run_is_left_to_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _aged(tmp_path / "hot", 10)
    cold = ColdConfig(uri=str(tmp_path / "cold"))
    real_copy = run_module._copy_to_cold

    def racing_copy(*args: Any, **kwargs: Any) -> Any:
        """A pipeline deletes doc 0 after the run copied it to cold, before the run commits."""
        result = real_copy(*args, **kwargs)
        HotIndex(tmp_path / "hot").commit(
            CommitRequest("pipeline", updates=[DocState(doc_name(0), 5, DELETED)])
        )
        return result

    monkeypatch.setattr(run_module, "_copy_to_cold", racing_copy)
    summary = run_lifecycle(tmp_path / "hot", LifecycleConfig(keep_generations=1), cold, NOW)
    assert summary["applied"] == 4 and summary["skipped"] == 1
    assert HotIndex(tmp_path / "hot").docs()[doc_name(0)].status == DELETED
    assert doc_name(0) not in set().union(*ColdStore(cold).placements().values())  # cleaned up
    assert_exactly_once(tmp_path / "hot", cold)


def test_access_log_counts_once_across_a_crash_between_summary_and_cleanup(tmp_path: Path) -> None:
    log = AccessLog(tmp_path)
    log.record(["a", "a", "b"], at=NOW - 10)
    log.flush()
    log.record(["a"], at=NOW - 5 * DAY)
    log.flush()
    access = read_access(tmp_path, NOW, DAY)
    assert (access["a"].hits, access["b"].hits) == (2, 1) and access["a"].last_hit == NOW - 10
    pending = sorted((tmp_path / "access").glob("hits-*"))
    saved = {p: p.read_bytes() for p in pending}
    assert compact_access(tmp_path, NOW, 30 * DAY) == 2
    for path, data in saved.items():  # as if the process died before deleting the absorbed files
        path.write_bytes(data)
    assert read_access(tmp_path, NOW, DAY)["a"].hits == 2
    assert read_access(tmp_path, NOW, 10 * DAY)["a"].hits == 3
    compact_access(tmp_path, NOW + 60 * DAY, 30 * DAY)
    assert (
        read_access(tmp_path, NOW + 60 * DAY, DAY)["a"].hits == 0
    )  # buckets past retention keep last_hit only
    assert read_access(tmp_path, NOW + 60 * DAY, DAY)["a"].last_hit == NOW - 10


def test_searches_record_access_and_storage_report_plots_history(tmp_path: Path) -> None:
    vectors = _aged(tmp_path / "hot", 20)
    cold = ColdConfig(uri=str(tmp_path / "cold"))
    run_lifecycle(tmp_path / "hot", LifecycleConfig(warm_after="12h"), cold, NOW)
    run_lifecycle(tmp_path / "hot", LifecycleConfig(warm_after="12h"), cold, NOW + 1)
    report = storage_report(tmp_path / "hot", ColdConfig(), tmp_path / "report")
    assert [Path(f).name for f in report["files"]] == [
        "storage.json",
        "storage.md",
        "storage.png",
        "storage.html",
    ]
    assert (tmp_path / "report" / "storage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    now = report["now"]
    assert now["tiers"]["cold"]["vectors"] == 20 and now["tiers"]["warm"]["vectors"] == 20
    assert now["tiers"]["cold"]["object_bytes"] > 0 and now["flash_saved_bytes"] > 0
    assert len(read_history(HotIndex(tmp_path / "hot"))) == 3  # where the tiers started, then two runs
    assert "| cold | 10 | 20 |" in report["markdown"]

    searcher = Searcher(HotIndex(tmp_path / "hot"), EmbeddingConfig(), cold, track_access=True)
    searcher.chunk_search(vectors[_vid(1)][None, :], 1)  # chunk search is not a document hit
    assert searcher.access is not None
    searcher.access.record([doc_name(1)], at=time.time())
    searcher.close()
    assert read_access(tmp_path / "hot", time.time(), DAY)[doc_name(1)].hits == 1


def test_search_with_the_cold_tier_gone_fails_clearly(tmp_path: Path) -> None:
    vectors = _aged(tmp_path / "hot", 10)
    cold = ColdConfig(uri=str(tmp_path / "cold"))
    run_lifecycle(tmp_path / "hot", LifecycleConfig(), cold, NOW)
    searcher = _searcher(tmp_path / "hot", cold)
    assert _find(searcher, vectors[_vid(0)])[0] == "cold"
    for path in sorted((tmp_path / "cold").rglob("*.lance"), reverse=True):
        if path.is_file():
            path.unlink()  # the object store lost the data files
    with pytest.raises(ObjectStoreUnavailable, match="cold tier search failed"):
        _searcher(tmp_path / "hot", cold).chunk_search(vectors[_vid(0)][None, :], 3)


def test_readme_configuration_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "tierflow.toml").write_text(block)
    policy = load_settings(LifecycleConfig, "lifecycle", tmp_path / "tierflow.toml", environ={})
    assert policy.rules[0].metadata == {"retention": "7y"} and policy.rules[0].pin == "warm"
    assert load_settings(ColdConfig, "cold", tmp_path / "tierflow.toml", environ={}).vector_dtype == "float16"
