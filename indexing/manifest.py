"""The hot tier's manifest: the one file that says which segments, tombstones and document table are live.

A commit writes a new numbered manifest (fsync) and then swaps the ``CURRENT`` pointer to it with an
atomic rename (fsync of file and directory). Older manifests are snapshots: ``switch`` rolls back.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexing.durable import atomic_write_bytes
from indexing.segment import SegmentInfo
from tierflow.errors import IndexCorrupt

FORMAT_VERSION = 1
CURRENT = "CURRENT"


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

    @property
    def tier(self) -> str:
        return "warm" if self.storage == MMAP else "hot"

    @property
    def n_live(self) -> int:
        return self.info.n_vectors - self.n_deleted

    def to_dict(self) -> dict[str, Any]:
        return {
            "info": self.info.to_dict(),
            "tombstones": self.tombstones,
            "n_deleted": self.n_deleted,
            "storage": self.storage,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LiveSegment:
        return cls(
            SegmentInfo.from_dict(data["info"]),
            data.get("tombstones"),
            data.get("n_deleted", 0),
            data.get("storage", MEMORY),
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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format_version") != FORMAT_VERSION:
            raise IndexCorrupt(f"manifest format {data.get('format_version')!r} is not {FORMAT_VERSION}")
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
        )


class ManifestStore:
    """Reads and publishes manifests under ``root/manifests`` with the ``root/CURRENT`` pointer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "manifests"

    @staticmethod
    def file_name(generation: int) -> str:
        return f"manifest-{generation:09d}.json"

    def current(self) -> Manifest:
        """The live manifest, or an empty generation-0 one for a new index."""
        pointer = self.root / CURRENT
        if not pointer.exists():
            return Manifest()
        return self.load(pointer.read_text().strip())

    def load(self, name: str) -> Manifest:
        path = self.dir / name
        try:
            return Manifest.from_dict(json.loads(path.read_text()))
        except FileNotFoundError as err:
            raise IndexCorrupt(f"manifest {path} named by {self.root / CURRENT} is missing") from err
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise IndexCorrupt(f"manifest {path} is not a valid manifest: {err}") from err

    def generations(self) -> list[int]:
        if not self.dir.exists():
            return []
        return sorted(int(p.stem.split("-")[1]) for p in self.dir.glob("manifest-*.json"))

    def publish(self, manifest: Manifest) -> None:
        """Durably write ``manifest`` and make it current: the commit point of every change."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = self.file_name(manifest.generation)
        atomic_write_bytes(self.dir / name, json.dumps(manifest.to_dict(), indent=1).encode())
        atomic_write_bytes(self.root / CURRENT, name.encode())

    def switch(self, generation: int) -> Manifest:
        """Make an older (kept) manifest current again: a rollback."""
        manifest = self.load(self.file_name(generation))
        atomic_write_bytes(self.root / CURRENT, self.file_name(generation).encode())
        return manifest
