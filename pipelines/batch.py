"""The batch pipeline: files (local or s3://) -> parse -> the shared ingest stages -> one commit.

Runs on the DirectRunner by default and on any Beam runner chosen by ordinary options
(``--runner=DaskRunner --dask_client_address=...``, Flink, Spark, Dataflow).

A run reads only what changed since the index last committed each file:

* a file whose size, modification time and reading settings (:func:`file_positions`) are what the last
  commit of it recorded is not read at all (``skip_unchanged_files``); when no file changed the run
  commits nothing and says so;
* when the changed files are small (``prefilter_max_bytes``) and the index is not empty, the driver reads
  them and settles the documents the committed state already answers (:mod:`pipelines.driver`), so only
  new and changed documents go through the pipeline;
* otherwise every record of the changed files goes through the pipeline, its splits spread over workers.

Example:
    >>> summary = run_batch(FileSourceConfig("corpus.jsonl"), IngestConfig(index_dir="hot"))
    >>> summary["counts"]["chunks_embedded"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from typing import Any

import apache_beam as beam

from connectors.files import FileSourceConfig, FileSplit, plan_splits, read_split
from indexing.hot import HotIndex
from pipelines.driver import run_items
from pipelines.stages import build_run_context, index_items, run_pipeline
from tierflow.config import IngestConfig, to_dict
from tierflow.lineage import RunContext

LOG = logging.getLogger(__name__)
SHARD_BYTES = 16 << 20
# Source settings that do not change what a file's records become (where it is, how it is cut up).
_NOT_READING = ("path", "glob", "split_bytes", "s3_endpoint_url", "s3_region")


def file_positions(splits: list[FileSplit], config: IngestConfig, run: RunContext) -> dict[str, str]:
    """The source position a commit records for each file: ``file size=.. mtime_ns=.. [etag=..] reading=..``
    (S3 objects carry their ETag: an overwrite in the same second with the same size still reads again).

    ``reading`` identifies everything that makes a file's records into indexed documents besides its
    bytes: the source mapping (fields, format, limits), the validation suite and its limits, and the
    run's model + chunking fingerprint. A file whose position equals the recorded one would index to
    exactly what is committed.
    """
    if not splits:
        return {}
    mapping = {k: v for k, v in dataclasses.asdict(splits[0].config).items() if k not in _NOT_READING}
    reading = json.dumps(
        {
            "source": mapping,
            "validation": [run.validation_suite, to_dict(config.validation)],
            "fingerprint": run.fingerprint,
        },
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(reading.encode()).hexdigest()[:16]
    return {
        s.uri: f"file size={s.size} mtime_ns={s.mtime_ns}{f' etag={s.etag}' if s.etag else ''} reading={digest}"
        for s in splits
    }


def build_pipeline(
    pipeline: beam.Pipeline,
    splits: list[FileSplit],
    config: IngestConfig,
    run: RunContext,
    sources: dict[str, str],
    resolved: list[tuple[str, Any]] | None = None,
) -> beam.PCollection:
    """Adds the batch ingest of ``splits`` to ``pipeline``; returns the commit's output (one JSON line)."""
    full_sync = frozenset(sources) if config.sync == "full" else None
    batches = (
        pipeline
        | "Splits" >> beam.Create(splits)
        | "SpreadSplits" >> beam.Reshuffle()
        | "Parse" >> beam.Map(lambda split: list(read_split(split)))
    )
    return index_items(batches, config, run, sources, _shards(splits, config), full_sync, resolved=resolved)


def _shards(splits: list[FileSplit], config: IngestConfig) -> int:
    total_bytes = sum(split.end - split.start for split in splits)
    return config.write_shards or max(2, math.ceil(total_bytes / SHARD_BYTES))


def run_batch(
    source: FileSourceConfig,
    config: IngestConfig,
    beam_args: list[str] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Run one batch ingest to completion and return its commit summary (from the manifest history).

    When no file changed since its last commit, nothing is committed: the summary then has
    ``committed: False``, the current generation, and ``counts["files_unchanged"]``.
    """
    run = build_run_context(config, run_id)
    manifest = HotIndex(config.index_dir, version=config.index_version or None).manifest()
    splits = plan_splits(source)
    positions = file_positions(splits, config, run)
    if config.skip_unchanged_files:
        splits = [s for s in splits if manifest.sources.get(s.uri) != positions[s.uri]]
    sources = {s.uri: positions[s.uri] for s in splits}
    unchanged = len(positions) - len(sources)
    resolved = [("stat", ("files_unchanged", unchanged))] if unchanged else []
    LOG.info(
        "run %s: ingesting %s into %s: %d file(s) to read, %d unchanged since their last commit",
        run.run_id,
        source.path,
        config.index_dir,
        len(sources),
        unchanged,
    )
    if not sources:
        return {
            "run_id": run.run_id,
            "generation": manifest.generation,
            "committed": False,
            "counts": {"files_unchanged": unchanged},
            "timings_ms": {},
            "dead_letters": {"total": 0, "by_reason": {}, "files": []},
            "segments_written": 0,
            "applied": 0,
            "stale": 0,
        }
    changed_bytes = sum({s.uri: s.size for s in splits}.values())
    if manifest.docs_file and changed_bytes <= config.prefilter_max_bytes:
        items = [item for split in splits for item in read_split(split)]
        full_sync = frozenset(sources) if config.sync == "full" else None
        return run_items(items, config, run, sources, _shards(splits, config), beam_args, full_sync, resolved)
    return run_pipeline(
        lambda pipeline: build_pipeline(pipeline, splits, config, run, sources, resolved),
        config,
        run,
        beam_args,
    )
