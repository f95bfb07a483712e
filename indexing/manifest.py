"""The hot tier's manifest: the one file that says which segments, tombstones and document table are live.

A commit writes a new numbered manifest (fsync) and then swaps the ``CURRENT`` pointer to it with an
atomic rename (fsync of file and directory). Older manifests are snapshots: ``switch`` rolls back. A
publish that fails (a full disk) leaves the previous generation current and no new numbered manifest.

Everything the manifest names is checksummed: segment files (in their :class:`SegmentInfo`), the
document table (``docs_sha256``), tombstone arrays (``tombstones_sha256``), and the manifest itself
(``checksum``, over its other fields). A file that fails its checksum is refused with
:class:`~tierflow.errors.IndexCorrupt`, whose message says how to recover (:func:`recovery_advice`).

Recovery from the command line (``--index`` is the hot-tier directory)::

    python -m indexing.manifest verify --index DIR        # check every file of the current generation
    python -m indexing.manifest generations --index DIR   # the kept generations, and which ones verify
    python -m indexing.manifest switch --index DIR N      # roll back to generation N (after verifying it)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexing.durable import atomic_write_bytes, disk_guard, exclusive_lock, sha256_file
from indexing.segment import CHUNKS_FILE, INDEX_FILE, SegmentInfo
from tierflow.errors import IndexCorrupt

FORMAT_VERSION = 1
CURRENT = "CURRENT"
_POINTER = re.compile(r"manifest-\d{9}\.json")


MEMORY = "memory"  # hot: the segment is read into RAM (and onto the GPU when there is one)
MMAP = "mmap"  # warm: the segment is memory-mapped from flash; the page cache holds what is touched
STORAGES = (MEMORY, MMAP)


@dataclass
class LiveSegment:
    """A segment as the manifest names it, with the file of vector ids deleted from it (if any) and how it
    is served (``storage``: :data:`MEMORY` for the hot tier, :data:`MMAP` for the warm tier)."""

    info: SegmentInfo
    tombstones: str | None = None
    n_deleted: int = 0
    storage: str = MEMORY
    tombstones_sha256: str | None = None

    @property
    def tier(self) -> str:
        return "warm" if self.storage == MMAP else "hot"

    @property
    def n_live(self) -> int:
        return self.info.n_vectors - self.n_deleted

    def to_dict(self) -> dict[str, Any]:
        out = {
            "info": self.info.to_dict(),
            "tombstones": self.tombstones,
            "n_deleted": self.n_deleted,
            "storage": self.storage,
        }
        if self.tombstones_sha256:
            out["tombstones_sha256"] = self.tombstones_sha256
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LiveSegment:
        return cls(
            SegmentInfo.from_dict(data["info"]),
            data.get("tombstones"),
            data.get("n_deleted", 0),
            data.get("storage", MEMORY),
            data.get("tombstones_sha256"),
        )


@dataclass
class Manifest:
    """One committed state of the hot tier.

    Args:
        generation: Increases by one per commit; 0 is the empty index.
        segments: The live segments.
        docs_file: The document table of this generation (relative to the index root).
        embedding: Identity of the model whose vectors the index holds (name, revision, dim, normalize).
        chunking: The chunking settings the vectors were made with.
        sources: Source positions contained in this state (stream key -> position), for resuming.
        history: Summaries of the commits that led here, newest last (bounded).
        cold: Where the cold tier of this index lives (``uri``, ``table``, ``vector_dtype``), once a
            lifecycle run has moved vectors there.
        version: The index version this state belongs to (``indexing.versions``; empty for an index
            that was never re-indexed, whose one version is the live one).
        index: The version's FAISS index settings (:class:`~indexing.faiss_index.IndexSpec` as a dict).
    """

    generation: int = 0
    segments: list[LiveSegment] = field(default_factory=list)
    docs_file: str | None = None
    embedding: dict[str, Any] = field(default_factory=dict)
    chunking: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    cold: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    docs_sha256: str | None = None
    version: str = ""
    index: dict[str, Any] = field(default_factory=dict)

    @property
    def n_vectors(self) -> int:
        return sum(seg.n_live for seg in self.segments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "generation": self.generation,
            "created_at": self.created_at,
            "segments": [seg.to_dict() for seg in self.segments],
            "docs_file": self.docs_file,
            "embedding": self.embedding,
            "chunking": self.chunking,
            "sources": self.sources,
            "history": self.history,
            "cold": self.cold,
            **({"docs_sha256": self.docs_sha256} if self.docs_sha256 else {}),
            **({"version": self.version} if self.version else {}),
            **({"index": self.index} if self.index else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format_version") != FORMAT_VERSION:
            raise IndexCorrupt(f"manifest format {data.get('format_version')!r} is not {FORMAT_VERSION}")
        expected = data.get("checksum")
        if expected is not None and expected != _checksum(data):
            raise IndexCorrupt(
                f"manifest of generation {data.get('generation')!r} failed its checksum (expected "
                f"{str(expected)[:12]}…): it was changed or damaged after it was written"
            )
        return cls(
            generation=data["generation"],
            segments=[LiveSegment.from_dict(seg) for seg in data["segments"]],
            docs_file=data.get("docs_file"),
            embedding=data.get("embedding", {}),
            chunking=data.get("chunking", {}),
            sources=data.get("sources", {}),
            history=data.get("history", []),
            cold=data.get("cold", {}),
            created_at=data.get("created_at", 0.0),
            docs_sha256=data.get("docs_sha256"),
            version=data.get("version", ""),
            index=data.get("index", {}),
        )


def _checksum(data: dict[str, Any]) -> str:
    """SHA-256 of a manifest's fields other than ``checksum``, in canonical JSON."""
    body = {key: value for key, value in data.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ManifestStore:
    """Reads and publishes manifests under ``root/manifests`` with the ``root/CURRENT`` pointer (or, for a
    candidate index version, that version's own pointer: ``pointer``, relative to ``root``)."""

    def __init__(self, root: Path, pointer: str = CURRENT) -> None:
        self.root = root
        self.dir = root / "manifests"
        self.pointer = root / pointer

    @staticmethod
    def file_name(generation: int) -> str:
        return f"manifest-{generation:09d}.json"

    def current(self) -> Manifest:
        """The live manifest, or an empty generation-0 one for a new index."""
        pointer = self.pointer
        if not pointer.exists():
            return Manifest()
        name = pointer.read_bytes().decode("utf-8", "replace").strip()
        if not _POINTER.fullmatch(name):
            raise IndexCorrupt(
                f"{pointer} holds {name[:60]!r}, not a manifest name: it is damaged. {_rollback_advice(self)}"
            )
        return self.load(name)

    def load(self, name: str) -> Manifest:
        """The manifest ``manifests/name``.

        Raises:
            IndexCorrupt: It is missing, not a manifest, or fails its checksum (with how to recover).
        """
        try:
            return self._load(name)
        except IndexCorrupt as err:
            if not (self.dir / name).exists():
                raise
            raise IndexCorrupt(f"{err}. {_rollback_advice(self, manifest=name)}") from err

    def _load(self, name: str) -> Manifest:
        path = self.dir / name
        try:
            return Manifest.from_dict(json.loads(path.read_bytes()))
        except FileNotFoundError as err:
            raise IndexCorrupt(f"manifest {path} named by {self.pointer} is missing") from err
        except IndexCorrupt as err:
            raise IndexCorrupt(f"manifest {path}: {err}") from err
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise IndexCorrupt(f"manifest {path} is not a valid manifest: {err}") from err

    def verified(self, name: str, expected: str | None, what: str) -> Path:
        """``root/name`` after checking it against ``expected`` (a file the manifest names with its
        SHA-256; files of manifests written before checksums were recorded are not checked).

        Raises:
            IndexCorrupt: The file is missing or fails its checksum (the message says how to recover).
        """
        path = self.root / name
        if not path.exists():
            raise IndexCorrupt(f"{what} {path} is missing. {_rollback_advice(self, file=name)}")
        if expected is not None:
            actual = sha256_file(path)
            if actual != expected:
                raise IndexCorrupt(
                    f"{what} {path} failed its checksum (sha256 {actual[:12]}…, the manifest expects "
                    f"{expected[:12]}…): it is corrupt or truncated, and refused. "
                    f"{_rollback_advice(self, file=name)}"
                )
        return path

    @staticmethod
    def generation_of(name: str) -> int:
        """The generation of manifest file ``name`` (:meth:`file_name`'s inverse)."""
        return int(name.removeprefix("manifest-").removesuffix(".json"))

    def generations(self) -> list[int]:
        if not self.dir.exists():
            return []
        return sorted(self.generation_of(p.name) for p in self.dir.glob("manifest-*.json"))

    def publish(self, manifest: Manifest) -> None:
        """Durably write ``manifest`` and make it current: the commit point of every change.

        Records the checksums of the document table and of new tombstone files (and of the manifest
        itself). If it fails (a full disk: :class:`~tierflow.errors.DiskFull`), the previous generation
        stays current and the new numbered manifest is removed, so nothing ever names a generation that
        was not committed.
        """
        with disk_guard(self.root, f"publishing generation {manifest.generation}"):
            self.dir.mkdir(parents=True, exist_ok=True)
        if manifest.docs_file and not manifest.docs_sha256:
            manifest.docs_sha256 = sha256_file(self.root / manifest.docs_file)
        for live in manifest.segments:
            if live.tombstones and not live.tombstones_sha256:
                live.tombstones_sha256 = sha256_file(self.root / live.tombstones)
        name = self.file_name(manifest.generation)
        data = manifest.to_dict()
        data["checksum"] = _checksum(data)
        atomic_write_bytes(self.dir / name, json.dumps(data, indent=1).encode())
        pointer = self.pointer
        try:
            pointer.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(pointer, name.encode())
        except BaseException:
            if not (pointer.exists() and pointer.read_bytes().strip() == name.encode()):
                (self.dir / name).unlink(missing_ok=True)  # never current: not a generation
            raise

    def switch(self, generation: int) -> Manifest:
        """Make an older (kept) manifest current again: a rollback."""
        manifest = self.load(self.file_name(generation))
        atomic_write_bytes(self.pointer, self.file_name(generation).encode())
        return manifest


# --- verification and recovery ------------------------------------------------------------------------


def verify(root: Path, manifest: Manifest, segments: bool = True) -> list[str]:
    """Every problem with the files ``manifest`` names under ``root`` (empty: all present and matching
    their checksums): the document table, tombstone arrays and (with ``segments``) segment files."""
    store = ManifestStore(Path(root))
    problems: list[str] = []
    if manifest.docs_file:
        try:
            store.verified(manifest.docs_file, manifest.docs_sha256, "document table")
        except IndexCorrupt as err:
            problems.append(str(err).split(". ", 1)[0])
    for live in manifest.segments:
        if live.tombstones:
            try:
                store.verified(live.tombstones, live.tombstones_sha256, "tombstones")
            except IndexCorrupt as err:
                problems.append(str(err).split(". ", 1)[0])
        if not segments:
            continue
        seg_dir = store.root / "segments" / live.info.segment_id
        for name in (INDEX_FILE, CHUNKS_FILE):
            path = seg_dir / name
            if not path.exists():
                problems.append(f"segment {live.info.segment_id}: file {path} is missing")
            elif sha256_file(path) != live.info.files.get(name):
                problems.append(f"segment {live.info.segment_id}: file {path} fails its checksum")
    return problems


def _uses(manifest: Manifest, segment_id: str | None, file: str | None) -> bool:
    """Whether ``manifest`` names the segment or the file (a document table or tombstones)."""
    for live in manifest.segments:
        if live.info.segment_id == segment_id or (file is not None and live.tombstones == file):
            return True
    return file is not None and manifest.docs_file == file


def _generation_usable(
    store: ManifestStore, generation: int, segment_id: str | None, file: str | None, deep: bool
) -> bool:
    try:
        manifest = store._load(store.file_name(generation))
    except IndexCorrupt:
        return False
    if _uses(manifest, segment_id, file):
        return False
    if deep:
        return not verify(store.root, manifest)
    return all((store.root / "segments" / live.info.segment_id).is_dir() for live in manifest.segments)


def _rollback_advice(
    store: ManifestStore, manifest: str | None = None, segment_id: str | None = None, file: str | None = None
) -> str:
    """How to recover from a damaged manifest, segment or file: the newest kept generation that does not
    use it (and whose segments are on disk), and the commands."""
    index = store.root
    try:
        good = next(
            (
                g
                for g in reversed(store.generations())
                if store.file_name(g) != manifest and _generation_usable(store, g, segment_id, file, False)
            ),
            None,
        )
    except OSError:
        good = None
    tail = (
        f"`python -m indexing.manifest verify --index {index}` lists every damaged file; restoring them "
        "from a backup also recovers"
    )
    if good is None:
        return (
            "No kept generation can replace it: restore the damaged file from a backup, or rebuild the "
            f"index in a new directory from its sources. {tail}"
        )
    return (
        f"To recover, roll back to generation {good}, the newest kept one without it: `python -m "
        f"indexing.manifest switch --index {index} {good}`, then re-run the ingests or streams that wrote "
        f"the later generations (a stream resumes from that generation's source positions; replayed "
        f"events are applied once). {tail}"
    )


def recovery_advice(root: Path, segment_id: str) -> str:
    """What to do about a damaged file of segment ``segment_id`` of the index at ``root``."""
    try:
        return _rollback_advice(ManifestStore(Path(root)), segment_id=segment_id)
    except Exception:  # noqa: BLE001 - advice must never hide the error it comes with
        return f"Restore the segment from a backup, or rebuild the index at {root} from its sources."


def main(argv: list[str] | None = None) -> int:
    """``python -m indexing.manifest {verify,generations,switch}``: check and roll back an index."""
    parser = argparse.ArgumentParser(prog="python -m indexing.manifest", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="check every file of a generation (default: the current one)")
    check.add_argument("--index", required=True, help="hot-tier directory")
    check.add_argument("--generation", type=int, help="a kept generation instead of the current one")
    listing = sub.add_parser(
        "generations", help="the kept generations, newest first, and whether they verify"
    )
    listing.add_argument("--index", required=True, help="hot-tier directory")
    switch = sub.add_parser("switch", help="roll back (or forward) to a kept generation")
    switch.add_argument("--index", required=True, help="hot-tier directory")
    switch.add_argument("generation", type=int)
    switch.add_argument("--force", action="store_true", help="switch even if it does not verify")
    args = parser.parse_args(argv)
    store = ManifestStore(Path(args.index))
    try:
        if args.command == "generations":
            try:
                current: int | None = store.current().generation
            except IndexCorrupt:
                current = None
            for gen in reversed(store.generations()):
                state = "ok" if _generation_usable(store, gen, None, None, deep=True) else "DAMAGED"
                print(f"{gen:>9}  {state:<8}{'  (current)' if gen == current else ''}")
            return 0
        if args.command == "verify":
            name = store.file_name(args.generation) if args.generation is not None else None
            manifest = store.load(name) if name else store.current()
            problems = verify(store.root, manifest)
            for problem in problems:
                print(problem)
            print(f"generation {manifest.generation}: {'damaged' if problems else 'ok'}")
            return 1 if problems else 0
        target = store.load(store.file_name(args.generation))
        try:
            current_version: str | None = store.current().version
        except IndexCorrupt:  # a damaged pointer or manifest is what a switch recovers from
            current_version = None
        if current_version is not None and target.version != current_version and not args.force:
            print(
                f"generation {args.generation} belongs to index version {target.version or 'v1'!r}, not to the "
                f"live {current_version or 'v1'!r}; switch versions with `tierflow rollback --to ...` "
                "(--force to switch anyway)",
                file=sys.stderr,
            )
            return 1
        problems = verify(store.root, target)
        if problems and not args.force:
            for problem in problems:
                print(problem, file=sys.stderr)
            print(
                f"generation {args.generation} is damaged too; not switching (--force to anyway)",
                file=sys.stderr,
            )
            return 1
        with exclusive_lock(store.root / "LOCK"):
            store.switch(args.generation)
        print(
            f"generation {args.generation} is current ({len(target.segments)} segments, {target.n_vectors} vectors)"
        )
        return 0
    except IndexCorrupt as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
