"""The records that flow through tierflow: document events, their source positions, chunk identities.

Chunks themselves travel as Beam's own RAG type (:class:`apache_beam.ml.rag.types.Chunk`); the helpers
here give them deterministic ids and the 64-bit vector id FAISS stores.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Op = Literal["upsert", "delete"]
OPS: tuple[str, ...] = ("upsert", "delete")


@dataclass(frozen=True)
class SourcePosition:
    """Where an event came from: the system and its own position (file+line, topic/partition/offset, LSN).

    Example:
        >>> SourcePosition("file", "corpus.jsonl", "line:12").key
        'file:corpus.jsonl'
    """

    system: str
    uri: str
    position: str = ""

    @property
    def key(self) -> str:
        """The stream this position belongs to (a file, a topic partition, a replication slot)."""
        return f"{self.system}:{self.uri}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class DocumentEvent:
    """One change to one document, as a connector saw it.

    Args:
        doc_id: Stable id from the source.
        op: ``upsert`` or ``delete``.
        text: Body text (empty for deletes).
        title: Optional title, embedded with the text.
        metadata: Free-form JSON-serialisable fields from the source.
        source: Where the event came from.
        version: Source ordering; a larger version is newer (offset, LSN, mtime, updated_at).
        event_time: When the change happened at the source (epoch seconds), if known.

    Example:
        >>> DocumentEvent("d1", "upsert", "Hello.", source=SourcePosition("file", "a.jsonl", "line:1"), version=1)
    """

    doc_id: str
    op: Op = "upsert"
    text: str = ""
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    source: SourcePosition = field(default_factory=lambda: SourcePosition("unknown", ""))
    version: int = 0
    event_time: float | None = None

    @property
    def content_hash(self) -> str:
        """Hash of the normalised title and text: equal for content that differs only in case/spacing."""
        return content_hash(embeddable_text(self.title, self.text))


def normalise(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: the form exact dedup compares."""
    # str.split() splits at exactly the characters regex \s matches (str.isspace), so this is the
    # regex-collapsed, stripped text, in about half the time.
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def content_hash(text: str) -> str:
    """sha256 (hex) of the normalised text."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def embeddable_text(title: str, text: str) -> str:
    """The text a document is embedded as: its title, a space, its body (as BEIR/MTEB do)."""
    return f"{title} {text}" if title else text


def chunk_id(doc_id: str, ordinal: int) -> str:
    """Deterministic chunk id from the document id and the chunk's position in it."""
    return f"{doc_id}#{ordinal}"


def vector_id(chunk_id_: str) -> int:
    """The 63-bit FAISS id of a chunk: the first 8 bytes of sha256(chunk_id), sign bit cleared.

    FAISS ids are signed int64 and -1 means "no result", so the top bit is always zero.
    """
    digest = hashlib.sha256(chunk_id_.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF
