"""Load a BEIR-format dataset (corpus, queries, qrels of one split) with checksums for provenance.

Layout::

    <path>/corpus.jsonl       one {"_id", "title", "text"} object per line
    <path>/queries.jsonl      one {"_id", "text"} object per line
    <path>/qrels/<split>.tsv  header "query-id<TAB>corpus-id<TAB>score", then one judgment per line
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierflow.errors import ConfigError

_QRELS_HEADER = ["query-id", "corpus-id", "score"]


@dataclass(frozen=True)
class BeirDataset:
    """One split of a BEIR dataset.

    Attributes:
        path: The dataset directory.
        queries: Query id -> text, only queries with qrels in the split, in ``queries.jsonl`` order.
        qrels: Query id -> doc id -> graded judgment.
        corpus_path: ``corpus.jsonl``; read lazily with :meth:`iter_corpus`.
        checksums: File name relative to ``path`` (e.g. ``qrels/test.tsv``) -> sha256 hex digest.
    """

    path: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus_path: Path
    checksums: dict[str, str]

    def iter_corpus(self, skip_bad: bool = False) -> Iterator[dict[str, Any]]:
        """Yields the corpus records (``_id``, ``title``, ``text``, ...) as parsed, in file order.

        Args:
            skip_bad: Skip lines that are not UTF-8 JSON objects (a report showing document titles) instead
                of raising :class:`ConfigError` (the ingest pipeline dead-letters such lines).
        """
        if not skip_bad:
            yield from _read_jsonl(self.corpus_path)
            return
        with self.corpus_path.open("rb") as lines:
            for line in lines:
                try:
                    record = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue
                if isinstance(record, dict):
                    yield record


def load_beir(path: str | Path, split: str = "test") -> BeirDataset:
    """Loads the queries and qrels of ``split`` and checksums the three files.

    Args:
        path: The dataset directory (see the module docstring for its layout).
        split: The qrels file to read, ``qrels/<split>.tsv``.

    Returns:
        The dataset; the corpus is not read beyond its checksum.

    Raises:
        ConfigError: If a file is missing or malformed, or the qrels name a query ``queries.jsonl`` lacks.
    """
    root = Path(path)
    names = ["corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"]
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise ConfigError(
            f"BEIR dataset at {root} is missing {', '.join(missing)}; expected layout: "
            f"{root}/corpus.jsonl, {root}/queries.jsonl, {root}/qrels/{split}.tsv"
        )
    qrels = _read_qrels(root / names[2])
    texts = _read_queries(root / names[1])
    unknown = sorted(set(qrels) - set(texts))
    if unknown:
        raise ConfigError(f"{root / names[2]} judges queries missing from {root / names[1]}: {unknown[:5]}")
    return BeirDataset(
        path=root,
        queries={qid: text for qid, text in texts.items() if qid in qrels},
        qrels=qrels,
        corpus_path=root / names[0],
        checksums={name: _sha256(root / name) for name in names},
    )


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{path}:{number}: not a JSON object: {err}") from err


def _read_queries(path: Path) -> dict[str, str]:
    try:
        return {str(record["_id"]): record["text"] for record in _read_jsonl(path)}
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{path}: every query needs '_id' and 'text' fields ({err!r})") from err


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.rstrip("\r\n").split("\t")
            if (number == 1 and fields == _QRELS_HEADER) or not line.strip():
                continue
            try:
                qid, doc_id, score = fields
                qrels.setdefault(qid, {})[doc_id] = int(score)
            except ValueError as err:
                raise ConfigError(
                    f"{path}:{number}: expected 'query-id<TAB>corpus-id<TAB>integer score', got {line!r}"
                ) from err
    return qrels


def _sha256(path: Path) -> str:
    with path.open("rb") as data:
        return hashlib.file_digest(data, "sha256").hexdigest()
