"""Blue/green re-indexing: build a candidate index version beside the live one, and catch it up.

``tierflow reindex --config NEW`` makes a new version (``indexing.versions``) of the index directory with
NEW's embedding model, chunking and FAISS settings, while the live version keeps serving and keeps taking
commits (streams, scheduled runs):

- **Same model and chunking** (another index type, say): the candidate starts as the live state itself,
  its segments, tombstones, document table and cold rows referenced rather than copied, then compacted
  into NEW's index type. Nothing is embedded.
- **Another model or chunking**: the candidate starts empty, and every document goes through the ingest
  pipeline again (parse, validate, dedup, lineage, chunk, embed, write, one commit per batch) into it.

Either way it then **catches up**: the live document table and the candidate's are compared, and every
document whose live state differs from the candidate's (a newer version, other content, deleted or not)
is indexed into the candidate again, with the live version's source positions recorded in the last
commit. Catching up is what a candidate's whole build is, so a build that stopped half-way resumes where
it stopped. ``tierflow promote`` catches up once more holding the writer lock, so a promoted version holds
every change the live one had (``evaluation.promotion``).

A document is re-indexed from what the index itself holds: its title, metadata, version and source
position from the document table, and its text: kept in the table for a duplicate, and for a canonical
document rebuilt from its chunk windows (hot or warm segments, or the cold tier), each placed at the
character offsets its lineage records. A rebuilt text must hash to the document's content hash (titles,
case and spacing are normalised by that hash, not the text itself), or the document is not re-indexed:
it goes to the report's ``unrecoverable`` list, to be re-ingested from its source.

Example:
    >>> report = build_candidate(live_config, new_config, "v2")
    >>> report.caught_up.events, report.caught_up.unrecoverable
    (5183, [])
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from indexing import versions
from indexing.cold import ColdConfig, ColdStore
from indexing.docs_table import CANONICAL, DELETED, DocState
from indexing.durable import exclusive_lock
from indexing.hot import HotIndex, doc_vector_ids
from indexing.manifest import Manifest
from pipelines.driver import run_items
from pipelines.stages import build_run_context
from tierflow import progress
from tierflow.config import IngestConfig
from tierflow.errors import IndexCorrupt, TierflowError, VersionError
from tierflow.lineage import RunContext
from tierflow.records import DocumentEvent, SourcePosition, content_hash, embeddable_text

LOG = logging.getLogger(__name__)
BATCH_DOCS = 1000  # documents per commit while building or catching up


@dataclass
class CatchUp:
    """One catch-up of a candidate version on the live one."""

    live_generation: int  # the live state caught up to
    events: int = 0  # documents re-indexed (upserts and deletes)
    deletes: int = 0
    unrecoverable: list[str] = field(default_factory=list)  # texts that could not be rebuilt (see module)
    commits: int = 0
    chunks_embedded: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BuildReport:
    """What ``tierflow reindex`` did."""

    name: str
    live: str
    identity: dict[str, Any]
    adopted: bool  # started as the live state (same model and chunking)
    compacted: bool  # its segments were rebuilt as its index type
    caught_up: CatchUp
    generation: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "caught_up": self.caught_up.to_dict()}


def version_settings(config: IngestConfig) -> dict[str, Any]:
    """What the registry keeps of a version's configuration (to embed its queries, to rebuild it)."""
    return {
        "embedding": asdict(config.embedding),
        "chunking": asdict(config.chunking),
        "index": asdict(config.index),
    }


def version_identity(run: RunContext, config: IngestConfig) -> dict[str, Any]:
    return versions.identity_of(run.model, run.chunking, asdict(config.index))


def live_entry(root: Path, live_config: IngestConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(identity, settings) of the live version as the registry would first record it: its manifest's
    identity, and ``live_config``'s settings for what the manifest does not say (the model's path)."""
    manifest = HotIndex(root).manifest()
    settings = version_settings(live_config)
    if manifest.embedding:
        settings["embedding"].update(
            model_name=manifest.embedding.get("model", settings["embedding"]["model_name"]),
            normalize=manifest.embedding.get("normalize", settings["embedding"]["normalize"]),
        )
    if manifest.chunking:
        settings["chunking"] = dict(manifest.chunking)
    index = manifest.index or _segment_index(manifest) or settings["index"]
    made_by = [entry["code_version"] for entry in manifest.history if entry.get("code_version")]
    if made_by:
        settings["code_version"] = made_by[-1]  # the code of its latest run
    return versions.identity_of(manifest.embedding, manifest.chunking, index), settings


def _segment_index(manifest: Manifest) -> dict[str, Any]:
    return dict(manifest.segments[-1].info.index) if manifest.segments else {}


def build_candidate(
    live_config: IngestConfig,
    config: IngestConfig,
    name: str,
    beam_args: list[str] | None = None,
    cold: ColdConfig | None = None,
    say: Callable[[str], None] = LOG.info,
) -> BuildReport:
    """Build (or resume building) candidate version ``name`` of ``config.index_dir`` with ``config``'s
    model, chunking and index settings, beside the live version; then catch it up (see module doc).

    Args:
        live_config: The settings the live version was built with (its model path, when the registry
            does not know it yet).
        config: The candidate's settings; its ``index_dir`` is the index directory.
        name: The candidate's name.
        beam_args: Pipeline options for the re-indexing runs.
        cold: S3 endpoint and credentials for reading cold rows (their location is in the manifest).
        say: Where progress lines go.

    Raises:
        VersionError: ``name`` is a version with another identity, or the live one.
        IncompatibleIndex: never for the candidate's own writes (it is made for them).
    """
    started = time.perf_counter()
    versions.check_name(name)  # before anything is written: a name is a folder name
    root = Path(config.index_dir)
    live = HotIndex(root)
    if live.manifest().generation == 0:
        raise VersionError(f"{root} has no committed live version to re-index")
    config = replace(config, index_version=name)
    run = build_run_context(config)
    identity = version_identity(run, config)
    with exclusive_lock(root / "LOCK"):
        versions.ensure_registry(root, *live_entry(root, live_config))
        registry = versions.add_candidate(root, name, identity, version_settings(config), run.code_version)
    candidate = HotIndex(root, version=name)
    adopted = compacted = False
    if candidate.manifest().generation == 0:
        source = live.manifest()
        same = source.embedding == run.model and source.chunking == run.chunking
        candidate.start_version(run.model, run.chunking, asdict(config.index), source if same else None)
        adopted = same
        say(
            f"reindex: version {name} started from live generation {source.generation} (same model and "
            "chunking: its segments are referenced, nothing is re-embedded)"
            if same
            else f"reindex: version {name} started empty: every document is re-embedded with {run.model['model']}"
        )
        if same and any(seg.info.index != asdict(config.index) for seg in source.segments):
            from indexing.faiss_index import IndexSpec

            candidate.compact(IndexSpec.from_dict(asdict(config.index)))
            compacted = True
            say(f"reindex: version {name}: segments rebuilt as {config.index.type}")
    caught = catch_up(config, name, beam_args, cold, say=say)
    return BuildReport(
        name=name,
        live=registry.live,
        identity=identity,
        adopted=adopted,
        compacted=compacted,
        caught_up=caught,
        generation=HotIndex(root, version=name).manifest().generation,
        seconds=round(time.perf_counter() - started, 3),
    )


def catch_up(
    config: IngestConfig,
    name: str,
    beam_args: list[str] | None = None,
    cold: ColdConfig | None = None,
    say: Callable[[str], None] = LOG.info,
) -> CatchUp:
    """Index into candidate ``name`` every document whose live state it does not hold yet, recording the
    live version's source positions in the last commit (one commit per :data:`BATCH_DOCS` documents;
    none when it holds them all and the positions already).

    ``config`` is the candidate's settings (``index_dir`` the directory). Safe to call while live writers
    commit: what they commit meanwhile is found by the next catch-up.
    """
    started = time.perf_counter()
    root = Path(config.index_dir)
    config = replace(config, index_version=name)
    live = HotIndex(root)
    manifest = live.manifest()
    candidate = HotIndex(root, version=name)
    held = candidate.docs()
    events, unrecoverable = changed_events(live, manifest, held, cold)
    result = CatchUp(manifest.generation, unrecoverable=unrecoverable)
    target = candidate.manifest()
    if not events and target.sources == {**target.sources, **manifest.sources}:
        result.seconds = round(time.perf_counter() - started, 3)
        return result
    run = build_run_context(config)
    batches = [events[i : i + BATCH_DOCS] for i in range(0, len(events), BATCH_DOCS)] or [[]]
    say(
        f"reindex: version {name}: {len(events)} document(s) to index from live generation "
        f"{manifest.generation}" + (f"; {len(unrecoverable)} not recoverable" if unrecoverable else "")
    )
    with progress.bar(len(events), f"reindex {name}", unit="doc") as shown:
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            summary = run_items(
                list(batch),
                config,
                replace(run, run_id=f"{run.run_id}-{i}"),
                dict(manifest.sources) if last else {},
                shards=1,
                beam_args=beam_args,
            )
            result.commits += 1
            result.chunks_embedded += int(summary.get("counts", {}).get("chunks_embedded", 0))
            shown.update(len(batch))
    result.events = len(events)
    result.deletes = sum(event.op == "delete" for event in events)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def pending(config: IngestConfig, name: str, source: str | None = None) -> int:
    """How many documents version ``name`` is behind the live version on (0: caught up), or behind
    version ``source``."""
    root = Path(config.index_dir)
    return len(_differing(HotIndex(root, version=source).docs(), HotIndex(root, version=name).docs()))


def _differing(live: dict[str, DocState], held: dict[str, DocState]) -> list[DocState]:
    """The live states a version holding ``held`` is behind on."""
    out = []
    for doc_id, state in live.items():
        mine = held.get(doc_id)
        if mine is not None and _holds(mine, state):
            continue
        if mine is None and state.status == DELETED:
            continue  # never held: nothing to delete
        out.append(state)
    return out


def _holds(held: DocState, live: DocState) -> bool:
    """Whether a version holding ``held`` has ``live``'s change, or a newer one of the same document.

    Versions are source order, so a version is never taken back to an older state: a retired version
    that took commits while it was live, promoted again, keeps its newer documents (and the documents the
    live one never saw); at one version a delete wins, as in every commit.
    """
    if held.version != live.version:
        return held.version > live.version
    if held.status == DELETED or live.status == DELETED:
        return held.status == DELETED
    return (held.content_hash, held.metadata, held.title) == (live.content_hash, live.metadata, live.title)


def changed_events(
    live: HotIndex, manifest: Manifest, held: dict[str, DocState], cold: ColdConfig | None = None
) -> tuple[list[DocumentEvent], list[str]]:
    """The events that make a candidate holding ``held`` hold what ``manifest`` of ``live`` holds, in
    document id order, and the ids whose text could not be rebuilt."""
    states = _differing(live.docs(manifest), held)
    texts = document_texts(live, manifest, [s for s in states if s.status == CANONICAL], cold)
    events: list[DocumentEvent] = []
    unrecoverable: list[str] = []
    for state in sorted(states, key=lambda s: s.doc_id):
        source = SourcePosition(state.source_system or "reindex", state.source_uri, state.source_position)
        if state.status == DELETED:
            events.append(
                DocumentEvent(
                    state.doc_id, "delete", source=source, version=state.version, event_time=state.event_time
                )
            )
            continue
        text = state.text if state.status != CANONICAL else texts.get(state.doc_id)
        if text is None or content_hash(embeddable_text(state.title, text)) != state.content_hash:
            unrecoverable.append(state.doc_id)
            continue
        events.append(
            DocumentEvent(
                state.doc_id,
                "upsert",
                text=text,
                title=state.title,
                metadata=json.loads(state.metadata or "{}"),
                source=source,
                version=state.version,
                event_time=state.event_time,
            )
        )
    if unrecoverable:
        LOG.warning(
            "%d document(s) cannot be re-indexed from the index (their text does not rebuild to their "
            "content hash); re-ingest them from their sources: %s",
            len(unrecoverable),
            ", ".join(unrecoverable[:20]),
        )
    return events, unrecoverable


def document_texts(
    index: HotIndex, manifest: Manifest, states: list[DocState], cold: ColdConfig | None = None
) -> dict[str, str]:
    """The body texts of canonical documents, rebuilt from their chunk windows (module doc)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    lives = {live.info.segment_id: live for live in manifest.segments}
    by_segment: dict[str, list[DocState]] = {}
    by_batch: dict[str, list[str]] = {}
    for state in states:
        if state.segment_id:
            by_segment.setdefault(state.segment_id, []).append(state)
        elif state.cold_batch:
            by_batch.setdefault(state.cold_batch, []).append(state.doc_id)
    for segment_id, group in by_segment.items():
        live = lives.get(segment_id)
        if live is None:
            continue
        ids = [vid for state in group for vid in doc_vector_ids(state.doc_id, state.n_chunks)]
        try:
            found = index.reader(live).read_rows(ids)
        except (IndexCorrupt, KeyError) as err:
            LOG.warning("segment %s: chunk rows not readable (%s)", segment_id, err)
            continue
        for row in found:
            rows.setdefault(row["doc_id"], []).append(row)
    if by_batch and manifest.cold:
        location = {k: manifest.cold[k] for k in ("uri", "table", "vector_dtype")}
        store = ColdStore(replace(cold or ColdConfig(), **location))
        for batch, doc_ids in by_batch.items():
            try:
                found, _ = store.rows(batch, doc_ids)
            except TierflowError as err:
                LOG.warning("cold batch %s: chunk rows not readable (%s)", batch, err)
                continue
            for row in found:
                rows.setdefault(row["doc_id"], []).append(row)
    return {doc_id: rebuild_text(found) for doc_id, found in rows.items()}


def rebuild_text(rows: list[dict[str, Any]]) -> str:
    """A document's body from its chunk rows: each window's text minus its title prefix, placed at the
    ``start``..``end`` character offsets its lineage records (windows overlap; the edges a tokenizer
    skips are spacing, which content hashes normalise)."""
    pieces = []
    for row in rows:
        chunk = json.loads(row["lineage"])["chunk"]
        start, end = int(chunk["start"]), int(chunk["end"])
        text = row["text"]
        pieces.append((start, text[len(text) - (end - start) :] if end > start else ""))
    pieces.sort(key=lambda piece: piece[0])
    body: list[str] = []
    covered = 0
    for start, piece in pieces:
        if start > covered:
            body.append(" " * (start - covered))  # only spacing lies between windows' edges
            covered = start
        overlap = covered - start
        if overlap < len(piece):
            body.append(piece[overlap:])
            covered = start + len(piece)
    return "".join(body)
