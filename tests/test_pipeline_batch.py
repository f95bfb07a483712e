"""The batch pipeline end to end with the real model, GX suite and hot tier, on small corpora."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexing.hot import HotIndex
from tests.helpers import (
    assert_exactly_once,
    canonical_ids,
    config,
    demo_docs,
    ingest,
    live_docs,
    live_vectors,
    top_doc,
    write_jsonl,
)
from tierflow.errors import IncompatibleIndex

pytestmark = pytest.mark.model


def test_rerun_embeds_nothing_edit_reembeds_one_delete_removes(tmp_path: Path) -> None:
    docs = demo_docs()
    cfg = config(tmp_path / "hot")
    corpus = write_jsonl(tmp_path / "docs.jsonl", docs, mtime_ns=1_000)

    first = ingest(corpus, cfg)
    assert first["counts"]["docs_canonical"] == len(docs)
    assert first["counts"]["chunks_embedded"] == len(live_vectors(tmp_path / "hot")) >= len(docs)
    before = live_vectors(tmp_path / "hot")

    generation = HotIndex(tmp_path / "hot").manifest().generation
    again = ingest(corpus, cfg)
    assert again["committed"] is False and again["counts"] == {"files_unchanged": 1}
    assert HotIndex(tmp_path / "hot").manifest().generation == generation, "nothing changed: no commit"
    # The same bytes read again (the file skip off): every document settled against the committed state.
    reread = ingest(corpus, config(tmp_path / "hot", skip_unchanged_files=False))
    assert reread["counts"].get("chunks_embedded", 0) == 0
    assert reread["counts"]["skipped_unchanged"] == reread["counts"]["events_valid"] == len(docs)
    assert live_vectors(tmp_path / "hot") == before

    edited = [dict(d) for d in docs]
    edited[3]["text"] = "Sourdough pasta is a myth invented by tomato growers in the alps."
    write_jsonl(corpus, edited, mtime_ns=2_000)
    third = ingest(corpus, cfg)
    assert third["counts"]["chunks_embedded"] == 1
    assert third["counts"]["skipped_unchanged"] == len(docs) - 1
    after = live_vectors(tmp_path / "hot")
    assert len(after) == len(before)
    assert [v for v in after.values() if "tomato growers" in v]
    assert not [v for v in after.values() if docs[3]["text"][:40] in v]
    assert top_doc(tmp_path / "hot", "tomato growers in the alps", cfg, k=1) == [docs[3]["_id"]]

    deleted = [dict(d, op="delete") if d["_id"] == docs[5]["_id"] else d for d in edited]
    write_jsonl(corpus, deleted, mtime_ns=3_000)
    fourth = ingest(corpus, cfg, op_field="op")
    assert fourth["counts"]["docs_deleted"] == 1
    assert fourth["counts"].get("chunks_embedded", 0) == 0
    assert docs[5]["_id"] not in live_docs(tmp_path / "hot")
    assert docs[5]["_id"] not in top_doc(tmp_path / "hot", docs[5]["title"], cfg, k=10)


def test_full_sync_deletes_documents_gone_from_the_file(tmp_path: Path) -> None:
    docs = demo_docs()[:6]
    cfg = config(tmp_path / "hot", sync="full")
    corpus = write_jsonl(tmp_path / "docs.jsonl", docs, mtime_ns=1_000)
    ingest(corpus, cfg)
    write_jsonl(corpus, docs[1:], mtime_ns=2_000)
    summary = ingest(corpus, cfg)
    assert summary["counts"]["docs_deleted"] == 1
    assert set(live_docs(tmp_path / "hot")) == {d["_id"] for d in docs[1:]}


def test_bad_input_is_dead_lettered_and_nothing_else_is_lost(tmp_path: Path) -> None:
    docs = demo_docs()[:8]
    bad: list[dict | bytes] = [
        b'{"_id": "cut", "text": "no closing brace"',
        json.dumps({"title": "no id", "text": "orphan"}).encode(),
        json.dumps({"_id": "", "text": "empty id"}).encode(),
        {"_id": "blank", "title": "", "text": "   \n\t "},
        b'{"_id": "latin1", "text": "caf\xe9"}',
        {"_id": "huge", "title": "big", "text": "word " * 2000},
        {"_id": "wrongtype", "text": 42},
        b"[1, 2, 3]",
    ]
    records = [docs[0], *bad[:4], docs[1], *bad[4:], *docs[2:]]
    cfg = config(tmp_path / "hot", validation={"max_text_chars": 5000})
    summary = ingest(write_jsonl(tmp_path / "mixed.jsonl", records), cfg)

    dead = summary["dead_letters"]
    assert dead["by_reason"] == {
        "malformed_json": 1,
        "missing_id": 2,
        "empty_text": 1,
        "not_utf8": 1,
        "too_large": 1,
        "wrong_type": 1,
        "not_an_object": 1,
    }
    assert set(live_docs(tmp_path / "hot")) == {d["_id"] for d in docs}
    letters = [json.loads(line) for f in dead["files"] for line in Path(f).read_text().splitlines()]
    assert len(letters) == 8
    by_reason = {d["reason"]: d for d in letters}
    assert by_reason["not_utf8"]["raw_encoding"] == "base64"
    assert "5000" in by_reason["too_large"]["detail"]
    assert by_reason["malformed_json"]["raw"] == '{"_id": "cut", "text": "no closing brace"'
    assert all(d["source"]["uri"].endswith("mixed.jsonl") and d["detail"] for d in letters)


def test_duplicates_are_linked_not_embedded_and_promoted_when_canonical_goes(tmp_path: Path) -> None:
    docs = demo_docs()[:6]
    base = docs[2]
    exact = {
        "_id": "zz-exact",
        "title": base["title"].upper(),
        "text": "  " + base["text"].replace(" ", "   "),
    }
    near = {"_id": "zz-near", "title": base["title"], "text": base["text"] + " It is widely used."}
    cfg = config(tmp_path / "hot")
    corpus = write_jsonl(tmp_path / "docs.jsonl", [*docs, exact, near], mtime_ns=1_000)
    summary = ingest(corpus, cfg)
    assert summary["counts"]["dedup_exact"] == 1 and summary["counts"]["dedup_near"] == 1
    state = HotIndex(tmp_path / "hot").docs()
    assert state["zz-exact"].canonical_id == base["_id"] and state["zz-exact"].dedup == "exact"
    assert state["zz-near"].canonical_id == base["_id"] and state["zz-near"].dedup == "near"
    assert canonical_ids(tmp_path / "hot") == {d["_id"] for d in docs}
    lineage = json.loads(state["zz-near"].lineage)
    assert lineage["dedup"]["decision"] == "duplicate" and lineage["dedup"]["of"] == base["_id"]

    # Deleting the canonical promotes a surviving duplicate: embedded now, searchable under its own id.
    records = [dict(d, op="delete") if d["_id"] == base["_id"] else d for d in [*docs, exact, near]]
    write_jsonl(corpus, records, mtime_ns=2_000)
    after = ingest(corpus, cfg, op_field="op")
    state = HotIndex(tmp_path / "hot").docs()
    assert state[base["_id"]].status == "deleted"
    assert state["zz-exact"].status == "canonical"
    assert state["zz-near"].status == "duplicate" and state["zz-near"].canonical_id == "zz-exact"
    assert after["counts"]["chunks_embedded"] >= 1
    hits = top_doc(tmp_path / "hot", base["title"], cfg, k=3)
    assert hits[0] == "zz-exact" and base["_id"] not in hits


def test_versions_order_updates_and_deletes(tmp_path: Path) -> None:
    cfg = config(tmp_path / "hot")
    path = tmp_path / "v.jsonl"
    opts = {"id_field": "id", "version_field": "v", "op_field": "op"}
    ingest(write_jsonl(path, [{"id": "a", "text": "version five of alpha", "v": 5}]), cfg, **opts)
    older = ingest(write_jsonl(path, [{"id": "a", "text": "version three of alpha", "v": 3}]), cfg, **opts)
    assert older["counts"]["skipped_stale"] == 1
    assert "version five" in next(iter(live_vectors(tmp_path / "hot").values()))
    ingest(write_jsonl(path, [{"id": "a", "op": "delete", "v": 7}]), cfg, **opts)
    assert "a" not in live_docs(tmp_path / "hot")
    ingest(write_jsonl(path, [{"id": "a", "text": "version six of alpha", "v": 6}]), cfg, **opts)
    assert "a" not in live_docs(tmp_path / "hot"), "an upsert older than the delete must lose"
    ingest(write_jsonl(path, [{"id": "a", "text": "version nine of alpha", "v": 9}]), cfg, **opts)
    assert "version nine" in next(iter(live_vectors(tmp_path / "hot").values()))


def test_unchanged_text_at_a_newer_version_is_recorded_without_re_embedding(tmp_path: Path) -> None:
    cfg = config(tmp_path / "hot")
    path = tmp_path / "v.jsonl"
    opts = {"id_field": "id", "version_field": "v", "op_field": "op"}
    ingest(
        write_jsonl(path, [{"id": "a", "text": "alpha stays the same", "v": 5, "team": "red"}]), cfg, **opts
    )
    before = live_vectors(tmp_path / "hot")
    again = ingest(
        write_jsonl(path, [{"id": "a", "text": "alpha stays the same", "v": 9, "team": "blue"}]), cfg, **opts
    )
    assert again["counts"]["skipped_unchanged"] == 1 and "chunks_embedded" not in again["counts"]
    state = HotIndex(tmp_path / "hot").docs()["a"]
    assert state.version == 9 and json.loads(state.metadata)["team"] == "blue"
    assert live_vectors(tmp_path / "hot") == before, "the same vectors, still live exactly once"
    # A delete older than the recorded version, arriving late, must lose to it.
    late = ingest(write_jsonl(path, [{"id": "a", "op": "delete", "v": 7}]), cfg, **opts)
    assert late["counts"]["skipped_stale"] == 1 and "a" in live_docs(tmp_path / "hot")


def test_replayed_events_leave_the_index_as_one_delivery(tmp_path: Path) -> None:
    docs = demo_docs()[:5]
    once = config(tmp_path / "once")
    twice = config(tmp_path / "twice")
    ingest(write_jsonl(tmp_path / "a.jsonl", docs, mtime_ns=1_000), once)
    write_jsonl(tmp_path / "b.jsonl", [*docs, *docs, *reversed(docs)], mtime_ns=1_000)
    ingest(tmp_path / "b.jsonl", twice)
    ingest(tmp_path / "b.jsonl", twice)
    assert live_vectors(tmp_path / "once") == live_vectors(tmp_path / "twice")
    assert set(live_docs(tmp_path / "once")) == set(live_docs(tmp_path / "twice"))


def test_hnsw_index_and_compaction_keep_results(tmp_path: Path) -> None:
    docs = demo_docs()
    cfg = config(tmp_path / "hot", index={"type": "hnsw"})
    corpus = write_jsonl(tmp_path / "docs.jsonl", docs, mtime_ns=1_000)
    ingest(corpus, cfg)
    edited = [dict(d, text=d["text"] + " Revised.") if i % 4 == 0 else d for i, d in enumerate(docs)]
    ingest(write_jsonl(corpus, edited, mtime_ns=2_000), cfg)
    index = HotIndex(tmp_path / "hot")
    assert len(index.manifest().segments) > 1 and any(s.n_deleted for s in index.manifest().segments)
    queries = ["kafka consumer offsets", "sourdough", "ranking metric", "object storage"]
    before = {q: top_doc(tmp_path / "hot", q, cfg) for q in queries}
    vectors = live_vectors(tmp_path / "hot")
    manifest = index.compact()
    assert len(manifest.segments) == 1 and manifest.segments[0].n_deleted == 0
    assert manifest.segments[0].info.index["type"] == "hnsw"
    assert live_vectors(tmp_path / "hot") == vectors
    assert {q: top_doc(tmp_path / "hot", q, cfg) for q in queries} == before


def test_an_edit_re_embeds_only_the_windows_it_touched(tmp_path: Path) -> None:
    cfg = config(tmp_path / "hot")
    words = [f"glacier{i} moraine{i % 7} basin{i % 11}" for i in range(260)]  # several 256-token windows
    body = " ".join(words)
    path = write_jsonl(
        tmp_path / "long.jsonl", [{"_id": "long", "title": "Ice", "text": body}], mtime_ns=1_000
    )
    first = ingest(path, cfg)
    n = first["counts"]["chunks_embedded"]
    assert n >= 3
    index = HotIndex(tmp_path / "hot")
    rows, vectors = index.doc_vectors([index.docs()["long"]])
    before = {row["text"]: vector for row, vector in zip(rows, vectors, strict=True)}

    edited = body + " A late addendum about the summer melt of the valley glacier."
    write_jsonl(path, [{"_id": "long", "title": "Ice", "text": edited}], mtime_ns=2_000)
    second = ingest(path, cfg)
    assert second["counts"]["chunks_embedded"] == 1 and second["counts"]["chunks_reused"] == n - 1
    index = HotIndex(tmp_path / "hot")
    state = index.docs()["long"]
    rows, vectors = index.doc_vectors([state])
    assert state.n_chunks == n
    for row, vector in zip(rows, vectors, strict=True):
        lineage = json.loads(row["lineage"])["chunk"]
        if row["text"] in before:  # the same window: the very vector, and lineage that says where from
            np.testing.assert_array_equal(vector, before[row["text"]])
            assert lineage["reused_from"]
        else:
            assert "addendum" in row["text"] and "reused_from" not in lineage
    assert top_doc(tmp_path / "hot", "late addendum summer melt", cfg, k=1) == ["long"]
    assert_exactly_once(tmp_path / "hot")

    # Vectors made another way (other chunk windows: another fingerprint) never join this index version,
    # and are never reused: the new windows are a new version (tierflow reindex), all embedded.
    rechunk = config(tmp_path / "hot", chunking={"max_tokens": 128})
    write_jsonl(path, [{"_id": "long", "title": "Ice", "text": edited + " More."}], mtime_ns=3_000)
    with pytest.raises(IncompatibleIndex, match="chunking"):
        ingest(path, rechunk)
    from pipelines.reindex import build_candidate

    report = build_candidate(cfg, rechunk, "v2")
    assert report.caught_up.chunks_embedded > n and not report.adopted
    rows, _ = HotIndex(tmp_path / "hot", version="v2").doc_vectors(
        [HotIndex(tmp_path / "hot", version="v2").docs()["long"]]
    )
    assert not any("reused_from" in json.loads(row["lineage"])["chunk"] for row in rows)
