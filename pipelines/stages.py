"""The ingest stages every source shares: validate -> reconcile -> dedup -> lineage -> chunk -> embed ->
write -> one commit, assembled by :func:`index_items` onto any Beam pipeline.

Only Create, ParDo, GroupByKey and Flatten are used (and composites of them), with single-output DoFns
and no side inputs, so the same graph runs on Beam's DaskRunner; every branch flows into the commit.
The batch pipeline (files) and the streaming micro-batches (Kafka) differ only in where the items come
from and which source positions the commit records.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.ml.rag.types import Chunk, Content
from apache_beam.options.pipeline_options import PipelineOptions

from indexing.docs_table import CANONICAL, DELETED, DUPLICATE, DocState, read_doc_row_groups
from indexing.embedder import Embedder, model_dir
from indexing.hot import HotIndex
from pipelines.chunking import TokenChunker
from pipelines.dedup import Candidate, Link, best_link, candidate_keys, links_in_group, signature
from pipelines.reconcile import DELETE, Outcome, Plan, merge_outcomes, reconcile
from pipelines.traced import TracedDoFn, traced
from pipelines.validate import DocumentValidator
from pipelines.write import (
    PREVIOUS,
    RESOLVED,
    CommitRun,
    DocChunks,
    EmbedChunks,
    HotTierWriteConfig,
    WriteDeadLetters,
)
from tierflow import logs, metrics, tracing
from tierflow.config import IngestConfig, to_dict
from tierflow.deadletter import DeadLetter
from tierflow.lineage import RunContext, code_version, document_lineage, new_run_id
from tierflow.records import DocumentEvent, chunk_id, content_hash, embeddable_text, vector_id

LOG = logging.getLogger(__name__)
DEAD_LETTER_SHARDS = 4


def shard_of(doc_id: str, shards: int) -> int:
    """Stable shard of a document (the same on every worker and every run)."""
    return zlib.crc32(doc_id.encode("utf-8")) % shards


# ---- validate ------------------------------------------------------------------------------------
class ValidateBatch(TracedDoFn):
    """Validates one batch of parsed items (events and the parser's dead letters) as one Great
    Expectations batch.

    Emits ``("event", DocumentEvent)``, ``("dead", DeadLetter)`` and ``("stat", (name, n))``.

    Args:
        config: Ingest settings (the suite's limits).
        validated: The caller ran the suite on these items already (its rejections are among the dead
            letters): every event passes as valid and is counted as this stage counts, without a second
            Great Expectations run.
    """

    span_name = "tierflow.validate"

    def __init__(self, config: IngestConfig, validated: bool = False) -> None:
        self.config = config
        self.validated = validated
        self._validator: DocumentValidator | None = None

    def setup(self) -> None:
        if not self.validated:
            self._validator = DocumentValidator(self.config.validation)
            self._validator.warm_up()

    def process(self, items: list[DocumentEvent | DeadLetter]) -> Iterator[tuple[str, Any]]:
        events = [item for item in items if isinstance(item, DocumentEvent)]
        for item in items:
            if isinstance(item, DeadLetter):
                yield ("dead", item)
        valid, rejected = self._check(events)
        metrics.count("stage_documents", "source", "out", value=len(items))
        metrics.count("stage_documents", "parse", "in", value=len(items))
        metrics.count("stage_documents", "parse", "out", value=len(events))
        metrics.count("stage_documents", "validate", "in", value=len(events))
        metrics.count("stage_documents", "validate", "out", value=len(valid))
        self.note("records", len(items))
        self.note("valid", len(valid))
        for letter in rejected:
            yield ("dead", letter)
        for event in valid:
            yield ("event", event)
        yield ("stat", ("events_valid", len(valid)))
        yield ("stat", ("batches_read", 1))

    def _check(self, events: list[DocumentEvent]) -> tuple[list[DocumentEvent], list[DeadLetter]]:
        if self.validated:
            return events, []
        assert self._validator is not None
        return self._validator.validate(events)


# ---- reconcile -----------------------------------------------------------------------------------
class Reconcile(beam.DoFn):
    """Per document: its events vs its committed state -> a plan, promotions, a skip, or nothing.

    Takes one key of the reconcile join: ``(doc id, [("event" | "state" | "dup", value), ...])``.
    """

    def __init__(self, fingerprint: str, full_sync_uris: frozenset[str] | None) -> None:
        self.fingerprint = fingerprint
        self.full_sync_uris = full_sync_uris

    def process(self, element: tuple[str, Iterable[tuple[str, Any]]]) -> Iterator[tuple[str, Any]]:
        doc_id, joined = element
        group = _by_tag(joined, "event", "state", "dup")
        states = group["state"]
        outcome: Outcome = reconcile(
            doc_id,
            group["event"],
            states[0] if states else None,
            group["dup"],
            self.fingerprint,
            self.full_sync_uris,
        )
        if outcome.plan is not None:
            yield ("plan", outcome.plan)
        for dup in outcome.promote:
            yield ("promote", dup)
        if outcome.bump is not None:
            yield ("bump", outcome.bump)
        if outcome.skipped:
            yield ("stat", (f"skipped_{outcome.skipped}", 1))
        if outcome.unchanged_canonical is not None and outcome.unchanged_canonical.minhash is not None:
            state = outcome.unchanged_canonical
            yield ("committed", Candidate(state.doc_id, state.content_hash, state.minhash or b"", True))


# ---- dedup ---------------------------------------------------------------------------------------
@dataclass
class Upsert:
    plan: Plan
    candidate: Candidate


class Decide(TracedDoFn):
    """Per new document: canonical (to be embedded) or a duplicate linked to its best target.

    Takes one key of the dedup join: ``(doc id, [("upsert" | "link", value), ...])``.
    """

    span_name = "tierflow.dedup"

    def __init__(self, run: RunContext) -> None:
        self.run = run

    def process(self, element: tuple[str, Iterable[tuple[str, Any]]]) -> Iterator[tuple[str, Any]]:
        _, joined = element
        group = _by_tag(joined, "upsert", "link")
        for upsert in group["upsert"]:
            link: Link | None = best_link(group["link"])
            metrics.count("stage_documents", "dedup", "in")
            if link:
                metrics.count("duplicates", link.kind)
            else:
                metrics.count("stage_documents", "dedup", "out")
            yield ("doc" if link else "canonical", _state(upsert, link, self.run))


def _state(upsert: Upsert, link: Link | None, run: RunContext) -> Any:
    event = upsert.plan.event
    dedup: dict[str, Any] = {"decision": "canonical", "promoted": upsert.plan.promoted}
    if link is not None:
        dedup = {"decision": "duplicate", "of": link.target, "kind": link.kind, "similarity": link.similarity}
    state = DocState(
        doc_id=event.doc_id,
        version=event.version,
        status=DUPLICATE if link else CANONICAL,
        content_hash=upsert.candidate.content_hash,
        fingerprint=run.fingerprint,
        canonical_id=link.target if link else None,
        dedup=link.kind if link else None,
        similarity=link.similarity if link else None,
        minhash=None if link else upsert.candidate.signature,
        title=event.title,
        text=event.text if link else None,
        **_provenance(event, run),
        metadata=json.dumps(event.metadata, ensure_ascii=False, sort_keys=True),
        lineage=json.dumps(
            document_lineage(
                run, event.source.to_dict(), event.event_time, upsert.candidate.content_hash, dedup
            ),
            sort_keys=True,
        ),
    )
    if link:
        return state
    state.extra["text"] = event.text  # carried to the chunker; canonical text lives in the chunk table
    previous = upsert.plan.previous
    if (
        previous is not None
        and previous.status == CANONICAL
        and previous.segment_id
        and previous.fingerprint == run.fingerprint
    ):
        state.extra[PREVIOUS] = previous  # its unchanged chunks keep their vectors (EmbedChunks)
    return DocChunks(state, [])


def _provenance(event: DocumentEvent, run: RunContext) -> dict[str, Any]:
    """The document-table columns that say where and when a version came from."""
    return {
        "source_system": event.source.system,
        "source_uri": event.source.uri,
        "source_position": event.source.position,
        "event_time": event.event_time,
        "ingest_time": run.started_at,
        "run_id": run.run_id,
    }


def _deleted_states(item: tuple[str, Any], run: RunContext) -> Iterator[tuple[str, DocState]]:
    """The new state of a document a merged ``("plan", Plan)`` deletes."""
    kind, plan = item
    if kind != "plan" or plan.action != DELETE:
        return
    event = plan.event
    lineage = document_lineage(run, event.source.to_dict(), event.event_time, "", {"decision": "deleted"})
    yield (
        "doc",
        DocState(
            doc_id=plan.doc_id,
            version=event.version,
            status=DELETED,
            fingerprint=run.fingerprint,
            **_provenance(event, run),
            lineage=json.dumps(lineage, sort_keys=True),
        ),
    )


def _upserts(item: tuple[str, Any], config: IngestConfig) -> Iterator[tuple[str, tuple[str, Upsert]]]:
    """A merged ``("plan", Plan)`` that upserts as ``(doc id, ("upsert", Upsert))``, with its dedup
    candidate."""
    kind, plan = item
    if kind != "plan" or plan.action == DELETE:
        return
    event = plan.event
    sig = (
        signature(embeddable_text(event.title, event.text), config.dedup)
        if config.dedup.near_duplicates
        else b""
    )
    yield plan.doc_id, ("upsert", Upsert(plan, Candidate(plan.doc_id, event.content_hash, sig, False)))


# ---- chunk ---------------------------------------------------------------------------------------
class ChunkDocuments(TracedDoFn):
    """Splits canonical documents into token windows; chunk ids and vector ids are deterministic."""

    span_name = "tierflow.chunk"

    def __init__(self, config: IngestConfig, shards: int) -> None:
        self.config = config
        self.shards = shards
        self._chunker: TokenChunker | None = None

    def setup(self) -> None:
        self._chunker = TokenChunker(
            self.config.chunking, model_dir(self.config.embedding) / "tokenizer.json"
        )
        self._chunker.warm_up()

    def process(self, doc: DocChunks) -> Iterator[tuple[int, DocChunks]]:
        assert self._chunker is not None
        state = doc.state
        body = _body_text(state)
        lineage = json.loads(state.lineage)
        for piece in self._chunker.chunk(state.title, body):
            cid = chunk_id(state.doc_id, piece.ordinal)
            chunk_lineage = dict(
                lineage, chunk={"ordinal": piece.ordinal, "start": piece.start, "end": piece.end}
            )
            doc.chunks.append(
                Chunk(
                    content=Content(text=piece.text),
                    id=cid,
                    index=piece.ordinal,
                    metadata={
                        "doc_id": state.doc_id,
                        "vector_id": vector_id(cid),
                        "content_hash": content_hash(piece.text),
                        "lineage": json.dumps(chunk_lineage, sort_keys=True),
                    },
                )
            )
        metrics.count("stage_documents", "chunk", "in")
        metrics.count("stage_documents", "chunk", "out")
        yield shard_of(state.doc_id, self.shards), doc


def _body_text(state: DocState) -> str:
    return state.extra["text"]


# ---- assembly ------------------------------------------------------------------------------------
def _tagged(kind: str, key: Callable[[Any], Any] | None = None) -> beam.PTransform:
    """The values of one kind from a stream of ``(kind, value)`` items; with ``key``, the items of that
    kind as ``(key(value), item)`` pairs, for a join (one transform: every transform costs Beam
    graph-translation time, which a micro-batch pays each run)."""
    if key is None:
        return beam.FlatMap(lambda item, k=kind: (item[1],) if item[0] == k else ())
    return beam.FlatMap(lambda item, k=kind, f=key: ((f(item[1]), item),) if item[0] == k else ())


def _doc_id(value: Any) -> str:
    return str(value.doc_id)


def _by_tag(joined: Iterable[tuple[str, Any]], *tags: str) -> dict[str, list[Any]]:
    """One key's values of a join (see ``index_items``) by their tag; every one of ``tags`` is present."""
    group: dict[str, list[Any]] = {tag: [] for tag in tags}
    for tag, value in joined:
        group[tag].append(value)
    return group


def _committed_by_id(state: DocState) -> Iterator[tuple[str, tuple[str, DocState]]]:
    """A committed state for the reconcile join: under its own id, and a duplicate also under its
    canonical document's (which may have to promote it)."""
    yield state.doc_id, ("state", state)
    if state.status == DUPLICATE and state.canonical_id:
        yield state.canonical_id, ("dup", state)


def _outcomes_by_id(item: tuple[str, Any]) -> Iterator[tuple[str, tuple[str, Any]]]:
    """Reconcile's plans, promotions and version bumps by document, for the promotion join."""
    if item[0] in ("plan", "promote", "bump"):
        yield item[1].doc_id, item


def _dead_by_shard(item: tuple[str, Any]) -> Iterator[tuple[int, DeadLetter]]:
    if item[0] == "dead":
        letter = item[1]
        yield shard_of(f"{letter.source.uri}|{letter.source.position}", DEAD_LETTER_SHARDS), letter


def _merged_outcomes(element: tuple[str, Iterable[tuple[str, Any]]]) -> list[tuple[str, Any]]:
    group = _by_tag(element[1], "plan", "promote", "bump")
    return merge_outcomes(group["plan"], group["promote"], group["bump"])


def build_run_context(config: IngestConfig, run_id: str | None = None) -> RunContext:
    embedder = Embedder(config.embedding)
    return RunContext(
        run_id=run_id or new_run_id(),
        code_version=code_version(),
        model=embedder.identity(),
        chunking=to_dict(config.chunking),
        validation_suite=DocumentValidator(config.validation).suite_id,
    )


def index_items(
    batches: beam.PCollection,
    config: IngestConfig,
    run: RunContext,
    sources: dict[str, str],
    shards: int,
    full_sync: frozenset[str] | None = None,
    committed_states: list[DocState] | None = None,
    resolved: list[tuple[str, Any]] | None = None,
    resolved_file: str | None = None,
    validated: bool = False,
) -> beam.PCollection:
    """Index ``batches`` (a PCollection of lists of parsed events and dead letters) into the hot tier.

    Args:
        batches: Lists of :class:`DocumentEvent` / :class:`DeadLetter` as a connector produced them.
        config: Ingest settings.
        run: The run's identity (lineage).
        sources: Source positions the commit records (stream key -> position), for resuming.
        shards: Write shards: segments written (each by one worker).
        full_sync: Source uris a full sync covers (committed documents of them not seen are deleted).
        committed_states: The committed documents the items can touch, when the caller knows them (a
            micro-batch: see ``pipelines.driver.committed_subset``); None reads the whole document table.
        resolved: Commit items decided before the pipeline (``("doc", DocState)``, ``("stat", (name, n))``:
            see ``pipelines.driver.settle``), published by the same single commit. Keep it small: it is
            part of the pipeline's definition.
        resolved_file: A pickle of more such items, written by the driver
            (:func:`pipelines.write.write_resolved`); the commit step reads it, so the items pass as data
            rather than in the pipeline's definition, and not through the pipeline one by one.
        validated: The caller validated the items' events with the document suite already (as
            ``pipelines.driver.run_items`` does; its rejections come as dead letters): the validate stage
            counts them without running the suite again.

    Returns:
        The commit step's output: one JSON line with the new generation.
    """
    p = batches.pipeline
    parent = tracing.current_traceparent()  # the run span (run_pipeline), for the stages' bundle spans
    parsed = batches | "Validate" >> beam.ParDo(traced(ValidateBatch(config, validated), parent))

    if committed_states is not None:
        # No redistributing reshuffle: the join that follows groups them anyway.
        committed = p | "CommittedDocs" >> beam.Create(committed_states, reshuffle=False)
    else:
        index = HotIndex(config.index_dir, version=config.index_version or None)
        manifest = index.manifest()
        doc_groups: list[tuple[str, int]] = []
        if manifest.docs_file:
            import pyarrow.parquet as pq

            docs_path = str(index.root / manifest.docs_file)
            doc_groups = [(docs_path, i) for i in range(pq.ParquetFile(docs_path).num_row_groups)]
        committed = (
            p
            | "CommittedDocs" >> beam.Create(doc_groups)
            | "ReadCommitted" >> beam.FlatMap(lambda g: read_doc_row_groups(Path(g[0]), g[1]))
        )
    # Each join is a Flatten and a GroupByKey of values the keying transform tagged already (what
    # CoGroupByKey expands to, without its separate tagging and untagging steps).
    outcomes = (
        (
            parsed | "EventsById" >> _tagged("event", _doc_id),
            committed | "StateById" >> beam.FlatMap(_committed_by_id),
        )
        | "EventsAndCommitted" >> beam.Flatten()
        | "JoinCommitted" >> beam.GroupByKey()
        | "Reconcile" >> beam.ParDo(Reconcile(run.fingerprint, full_sync))
    )
    merged = (
        outcomes
        | "OutcomesById" >> beam.FlatMap(_outcomes_by_id)
        | "JoinPromotions" >> beam.GroupByKey()
        | "MergePromotions" >> beam.FlatMap(_merged_outcomes)
    )
    deletes = merged | "DeletedStates" >> beam.FlatMap(_deleted_states, run)
    upserts = merged | "Upserts" >> beam.FlatMap(_upserts, config)
    candidates = (
        upserts | "NewCandidates" >> beam.Map(lambda kv: kv[1][1].candidate),
        outcomes | "CommittedCandidates" >> _tagged("committed"),
    ) | "AllCandidates" >> beam.Flatten()
    links = (
        candidates
        | "CandidateKeys" >> beam.FlatMap(lambda c: [(key, c) for key in candidate_keys(c, config.dedup)])
        | "GroupCandidates" >> beam.GroupByKey()
        | "LinksById"
        >> beam.FlatMap(
            lambda kv: [(link.doc_id, ("link", link)) for link in links_in_group(list(kv[1]), config.dedup)]
        )
    )
    decided = (
        (upserts, links)
        | "UpsertsAndLinks" >> beam.Flatten()
        | "JoinLinks" >> beam.GroupByKey()
        | "Decide" >> beam.ParDo(traced(Decide(run), parent))
    )
    duplicates = decided | "DuplicateStates" >> beam.Filter(lambda item: item[0] == "doc")
    bumps = merged | "BumpStates" >> beam.FlatMap(
        lambda item: (("doc", item[1]),) if item[0] == "bump" else ()
    )
    written = (
        decided
        | "Canonical" >> _tagged("canonical")
        | "Chunk" >> beam.ParDo(traced(ChunkDocuments(config, shards), parent))
        | "GroupShards" >> beam.GroupByKey()
        | "Embed" >> beam.ParDo(traced(EmbedChunks(config.embedding, config.index_dir, config.index_version or None), parent))
        | "Write" >> HotTierWriteConfig(config.index_dir, config.index, parent).create_write_transform()
    )
    dead_files = (
        parsed
        | "DeadByShard" >> beam.FlatMap(_dead_by_shard)
        | "GroupDead" >> beam.GroupByKey()
        | "WriteDeadLetters"
        >> beam.ParDo(
            traced(WriteDeadLetters(str(Path(config.index_dir) / "deadletter" / run.run_id)), parent)
        )
    )
    stats = (
        (parsed | "ParseStats" >> _tagged("stat"), outcomes | "ReconcileStats" >> _tagged("stat"))
        | "AllStats" >> beam.Flatten()
        | "SumStats" >> beam.CombinePerKey(sum)
        | "TagStats" >> beam.Map(lambda kv: ("stat", kv))
    )
    # One element: what was decided before the pipeline, for the commit step (which reads the staged file).
    decided_before = p | "Resolved" >> beam.Create([(RESOLVED, (list(resolved or []), resolved_file))])
    return (
        (written, duplicates, bumps, deletes, dead_files, stats, decided_before)
        | "Gather" >> beam.Flatten()
        | "OneCommit" >> beam.Map(lambda item: ("commit", item))
        | "GroupCommit" >> beam.GroupByKey()
        | "Commit" >> beam.ParDo(traced(CommitRun(config.index_dir, run, sources, config.index_version or None), parent))
    )


RUNNER_ALIASES = {"DaskRunner": "apache_beam.runners.dask.dask_runner.DaskRunner"}


def _qualified_runner(arg: str) -> str:
    """Beam knows the DaskRunner only by its full name; accept the short one like the other runners'."""
    for short, full in RUNNER_ALIASES.items():
        if arg == f"--runner={short}":
            return f"--runner={full}"
    return arg


def run_pipeline(
    build: Callable[[beam.Pipeline], object],
    config: IngestConfig,
    run: RunContext,
    beam_args: list[str] | None,
) -> dict[str, Any]:
    """Build a pipeline with ``build``, run it to completion and return its commit summary."""
    options = PipelineOptions([_qualified_runner(arg) for arg in beam_args or []])
    with (
        logs.run_context(run.run_id),
        tracing.span(
            "tierflow.pipeline", {"tierflow.run_id": run.run_id, "tierflow.index": str(config.index_dir)}
        ),
    ):
        pipeline = beam.Pipeline(options=options)
        build(pipeline)
        result = pipeline.run()
        try:
            result.wait_until_finish()
            metrics.publish(result)
        finally:
            client = getattr(result, "client", None)  # the DaskRunner's connection to its scheduler
            if client is not None:
                client.close()
    return run_summary(config, run)


def run_summary(config: IngestConfig, run: RunContext) -> dict[str, Any]:
    """The run's entry in the manifest history (its commit summary)."""
    for entry in reversed(HotIndex(config.index_dir, version=config.index_version or None).manifest().history):
        if entry.get("run_id") == run.run_id:
            return entry
    raise RuntimeError(f"run {run.run_id} finished without committing to {config.index_dir}")
