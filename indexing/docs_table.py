"""The document table: one row per document the hot tier has seen (live, duplicate or deleted), as Parquet.

It is what makes runs incremental (content hash + embedding fingerprint), ordered (version) and
deduplicated (canonical links), and it is rewritten whole at each commit, under a new name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

CANONICAL = "canonical"
DUPLICATE = "duplicate"
DELETED = "deleted"
STATUSES = (CANONICAL, DUPLICATE, DELETED)


@dataclass
class DocState:
    """The committed state of one document.

    ``segment_id``/``n_chunks`` locate a canonical document's vectors (chunk ordinals ``0..n_chunks-1``).
    A duplicate has no vectors of its own: ``canonical_id`` names the document it is linked to, and its
    ``text`` is kept so that it can be promoted (embedded) if that document goes away. ``minhash`` is the
    near-duplicate signature of canonical documents. ``cold_batch`` names the lifecycle move whose rows in
    the cold tier hold a canonical document's vectors (its ``segment_id`` is then None): cold rows are
    visible only while the committed document state names their batch, which is what makes moves
    between tiers atomic.
    """

    doc_id: str
    version: int
    status: str
    content_hash: str = ""
    fingerprint: str = ""
    canonical_id: str | None = None
    dedup: str | None = None
    similarity: float | None = None
    segment_id: str | None = None
    n_chunks: int = 0
    minhash: bytes | None = None
    title: str = ""
    text: str | None = None
    source_system: str = ""
    source_uri: str = ""
    source_position: str = ""
    event_time: float | None = None
    ingest_time: float = 0.0
    run_id: str = ""
    metadata: str = "{}"
    lineage: str = "{}"
    cold_batch: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_row(self) -> dict[str, Any]:
        """The table row: every field but ``extra``. Every field is immutable (str, bytes, numbers), so no
        copy is made (``dataclasses.asdict`` would deep-copy every value of every row)."""
        return {name: getattr(self, name) for name in _ROW_FIELDS}


_ROW_FIELDS = tuple(f.name for f in fields(DocState) if f.name != "extra")


# DocState.extra flag: a newer version of unchanged content ("renewal"). The commit applies it onto the
# document's committed state as it is then (wherever a lifecycle move put its vectors), never onto the
# placement the pipeline read earlier.
RENEWAL = "renewal"


DOC_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("version", pa.int64()),
        ("status", pa.string()),
        ("content_hash", pa.string()),
        ("fingerprint", pa.string()),
        ("canonical_id", pa.string()),
        ("dedup", pa.string()),
        ("similarity", pa.float64()),
        ("segment_id", pa.string()),
        ("n_chunks", pa.int32()),
        ("minhash", pa.binary()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("source_system", pa.string()),
        ("source_uri", pa.string()),
        ("source_position", pa.string()),
        ("event_time", pa.float64()),
        ("ingest_time", pa.float64()),
        ("run_id", pa.string()),
        ("metadata", pa.string()),
        ("lineage", pa.string()),
        ("cold_batch", pa.string()),
    ]
)
ROW_GROUP_ROWS = 50_000  # a pipeline reads the table one row group per task
_FIELD_NAMES = [f.name for f in fields(DocState) if f.name != "extra"]
_DEFAULTS = {f.name: f.default for f in fields(DocState) if f.name != "extra"}


def _state(row: dict[str, Any]) -> DocState:
    """A row as a state; columns added after a table was written take their defaults."""
    return DocState(**{k: row.get(k, _DEFAULTS[k]) for k in _FIELD_NAMES})


def write_docs(path: Path, docs: dict[str, DocState]) -> None:
    """Write the table sorted by doc id (deterministic bytes for the same state)."""
    rows = [docs[key].to_row() for key in sorted(docs)]
    pq.write_table(
        pa.Table.from_pylist(rows, schema=DOC_SCHEMA), path, compression="zstd", row_group_size=ROW_GROUP_ROWS
    )


def read_docs(path: Path) -> dict[str, DocState]:
    table = pq.read_table(path)
    return {row["doc_id"]: _state(row) for row in table.to_pylist()}


def read_doc_row_groups(path: Path, row_group: int) -> list[DocState]:
    """One row group of the table, so that a pipeline can read it in parallel."""
    table = pq.ParquetFile(path).read_row_group(row_group)
    return [_state(row) for row in table.to_pylist()]
