"""Index versions (indexing.versions, pipelines.reindex, evaluation.promotion) with the real model and the
real pipeline: a new model or chunking is a new version built beside the live one, writes never mix,
a candidate catches up on live changes, promote switches atomically, rollback restores the previous
results exactly, searches keep answering throughout, and garbage collection keeps every kept version.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from evaluation.promotion import PromoteConfig, promote, rollback, version_config
from indexing import audit, versions
from indexing.docs_table import CANONICAL, DELETED
from indexing.hot import CommitRequest, HotIndex
from indexing.search import Searcher
from pipelines.reindex import build_candidate, catch_up, changed_events, pending, rebuild_text
from tests.helpers import SCIFACT, assert_exactly_once, config, ingest, write_jsonl
from tierflow import cli
from tierflow.config import IngestConfig
from tierflow.errors import IncompatibleIndex, VersionError

pytestmark = pytest.mark.model

QUERIES = [
    "vitamin D deficiency and bone density",
    "stem cells differentiate into neurons",
    "antibiotic resistance in bacteria",
    "gene expression in cancer cells",
    "immune response to infection",
]
SMALL = {"chunking": {"max_tokens": 64, "overlap_tokens": 8}}


def scifact_docs(n: int) -> list[dict[str, Any]]:
    lines = (SCIFACT / "corpus.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A live index of 60 SciFact documents (most longer than one window), built once; tests copy it."""
    base = tmp_path_factory.mktemp("versions")
    corpus = write_jsonl(base / "corpus.jsonl", scifact_docs(60), mtime_ns=1_000)
    ingest(corpus, config(base / "hot"))
    return base / "hot", corpus


@pytest.fixture
def live(built: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A copy of the built index, and the corpus file it was built from (the documents' source: a test
    may rewrite it; it is restored afterwards)."""
    root = tmp_path / "hot"
    shutil.copytree(built[0], root)
    corpus = built[1]
    saved = corpus.read_bytes()
    yield root, corpus
    corpus.write_bytes(saved)
    os.utime(corpus, ns=(1_000, 1_000))


def results(root: Path, cfg: IngestConfig) -> list[list[tuple[str, float]]]:
    searcher = Searcher(HotIndex(root), cfg.embedding)
    return [[(r.doc_id, r.score) for r in found] for found in searcher.search_many(QUERIES, 5)]


def test_a_new_chunking_is_a_separate_version_and_live_is_untouched(live: tuple[Path, Path]) -> None:
    root, _ = live
    cfg = config(root)
    before = results(root, cfg)
    live_manifest = HotIndex(root).manifest()

    report = build_candidate(cfg, config(root, **SMALL), "v2")

    registry = versions.load_registry(root)
    assert registry.live == "v1" and registry.candidates() == ["v2"]
    v1, v2 = registry.versions["v1"]["identity"], registry.versions["v2"]["identity"]
    assert v1["embedding"] == v2["embedding"] and v1["chunking"] != v2["chunking"]
    assert v2["chunking"]["max_tokens"] == 64
    assert not report.adopted and report.caught_up.events == 60 and report.caught_up.unrecoverable == []
    # The candidate holds every document, made its own way; live serves exactly what it served.
    cand = HotIndex(root, version="v2")
    assert cand.manifest().version == "v2" and cand.manifest().chunking["max_tokens"] == 64
    live_docs = HotIndex(root).docs()
    assert {d: (s.version, s.content_hash) for d, s in cand.docs().items()} == {
        d: (s.version, s.content_hash) for d, s in live_docs.items()
    }
    assert cand.manifest().n_vectors > live_manifest.n_vectors
    assert HotIndex(root).manifest().generation == live_manifest.generation
    assert results(root, cfg) == before
    assert pending(config(root, **SMALL), "v2") == 0
    assert cand.manifest().sources == live_manifest.sources  # a stream could resume from it

    rows = versions.describe(root)
    assert [(r["name"], r["state"]) for r in rows] == [("v1", "live"), ("v2", "candidate")]
    assert all(r["code_version"] for r in rows)  # the code that made each version


def test_a_normalisation_change_is_a_separate_version(live: tuple[Path, Path]) -> None:
    root, _ = live
    cfg = config(root)
    report = build_candidate(cfg, config(root, embedding={"normalize": False}), "unnormalised")
    identity = versions.load_registry(root).versions["unnormalised"]["identity"]
    assert identity["embedding"]["normalize"] is False
    assert not report.adopted and report.caught_up.chunks_embedded > 0  # nothing reused across models
    assert HotIndex(root, version="unnormalised").manifest().embedding["normalize"] is False


def test_mixed_writes_are_refused(live: tuple[Path, Path]) -> None:
    root, corpus = live
    cfg = config(root)
    # Another chunking into the live version: refused, with what to do instead.
    write_jsonl(corpus, scifact_docs(61), mtime_ns=2_000)
    with pytest.raises(IncompatibleIndex, match="tierflow reindex"):
        ingest(corpus, config(root, **SMALL))
    # Another model into the live version, below the pipeline.
    index = HotIndex(root)
    other = dict(index.manifest().embedding, normalize=False)
    with pytest.raises(IncompatibleIndex, match="model"):
        index.commit(CommitRequest("mixed", embedding=other, chunking=index.manifest().chunking))
    # The live model's vectors into a candidate of another chunking.
    build_candidate(cfg, config(root, **SMALL), "v2")
    with pytest.raises(IncompatibleIndex, match="chunking"):
        ingest(corpus, replace(cfg, index_version="v2", skip_unchanged_files=False))
    # Nothing half-written: both versions still hold their 60 documents, each exactly once.
    assert len(HotIndex(root).docs()) == 60 and len(HotIndex(root, version="v2").docs()) == 60
    assert_exactly_once(root)


def test_same_model_reindex_reuses_the_vectors_and_rebuilds_the_index_type(live: tuple[Path, Path]) -> None:
    root, _ = live
    cfg = config(root)
    hnsw = config(root, index={"type": "hnsw", "use_gpu": "never"})
    report = build_candidate(cfg, hnsw, "hnsw")
    assert report.adopted and report.compacted and report.caught_up.chunks_embedded == 0
    manifest = HotIndex(root, version="hnsw").manifest()
    assert {seg.info.index["type"] for seg in manifest.segments} == {"hnsw"}
    live_ids = [[d for d, _ in found] for found in results(root, cfg)]
    searcher = Searcher(HotIndex(root, version="hnsw"), cfg.embedding)
    assert [[r.doc_id for r in found] for found in searcher.search_many(QUERIES, 5)] == live_ids


def test_catch_up_applies_live_edits_deletes_and_additions(live: tuple[Path, Path]) -> None:
    root, corpus = live
    cfg, small = config(root), config(root, **SMALL)
    build_candidate(cfg, small, "v2")
    docs = scifact_docs(62)
    edited = docs[0]["_id"]
    docs[0] = dict(docs[0], text=docs[0]["text"] + " An addendum on glacier melt rates.")
    deleted = docs.pop(1)["_id"]
    write_jsonl(corpus, docs, mtime_ns=3_000)
    ingest(corpus, replace(cfg, sync="full"))
    # The rewritten file gave its documents newer versions: they differ, three of them in content.
    assert pending(small, "v2") >= 4
    caught = catch_up(small, "v2")
    assert (caught.deletes, caught.unrecoverable) == (1, [])
    assert pending(small, "v2") == 0
    cand, live_docs = HotIndex(root, version="v2").docs(), HotIndex(root).docs()
    changed = [edited, docs[-1]["_id"], docs[-2]["_id"]]
    # Only the edited and the new documents were embedded (the rest only took their newer versions).
    assert 0 < caught.chunks_embedded <= sum(cand[d].n_chunks for d in changed)
    assert {d: s.version for d, s in cand.items()} == {d: s.version for d, s in live_docs.items()}
    assert cand[deleted].status == DELETED and cand[edited].version == live_docs[edited].version
    assert cand[edited].content_hash == live_docs[edited].content_hash
    assert HotIndex(root, version="v2").manifest().sources == HotIndex(root).manifest().sources
    assert catch_up(small, "v2").commits == 0  # nothing left: nothing committed


def test_promote_then_rollback_restores_the_previous_results_exactly(live: tuple[Path, Path]) -> None:
    root, _ = live
    cfg, small = config(root), config(root, **SMALL)
    before = results(root, cfg)
    build_candidate(cfg, small, "v2")
    out = root.parent / "promotion"
    report = promote(cfg, "v2", PromoteConfig(), out, force=True)
    assert report["switched"] and report["gate"]["forced"]
    assert versions.load_registry(root).live == "v2"
    assert HotIndex(root).manifest().version == "v2"
    promoted = results(root, cfg)  # the live config's searcher follows the switch
    assert promoted != before and all(promoted)

    back = rollback(cfg, out, reason="test")
    assert (back["from"], back["to"], back["documents_behind"]) == ("v2", "v1", 0)
    assert results(root, cfg) == before
    registry = versions.load_registry(root)
    assert registry.live == "v1" and [s["action"] for s in registry.switches] == ["promote", "rollback"]
    actions = [line["action"] for line in audit.read(root)]
    assert actions[-2:] == ["promote", "rollback"]
    assert (out / "promotion.json").exists() and (out / "rollback.md").exists()
    with pytest.raises(VersionError, match="live already"):
        promote(cfg, "v1", PromoteConfig(), out, force=True)
    build_candidate(cfg, config(root, index={"type": "hnsw", "use_gpu": "never"}), "v3")
    with pytest.raises(VersionError, match="never live"):
        rollback(cfg, out, to="v3")  # a candidate goes live only through the gate



def test_after_a_switch_old_writers_are_refused_and_new_ones_follow(live: tuple[Path, Path]) -> None:
    root, corpus = live
    cfg, small = config(root), config(root, **SMALL)
    build_candidate(cfg, small, "v2")
    promote(cfg, "v2", PromoteConfig(), root.parent / "p", force=True)
    write_jsonl(corpus, scifact_docs(61), mtime_ns=4_000)
    with pytest.raises(IncompatibleIndex, match="chunking"):
        ingest(corpus, cfg)  # a scheduled run still configured for v1
    summary = ingest(corpus, small)  # the run reconfigured for v2 writes into the live version
    assert HotIndex(root).manifest().version == "v2" and len(HotIndex(root).docs()) == 61
    added = scifact_docs(61)[-1]["_id"]
    assert summary["counts"]["chunks_embedded"] == HotIndex(root).docs()[added].n_chunks  # only the new one
    # v1 kept its state: rolling back returns what it had (60 documents), and says what differs.
    back = rollback(cfg, root.parent / "p")
    assert back["documents_behind"] >= 1 and len(HotIndex(root).docs()) == 60
    # Promoting v2 again catches it up on the live v1 first, but never back to older states: what it
    # took while it was live (newer versions, the new document) it keeps.
    promote(cfg, "v2", PromoteConfig(), root.parent / "p", force=True)
    assert HotIndex(root).docs()[added].status == CANONICAL
    assert all(s.version == 4_000 for s in HotIndex(root).docs().values())
    # To keep a live version's changes across a rollback, catch the older version up on it first.
    build_candidate(cfg, cfg, "v1")  # v1 is retired: resumed, and caught up on the live v2
    assert pending(cfg, "v1") == 0
    back = rollback(cfg, root.parent / "p")
    assert back["documents_behind"] == 0 and HotIndex(root).docs()[added].status == CANONICAL
    assert HotIndex(root).manifest().chunking["max_tokens"] == 256
    assert_exactly_once(root)


def test_gc_keeps_kept_versions_and_retention_drops_old_ones(live: tuple[Path, Path]) -> None:
    root, _ = live
    cfg = config(root)
    build_candidate(cfg, config(root, **SMALL), "v2")
    HotIndex(root).collect_garbage(keep_generations=1, min_age_s=0)
    cand = Searcher(HotIndex(root, version="v2"), cfg.embedding)
    assert all(cand.search_many(QUERIES, 3))  # the candidate's files survived
    gate = PromoteConfig(keep_versions=1)
    promote(cfg, "v2", gate, root.parent / "p", force=True)
    build_candidate(cfg, config(root, chunking={"max_tokens": 96, "overlap_tokens": 8}), "v3")
    report = promote(cfg, "v3", gate, root.parent / "p", force=True)
    assert report["dropped_versions"] == ["v1"]  # v2 is the one retired version kept
    assert sorted(versions.load_registry(root).versions) == ["v2", "v3"]
    removed = HotIndex(root).collect_garbage(keep_generations=1, min_age_s=0)
    assert any("segments/" in str(path) for path in removed)  # v1's segments are freed
    assert rollback(cfg, root.parent / "p")["to"] == "v2"
    assert all(Searcher(HotIndex(root), cfg.embedding).search_many(QUERIES, 3))


def test_searches_keep_answering_through_build_promote_and_rollback(live: tuple[Path, Path]) -> None:
    root, _ = live
    cfg = config(root)
    searcher = Searcher(HotIndex(root), cfg.embedding)
    searcher.warm_up()
    stop = threading.Event()
    answered: list[int] = []
    failures: list[str] = []

    def query() -> None:
        i = 0
        while not stop.is_set():
            try:
                found = searcher.search(QUERIES[i % len(QUERIES)], 5)
                answered.append(len(found))
                if not found:
                    failures.append(f"empty result for {QUERIES[i % len(QUERIES)]!r}")
            except Exception as err:  # noqa: BLE001 - every error is a failure of the test
                failures.append(repr(err))
            i += 1

    worker = threading.Thread(target=query)
    worker.start()
    try:
        build_candidate(cfg, config(root, embedding={"normalize": False}, **SMALL), "v2")
        promote(cfg, "v2", PromoteConfig(), root.parent / "p", force=True)
        time.sleep(0.5)
        rollback(cfg, root.parent / "p")
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join(60)
    assert not failures, failures[:5]
    assert len(answered) > 20 and min(answered) > 0


def test_texts_are_rebuilt_from_windows_or_reported_unrecoverable(live: tuple[Path, Path]) -> None:
    root, _ = live
    index = HotIndex(root)
    manifest = index.manifest()
    events, unrecoverable = changed_events(index, manifest, {})
    originals = {doc["_id"]: doc["text"] for doc in scifact_docs(60)}
    long = [e for e in events if index.docs()[e.doc_id].n_chunks > 1]
    assert len(long) >= 20 and unrecoverable == []
    assert all(e.text == originals[e.doc_id] for e in events)  # exact, windows and all
    # A document whose windows do not rebuild to its content hash is not re-indexed from them (a guess
    # would index text the source never had): it is reported, and blocks a promotion unless forced.
    doc_id = long[0].doc_id
    state = index.docs()[doc_id]
    index.commit(CommitRequest("tamper", updates=[replace(state, version=state.version + 1, content_hash="0" * 64)]))
    cfg = config(root)
    report = build_candidate(cfg, config(root, **SMALL), "v2")
    assert report.caught_up.unrecoverable == [doc_id] and report.caught_up.events == 59
    with pytest.raises(VersionError, match=f"could not be rebuilt.*{doc_id}"):
        promote(cfg, "v2", PromoteConfig(), root.parent / "p")
    assert versions.load_registry(root).live == "v1"
    # rebuild_text places overlapping windows by their offsets, prefixes removed
    rows = [
        {"text": "T abcdef", "lineage": json.dumps({"chunk": {"start": 0, "end": 6}})},
        {"text": "T defghi", "lineage": json.dumps({"chunk": {"start": 3, "end": 9}})},
    ]
    assert rebuild_text(rows) == "abcdefghi"


def test_cli_reindex_versions_promote_rollback(live: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = live
    out = root.parent / "cli"
    assert cli.main(["reindex", "--index", str(root), "--chunk-tokens", "64", "--chunk-overlap", "8"]) == 0
    assert "Next: tierflow promote --name v2" in capsys.readouterr().out
    assert cli.main(["versions", "--index", str(root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["state"], r["chunking"]["max_tokens"]) for r in rows] == [
        ("v1", "live", 256),
        ("v2", "candidate", 64),
    ]
    # Without a labelled query set there is no gate: refused with what to set.
    assert cli.main(["promote", "--index", str(root), "--name", "v2", "--out", str(out)]) == 2
    assert "labelled query set" in capsys.readouterr().err
    assert cli.main(["promote", "--index", str(root), "--name", "v2", "--out", str(out), "--force"]) == 0
    assert "Switched" in capsys.readouterr().out
    assert cli.main(["rollback", "--index", str(root), "--out", str(out)]) == 0
    assert "v2 → v1" in capsys.readouterr().out
    assert cli.main(["promote", "--index", str(root), "--name", "nope", "--out", str(out), "--force"]) == 2
    assert "no index version 'nope'" in capsys.readouterr().err
    # Bad names and targets: a clear error, nothing written.
    before = (root / versions.REGISTRY).read_bytes()
    assert cli.main(["reindex", "--index", str(root), "--name", "../escape", "--chunk-tokens", "128"]) == 2
    assert "version name '../escape'" in capsys.readouterr().err
    assert cli.main(["rollback", "--index", str(root), "--to", "nope", "--out", str(out)]) == 2
    assert "no index version 'nope'" in capsys.readouterr().err
    assert (root / versions.REGISTRY).read_bytes() == before and not (root.parent / "escape").exists()
    assert version_config(config(root), "v2").chunking.max_tokens == 64
    assert {s.status for s in HotIndex(root).docs().values()} <= {CANONICAL, DELETED, "duplicate"}


def test_the_search_service_keeps_answering_through_build_promote_and_rollback(
    live: tuple[Path, Path],
) -> None:
    """Over HTTP, with a model change (normalised vs not): the service picks the promoted version's model
    from the registry, and the previous one's again after the rollback, with no error and no empty answer."""
    import http.client

    from indexing.service import SEARCH_PATH, SearchService, ServeConfig

    root, _ = live
    cfg = config(root)
    service = SearchService(Searcher(HotIndex(root), cfg.embedding), ServeConfig(port=0)).start()
    assert service.wait_ready(120), service.readiness()[1]
    stop = threading.Event()
    statuses: list[int] = []
    failures: list[str] = []
    served: set[str] = set()

    def query() -> None:
        host, port = service.address
        i = 0
        while not stop.is_set():
            body = json.dumps({"query": QUERIES[i % len(QUERIES)], "k": 5}).encode()
            connection = http.client.HTTPConnection(host, port, timeout=60)
            try:
                connection.request("POST", SEARCH_PATH, body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                answer = json.loads(response.read() or b"{}")
                statuses.append(response.status)
                if response.status != 200 or not answer.get("results"):
                    failures.append(f"{response.status}: {answer}")
            except Exception as err:  # noqa: BLE001 - every error is a failure of the test
                failures.append(repr(err))
            finally:
                connection.close()
            served.add(HotIndex(root).manifest().version or "v1")
            i += 1

    worker = threading.Thread(target=query)
    worker.start()
    try:
        build_candidate(cfg, config(root, embedding={"normalize": False}), "v2")
        promote(cfg, "v2", PromoteConfig(), root.parent / "p", force=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(statuses) < 5:
            time.sleep(0.1)
        count = len(statuses)
        while time.monotonic() < deadline and len(statuses) < count + 5:
            time.sleep(0.1)  # answered on v2
        rollback(cfg, root.parent / "p")
        count = len(statuses)
        while time.monotonic() < deadline and len(statuses) < count + 5:
            time.sleep(0.1)  # answered on v1 again
    finally:
        stop.set()
        worker.join(60)
        service.stop()
    assert not failures, failures[:5]
    assert len(statuses) >= 15 and set(statuses) == {200}
    assert served == {"v1", "v2"}


def test_a_crash_between_the_switch_and_the_registry_is_recovered(live: tuple[Path, Path]) -> None:
    """``CURRENT`` is renamed first, the registry written second: a crash between them leaves the
    registry naming the old version; reading it corrects that from what ``CURRENT`` names."""
    from indexing.durable import atomic_write_bytes

    root, _ = live
    cfg = config(root)
    build_candidate(cfg, config(root, index={"type": "hnsw", "use_gpu": "never"}), "v2")
    # The switch's file steps without its registry write (as a crash right after the rename leaves them).
    (root / "versions" / "v1").mkdir()
    atomic_write_bytes(root / "versions" / "v1" / "HEAD", (root / "CURRENT").read_bytes())
    atomic_write_bytes(root / "CURRENT", (root / "versions" / "v2" / "HEAD").read_bytes())
    registry = versions.load_registry(root)
    assert registry.live == "v2" and registry.versions["v1"]["state"] == versions.RETIRED
    assert registry.previous() == "v1"
    back = rollback(cfg, root.parent / "p")
    assert back["to"] == "v1" and HotIndex(root).manifest().version == ""  # v1's chain, made before versions


def test_a_generation_switch_stays_within_the_live_version(live: tuple[Path, Path]) -> None:
    from indexing.manifest import main as manifest_main

    root, _ = live
    build_candidate(config(root), config(root, index={"type": "hnsw", "use_gpu": "never"}), "v2")
    candidate_generation = HotIndex(root, version="v2").manifest().generation
    assert manifest_main(["switch", "--index", str(root), str(candidate_generation)]) == 1
    assert HotIndex(root).manifest().version == ""  # still v1's chain
