"""Indexing items the driver already holds: settle what the committed state answers, run Beam on the rest.

A stream's micro-batch is in the driver when it is polled, and so is a batch run's input when its changed
files are small enough to read there (``IngestConfig.prefilter_max_bytes``). Most of such input is often
already indexed: a re-sent Kafka message, a replayed CDC event, a re-exported file in which 1 % of the
documents changed. :func:`run_items` decides those documents in the driver with the very rules of the
pipeline's reconcile stage (:func:`pipelines.reconcile.reconcile`) and sends only the rest through the
Beam stages, with only the committed documents they can touch (:func:`committed_subset`):

1. **validate**: every event is checked by the document suite (Great Expectations), as the pipeline's
   validate stage would; failures become dead letters and go through the pipeline to its dead-letter sink.
   The pipeline's validate stage then only counts what it is given (``index_items(validated=True)``).
2. **settle**: a valid document whose events the committed state answers without a plan (the same
   content made the same way: ``skipped_unchanged``, with its newer version, metadata and source recorded
   when it brings one; a replayed delete; a stale version) is settled here. Nothing about it is embedded,
   deduplicated or chunked, so the pipeline would do nothing else with it. A duplicate whose canonical
   document changes in this run is never settled: the pipeline may have to promote it.
3. **the rest** (new and changed documents, deletes, dead letters, and in ``full`` sync the committed
   documents of the run's files that it no longer contains) runs through
   :func:`pipelines.stages.index_items` (on :data:`DRIVER_RUNNER` unless the options name a runner); the
   settled states join its single commit, staged in a file its commit step reads. When nothing is left
   the settled states are committed from here, by the same commit step, without a pipeline.

Either way a run makes one commit (or none when nothing changed at all), with the same counts and document
states as the whole input through the pipeline would give.

Example:
    >>> summary = run_items(items, config, build_run_context(config), {"kafka:docs/0": "41"}, shards=1)
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam

from indexing.docs_table import CANONICAL, DELETED, DUPLICATE, DocState
from indexing.hot import HotIndex
from pipelines.dedup import Candidate, candidate_keys, signature
from pipelines.reconcile import reconcile
from pipelines.stages import index_items, run_pipeline, run_summary
from pipelines.validate import DocumentValidator
from pipelines.write import commit_items, write_resolved
from tierflow import logs, metrics, tracing
from tierflow.config import IngestConfig
from tierflow.deadletter import DeadLetter
from tierflow.lineage import RunContext
from tierflow.records import DocumentEvent, embeddable_text

LOG = logging.getLogger(__name__)
Item = DocumentEvent | DeadLetter
BATCH_ITEMS = 1000  # items per element of the pipeline's input, so that runners spread the work
# The runner for input the driver holds, unless the options name one: Beam's in-process FnApiRunner, the
# one the DirectRunner runs a batch pipeline on, without the DirectRunner's own steps first (two graph
# visits, and an attempt to start the Prism runner, which translates the whole graph once more).
DRIVER_RUNNER = "--runner=FnApiRunner"


@dataclass
class Settled:
    """What :func:`settle` decided in the driver, and what it left for the pipeline."""

    rest: list[Item]  # events the pipeline must reconcile, and every dead letter
    states: list[DocState] = field(default_factory=list)  # newer versions of unchanged documents to record
    stats: Counter[str] = field(default_factory=Counter)  # the reconcile stage's counts for settled docs
    seen: set[str] = field(default_factory=set)  # ids of every valid event (full sync: still in its files)

    def commit_items(self) -> list[tuple[str, Any]]:
        """The settled part as the commit step's items."""
        return [("doc", state) for state in self.states] + [("stat", kv) for kv in sorted(self.stats.items())]


def settle(
    events: list[DocumentEvent], dead: list[DeadLetter], docs: dict[str, DocState], fingerprint: str
) -> Settled:
    """Split valid ``events`` into documents the committed ``docs`` answer and the rest (see module doc).

    Args:
        events: Valid events of the run.
        dead: The run's dead letters so far (passed on to the pipeline untouched).
        docs: The committed document table.
        fingerprint: The run's model + chunking identity (:attr:`RunContext.fingerprint`).
    """
    by_id: dict[str, list[DocumentEvent]] = {}
    for event in events:
        by_id.setdefault(event.doc_id, []).append(event)
    settled: dict[str, tuple[DocState | None, str | None]] = {}
    for doc_id, group in by_id.items():
        committed = docs.get(doc_id)
        if committed is None:
            continue
        outcome = reconcile(doc_id, group, committed, [], fingerprint)
        if outcome.plan is None:
            settled[doc_id] = (outcome.bump, outcome.skipped)
    changing = by_id.keys() - settled.keys()
    for doc_id in list(settled):  # a duplicate of a document this run changes may need promoting
        state = docs[doc_id]
        if state.status == DUPLICATE and state.canonical_id in changing:
            del settled[doc_id]
    result = Settled(
        rest=[*dead, *(event for event in events if event.doc_id not in settled)], seen=set(by_id)
    )
    for bump, skipped in settled.values():
        if bump is not None:
            result.states.append(bump)
        if skipped:
            result.stats[f"skipped_{skipped}"] += 1
    return result


def committed_subset(
    docs: dict[str, DocState],
    items: list[Item],
    config: IngestConfig,
    also: set[str] | frozenset[str] = frozenset(),
) -> list[DocState]:
    """The committed documents ``items`` can touch, so that a run's cost does not grow with the index:
    the items' own documents (versions, hashes) and those of ``also``, duplicates linked to any of them
    (promotion), and canonical documents sharing a content hash or an LSH band with one of the upserts
    (deduplication).

    The stages decide exactly as they would with the whole table: documents outside this subset cannot
    meet the items' documents in any of their groupings.
    """
    if not docs:
        return []
    events = [item for item in items if isinstance(item, DocumentEvent)]
    ids = {event.doc_id for event in events} | set(also)
    subset = {
        state.doc_id: state
        for state in docs.values()
        if state.doc_id in ids or (state.status == DUPLICATE and state.canonical_id in ids)
    }
    # Texts that may be (re)deduplicated: the upserts and the duplicates they may promote.
    texts = [(e.doc_id, e.content_hash, embeddable_text(e.title, e.text)) for e in events if e.op == "upsert"]
    texts += [
        (s.doc_id, s.content_hash, embeddable_text(s.title, s.text or ""))
        for s in subset.values()
        if s.status == DUPLICATE
    ]
    keys: set[str] = set()
    for doc_id, digest, text in texts:
        sig = signature(text, config.dedup) if config.dedup.near_duplicates else b""
        keys.update(candidate_keys(Candidate(doc_id, digest, sig, False), config.dedup))
    for state in docs.values():
        if state.doc_id not in subset and state.status == CANONICAL and keys:
            candidate = Candidate(state.doc_id, state.content_hash, state.minhash or b"", True)
            if keys.intersection(candidate_keys(candidate, config.dedup)):
                subset[state.doc_id] = state
    return list(subset.values())


def run_items(
    items: list[Item],
    config: IngestConfig,
    run: RunContext,
    sources: dict[str, str],
    shards: int,
    beam_args: list[str] | None = None,
    full_sync: frozenset[str] | None = None,
    resolved: list[tuple[str, Any]] | None = None,
    index: HotIndex | None = None,
) -> dict[str, Any]:
    """Index ``items`` (events and dead letters held by the driver) in one commit; return its summary.

    Args:
        items: What a connector produced, in source order.
        config: Ingest settings.
        run: The run's identity.
        sources: Source positions the commit records.
        shards: Write shards for the pipeline's segments.
        beam_args: Beam pipeline options (default runner: :data:`DRIVER_RUNNER`).
        full_sync: Source uris the run covers completely (their committed documents without an event in
            ``items`` are deleted).
        resolved: Commit items the caller decided already (e.g. ``("stat", ("files_unchanged", n))``).
        index: The index directory's :class:`HotIndex`, when the caller keeps one across runs (a stream):
            its document table is then read again only when the generation changed.

    Returns:
        The run's entry in the manifest history (as :func:`pipelines.stages.run_pipeline`).
    """
    docs = (index or HotIndex(config.index_dir, version=config.index_version or None)).docs()
    events = [item for item in items if isinstance(item, DocumentEvent)]
    dead = [item for item in items if isinstance(item, DeadLetter)]
    with logs.run_context(run.run_id):
        valid, rejected = DocumentValidator(config.validation).validate(events)
        settled = settle(valid, [*dead, *rejected], docs, run.fingerprint)
        gone: set[str] = set()
        if full_sync is not None:
            gone = {
                s.doc_id
                for s in docs.values()
                if s.status != DELETED and s.source_uri in full_sync and s.doc_id not in settled.seen
            }
        n_settled = len(valid) - sum(isinstance(item, DocumentEvent) for item in settled.rest)
        # The pipeline counts what it is given: the rejected events reach it as dead letters (counted there
        # as read, not as parsed); the driver counts the rest of what the pipeline would have.
        metrics.count("stage_documents", "source", "out", value=n_settled)
        metrics.count("stage_documents", "parse", "in", value=n_settled)
        metrics.count("stage_documents", "parse", "out", value=n_settled + len(rejected))
        metrics.count("stage_documents", "validate", "in", value=n_settled + len(rejected))
        metrics.count("stage_documents", "validate", "out", value=n_settled)
        LOG.info(
            "run %s: %d of %d event(s) settled against the committed state; %d item(s) and %d full-sync "
            "deletion(s) left for the pipeline",
            run.run_id,
            n_settled,
            len(events),
            len(settled.rest),
            len(gone),
            extra={"run_id": run.run_id, "settled": n_settled, "events": len(events)},
        )
    resolved = [*(resolved or []), *settled.commit_items()]
    if n_settled:
        resolved.append(("stat", ("events_valid", n_settled)))
    if settled.rest or gone:
        rest = settled.rest
        args = list(beam_args or [])
        if not any(arg.startswith("--runner") for arg in args):
            args.append(DRIVER_RUNNER)
        staged = write_resolved(config.index_dir, run, resolved) if resolved else None
        try:
            return run_pipeline(
                lambda pipeline: index_items(
                    pipeline
                    | "Batch"
                    >> beam.Create([rest[i : i + BATCH_ITEMS] for i in range(0, len(rest), BATCH_ITEMS)]),
                    config,
                    run,
                    sources,
                    shards,
                    full_sync,
                    committed_states=committed_subset(docs, rest, config, gone),
                    resolved_file=str(staged) if staged else None,
                    validated=True,
                ),
                config,
                run,
                args,
            )
        finally:
            if staged is not None:
                staged.unlink(missing_ok=True)
    resolved.append(("stat", ("batches_read", 1)))
    with (
        logs.run_context(run.run_id),
        tracing.span("tierflow.pipeline", {"tierflow.run_id": run.run_id, "tierflow.settled": n_settled}),
    ):
        commit_items(config.index_dir, run, sources, resolved, config.index_version or None)
    return run_summary(config, run)
