"""The contract between change sources and the micro-batch stream: batches, their bounds, acknowledgement.

Sources (Kafka, a Postgres replication slot, the webhook queue) implement :class:`StreamSource`;
``pipelines.stream.MicroBatchStream`` drives any of them through the ingest stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from tierflow.deadletter import DeadLetter
from tierflow.records import DocumentEvent


@dataclass(frozen=True)
class BatchPolicy:
    """How a micro-batch is bounded: by size, and by time since its first record."""

    max_records: int = 500
    max_wait_s: float = 1.0
    poll_s: float = 0.2


@dataclass
class Batch:
    """One micro-batch as a source hands it over: parsed items, the positions they end at, and what the
    source needs to acknowledge them later."""

    items: list[DocumentEvent | DeadLetter]
    positions: dict[str, str]
    ack: Any = None
    received_at: list[float] = field(default_factory=list)


class StreamSource(Protocol):
    """A change source that can be followed in micro-batches and acknowledged after the index commit."""

    def start(self, resume: dict[str, str]) -> None:
        """Begin reading after ``resume`` (stream key -> position of the last record the index holds)."""

    def poll(self, policy: BatchPolicy) -> Batch | None:
        """The next micro-batch, or None when nothing arrived within ``policy.poll_s``."""

    def acknowledge(self, batch: Batch) -> None:
        """The batch is committed to the index: let the source forget it (commit offsets, advance slots)."""

    def dead_letters(self, letters: list[DeadLetter]) -> None:
        """Forward rejected records to the source's own dead-letter sink, if it has one (at least once)."""

    def close(self) -> None: ...
