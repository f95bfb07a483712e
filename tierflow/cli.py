"""The ``tierflow`` command: ingest, search, serve, lineage, eval, lifecycle, storage, compact, gc, demo and bench.

Beam pipeline options (``--runner``, ``--dask_client_address``, ``--direct_num_workers`` ...) are passed
through to Beam unchanged: anything tierflow does not know is Beam's.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tierflow.errors import ConfigError, TierflowError


def _setup_logging(verbose: bool, log_format: str | None = None) -> None:
    from tierflow import logs

    logs.setup(verbose, log_format)
    logging.getLogger("pipelines").setLevel(logging.INFO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _config(args: argparse.Namespace) -> Any:
    from tierflow.config import load_config

    overrides: dict[str, Any] = {}
    if getattr(args, "index", None):
        overrides["index_dir"] = args.index
    if getattr(args, "index_type", None):
        overrides["index"] = {"type": args.index_type}
    if getattr(args, "sync", None):
        overrides["sync"] = args.sync
    chunking = {
        k: v
        for k, v in (
            ("max_tokens", getattr(args, "chunk_tokens", None)),
            ("overlap_tokens", getattr(args, "chunk_overlap", None)),
        )
        if v is not None
    }
    if chunking:
        overrides["chunking"] = chunking
    if getattr(args, "device", None):
        overrides["embedding"] = {"device": args.device}
    return load_config(getattr(args, "config", None), overrides)


def _source(args: argparse.Namespace) -> Any:
    from connectors.files import FileSourceConfig

    fields = {
        k: getattr(args, k)
        for k in (
            "format",
            "id_field",
            "text_field",
            "title_field",
            "op_field",
            "version_field",
            "glob",
            "s3_endpoint_url",
        )
        if getattr(args, k, None)
    }
    return FileSourceConfig(args.source, **fields)


def _print_run(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    counts = summary.get("counts", {})
    dead = summary.get("dead_letters", {})
    if summary.get("committed", True):
        print(f"run {summary['run_id']} committed generation {summary['generation']}")
    else:
        print(f"run {summary['run_id']}: nothing changed since generation {summary['generation']}")
    for key in sorted(counts):
        print(f"  {key:<22} {counts[key]}")
    print(f"  {'dead_letters':<22} {dead.get('total', 0)}")
    for reason, n in sorted(dead.get("by_reason", {}).items()):
        print(f"    {reason:<20} {n}")
    for path in dead.get("files", []):
        print(f"  dead-letter file: {path}")


def cmd_ingest(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipelines.batch import run_batch

    config = _config(args)
    started = time.perf_counter()
    summary = run_batch(_source(args), config, beam_args)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    _print_run(summary, args.json)
    return 0


def _cold_config(args: argparse.Namespace) -> Any:
    from indexing.cold import ColdConfig
    from tierflow.config import load_settings

    overrides = {"uri": args.cold} if getattr(args, "cold", None) else {}
    return load_settings(ColdConfig, "cold", getattr(args, "config", None), overrides)


def _searcher(args: argparse.Namespace, track_access: bool = False) -> Any:
    from indexing.hot import HotIndex
    from indexing.search import Searcher

    config = _config(args)
    return Searcher(HotIndex(config.index_dir), config.embedding, _cold_config(args), track_access)


def cmd_search(args: argparse.Namespace, _: list[str]) -> int:
    searcher = _searcher(args, track_access=True)
    results = searcher.search(args.query, args.k)
    searcher.close()
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
        return 0
    if not results:
        print("no results (is the index empty?)")
    print(f"{'#':>3}  {'score':>6}  {'doc_id':<20} {'tier':<5} text")
    for rank, r in enumerate(results, 1):
        text = " ".join(r.text.split())
        dups = f"  (+{len(r.duplicates)} duplicate(s): {', '.join(r.duplicates)})" if r.duplicates else ""
        print(
            f"{rank:>3}  {r.score:6.3f}  {r.doc_id:<20} {r.tier:<5} {text[:90]}{'…' if len(text) > 90 else ''}{dups}"
        )
    return 0


def cmd_serve(args: argparse.Namespace, _: list[str]) -> int:
    from indexing.service import load_serve_config, serve

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    shadow = None
    if args.shadow:
        from indexing.shadow import open_shadow

        config = _config(args)
        shadow = open_shadow(
            config.index_dir,
            args.shadow,
            config.embedding,
            cold=_cold_config(args),
            log_path=args.shadow_log,
            log_queries=args.shadow_log_queries,
        )
    serve(_searcher(args, track_access=True), load_serve_config(args.config, overrides), shadow=shadow)
    return 0


def cmd_lineage(args: argparse.Namespace, _: list[str]) -> int:
    from indexing.lineage_lookup import lineage_of

    config = _config(args)
    record = lineage_of(Path(config.index_dir), args.id)
    if record is None:
        print(
            f"{args.id!r} is neither a document id nor a live vector id in {config.index_dir}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False))
    return 0


def cmd_eval(args: argparse.Namespace, beam_args: list[str]) -> int:
    from evaluation import load_beir, summary_lines, write_reports
    from evaluation.retrieval import evaluate_index
    from indexing.hot import HotIndex
    from indexing.search import Searcher

    dataset = load_beir(args.dataset, args.split)
    if args.index:
        config = _config(args)
    else:
        args.index = str(Path(args.out) / "index")
        config = _config(args)
        from connectors.files import FileSourceConfig
        from pipelines.batch import run_batch

        print(f"building an index of {dataset.corpus_path} in {config.index_dir} …", flush=True)
        summary = run_batch(FileSourceConfig(str(dataset.path), format="beir"), config, beam_args)
        _print_run(summary, False)
    searcher = Searcher(HotIndex(config.index_dir), config.embedding, _cold_config(args))
    reference = dict(item.split("=", 1) for item in args.reference) if args.reference else None
    result = evaluate_index(
        searcher,
        dataset,
        ks=tuple(args.k),
        reference={k: float(v) for k, v in reference.items()} if reference else None,
    )
    paths = write_reports(args.out, result)
    print("\n".join(summary_lines(result)))
    print(f"reports: {paths['json']}  {paths['markdown']}")
    return 0


def cmd_eval_run(args: argparse.Namespace, beam_args: list[str]) -> int:
    from evaluation.suite import gate, load_suite, run_suite, write_baseline

    suite = load_suite(args.suite)
    out = Path(args.out)
    summary = run_suite(
        suite, out, Path(args.cache), beam_args, args.only, progress=lambda line: print(line, file=sys.stderr)
    )
    text = (out / "summary.md").read_text()
    passed, compared = (True, "") if args.no_gate else gate(suite, summary, out, args.baseline)
    print(text + ("\n" + compared if compared else ""))
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        with open(summary_file, "a") as handle:
            handle.write(text + ("\n" + compared if compared else ""))
    if args.write_baseline:
        write_baseline(summary, out, Path(args.write_baseline))
        print(f"baseline written to {args.write_baseline}", file=sys.stderr)
    print(f"reports in {out} (summary.md, junit.xml, suite.json, */*/report.html)", file=sys.stderr)
    if args.no_gate:
        return 0
    return 0 if passed and not summary["failures"] else 1


def cmd_produce(args: argparse.Namespace, _: list[str]) -> int:
    from connectors.kafka_client import DocumentProducer, KafkaConfig, produce_jsonl
    from tierflow.config import load_settings

    overrides: dict[str, Any] = {}
    if args.bootstrap:
        overrides["bootstrap_servers"] = args.bootstrap
    if args.topic:
        overrides["topics"] = args.topic
    config = load_settings(KafkaConfig, "kafka", args.config, overrides)
    with DocumentProducer(config) as producer:
        handle = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
        with handle:
            report = produce_jsonl(producer, handle)
    print(
        f"sent {report.sent} upsert(s) and {report.deleted} delete(s) to {producer.topic}; refused {len(report.refused)}"
    )
    for line in report.refused:
        print(f"  refused {line}", file=sys.stderr)
    return 1 if report.refused else 0


def cmd_stream(args: argparse.Namespace, beam_args: list[str]) -> int:
    from connectors.kafka_client import KafkaConfig
    from pipelines.stream import BatchPolicy, KafkaSource, MicroBatchStream
    from tierflow.config import load_settings

    overrides: dict[str, Any] = {}
    for key, value in (
        ("bootstrap_servers", args.bootstrap),
        ("topics", args.topic),
        ("group_id", args.group),
        ("dead_letter_topic", args.dead_letter_topic),
    ):
        if value:
            overrides[key] = value
    kafka = load_settings(KafkaConfig, "kafka", args.config, overrides)
    policy = BatchPolicy(max_records=args.max_records, max_wait_s=args.max_wait)
    decoder = None
    if args.format == "debezium":
        from connectors.debezium import DebeziumMapping
        from pipelines.stream import debezium_decoder

        columns = tuple(args.text_column.split(",")) if args.text_column else ("text",)
        mapping = DebeziumMapping(
            id_columns=tuple(args.id_columns.split(",")) if args.id_columns else (),
            text_column=columns[0] if len(columns) == 1 else columns,
            title_column=args.title_column,
            id_prefix=args.id_prefix or "",
        )
        decoder = debezium_decoder(mapping)
    stream = MicroBatchStream(KafkaSource(kafka, decoder), _config(args), policy, beam_args)
    batches = stream.run(max_batches=args.max_batches, idle_exit_s=args.exit_when_idle)
    print(f"indexed {batches} micro-batch(es) into {stream.config.index_dir}")
    return 0


def cmd_cdc(args: argparse.Namespace, beam_args: list[str]) -> int:
    from connectors.postgres_cdc import PostgresCdcSource, load_postgres_config
    from pipelines.stream import BatchPolicy, MicroBatchStream

    overrides: dict[str, Any] = {k: v for k, v in (("dsn", args.dsn), ("slot", args.slot)) if v}
    if args.create_slot:
        overrides["create_slot"] = True
    source = PostgresCdcSource(load_postgres_config(args.config, overrides))
    policy = BatchPolicy(max_records=args.max_records, max_wait_s=args.max_wait)
    stream = MicroBatchStream(source, _config(args), policy, beam_args)
    batches = stream.run(max_batches=args.max_batches, idle_exit_s=args.exit_when_idle)
    print(f"indexed {batches} micro-batch(es) from slot {source.config.slot} into {stream.config.index_dir}")
    return 0


def cmd_webhook_serve(args: argparse.Namespace, _: list[str]) -> int:
    from connectors.webhooks import load_webhook_config, serve

    overrides = {
        k: v
        for k, v in (("host", args.host), ("port", args.port), ("queue_dir", args.queue_dir))
        if v is not None
    }
    config = load_webhook_config(args.config, overrides)
    if args.topic:
        if args.ingest:
            raise ConfigError(
                "--ingest drains the local queue; with --topic, run `tierflow stream` on the topic"
            )
        from connectors.kafka_client import DocumentProducer, KafkaConfig, KafkaEventSink
        from connectors.webhooks import decode_record
        from tierflow.config import load_settings

        kafka_overrides = {
            k: v for k, v in (("bootstrap_servers", args.bootstrap), ("topics", args.topic)) if v
        }
        kafka = load_settings(KafkaConfig, "kafka", args.config, kafka_overrides)
        sink = KafkaEventSink(DocumentProducer(kafka), decode_record)
        try:
            serve(config, sink=sink)
        finally:
            sink.close()
        return 0
    if not args.ingest:
        serve(config)
        return 0
    from connectors.local_queue import LocalQueue
    from connectors.webhooks import WebhookReceiver
    from pipelines.stream import MicroBatchStream, QueueSource
    from tierflow.http import stop_on_signals

    queue = LocalQueue(config.queue_dir)
    try:
        with stop_on_signals() as stop, WebhookReceiver(config, sink=queue) as receiver:
            ingest = _config(args)
            print(
                f"tierflow webhooks: listening on {receiver.url}/v1/events, indexing into {ingest.index_dir}",
                flush=True,
            )
            MicroBatchStream(QueueSource(queue, config.name), ingest).run(stop)
    finally:
        queue.close()
    return 0


def cmd_lifecycle(args: argparse.Namespace, _: list[str]) -> int:
    from indexing.hot import HotIndex
    from lifecycle.policy import LifecycleConfig, plan_lifecycle
    from lifecycle.render import as_of, print_plan, print_run
    from lifecycle.run import run_lifecycle
    from tierflow.config import load_settings

    index_dir = _config(args).index_dir
    policy = load_settings(LifecycleConfig, "lifecycle", args.config)
    cold = _cold_config(args)
    now = as_of(args.as_of)
    if args.lifecycle_command == "plan":
        plan = plan_lifecycle(HotIndex(index_dir), policy, now)
        if args.json:
            print(json.dumps(plan.to_dict(), indent=2, sort_keys=True))
        else:
            print_plan(plan, args.limit)
        return 0
    summary = run_lifecycle(index_dir, policy, cold, now, progress=lambda line: print(line, file=sys.stderr))
    print(json.dumps(summary, indent=2, sort_keys=True)) if args.json else print_run(summary)
    return 0


def cmd_storage_report(args: argparse.Namespace, _: list[str]) -> int:
    from lifecycle.report import storage_report

    report = storage_report(Path(_config(args).index_dir), _cold_config(args), Path(args.out))
    print(report["markdown"])
    print(f"wrote {', '.join(report['files'])}", file=sys.stderr)
    return 0


def cmd_compact(args: argparse.Namespace, _: list[str]) -> int:
    from indexing.hot import HotIndex

    manifest = HotIndex(_config(args).index_dir).compact()
    print(
        f"generation {manifest.generation}: {len(manifest.segments)} segment(s), {manifest.n_vectors} vectors"
    )
    return 0


def cmd_gc(args: argparse.Namespace, _: list[str]) -> int:
    from indexing.hot import HotIndex

    removed = HotIndex(_config(args).index_dir).collect_garbage(args.keep, args.min_age)
    print(f"removed {len(removed)} file(s)/folder(s)")
    return 0


def cmd_reindex(args: argparse.Namespace, beam_args: list[str]) -> int:
    from dataclasses import replace

    from indexing import versions
    from pipelines.reindex import build_candidate
    from tierflow.config import load_config

    config = _config(args)
    live = replace(load_config(args.live_config), index_dir=config.index_dir)
    name = args.name or versions.next_name(Path(config.index_dir))
    report = build_candidate(live, config, name, beam_args, _cold_config(args), say=_say)
    caught = report.caught_up
    print(
        f"version {name}: generation {report.generation}, "
        f"{'adopted the live state' if report.adopted else 'built from the live documents'}"
        f"{', segments rebuilt' if report.compacted else ''}; caught up on live generation "
        f"{caught.live_generation}: {caught.events} document(s) indexed, {caught.chunks_embedded} chunk(s) "
        f"embedded, {len(caught.unrecoverable)} not recoverable ({report.seconds:.1f} s). "
        f"Next: tierflow promote --name {name}"
    )
    if caught.unrecoverable:
        print(f"not recoverable (re-ingest from their sources): {', '.join(caught.unrecoverable[:50])}")
    return 0


def _promote_config(args: argparse.Namespace) -> Any:
    from evaluation.promotion import PromoteConfig
    from tierflow.config import load_settings

    overrides = {
        key: value
        for key, value in (("dataset", args.dataset), ("metric", args.metric), ("max_drop", args.max_drop))
        if value is not None
    }
    return load_settings(PromoteConfig, "promote", getattr(args, "config", None), overrides)


def cmd_promote(args: argparse.Namespace, beam_args: list[str]) -> int:
    from evaluation.promotion import promote

    report = promote(
        _config(args),
        args.name,
        _promote_config(args),
        Path(args.out),
        _cold_config(args),
        beam_args,
        force=args.force,
        say=_say,
    )
    print((Path(args.out) / "promotion.md").read_text())
    return 0 if report["switched"] else 1


def cmd_rollback(args: argparse.Namespace, _: list[str]) -> int:
    from evaluation.promotion import rollback

    rollback(_config(args), Path(args.out), args.to, args.reason or "")
    print((Path(args.out) / "rollback.md").read_text())
    return 0


def cmd_versions(args: argparse.Namespace, _: list[str]) -> int:
    from indexing import versions

    rows = versions.describe(Path(_config(args).index_dir))
    if args.json:
        print(json.dumps(rows, indent=1, sort_keys=True))
        return 0
    for row in rows:
        print(
            f"{row['name']:<12} {row['state']:<10} gen {row['generation']:>6}  {row['model']} "
            f"(normalize={row['normalize']}), chunks {row['chunking']}, {row['index_type']}"
        )
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def cmd_demo(args: argparse.Namespace, beam_args: list[str]) -> int:
    from tierflow.demo import run_demo

    return run_demo(Path(args.workdir), beam_args)


def cmd_bench(args: argparse.Namespace, beam_args: list[str]) -> int:
    if args.kind == "lifecycle":
        from lifecycle.bench import bench_lifecycle

        report = bench_lifecycle(args.vectors, Path(args.out), queries=args.queries)
        print(json.dumps(report, indent=2))
        return 0
    if args.kind == "stream":
        from pipelines.bench_stream import bench_stream, bench_stream_curve

        if args.rates:
            rates = [float(rate) for rate in args.rates.split(",") if rate.strip()]
            report = bench_stream_curve(rates, args.duration, Path(args.out), args.bootstrap)
            print((Path(args.out) / "bench-stream-curve.md").read_text())
            return 0
        report = bench_stream(args.rate, args.duration, Path(args.out), args.bootstrap)
        print(json.dumps(report, indent=2))
        return 0
    from pipelines.bench import bench_ingest

    report = bench_ingest(Path(args.dataset), args.limit, Path(args.out), beam_args)
    print(json.dumps(report, indent=2))
    return 0


def _add_index_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index", help="hot-tier directory (default: index_dir from config, tierflow-data/hot)"
    )
    parser.add_argument("--config", help="TOML config file (default: ./tierflow.toml if present)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of every stage")


def _add_micro_batch_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-records", type=int, default=500, help="records per micro-batch at most")
    parser.add_argument("--max-wait", type=float, default=1.0, help="seconds a micro-batch stays open")
    parser.add_argument("--max-batches", type=int, help="stop after this many micro-batches")
    parser.add_argument("--exit-when-idle", type=float, help="stop after this many seconds without records")


def _add_build_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index-type", choices=("flat", "hnsw"), help="FAISS index type for new segments")
    parser.add_argument("--chunk-tokens", type=int, help="tokens per chunk (model tokenizer)")
    parser.add_argument("--chunk-overlap", type=int, help="tokens shared by consecutive chunks")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="embedding device")


def cmd_schedule(args: argparse.Namespace, _: list[str]) -> int:
    from tierflow.schedule import Scheduler, load_schedule_config, serve

    config = load_schedule_config(args.config)
    if args.dry_run:
        for name, at in Scheduler(config).upcoming(args.dry_run):
            print(f"{at.isoformat()}  {name}")
        return 0
    serve(config)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tierflow", description=__doc__.splitlines()[0])
    root.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines as text or JSON (default: $TIERFLOW_LOG_FORMAT or text)",
    )
    root.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics on this port while the command runs (0 picks a free one)",
    )
    root.add_argument("--metrics-host", default="127.0.0.1", help="bind address for --metrics-port")
    root.add_argument(
        "--metrics-textfile",
        help="write the metrics to this file when the command ends (node_exporter textfile collector)",
    )
    sub = root.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="run the batch pipeline over files (local or s3://)")
    ingest.add_argument("source", help="file, directory or s3://bucket/prefix")
    ingest.add_argument("--format", choices=("auto", "beir", "jsonl", "text", "parquet"))
    for name in ("id-field", "text-field", "title-field", "op-field", "version-field"):
        ingest.add_argument(f"--{name}", dest=name.replace("-", "_"))
    ingest.add_argument("--glob", help="file pattern inside a directory or prefix")
    ingest.add_argument("--s3-endpoint-url", dest="s3_endpoint_url", help="S3-compatible endpoint")
    ingest.add_argument(
        "--sync", choices=("incremental", "full"), help="full: delete documents gone from the source files"
    )
    ingest.add_argument("--json", action="store_true", help="print the run summary as JSON")
    _add_index_args(ingest)
    _add_build_args(ingest)
    ingest.set_defaults(func=cmd_ingest)

    search = sub.add_parser("search", help="search the index")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--json", action="store_true")
    _add_index_args(search)
    search.set_defaults(func=cmd_search)

    serve_search = sub.add_parser("serve", help="HTTP search API over the index (POST /v1/search)")
    serve_search.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve_search.add_argument("--port", type=int, help="port (default 8788; 0 picks a free one)")
    serve_search.add_argument("--cold", help="cold tier settings override: directory or s3://bucket/prefix")
    serve_search.add_argument(
        "--shadow", metavar="VERSION", help="also query this candidate index version; log top-k overlap"
    )
    serve_search.add_argument("--shadow-log", help="JSON-lines file for the shadow comparisons")
    serve_search.add_argument(
        "--shadow-log-queries", action="store_true", help="log query texts (default: their SHA-256 only)"
    )
    _add_index_args(serve_search)
    serve_search.set_defaults(func=cmd_serve)

    lineage = sub.add_parser("lineage", help="where a document's (or a vector id's) vectors came from")
    lineage.add_argument("id", help="document id or FAISS vector id")
    _add_index_args(lineage)
    lineage.set_defaults(func=cmd_lineage)

    ev = sub.add_parser("eval", help="retrieval evaluation: suites, single datasets, gates, query logs")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True)
    run_suite = ev_sub.add_parser("run", help="score a suite (datasets x index configs); reports and gate")
    run_suite.add_argument("suite", help="suite file (TOML), e.g. evaluation/suites/scifact.toml")
    run_suite.add_argument("--out", default="tierflow-data/eval", help="report directory")
    run_suite.add_argument("--cache", default="tierflow-data/eval-cache", help="indexes built for suites")
    run_suite.add_argument("--only", nargs="*", help="dataset/config names to score (default: all)")
    run_suite.add_argument("--baseline", help="gate against this baseline instead of the suite's")
    run_suite.add_argument("--no-gate", action="store_true", help="report only; exit 0 unless it breaks")
    run_suite.add_argument("--write-baseline", help="save this run as a baseline file (means + per query)")
    run_suite.add_argument("-v", "--verbose", action="store_true", help="log pipeline progress")
    run_suite.set_defaults(func=cmd_eval_run)
    ev_sub.add_parser(
        "compare", help="BASELINE.json CURRENT.json: deltas, paired significance, exit 1 past --max-drop"
    )
    ev_sub.add_parser("import-log", help="LOG.jsonl OUT: a query log with clicks as a BEIR evaluation set")
    one = ev_sub.add_parser("dataset", help="score one BEIR dataset (tierflow eval --dataset ... also works)")
    one.add_argument("--dataset", required=True, help="BEIR dataset directory")
    one.add_argument(
        "--out", required=True, help="report directory (the index goes in OUT/index unless --index)"
    )
    one.add_argument("--split", default="test")
    one.add_argument("-k", type=int, nargs="+", default=[1, 3, 5, 10, 100], help="cut-offs")
    one.add_argument("--reference", nargs="*", help="published scores to compare, e.g. ndcg@10=0.645")
    one.add_argument("--cold", help="cold tier settings override: directory or s3://bucket/prefix")
    _add_index_args(one)
    _add_build_args(one)
    one.set_defaults(func=cmd_eval)

    produce = sub.add_parser("produce", help="send documents (JSON lines) to a Kafka document topic")
    produce.add_argument("file", help="JSON lines file, or - for standard input")
    produce.add_argument("--bootstrap", help="Kafka bootstrap servers (default: [kafka] bootstrap_servers)")
    produce.add_argument("--topic", help="document topic (default: the first of [kafka] topics)")
    produce.add_argument("--config", help="TOML config file with a [kafka] table")
    produce.add_argument("-v", "--verbose", action="store_true")
    produce.set_defaults(func=cmd_produce)

    stream = sub.add_parser("stream", help="follow Kafka document topics into the index (micro-batches)")
    stream.add_argument("--bootstrap", help="Kafka bootstrap servers (default: [kafka] bootstrap_servers)")
    stream.add_argument("--topic", help="document topic(s), comma-separated (default: [kafka] topics)")
    stream.add_argument("--group", help="consumer group (default: [kafka] group_id)")
    stream.add_argument("--dead-letter-topic", dest="dead_letter_topic", help="where rejected records go")
    stream.add_argument(
        "--format",
        choices=("documents", "debezium"),
        default="documents",
        help="documents: the tierflow topic contract; debezium: change events (JsonConverter)",
    )
    stream.add_argument("--id-columns", help="debezium: columns forming the doc id (default: the key's)")
    stream.add_argument("--text-column", help="debezium: text column(s), comma-separated")
    stream.add_argument("--title-column", help="debezium: title column")
    stream.add_argument("--id-prefix", help="debezium: prefix for doc ids, e.g. 'pg.public.articles:'")
    _add_micro_batch_args(stream)
    _add_index_args(stream)
    _add_build_args(stream)
    stream.set_defaults(func=cmd_stream)

    cdc = sub.add_parser("cdc", help="follow a Postgres logical replication slot (wal2json) into the index")
    cdc.add_argument("--dsn", help="libpq connection string (default: [postgres] dsn)")
    cdc.add_argument("--slot", help="replication slot (default: [postgres] slot)")
    cdc.add_argument("--create-slot", action="store_true", help="create the slot if it does not exist")
    _add_micro_batch_args(cdc)
    _add_index_args(cdc)
    _add_build_args(cdc)
    cdc.set_defaults(func=cmd_cdc)

    webhook = sub.add_parser("webhook", help="the webhook receiver")
    webhook_sub = webhook.add_subparsers(dest="webhook_command", required=True)
    serve_cmd = webhook_sub.add_parser(
        "serve", help="accept signed document events over HTTP (Standard Webhooks)"
    )
    serve_cmd.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port (default 8787; 0 picks a free one)")
    serve_cmd.add_argument("--queue-dir", dest="queue_dir", help="durable queue directory")
    serve_cmd.add_argument(
        "--config", help="TOML config file with a [webhook] table (secrets: TIERFLOW__WEBHOOK__SECRETS)"
    )
    serve_cmd.add_argument("--ingest", action="store_true", help="also index accepted events (same process)")
    serve_cmd.add_argument(
        "--topic", help="write accepted events to this Kafka document topic instead of the queue"
    )
    serve_cmd.add_argument("--bootstrap", help="Kafka bootstrap servers for --topic (default: [kafka])")
    serve_cmd.add_argument("--index", help="hot-tier directory for --ingest")
    serve_cmd.set_defaults(func=cmd_webhook_serve)

    schedule = sub.add_parser(
        "schedule", help="run tierflow commands on cron schedules ([[schedule.jobs]] in the config file)"
    )
    schedule.add_argument(
        "--config", help="TOML config file with [[schedule.jobs]] (default: ./tierflow.toml)"
    )
    schedule.add_argument(
        "--dry-run", type=int, metavar="N", default=0, help="print each job's next N fire times and exit"
    )
    schedule.set_defaults(func=cmd_schedule)

    lifecycle = sub.add_parser("lifecycle", help="age documents between hot, warm and cold by policy")
    lifecycle_sub = lifecycle.add_subparsers(dest="lifecycle_command", required=True)
    for name, text in (
        ("plan", "show what would move and why (changes nothing)"),
        ("run", "move documents between tiers: copy, verify, commit, clean up (what a scheduler calls)"),
    ):
        cmd = lifecycle_sub.add_parser(name, help=text)
        cmd.add_argument("--as-of", help="evaluate policies at this time: ISO date/time or +30d from now")
        cmd.add_argument("--cold", help="cold tier: directory or s3://bucket/prefix (default: [cold] uri)")
        cmd.add_argument("--json", action="store_true", help="print the plan or summary as JSON")
        cmd.add_argument("--limit", type=int, default=20, help="plan: moves listed (all with --json)")
        _add_index_args(cmd)
        cmd.set_defaults(func=cmd_lifecycle)

    storage = sub.add_parser("storage", help="storage of each tier")
    storage_sub = storage.add_subparsers(dest="storage_command", required=True)
    report_cmd = storage_sub.add_parser(
        "report", help="vectors, bytes, flash saved, oldest/newest per tier; plot of tier sizes over runs"
    )
    report_cmd.add_argument(
        "--out", default="tierflow-data/storage-report", help="folder for the report files"
    )
    report_cmd.add_argument("--cold", help="cold tier settings override: directory or s3://bucket/prefix")
    _add_index_args(report_cmd)
    report_cmd.set_defaults(func=cmd_storage_report)

    compact = sub.add_parser("compact", help="merge segments and drop deleted vectors")
    _add_index_args(compact)
    compact.set_defaults(func=cmd_compact)

    gc = sub.add_parser("gc", help="delete files no kept manifest references")
    gc.add_argument("--keep", type=int, default=5, help="manifests (snapshots) to keep")
    gc.add_argument(
        "--min-age", type=float, default=6 * 3600, help="seconds an unreferenced segment must be old"
    )
    _add_index_args(gc)
    gc.set_defaults(func=cmd_gc)

    reindex = sub.add_parser(
        "reindex", help="build a candidate index version with new settings (--config NEW) beside the live one"
    )
    reindex.add_argument("--name", help="the candidate's name (default: the next free vN)")
    reindex.add_argument(
        "--live-config", help="TOML config the live version was built with (for its model path; default: none)"
    )
    _add_index_args(reindex)
    _add_build_args(reindex)
    reindex.set_defaults(func=cmd_reindex)

    promote_cmd = sub.add_parser(
        "promote", help="catch a candidate version up, gate it on a labelled query set, switch to it"
    )
    promote_cmd.add_argument("--name", required=True, help="the candidate version")
    promote_cmd.add_argument("--dataset", help="BEIR directory to gate on ([promote] dataset)")
    promote_cmd.add_argument("--metric", help="gated metric ([promote] metric, default ndcg@10)")
    promote_cmd.add_argument("--max-drop", type=float, help="allowed drop of the metric (default 0)")
    promote_cmd.add_argument("--force", action="store_true", help="switch without the gate (recorded)")
    promote_cmd.add_argument("--out", default="tierflow-data/promotion", help="report folder")
    _add_index_args(promote_cmd)
    promote_cmd.add_argument("--cold", help="cold tier settings override: directory or s3://bucket/prefix")
    promote_cmd.set_defaults(func=cmd_promote)

    rollback_cmd = sub.add_parser("rollback", help="switch back to the version the last switch left")
    rollback_cmd.add_argument("--to", help="a kept version instead of the previous one")
    rollback_cmd.add_argument("--reason", help="recorded in the registry and the audit log")
    rollback_cmd.add_argument("--out", default="tierflow-data/promotion", help="report folder")
    _add_index_args(rollback_cmd)
    rollback_cmd.set_defaults(func=cmd_rollback)

    versions_cmd = sub.add_parser("versions", help="the index versions kept, and which is live")
    versions_cmd.add_argument("--json", action="store_true")
    _add_index_args(versions_cmd)
    versions_cmd.set_defaults(func=cmd_versions)

    demo = sub.add_parser("demo", help="end to end on the embedded default: ingest, search, evaluate")
    demo.add_argument("--workdir", default="tierflow-data/demo")
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser(
        "bench",
        help="ingest: pipeline vs bare encode, same process; stream: produce-to-searchable latency; "
        "lifecycle: hot-only vs federated search latency and recall, cost of a lifecycle run",
    )
    bench.add_argument(
        "kind",
        nargs="?",
        choices=("ingest", "stream", "lifecycle", "peers", "search", "gpu"),
        default="ingest",
        help="peers, search and gpu have their own options (tierflow bench peers --help)",
    )
    bench.add_argument("--rate", type=float, default=50.0, help="stream: documents per second")
    bench.add_argument(
        "--rates",
        help="stream: comma-separated rates, one run each: latency vs throughput (a curve and plot)",
    )
    bench.add_argument("--duration", type=float, default=30.0, help="stream: seconds of producing")
    bench.add_argument("--bootstrap", help="stream: an existing Kafka broker (default: a local Tansu)")
    bench.add_argument("--dataset", default="../shared/data/scifact")
    bench.add_argument("--limit", type=int, default=0, help="documents to use (0 = all)")
    bench.add_argument(
        "--vectors",
        type=int,
        default=120_000,
        help="lifecycle: vectors in the synthetic index (half go cold)",
    )
    bench.add_argument("--queries", type=int, default=200, help="lifecycle: queries, searched one at a time")
    bench.add_argument(
        "--out",
        default="tierflow-data/bench",
        help="report folder (ingest: bench.*, stream: bench-stream.*, lifecycle: bench-lifecycle.*)",
    )
    bench.set_defaults(func=cmd_bench)
    return root


def _dump_stacks_on_sigusr1() -> None:
    """``kill -USR1 <pid>`` prints every thread's stack to stderr and the process goes on (a hung
    command shows what it waits on). Skipped where stderr is not a real file (an embedding host)."""
    if not hasattr(signal, "SIGUSR1") or sys.__stderr__ is None:
        return
    try:
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError and ValueError
        return


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"] and len(argv) > 1 and argv[1].startswith("--") and argv[1] != "--help":
        argv.insert(1, "dataset")  # the single-dataset form predates suites: tierflow eval --dataset ...
    if argv[:2] == ["eval", "compare"]:
        from evaluation.compare import compare_main

        return compare_main(argv[2:])
    if argv[:2] == ["bench", "peers"]:
        from pipelines.bench_peers import main as bench_peers_main

        return bench_peers_main(argv[2:])
    if argv[:2] == ["bench", "search"]:
        from indexing.bench_search import main as bench_search_main

        return bench_search_main(argv[2:])
    if argv[:2] == ["bench", "gpu"]:
        from indexing.bench_gpu import main as bench_gpu_main

        return bench_gpu_main(argv[2:])
    if argv[:2] == ["eval", "import-log"]:
        from evaluation.querylog import querylog_main

        return querylog_main(argv[2:])
    args, beam_args = parser().parse_known_args(argv)
    _dump_stacks_on_sigusr1()
    _setup_logging(getattr(args, "verbose", False), args.log_format)
    from tierflow import metrics

    try:
        if args.metrics_port is not None:
            port = metrics.start_server(args.metrics_port, args.metrics_host)
            print(f"metrics: http://{args.metrics_host}:{port}/metrics", file=sys.stderr)
        return int(args.func(args, beam_args))
    except TierflowError as err:
        print(f"tierflow: error: {err}", file=sys.stderr)
        return 2
    finally:
        if args.metrics_textfile:
            metrics.write_textfile(args.metrics_textfile)


if __name__ == "__main__":
    sys.exit(main())
