"""Dead-letter records: a rejected input, the reason it was rejected, and everything needed to replay it."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from tierflow.records import SourcePosition


@dataclass
class DeadLetter:
    """One rejected record. Nothing is dropped silently: every rejection becomes one of these.

    Args:
        reason: Short stable code (``malformed_json``, ``missing_id``, ``not_utf8``, ``too_large``,
            ``validation_failed`` ...); metrics and reports group by it.
        detail: Human-readable explanation of what was wrong and, where it helps, how to fix it.
        stage: Pipeline stage that rejected it (``parse``, ``validate``, ``embed`` ...).
        source: Where the record came from.
        raw: The original bytes (or text) exactly as received, so the record can be replayed.
        doc_id: The document id, when one could be read.

    Example:
        >>> DeadLetter("missing_id", "no '_id' field", "parse", SourcePosition("file", "a.jsonl", "line:3"), b"{}")
    """

    reason: str
    detail: str
    stage: str
    source: SourcePosition
    raw: bytes | str = b""
    doc_id: str | None = None
    rejected_at: float = field(default_factory=time.time)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON form: ``raw`` as text when it is valid UTF-8, else base64 with ``raw_encoding``."""
        raw = self.raw
        if isinstance(raw, str):
            raw_text, encoding = raw, "utf-8"
        else:
            try:
                raw_text, encoding = raw.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                raw_text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        return {
            "reason": self.reason,
            "detail": self.detail,
            "stage": self.stage,
            "doc_id": self.doc_id,
            "source": self.source.to_dict(),
            "rejected_at": self.rejected_at,
            "raw": raw_text,
            "raw_encoding": encoding,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> DeadLetter:
        """The inverse of :meth:`to_json_dict` (``raw`` back to bytes when it was stored as base64)."""
        raw: bytes | str = data["raw"]
        if data.get("raw_encoding") == "base64":
            raw = base64.b64decode(data["raw"])
        return cls(
            reason=data["reason"],
            detail=data["detail"],
            stage=data["stage"],
            source=SourcePosition(**data["source"]),
            raw=raw,
            doc_id=data.get("doc_id"),
            rejected_at=data.get("rejected_at", 0.0),
        )


def read_dead_letter_files(paths: list[str]) -> list[DeadLetter]:
    """Every dead letter in the JSONL files a run wrote (see ``pipelines.write.WriteDeadLetters``)."""
    letters: list[DeadLetter] = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            letters.extend(DeadLetter.from_json_dict(json.loads(line)) for line in handle if line.strip())
    return letters
