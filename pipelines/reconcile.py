"""Reconciliation: decide, per document, what a run changes, against the index's committed state.

Pure functions over one document's group (its events in this run and its committed state), so the Beam
stage is a CoGroupByKey on doc_id and runs on any number of workers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from indexing.docs_table import CANONICAL, DELETED, DUPLICATE, RENEWAL, DocState
from tierflow.records import DocumentEvent, SourcePosition

UPSERT = "upsert"
DELETE = "delete"


@dataclass
class Plan:
    """A change this run will make to one document.

    Args:
        doc_id: The document.
        action: ``upsert`` or ``delete``.
        event: The winning event (for a promotion, one rebuilt from the stored duplicate).
        previous: The committed state, if any.
        promoted: The document was a duplicate whose canonical document went away.
    """

    doc_id: str
    action: str
    event: DocumentEvent
    previous: DocState | None = None
    promoted: bool = False


@dataclass
class Outcome:
    """What reconciling one document produced: at most one plan, duplicates to re-evaluate, a skip."""

    plan: Plan | None = None
    promote: list[DocState] = field(default_factory=list)
    skipped: str | None = None
    unchanged_canonical: DocState | None = None
    bump: DocState | None = None  # unchanged content at a newer version: record it, embed nothing


def newest(events: list[DocumentEvent]) -> DocumentEvent:
    """The event that wins among several for one document: highest version; at equal versions a delete
    wins, then the highest source position (deterministic whatever order they arrived in)."""
    return max(
        events, key=lambda e: (e.version, e.op == DELETE, e.source.uri, _position_key(e.source.position))
    )


def _position_key(position: str) -> tuple[str, int]:
    kind, _, number = position.partition(":")
    return (kind, int(number)) if number.isdigit() else (position, 0)


def reconcile(
    doc_id: str,
    events: list[DocumentEvent],
    committed: DocState | None,
    duplicates: list[DocState],
    fingerprint: str,
    full_sync_uris: frozenset[str] | None = None,
) -> Outcome:
    """Decide what happens to ``doc_id``.

    Args:
        events: Its events in this run (any order, replays included).
        committed: Its committed state.
        duplicates: Committed duplicates linked to it (re-evaluated if it is deleted or changes).
        fingerprint: Identity of the embedding model + chunking in use; a different one re-embeds.
        full_sync_uris: In ``full`` sync, the source files this run covers: a committed document from
            one of them with no event is deleted.
    """
    if not events:
        if (
            full_sync_uris is not None
            and committed is not None
            and committed.status != DELETED
            and committed.source_uri in full_sync_uris
        ):
            gone = DocumentEvent(
                doc_id,
                "delete",
                source=SourcePosition(committed.source_system, committed.source_uri, "full-sync"),
                version=committed.version + 1,
            )
            return Outcome(
                plan=Plan(doc_id, DELETE, gone, committed), promote=_to_promote(committed, duplicates)
            )
        if committed is not None and committed.status == CANONICAL:
            return Outcome(unchanged_canonical=committed)
        return Outcome()
    event = newest(events)
    if committed is not None:
        if event.version < committed.version:
            return Outcome(skipped="stale", unchanged_canonical=_canonical(committed))
        if event.op == DELETE and committed.status == DELETED and event.version == committed.version:
            return Outcome(skipped="unchanged")  # a replay; a newer delete is planned, to record its version
        if (
            event.op == UPSERT
            and committed.status != DELETED
            and committed.content_hash == event.content_hash
            and committed.fingerprint == fingerprint
        ):
            # Nothing to embed. A newer version is still recorded (with its metadata and source): an older
            # delete arriving after it must lose to it, and filters and lifecycle rules see new metadata.
            bump = _bumped(committed, event) if event.version > committed.version else None
            return Outcome(skipped="unchanged", unchanged_canonical=_canonical(committed), bump=bump)
        if event.version == committed.version and committed.status == DELETED:
            return Outcome(skipped="stale")
    action = DELETE if event.op == DELETE else UPSERT
    return Outcome(plan=Plan(doc_id, action, event, committed), promote=_to_promote(committed, duplicates))


def _bumped(committed: DocState, event: DocumentEvent) -> DocState:
    """The committed state at ``event``'s newer version of the same content: the same vectors (or the
    same canonical link), the event's version, title, metadata and source."""
    return replace(
        committed,
        version=event.version,
        title=event.title,
        metadata=json.dumps(event.metadata, ensure_ascii=False, sort_keys=True),
        source_system=event.source.system,
        source_uri=event.source.uri,
        source_position=event.source.position,
        event_time=event.event_time,
        extra={RENEWAL: True},
    )


def _canonical(state: DocState) -> DocState | None:
    return state if state.status == CANONICAL else None


def _to_promote(committed: DocState | None, duplicates: list[DocState]) -> list[DocState]:
    """A canonical document that is deleted or changes leaves its duplicates without a target."""
    if committed is None or committed.status != CANONICAL:
        return []
    return [d for d in duplicates if d.status == DUPLICATE]


def promotion_plan(state: DocState) -> Plan:
    """Re-ingest a duplicate from its stored text, as of its own committed version."""
    import json

    event = DocumentEvent(
        state.doc_id,
        "upsert",
        state.text or "",
        state.title,
        json.loads(state.metadata or "{}"),
        SourcePosition(state.source_system, state.source_uri, state.source_position),
        state.version,
        state.event_time,
    )
    return Plan(state.doc_id, UPSERT, event, state, promoted=True)


def merge_promotion(
    plans: list[Plan], promotions: list[DocState], bumps: list[DocState] | None = None
) -> Plan | None:
    """A document's own change in this run wins; otherwise a promotion request re-ingests it, as of the
    newer version of its unchanged content when this run brought one (``bumps``)."""
    if plans:
        return plans[0]
    if promotions:
        return promotion_plan(bumps[0] if bumps else promotions[0])
    return None


def merge_outcomes(
    plans: list[Plan], promotions: list[DocState], bumps: list[DocState]
) -> list[tuple[str, Any]]:
    """One document's ``("plan", Plan)``, or else its ``("bump", DocState)`` (a version to record)."""
    plan = merge_promotion(plans, promotions, bumps)
    if plan is not None:
        return [("plan", plan)]
    return [("bump", bumps[0])] if bumps else []
