"""A full disk on the hot tier: the index directory lives on a small tmpfs, so writes fail with a real
ENOSPC, during a batch ingest's segment writes, during a commit (document table, tombstones, manifest,
CURRENT pointer) and during compaction.

What must hold: a clear error that names the device and ENOSPC (exit status 2 from the CLI, no traceback
of its own); the previously committed generation still loads and serves, every vector findable exactly
once; nothing half-written is named by a manifest, and a failed write leaves no partial file; after
space is freed a re-run commits everything, and gc leaves no orphans.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from indexing import manifest as manifest_module
from indexing.docs_table import DELETED, DocState
from indexing.hot import HotIndex
from indexing.manifest import CURRENT, verify
from indexing.segment import CHUNKS_FILE, INDEX_FILE, META_FILE
from tests.helpers import REPO, assert_exactly_once, demo_docs, write_jsonl
from tests.test_unit_hot_index import Lab
from tierflow.errors import DiskFull

FILL_BLOCK = 64 << 10


class SmallDisk:
    """A tmpfs of ``size_kb`` mounted at ``path``, with a filler file to take its free space."""

    def __init__(self, path: Path, size_kb: int) -> None:
        self.path = path
        self.size_kb = size_kb
        self.filler = path / "filler"

    def fill(self, leave_bytes: int = 0) -> None:
        """Take all free space (then give ``leave_bytes`` back)."""
        block = b"\0" * FILL_BLOCK
        with open(self.filler, "ab") as handle:
            try:
                while True:
                    handle.write(block)
                    handle.flush()
            except OSError:
                pass
        try:
            with open(self.filler, "ab") as handle:  # the last partial block
                while True:
                    handle.write(b"\0" * 4096)
                    handle.flush()
        except OSError:
            pass
        if leave_bytes:
            size = self.filler.stat().st_size
            os.truncate(self.filler, max(0, size - leave_bytes))

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 2 MiB tmpfs, unmounted afterwards. Skips when this machine does not let the tests mount one (not
    root, or no mount permission in the container)."""
    size_kb = 2048
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root and mount permission): {done.stderr.strip()}")
    try:
        yield SmallDisk(mount_point, size_kb)
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


# --- what must hold after a failure ----------------------------------------------------------------------


def leftovers(root: Path) -> list[str]:
    """Temporary files, and segment directories that are not whole (files missing or not matching the
    checksums in their own segment.json): what a failed write must never leave behind."""
    import json

    from indexing.durable import sha256_file

    found = [str(p.relative_to(root)) for p in root.rglob(".*.tmp-*")]
    segments = root / "segments"
    for seg_dir in segments.iterdir() if segments.exists() else []:
        meta = seg_dir / META_FILE
        if not meta.exists():
            found.append(f"segments/{seg_dir.name} (no {META_FILE})")
            continue
        files = json.loads(meta.read_text())["files"]
        for name in (INDEX_FILE, CHUNKS_FILE):
            path = seg_dir / name
            if not path.exists() or sha256_file(path) != files[name]:
                found.append(f"segments/{seg_dir.name}/{name}")
    return found


def unreferenced(root: Path) -> list[str]:
    """Files and segment directories that no kept manifest names (what gc must have removed)."""
    store = HotIndex(root).store
    named: set[str] = set()
    for gen in store.generations():
        kept = store.load(store.file_name(gen))
        named.update(f"segments/{seg.info.segment_id}" for seg in kept.segments)
        named.update(seg.tombstones for seg in kept.segments if seg.tombstones)
        if kept.docs_file:
            named.add(kept.docs_file)
    out = []
    for sub in ("segments", "docs", "tombstones"):
        folder = root / sub
        for path in folder.iterdir() if folder.exists() else []:
            if f"{sub}/{path.name}" not in named:
                out.append(f"{sub}/{path.name}")
    return out


def assert_serves(root: Path, generation: int, docs: set[str] | None = None) -> None:
    """``generation`` is current, verifies, and every vector of its documents is findable exactly once."""
    index = HotIndex(root)
    current = index.manifest()
    assert current.generation == generation
    assert verify(root, current) == []
    assert_exactly_once(root, expect_docs=docs)
    assert not (root / "manifests" / index.store.file_name(generation + 1)).exists()


# --- batch ingest ----------------------------------------------------------------------------------------


@pytest.mark.model
def test_batch_ingest_on_a_full_disk_fails_clearly_and_a_rerun_commits_everything(
    small_disk: SmallDisk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tierflow.cli import main

    docs = demo_docs()
    first, second = docs[: len(docs) // 2], docs[len(docs) // 2 :]
    corpus_a = write_jsonl(tmp_path / "a.jsonl", first)
    corpus_b = write_jsonl(tmp_path / "b.jsonl", second)
    root = small_disk.path / "hot"
    assert main(["ingest", str(corpus_a), "--index", str(root)]) == 0
    assert_serves(root, 1, {d["_id"] for d in first})

    small_disk.fill()
    assert small_disk.free_bytes() < 4096
    failed = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "ingest", str(corpus_b), "--index", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert failed.returncode == 2, failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("tierflow: error: no space left on the device holding"), failed.stderr[-3000:]
    assert "No space left on device" in last and "still serves its last committed generation" in last
    assert "tierflow gc" in last
    # The previous generation still loads and serves; nothing half-written is left, or named.
    assert_serves(root, 1, {d["_id"] for d in first})
    assert leftovers(root) == []
    capsys.readouterr()
    assert main(["search", first[0]["title"], "-k", "3", "--index", str(root), "--json"]) == 0
    assert first[0]["_id"] in capsys.readouterr().out

    small_disk.free()
    assert main(["ingest", str(corpus_b), "--index", str(root)]) == 0
    assert_serves(root, 2, {d["_id"] for d in docs})
    HotIndex(root).collect_garbage(min_age_s=0)
    assert unreferenced(root) == [] and leftovers(root) == []
    assert_serves(root, 2, {d["_id"] for d in docs})


@pytest.mark.model
def test_a_disk_that_fills_during_the_commit_leaves_the_previous_generation(
    small_disk: SmallDisk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The segments are written; the disk fills just before the commit step (another process, a log):
    the pipeline raises DiskFull, and neither the document table nor a manifest of the new generation
    is left."""
    from tests.helpers import config, ingest

    docs = demo_docs()
    first, second = docs[:8], docs[8:]
    root = small_disk.path / "hot"
    cfg = config(root)
    ingest(write_jsonl(tmp_path / "a.jsonl", first), cfg)
    real_commit = HotIndex.commit

    def commit_on_a_full_disk(self: HotIndex, request: Any) -> Any:
        small_disk.fill()
        return real_commit(self, request)

    monkeypatch.setattr(HotIndex, "commit", commit_on_a_full_disk)
    corpus_b = write_jsonl(tmp_path / "b.jsonl", second)
    with pytest.raises(DiskFull, match="No space left on device"):
        ingest(corpus_b, cfg)
    monkeypatch.undo()
    assert_serves(root, 1, {d["_id"] for d in first})
    assert not list((root / "docs").glob("docs-000000002*")) and leftovers(root) == []

    small_disk.free()
    ingest(corpus_b, cfg)
    assert_serves(root, 2, {d["_id"] for d in docs})
    HotIndex(root).collect_garbage(min_age_s=0)
    assert unreferenced(root) == [] and leftovers(root) == []


# --- commits, step by step (no model: hand-made segments) ---------------------------------------------------


def _lab_with_two_generations(root: Path) -> tuple[Lab, dict[str, str]]:
    lab = Lab(root)
    s1, st1 = lab.segment([("a", 1, 3), ("b", 1, 2), ("c", 1, 2)])
    lab.commit([s1], st1)
    s2, st2 = lab.segment([("a", 2, 3)])  # tombstones a's old vectors in s1
    lab.commit([s2], st2)
    return lab, {"a": s2.segment_id, "b": s1.segment_id, "c": s1.segment_id}


@pytest.mark.parametrize("fill_at", ["docs", "tombstones", "manifest", "pointer", "segment"])
def test_commit_on_a_full_disk_at_each_step_publishes_nothing(
    small_disk: SmallDisk, monkeypatch: pytest.MonkeyPatch, fill_at: str
) -> None:
    root = small_disk.path / "hot"
    lab, live = _lab_with_two_generations(root)
    import indexing.hot as hot_module

    filled = []

    def fill_once() -> None:
        if not filled:
            filled.append(True)
            small_disk.fill()

    if fill_at == "docs":
        real_docs = hot_module.write_docs
        monkeypatch.setattr(hot_module, "write_docs", lambda *a: (fill_once(), real_docs(*a))[1])
    elif fill_at == "tombstones":
        real_npy = hot_module.write_npy_durably
        monkeypatch.setattr(hot_module, "write_npy_durably", lambda *a: (fill_once(), real_npy(*a))[1])
    elif fill_at in ("manifest", "pointer"):
        real_write = manifest_module.atomic_write_bytes

        def write(path: Path, data: bytes) -> None:
            if (path.name == CURRENT) == (fill_at == "pointer"):
                fill_once()
            real_write(path, data)

        monkeypatch.setattr(manifest_module, "atomic_write_bytes", write)
    if fill_at == "segment":
        small_disk.fill()
        with pytest.raises(DiskFull, match="writing segment .*No space left on device"):
            lab.segment([("d", 1, 40)])
        assert list((root / "segments").iterdir()) and leftovers(root) == []
    else:
        s3, st3 = lab.segment([("b", 2, 2), ("d", 1, 2)])  # b's update tombstones its vectors in s1
        with pytest.raises(DiskFull) as caught:
            lab.commit([s3], st3)
        message = str(caught.value)
        assert (
            "No space left on device" in message and "still serves its last committed generation" in message
        )
    monkeypatch.undo()
    fresh = HotIndex(root)
    assert fresh.manifest().generation == 2
    assert (root / CURRENT).read_text().strip() == fresh.store.file_name(2)
    assert fresh.store.generations() == [1, 2], "no manifest names a generation that was not committed"
    assert not list((root / "docs").glob("docs-000000003*"))
    assert not list((root / "tombstones").glob("*-000000003.npy"))
    assert leftovers(root) == []
    lab.hot = fresh
    lab.assert_search_matches(live)
    assert_exactly_once(root, expect_docs={"a", "b", "c"})

    small_disk.free()
    s3, st3 = lab.segment([("b", 2, 2), ("d", 1, 2)])
    lab.commit([s3], st3)
    live.update(b=s3.segment_id, d=s3.segment_id)
    lab.hot = HotIndex(root)
    lab.assert_search_matches(live)
    lab.hot.collect_garbage(min_age_s=0)
    assert unreferenced(root) == [] and leftovers(root) == []
    assert_exactly_once(root, expect_docs={"a", "b", "c", "d"})


def test_a_failed_audit_line_does_not_fail_a_published_commit(
    small_disk: SmallDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit line is appended after the manifest swap: a full disk then must not report the commit,
    which is durable, as failed (the next append recovers the line from the manifest history)."""
    from indexing import audit

    root = small_disk.path / "hot"
    lab, live = _lab_with_two_generations(root)
    real_append = audit.append

    def append(*args: Any) -> None:
        small_disk.fill()
        real_append(*args)

    monkeypatch.setattr(audit, "append", append)
    s3, st3 = lab.segment([("d", 1, 2)])
    result = lab.commit([s3], st3)
    monkeypatch.undo()
    assert result.generation == 3 and HotIndex(root).manifest().generation == 3
    small_disk.free()
    s4, st4 = lab.segment([("e", 1, 1)])
    lab.commit([s4], st4)
    generations = [line["generation"] for line in audit.read(root) if line["action"] == "commit"]
    assert generations == [1, 2, 3, 4]


# --- compaction ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fill_at", ["merge", "docs"])
def test_compaction_on_a_full_disk_keeps_the_current_generation(
    small_disk: SmallDisk,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fill_at: str,
) -> None:
    from tierflow.cli import main

    root = small_disk.path / "hot"
    lab, live = _lab_with_two_generations(root)
    s3, st3 = lab.segment([("d", 1, 4)])
    lab.commit([s3], st3)
    lab.commit([], [DocState("c", 5, DELETED)])  # generation 4: tombstones in s1
    live.update(d=s3.segment_id)
    del live["c"]
    before = {p.name for p in (root / "segments").iterdir()}
    if fill_at == "merge":
        small_disk.fill()
    else:  # the merged segment is written, then the disk fills before its document table
        import indexing.hot as hot_module

        real_docs = hot_module.write_docs
        monkeypatch.setattr(hot_module, "write_docs", lambda *a: (small_disk.fill(), real_docs(*a))[1])
    capsys.readouterr()
    assert main(["compact", "--index", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tierflow: error: no space left on the device holding"), err
    assert "No space left on device" in err
    monkeypatch.undo()
    assert_serves(root, 4, set(live))
    assert {p.name for p in (root / "segments").iterdir()} == before, "the merged segment was removed"
    assert leftovers(root) == []
    lab.hot = HotIndex(root)
    lab.assert_search_matches(live)

    small_disk.free()
    assert main(["compact", "--index", str(root)]) == 0
    compacted = HotIndex(root).manifest()
    assert compacted.generation == 5 and len(compacted.segments) == 1
    assert not compacted.segments[0].n_deleted
    merged = compacted.segments[0].info.segment_id
    lab.hot = HotIndex(root)
    for doc_id in live:
        old = live[doc_id]
        lab.vectors[(merged, doc_id)] = lab.vectors[(old, doc_id)]
    lab.assert_search_matches(dict.fromkeys(live, merged))
    assert main(["gc", "--index", str(root), "--min-age", "0", "--keep", "1"]) == 0
    assert unreferenced(root) == [] and leftovers(root) == []
    assert_serves(root, 5, set(live))


def test_full_disk_errors_are_recognised_whatever_the_library_says(tmp_path: Path) -> None:
    """pyarrow, faiss and numpy each report ENOSPC their own way; the translation catches them all, and
    passes other errors through."""
    import errno

    from indexing.durable import disk_guard, is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"))
    assert is_disk_full(RuntimeError("write error in x/index.faiss: 4014 != 7680 (No space left on device)"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("Error in faiss::read_index: bad magic"))
    with pytest.raises(DiskFull, match=r"while testing \(.* free of .*\)"), disk_guard(tmp_path, "testing"):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(PermissionError), disk_guard(tmp_path, "testing"):
        raise PermissionError(errno.EACCES, "Permission denied")
