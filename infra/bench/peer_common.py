"""What the peer ingest benchmark's tool runners share: arguments, the corpus, the warm-up and the result line.

Each runner (``peer_bare.py``, ``peer_langchain.py``, ``peer_llamaindex.py``) is started by
``pipelines/bench_peers.py`` in a fresh process per phase and prints one JSON object on its last stdout line.
Only the standard library is imported here, so the module works in the bench venv (infra/bench/peers-venv.sh)
and in tierflow's own.

Every tool reads one text per document, ``title + "\\n\\n" + text`` (the text alone when there is no title).
With ``--window-tokens 0`` (the default) it embeds that text whole, and the model truncates it to its
``max_seq_length`` (256 word pieces for all-MiniLM-L6-v2). With ``--window-tokens N`` the tool's own token
splitter cuts it into windows of N model tokens (special tokens included, as tierflow's ``chunking.max_tokens``)
overlapping by ``--window-overlap`` tokens, so every word is embedded, as tierflow does.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PHASES = ("first", "unchanged", "changed")


def parse_args(description: str) -> argparse.Namespace:
    """The arguments every runner takes (the orchestrator passes all of them)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--corpus", type=Path, required=True, help="JSON lines with _id, title, text")
    parser.add_argument("--work", type=Path, required=True, help="the tool's state, kept between phases")
    parser.add_argument("--phase", choices=PHASES, required=True)
    parser.add_argument("--model", type=Path, required=True, help="a sentence-transformers model directory")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--window-tokens",
        type=int,
        default=0,
        help="0: one text per document; N: the tool's token splitter, windows of N model tokens",
    )
    parser.add_argument("--window-overlap", type=int, default=0, help="tokens consecutive windows share")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    return args


def read_corpus(path: Path) -> list[tuple[str, str]]:
    """``(doc_id, text to embed)`` per line of ``path``, in file order."""
    docs = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                record = json.loads(line)
                title, text = record.get("title") or "", record.get("text") or ""
                docs.append((str(record["_id"]), f"{title}\n\n{text}" if title else text))
    return docs


SPECIAL_TOKENS = 2  # [CLS] and [SEP]: a window of N model tokens holds N - 2 of the text's


def window_text_tokens(args: argparse.Namespace) -> int:
    """The text tokens per window a splitter is asked for (the model adds its special tokens)."""
    return int(args.window_tokens) - SPECIAL_TOKENS


def warm_up_texts(path: Path, batch_size: int) -> list[str]:
    """The texts every runner embeds once before its timer: the corpus's first batch."""
    return [text for _, text in read_corpus(path)[:batch_size]]


def fsync_tree(*paths: Path) -> None:
    """fsync the files (and directories) a tool just persisted, so the timed run ends durable.

    The tools write with plain ``open``/``write``; tierflow's commit fsyncs, so the peers pay for it too.
    """
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for target in [*files, path if path.is_dir() else path.parent]:
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class Stopwatch:
    """Named, consecutive spans of one timed run; ``seconds`` is their sum.

    Example:
        >>> watch = Stopwatch()
        >>> with watch.span("ingest"):
        ...     ingest()
        >>> watch.seconds
    """

    def __init__(self) -> None:
        self.spans: dict[str, float] = {}

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.spans[name] = self.spans.get(name, 0.0) + time.perf_counter() - started

    @property
    def seconds(self) -> float:
        return sum(self.spans.values())


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of ``packages`` (absent ones are left out)."""
    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def emit(tool: str, phase: str, docs: int, watch: Stopwatch, **fields: Any) -> None:
    """Print the run's result as one JSON line (the orchestrator reads the last line of stdout)."""
    record = {
        "tool": tool,
        "phase": phase,
        "docs": docs,
        "seconds": round(watch.seconds, 4),
        "spans_s": {name: round(s, 4) for name, s in watch.spans.items()},
        **fields,
    }
    print(json.dumps(record, sort_keys=True), flush=True)
