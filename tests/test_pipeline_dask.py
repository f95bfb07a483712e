"""The same batch pipeline on a real distributed engine: Beam's DaskRunner on a 2-process dask cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexing.hot import HotIndex
from tests.helpers import config, demo_docs, ingest, live_docs, live_vectors, write_jsonl

pytestmark = [pytest.mark.dask, pytest.mark.model]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local.scheduler_address


def test_dask_runner_matches_direct_runner_and_writers_on_both_workers_publish_one_commit(
    tmp_path: Path, cluster: str
) -> None:
    docs = demo_docs()
    bad = [b'{"_id": "cut"', json.dumps({"text": "no id"}).encode()]
    corpus = write_jsonl(tmp_path / "docs.jsonl", [*docs[:10], *bad, *docs[10:]], mtime_ns=1_000)
    dask_args = ["--runner=DaskRunner", f"--dask_client_address={cluster}", "--dask_npartitions=8"]

    direct = ingest(corpus, config(tmp_path / "direct", write_shards=8), split_bytes=1500)
    dask = ingest(corpus, config(tmp_path / "dask", write_shards=8), dask_args, split_bytes=1500)

    assert dask["counts"] == direct["counts"], (dask, direct)
    assert (
        dask["dead_letters"]["by_reason"]
        == direct["dead_letters"]["by_reason"]
        == {"malformed_json": 1, "missing_id": 1}
    )
    assert live_vectors(tmp_path / "dask") == live_vectors(tmp_path / "direct")
    assert set(live_docs(tmp_path / "dask")) == {d["_id"] for d in docs}

    manifest = HotIndex(tmp_path / "dask").manifest()
    assert manifest.generation == 1, "all writers' segments are published by one commit"
    writers = {seg.info.writer["pid"] for seg in manifest.segments}
    assert len(manifest.segments) == dask["segments_written"] >= 4, manifest.segments
    assert len(writers) == 2, f"segments written by {writers}"

    rerun = ingest(
        corpus,
        config(tmp_path / "dask", write_shards=8, skip_unchanged_files=False, prefilter_max_bytes=0),
        dask_args,
        split_bytes=1500,
    )
    assert rerun["counts"].get("chunks_embedded", 0) == 0
    assert rerun["counts"]["skipped_unchanged"] == len(docs)

    # One document edited: the driver settles the others and the pipeline, on the dask workers, embeds the
    # edited one and reads the settled states the driver staged for its commit.
    edited = [dict(d) for d in docs]
    edited[4]["text"] = "Dask workers embedded this edit while the driver settled the rest."
    write_jsonl(corpus, [*edited[:10], *bad, *edited[10:]], mtime_ns=2_000)
    third = ingest(corpus, config(tmp_path / "dask", write_shards=8), dask_args, split_bytes=1500)
    assert third["counts"]["chunks_embedded"] == 1
    assert third["counts"]["skipped_unchanged"] == len(docs) - 1
    assert third["dead_letters"]["by_reason"] == {"malformed_json": 1, "missing_id": 1}
    states = HotIndex(tmp_path / "dask").docs()
    assert {s.version for s in states.values()} == {2_000}, (
        "every document recorded at the file's new version"
    )
    assert [v for v in live_vectors(tmp_path / "dask").values() if "Dask workers embedded" in v]
    assert not list((tmp_path / "dask" / "staging").iterdir()), "the staged settled states are removed"
