"""pipelines.driver (settling what the committed state answers before Beam) and the batch run's file skip.

The unit tests exercise :func:`settle` on hand-made states (no model, no Beam). The end-to-end tests run
the real pipeline twice over the same changes, once with the driver's pre-filter and once with every
record through Beam, and require the same committed documents, vectors and counts.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import indexing.hot as hot_module
import pipelines.stream as stream_module
from connectors.files import FileSourceConfig, plan_splits, read_split
from indexing.docs_table import CANONICAL, DELETED
from indexing.hot import HotIndex
from pipelines.driver import committed_subset, run_items, settle
from pipelines.stages import build_run_context
from pipelines.stream import MicroBatchStream
from pipelines.validate import DocumentValidator
from tests.helpers import config, ingest, live_vectors, write_jsonl
from tests.test_unit_reconcile_dedup import FP, committed, duplicate_of, event
from tierflow import metrics
from tierflow.config import IngestConfig
from tierflow.deadletter import DeadLetter
from tierflow.records import DocumentEvent, SourcePosition
from tierflow.streams import Batch, BatchPolicy


# ---- settle (units) --------------------------------------------------------------------------------
def test_settle_keeps_new_and_changed_documents_and_settles_the_rest() -> None:
    docs = {
        "same": committed("same", 1),
        "newer": committed("newer", 1),
        "edited": committed("edited", 1),
        "stale": committed("stale", 5),
        "gone": committed("gone", 2, DELETED),
        "model": committed("model", 1, fingerprint="old-model"),
    }
    events = [
        event("same", 1),  # the same content, same version: nothing to record
        event("newer", 2),  # the same content at a newer version: record it, embed nothing
        event("edited", 2, text="new body"),
        event("stale", 3, text="older edit"),
        event("gone", 2, op="delete"),  # a replayed delete
        event("model", 1),  # the same content, but made by another model: re-embed
        event("fresh", 1),
    ]
    letter = DeadLetter("malformed_json", "cut", "parse", SourcePosition("file", "a.jsonl", "line:9"), "{")
    out = settle(events, [letter], docs, FP)
    assert [item.doc_id for item in out.rest if not isinstance(item, DeadLetter)] == [
        "edited",
        "model",
        "fresh",
    ]
    assert out.rest[0] is letter, "dead letters go on to the pipeline's dead-letter sink"
    assert [(s.doc_id, s.version) for s in out.states] == [("newer", 2)]
    assert dict(out.stats) == {"skipped_unchanged": 3, "skipped_stale": 1}
    assert out.seen == {e.doc_id for e in events}
    assert ("stat", ("skipped_stale", 1)) in out.commit_items()


def test_a_duplicate_whose_canonical_changes_is_left_to_the_pipeline() -> None:
    dup_event = event("d", 1, text="dup text")
    other = event("e", 1, text="dup text")
    docs = {
        "c": committed("c", 1),
        **{
            doc_id: replace(
                duplicate_of(doc_id, target),
                content_hash=dup_event.content_hash,
                title=dup_event.title,
                fingerprint=FP,
            )
            for doc_id, target in (("d", "c"), ("e", "other"))
        },
    }
    out = settle([event("c", 2, text="the canonical changed"), dup_event, other], [], docs, FP)
    # "d" may have to be promoted when "c" changes; "e"'s canonical does not change here.
    assert sorted(str(item.doc_id) for item in out.rest) == ["c", "d"]
    assert dict(out.stats) == {"skipped_unchanged": 1}


def test_several_events_of_one_document_are_decided_together() -> None:
    docs = {"d": committed("d", 1)}
    out = settle([event("d", 2), event("d", 3, text="edited later")], [], docs, FP)
    assert [item.doc_id for item in out.rest] == ["d", "d"], "the newest event wins in the pipeline"
    out = settle([event("d", 3), event("d", 2, text="an older edit")], [], docs, FP)
    assert out.rest == [] and [s.version for s in out.states] == [3]


def test_committed_subset_takes_what_the_items_can_touch() -> None:
    docs = {
        "c": committed("c", 1),
        "d": duplicate_of("d", "c"),
        "x": committed("x", 1, text="something else entirely, nothing like the others"),
        "g": committed("g", 1, text="in a file a full sync covers"),
    }
    cfg = IngestConfig()
    subset = {s.doc_id for s in committed_subset(docs, [event("c", 2, text="changed")], cfg)}
    assert subset == {"c", "d"}
    subset = {s.doc_id for s in committed_subset(docs, [event("c", 2, text="changed")], cfg, {"g"})}
    assert subset == {"c", "d", "g"}
    # An upsert with the content of a committed document meets it (exact duplicate).
    same = event("n", 1, text="something else entirely, nothing like the others")
    assert {s.doc_id for s in committed_subset(docs, [same], cfg)} == {"x"}


# ---- end to end: the pre-filter changes nothing but the work done ------------------------------------
def _corpus(version: int, edits: dict[str, str], drop: Collection[str] = ()) -> list[dict[str, Any] | bytes]:
    base = {
        "a": "Alpine glaciers retreat faster every decade as summers warm.",
        "b": "Sourdough starters need flour, water and patience to ferment.",
        "c": "The Rhine carries barges from Basel to Rotterdam all year.",
        "c-copy": "The Rhine carries barges from Basel to Rotterdam all year.",  # an exact duplicate
        "d": "Honeybees communicate the direction of flowers with a waggle dance.",
        "e": "Granite forms when magma cools slowly deep below the surface.",
        "f": "Tidal power plants turn the moon's pull into electricity.",
    }
    records: list[dict[str, Any] | bytes] = [
        {"_id": doc_id, "title": "Notes", "text": edits.get(doc_id, text), "v": version}
        for doc_id, text in base.items()
        if doc_id not in drop
    ]
    records.insert(3, b'{"_id": "cut-off"')
    records.append({"_id": "blank", "text": "   "})
    return records


def _stage_documents() -> dict[tuple[str, ...], float]:
    """The process's ``tierflow_stage_documents_total`` samples by (stage, outcome)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.labels["stage"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
        if sample.name == "tierflow_stage_documents_total"
    }


def _state_view(index_dir: Path) -> dict[str, tuple[Any, ...]]:
    docs = HotIndex(index_dir).docs()
    return {
        d: (
            s.status,
            s.version,
            s.content_hash,
            s.canonical_id,
            s.n_chunks,
            s.metadata,
            s.title,
            Path(s.source_uri).name,
        )
        for d, s in docs.items()
    }


@pytest.mark.model
@pytest.mark.parametrize("sync", ["incremental", "full"])
def test_prefiltered_runs_commit_what_the_pipeline_alone_commits(
    tmp_path: Path, sync: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [
        (1, {}, set()),
        (2, {}, set()),  # only versions move
        (3, {"b": "Sourdough starters need rye flour, water and a warm kitchen."}, set()),  # one edit
        (
            4,
            {"c": "The Rhine freezes over in no winter we remember."},
            set(),
        ),  # the canonical of a dup changes
        (5, {"c": "The Rhine freezes over in no winter we remember."}, {"e"}),  # "e" leaves the file
    ]
    summaries: dict[str, list[dict[str, Any]]] = {"driver": [], "pipeline": []}
    stage_counts: dict[str, dict[tuple[str, ...], float]] = {}
    validated: Counter[str] = Counter()  # events through the Great Expectations suite, per path
    validate = DocumentValidator.validate

    def counting(self: DocumentValidator, events: list[DocumentEvent]) -> Any:
        validated[name] += len(events)
        return validate(self, events)

    monkeypatch.setattr(DocumentValidator, "validate", counting)
    for name, limit in (("driver", 64 << 20), ("pipeline", 0)):
        before = _stage_documents()
        cfg = config(tmp_path / name / "hot", sync=sync, prefilter_max_bytes=limit)
        (tmp_path / name).mkdir()
        path = tmp_path / name / "docs.jsonl"
        for version, edits, drop in runs:
            write_jsonl(path, _corpus(version, edits, drop), mtime_ns=version * 1_000)
            summaries[name].append(ingest(path, cfg, version_field="v"))
            if version == 3:
                assert HotIndex(cfg.index_dir).docs()["c-copy"].canonical_id == "c"
        after = _stage_documents()
        stage_counts[name] = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    assert stage_counts["driver"] == stage_counts["pipeline"], (
        "the same documents counted in and out per stage"
    )
    assert validated["driver"] == validated["pipeline"] > 0, "the driver's events are validated once"
    driver_hot, pipeline_hot = tmp_path / "driver" / "hot", tmp_path / "pipeline" / "hot"
    assert _state_view(driver_hot) == _state_view(pipeline_hot)
    assert sorted(live_vectors(driver_hot).values()) == sorted(live_vectors(pipeline_hot).values())
    for driver, pipeline in zip(summaries["driver"], summaries["pipeline"], strict=True):
        ignore = {"batches_read"}
        assert {k: v for k, v in driver["counts"].items() if k not in ignore} == {
            k: v for k, v in pipeline["counts"].items() if k not in ignore
        }
        assert driver["dead_letters"]["by_reason"] == pipeline["dead_letters"]["by_reason"]
    second = summaries["driver"][1]["counts"]
    assert second["skipped_unchanged"] == 7 and "chunks_embedded" not in second
    assert summaries["driver"][2]["counts"]["chunks_embedded"] == 1
    docs = HotIndex(driver_hot).docs()
    assert docs["e"].status == (DELETED if sync == "full" else CANONICAL)
    assert docs["a"].version == 5 and docs["c"].status == CANONICAL
    assert docs["c-copy"].status == CANONICAL, "promoted when its canonical changed"
    assert not list((driver_hot / "staging").iterdir())


# ---- the file skip ---------------------------------------------------------------------------------
@pytest.mark.model
def test_unchanged_files_are_not_read_and_settings_changes_read_them_again(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    write_jsonl(folder / "one.jsonl", [{"_id": "a", "text": "Glaciers retreat."}], mtime_ns=1_000)
    write_jsonl(folder / "two.jsonl", [{"_id": "b", "text": "Starters ferment."}], mtime_ns=1_000)
    cfg = config(tmp_path / "hot")
    first = ingest(folder, cfg, format="jsonl")
    assert first["counts"]["docs_canonical"] == 2 and "files_unchanged" not in first["counts"]
    positions = HotIndex(tmp_path / "hot").manifest().sources
    assert all(p.startswith("file size=") for p in positions.values()), positions

    write_jsonl(folder / "two.jsonl", [{"_id": "b", "text": "Starters ferment slowly."}], mtime_ns=2_000)
    second = ingest(folder, cfg, format="jsonl")
    assert second["counts"]["files_unchanged"] == 1 and second["counts"]["chunks_embedded"] == 1
    assert ingest(folder, cfg, format="jsonl")["committed"] is False

    os.utime(folder / "one.jsonl", ns=(3_000, 3_000))  # touched: read again, settled, versions recorded
    touched = ingest(folder, cfg, format="jsonl")
    assert touched["counts"] == {
        "batches_read": 1,
        "events_valid": 1,
        "files_unchanged": 1,
        "skipped_unchanged": 1,
        "docs_canonical": 1,
    }
    assert HotIndex(tmp_path / "hot").docs()["a"].version == 3_000

    # What the records become depends on the source mapping and the validation suite's limits too.
    remapped = ingest(folder, cfg, format="jsonl", metadata_fields=("text",))
    assert "files_unchanged" not in remapped["counts"]
    stricter = config(tmp_path / "hot", validation={"max_text_chars": 20})
    limited = ingest(folder, stricter, format="jsonl", metadata_fields=("text",))
    assert limited["dead_letters"]["by_reason"] == {"too_large": 1}
    assert "files_unchanged" not in limited["counts"]
    assert ingest(folder, stricter, format="jsonl", metadata_fields=("text",))["committed"] is False


# ---- a kept index ----------------------------------------------------------------------------------
@pytest.mark.model
def test_a_kept_index_reads_the_document_table_once_per_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path / "hot")
    path = write_jsonl(tmp_path / "docs.jsonl", _corpus(1, {}), mtime_ns=1_000)
    ingest(path, cfg, version_field="v")
    index = HotIndex(cfg.index_dir)
    before = index.manifest().docs_file
    index.docs()
    read: list[str] = []
    real = hot_module.read_docs
    monkeypatch.setattr(hot_module, "read_docs", lambda p: read.append(p.name) or real(p))
    (split,) = plan_splits(FileSourceConfig(str(path), version_field="v"))
    summary = run_items(list(read_split(split)), cfg, build_run_context(cfg), {}, 1, index=index)
    assert summary["counts"]["skipped_unchanged"] == 7
    assert read == [Path(str(before)).name], "only the commit reads the table; the driver had it already"


class _Batches:
    """A stream source handing over prepared micro-batches."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches
        self.acknowledged: list[Batch] = []

    def start(self, resume: dict[str, str]) -> None:
        """Nothing to resume."""

    def poll(self, policy: BatchPolicy) -> Batch | None:
        return self.batches.pop(0) if self.batches else None

    def acknowledge(self, batch: Batch) -> None:
        self.acknowledged.append(batch)

    def dead_letters(self, letters: list[DeadLetter]) -> None:
        """No dead letters here."""

    def close(self) -> None:
        """Nothing to close."""


def test_a_stream_indexes_every_micro_batch_through_its_own_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given: list[HotIndex | None] = []

    def run_items(*args: Any, index: HotIndex | None = None, **kwargs: Any) -> dict[str, Any]:
        given.append(index)
        return {"generation": len(given), "counts": {}, "dead_letters": {}}

    monkeypatch.setattr(stream_module, "run_items", run_items)
    batches = [Batch([event(f"d{i}", 1)], {"queue:test": str(i)}, ack=i) for i in range(3)]
    source = _Batches(list(batches))
    stream = MicroBatchStream(source, config(tmp_path / "hot"))
    assert stream.run(max_batches=3) == 3
    assert given == [stream.index] * 3, "one HotIndex, whose caches last while the generation does"
    assert source.acknowledged == batches
