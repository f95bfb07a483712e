"""Chunking: split a document into token windows of the embedding model's own tokenizer.

Windows are measured in the model's tokens, so a chunk never exceeds what the model reads (nothing is
silently truncated), and chunk text is an exact slice of the source text (via the token offsets).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierflow.config import ChunkingConfig

SPECIAL_TOKENS = 2  # [CLS] and [SEP]
BOUNDARY_MARGIN = 2
_TOKENIZERS: dict[
    str, Any
] = {}  # per process  # re-tokenising "title body" can differ by a token or two at the seam


@dataclass(frozen=True)
class TextChunk:
    ordinal: int
    text: str
    start: int
    end: int


class TokenChunker:
    """Splits (title, text) into overlapping token windows.

    Args:
        config: Window size and overlap.
        tokenizer_file: The model's ``tokenizer.json`` (fast tokenizer; loaded in :meth:`warm_up`).

    Example:
        >>> chunker = TokenChunker(ChunkingConfig(max_tokens=128, overlap_tokens=16), model / "tokenizer.json")
        >>> chunker.warm_up()
        >>> [c.ordinal for c in chunker.chunk("Title", "a long body ...")]
        [0]
    """

    def __init__(self, config: ChunkingConfig, tokenizer_file: Path) -> None:
        self.config = config
        self.tokenizer_file = tokenizer_file
        self._tokenizer: Any = None

    def warm_up(self) -> None:
        """Load the tokenizer, once per process and file (pipelines create new DoFns every run)."""
        if self._tokenizer is None:
            key = str(self.tokenizer_file)
            if key not in _TOKENIZERS:
                from tokenizers import Tokenizer

                tokenizer = Tokenizer.from_file(key)
                tokenizer.no_truncation()
                tokenizer.no_padding()
                _TOKENIZERS[key] = tokenizer
            self._tokenizer = _TOKENIZERS[key]

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        self.warm_up()
        return list(self._tokenizer.encode(text, add_special_tokens=False).offsets)

    def chunk(self, title: str, text: str) -> list[TextChunk]:
        """The chunks of one document; a document that fits the window is one chunk (title + text)."""
        cfg = self.config
        prefix = ""
        budget = cfg.max_tokens - SPECIAL_TOKENS - BOUNDARY_MARGIN
        if title and cfg.include_title:
            title_offsets = self._offsets(title)
            cap = budget // 4
            if len(title_offsets) > cap:
                title = title[: title_offsets[cap - 1][1]]
                title_offsets = title_offsets[:cap]
            prefix = f"{title} "
            budget -= len(title_offsets)
        offsets = self._offsets(text)
        if len(offsets) <= budget:
            return [TextChunk(0, prefix + text, 0, len(text))]
        step = budget - cfg.overlap_tokens
        chunks: list[TextChunk] = []
        start = 0
        while True:
            end = min(len(offsets), start + budget)
            lo, hi = offsets[start][0], offsets[end - 1][1]
            chunks.append(TextChunk(len(chunks), prefix + text[lo:hi], lo, hi))
            if end >= len(offsets):
                return chunks
            start += step
