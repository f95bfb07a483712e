"""Corrupt or truncated index files are refused, never served: a committed segment's FAISS file or chunk
table (hot, and warm: memory-mapped), the document table, tombstones, the manifest and its CURRENT
pointer. The CLI and the federated Searcher stop with an IndexCorrupt error that names the damaged file
and says how to recover; the recovery it names (roll back to a generation without the damage, re-run
the ingest) works; compaction refuses to merge a damaged segment rather than give its bytes a fresh
checksum.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from indexing.docs_table import DELETED, DocState
from indexing.hot import HotIndex
from indexing.manifest import CURRENT, MMAP, verify
from indexing.manifest import main as manifest_main
from indexing.search import Searcher
from indexing.segment import CHUNKS_FILE, INDEX_FILE
from tests.helpers import REPO, assert_exactly_once, config, demo_docs, ingest, write_jsonl
from tests.test_unit_hot_index import Lab, unit
from tierflow.cli import main
from tierflow.errors import IndexCorrupt


def flip_byte(path: Path, at: float = 0.5) -> None:
    """Flip one byte in place (the same inode: a process that memory-mapped the file sees it too)."""
    with open(path, "r+b") as handle:
        handle.seek(int(path.stat().st_size * at))
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x5A]))


def truncate(path: Path, keep: float = 0.6) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


DAMAGE: dict[str, Callable[[Path], None]] = {"flipped": flip_byte, "truncated": truncate}
FIRST_QUERY = "sourdough starter and wild yeast"


@pytest.fixture(scope="module")
def two_generations(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict], list[dict]]:
    """An index built by two ingests (two segments each): generation 1 holds the first half of the demo
    corpus, generation 2 adds the second half. Tests corrupt copies of it."""
    root = tmp_path_factory.mktemp("corrupt")
    docs = demo_docs()
    first, second = docs[: len(docs) // 2], docs[len(docs) // 2 :]
    corpus_b = write_jsonl(root / "b.jsonl", second)
    cfg = config(root / "hot")
    ingest(write_jsonl(root / "a.jsonl", first), cfg)
    ingest(corpus_b, cfg)
    assert HotIndex(root / "hot").manifest().generation == 2
    return root / "hot", corpus_b, first, second


def copy_of(two_generations: tuple[Path, Path, list[dict], list[dict]], tmp_path: Path) -> Path:
    target = tmp_path / "hot"
    shutil.copytree(two_generations[0], target)
    return target


def segments_of(root: Path, generation: int) -> list[str]:
    store = HotIndex(root).store
    return [live.info.segment_id for live in store.load(store.file_name(generation)).segments]


# --- segments -------------------------------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.parametrize("name", [INDEX_FILE, CHUNKS_FILE])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_segment_is_refused_by_search_and_the_named_rollback_recovers(
    two_generations: tuple[Path, Path, list[dict], list[dict]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    damage: str,
) -> None:
    root = copy_of(two_generations, tmp_path)
    _, corpus_b, first, second = two_generations
    added = sorted(set(segments_of(root, 2)) - set(segments_of(root, 1)))
    target = added[0]
    DAMAGE[damage](root / "segments" / target / name)

    # The CLI: exit status 2, one clear line naming the segment, the file and the way back.
    capsys.readouterr()
    assert main(["search", FIRST_QUERY, "-k", "5", "--index", str(root), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "", "no results computed from a damaged segment"
    assert err.startswith(f"tierflow: error: segment {target}: file ") and name in err, err
    assert "refused, not served" in err and "roll back to generation 1" in err, err
    assert f"python -m indexing.manifest switch --index {root} 1" in err, err

    # The federated Searcher, hot and warm (memory-mapped) alike.
    cfg = config(root)
    for mmap in (False, True):
        searcher = Searcher(HotIndex(root, mmap=mmap), cfg.embedding)
        with pytest.raises(IndexCorrupt, match=f"segment {target}: .*{name}"):
            searcher.search(FIRST_QUERY, 5)
    assert verify(root, HotIndex(root).manifest()) == [
        f"segment {target}: file {root / 'segments' / target / name} fails its checksum"
    ]

    # The recovery the message names: roll back to generation 1, re-run the second ingest.
    assert manifest_main(["switch", "--index", str(root), "1"]) == 0
    assert main(["search", first[0]["title"], "-k", "3", "--index", str(root), "--json"]) == 0
    found = [hit["doc_id"] for hit in json.loads(capsys.readouterr().out.split("\n", 1)[1])]
    assert found[0] == first[0]["_id"]
    ingest(corpus_b, cfg)
    index = HotIndex(root)
    assert index.manifest().generation == 3 and verify(root, index.manifest()) == []
    assert_exactly_once(root, expect_docs={d["_id"] for d in first + second})
    assert main(["gc", "--index", str(root), "--keep", "1", "--min-age", "0"]) == 0
    assert not (root / "segments" / target).exists()


@pytest.mark.model
def test_a_damaged_segment_no_generation_can_replace_says_to_restore_or_rebuild(
    two_generations: tuple[Path, Path, list[dict], list[dict]], tmp_path: Path
) -> None:
    root = copy_of(two_generations, tmp_path)
    oldest = sorted(set(segments_of(root, 1)) & set(segments_of(root, 2)))[0]  # in both generations
    flip_byte(root / "segments" / oldest / INDEX_FILE)
    with pytest.raises(IndexCorrupt) as caught:
        Searcher(HotIndex(root), config(root).embedding).search(FIRST_QUERY, 5)
    message = str(caught.value)
    assert f"segment {oldest}" in message and "No kept generation can replace it" in message
    assert "restore the damaged file from a backup, or rebuild the index" in message
    # `verify` and `generations` show the damage; `switch` refuses a damaged target.
    assert manifest_main(["verify", "--index", str(root)]) == 1
    assert manifest_main(["switch", "--index", str(root), "1"]) == 1
    assert HotIndex(root).manifest().generation == 2


# --- document table, tombstones, manifest, CURRENT ---------------------------------------------------------


@pytest.mark.model
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_document_table_is_refused(
    two_generations: tuple[Path, Path, list[dict], list[dict]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    root = copy_of(two_generations, tmp_path)
    docs_file = HotIndex(root).manifest().docs_file
    assert docs_file is not None
    DAMAGE[damage](root / docs_file)
    capsys.readouterr()
    assert main(["search", FIRST_QUERY, "--index", str(root)]) == 2
    err = capsys.readouterr().err
    assert (
        f"document table {root / docs_file} failed its checksum" in err and "roll back to generation 1" in err
    )
    with pytest.raises(IndexCorrupt, match="document table"):
        HotIndex(root).docs()


def test_damaged_tombstones_are_refused(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 2), ("b", 1, 2)])
    lab.commit([s1], st1)
    lab.commit([], [DocState("b", 2, DELETED)])
    live = lab.hot.manifest().segments[0]
    assert live.tombstones and live.tombstones_sha256
    flip_byte(lab.hot.root / live.tombstones, at=0.95)
    with pytest.raises(IndexCorrupt, match="tombstones .* failed its checksum.*roll back to generation 1"):
        HotIndex(lab.hot.root).search(unit(lab.rng, 1), 3)


def test_a_damaged_manifest_or_pointer_is_refused(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 2)])
    lab.commit([s1], st1)
    s2, st2 = lab.segment([("b", 1, 2)])
    lab.commit([s2], st2)
    root = lab.hot.root
    path = root / "manifests" / lab.hot.store.file_name(2)
    original = path.read_bytes()

    # Still valid JSON, one field changed: only the manifest's own checksum can tell.
    data = json.loads(original)
    data["segments"][0]["info"]["n_vectors"] += 1
    path.write_text(json.dumps(data, indent=1))
    with pytest.raises(IndexCorrupt, match="generation 2 failed its checksum.*roll back to generation 1"):
        HotIndex(root).manifest()
    path.write_bytes(original[:-40])  # truncated
    with pytest.raises(IndexCorrupt, match="not a valid manifest.*roll back to generation 1"):
        HotIndex(root).manifest()
    path.write_bytes(original)
    assert HotIndex(root).manifest().generation == 2

    (root / CURRENT).write_bytes(b"manifest-0000\x00\xff")
    with pytest.raises(IndexCorrupt, match="not a manifest name.*roll back to generation 2"):
        HotIndex(root).manifest()
    assert manifest_main(["switch", "--index", str(root), "2"]) == 0
    assert HotIndex(root).manifest().generation == 2


def test_manifests_written_before_checksums_still_load(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 2)])
    lab.commit([s1], st1)
    lab.commit([], [DocState("a", 2, DELETED)])
    path = lab.hot.root / "manifests" / lab.hot.store.file_name(2)
    data = json.loads(path.read_text())
    for key in ("checksum", "docs_sha256"):
        data.pop(key)
    for seg in data["segments"]:
        seg.pop("tombstones_sha256", None)
    path.write_text(json.dumps(data))
    fresh = HotIndex(lab.hot.root)
    assert fresh.manifest().generation == 2 and fresh.docs()["a"].status == DELETED


# --- compaction -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mmap", [False, True])
def test_compaction_refuses_a_damaged_segment_even_one_already_open(tmp_path: Path, mmap: bool) -> None:
    """A long-lived process (a search service) opened the segments before one went bad on flash; with
    warm (memory-mapped) segments its readers see the bad bytes. Compaction must re-check, and refuse."""
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 3), ("b", 1, 2)])
    lab.commit([s1], st1)
    s2, st2 = lab.segment([("c", 1, 2)])
    lab.commit([s2], st2)
    hot = HotIndex(lab.hot.root, mmap=mmap)
    hot.search(unit(lab.rng, 2), 4)  # opens (and checks) both segments
    before = sorted(p.name for p in hot.segments_dir.iterdir())
    flip_byte(hot.segments_dir / s1.segment_id / INDEX_FILE, at=0.9)  # in the vectors, in place
    with pytest.raises(IndexCorrupt, match=f"segment {s1.segment_id}: .*failed its checksum"):
        hot.compact()
    assert HotIndex(lab.hot.root).manifest().generation == 2
    assert sorted(p.name for p in hot.segments_dir.iterdir()) == before, "no merged segment was written"


def test_the_verify_command_reports_every_damaged_file(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 2), ("b", 1, 1)])
    lab.commit([s1], st1)
    s2, st2 = lab.segment([("a", 2, 2)])
    lab.commit([s2], st2)
    root = lab.hot.root
    manifest = lab.hot.manifest()
    assert verify(root, manifest) == []
    truncate(root / "segments" / s2.segment_id / CHUNKS_FILE)
    (root / "segments" / s1.segment_id / INDEX_FILE).unlink()
    problems = verify(root, manifest)
    assert len(problems) == 2
    assert any("missing" in p and s1.segment_id in p for p in problems)
    assert any("fails its checksum" in p and s2.segment_id in p for p in problems)
    done = subprocess.run(
        [sys.executable, "-m", "indexing.manifest", "generations", "--index", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert [line.split()[:2] for line in done.stdout.splitlines()] == [["2", "DAMAGED"], ["1", "DAMAGED"]]


def test_a_warm_segment_is_refused_like_a_hot_one(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "hot")
    s1, st1 = lab.segment([("a", 1, 3)])
    lab.commit([s1], st1)
    manifest = lab.hot.manifest()
    manifest.segments[0].storage = MMAP
    manifest.generation = 2
    lab.hot.store.publish(manifest)
    truncate(lab.hot.segments_dir / s1.segment_id / INDEX_FILE)
    fresh = HotIndex(lab.hot.root)
    assert fresh.manifest().segments[0].tier == "warm"
    with pytest.raises(IndexCorrupt, match=f"segment {s1.segment_id}: .*failed its checksum"):
        fresh.search(unit(lab.rng, 1), 3)
