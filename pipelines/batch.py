"""The batch pipeline: files (local or s3://) -> parse -> the shared ingest stages -> one commit.

Runs on the DirectRunner by default and on any Beam runner chosen by ordinary options
(``--runner=DaskRunner --dask_client_address=...``, Flink, Spark, Dataflow).

Example:
    >>> summary = run_batch(FileSourceConfig("corpus.jsonl"), IngestConfig(index_dir="hot"))
    >>> summary["counts"]["chunks_embedded"]
"""

from __future__ import annotations

import logging
import math
from typing import Any

import apache_beam as beam

from connectors.files import FileSourceConfig, plan_splits, read_split, source_uris
from pipelines.stages import build_run_context, index_items, run_pipeline
from tierflow.config import IngestConfig
from tierflow.lineage import RunContext

LOG = logging.getLogger(__name__)
SHARD_BYTES = 16 << 20


def build_pipeline(
    pipeline: beam.Pipeline,
    source: FileSourceConfig,
    config: IngestConfig,
    run: RunContext,
) -> beam.PCollection:
    """Adds the batch ingest of ``source`` to ``pipeline``; returns the commit's output (one JSON line)."""
    splits = plan_splits(source)
    total_bytes = sum(split.end - split.start for split in splits)
    shards = config.write_shards or max(2, math.ceil(total_bytes / SHARD_BYTES))
    full_sync = frozenset(source_uris(source)) if config.sync == "full" else None
    batches = (
        pipeline
        | "Splits" >> beam.Create(splits)
        | "SpreadSplits" >> beam.Reshuffle()
        | "Parse" >> beam.Map(lambda split: list(read_split(split)))
    )
    sources = {split.uri: "complete" for split in splits}
    return index_items(batches, config, run, sources, shards, full_sync)


def run_batch(
    source: FileSourceConfig,
    config: IngestConfig,
    beam_args: list[str] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Run one batch ingest to completion and return its commit summary (from the manifest history)."""
    run = build_run_context(config, run_id)
    LOG.info("run %s: ingesting %s into %s", run.run_id, source.path, config.index_dir)
    return run_pipeline(
        lambda pipeline: build_pipeline(pipeline, source, config, run), config, run, beam_args
    )
