"""Prometheus metrics of a real streaming ingest: scrape ``tierflow --metrics-port`` while documents flow
from the broker into the index, and watch the counters move."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.kafka_client import DocumentProducer
from tests.helpers import REPO
from tests.kafka_broker import CONSUMER_PROPERTIES, kafka_config

pytestmark = [pytest.mark.kafka, pytest.mark.model]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _total(samples: Samples, name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


def test_metrics_move_during_a_streaming_ingest(kafka_broker: str, topic: Any, tmp_path: Path) -> None:
    name = topic("metrics", partitions=2)
    kafka = kafka_config(kafka_broker, (name,))
    config = tmp_path / "tierflow.toml"
    properties = "\n".join(f'"{k}" = {json.dumps(v)}' for k, v in CONSUMER_PROPERTIES.items())
    config.write_text(
        f'index_dir = "{tmp_path / "hot"}"\nwrite_shards = 1\n\n[kafka]\nbootstrap_servers = "{kafka_broker}"\n'
        f'topics = "{name}"\ngroup_id = "{kafka.group_id}"\n\n[kafka.consumer_properties]\n{properties}\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierflow.cli", "--metrics-port", "0", "stream", "--config", str(config), "--max-wait", "0.3"],
        cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr or []], daemon=True).start()
    try:
        url = ""
        deadline = time.monotonic() + 60
        while not url and time.monotonic() < deadline:
            found = re.search(r"metrics: (http://\S+/metrics)", lines.get(timeout=60))
            url = found.group(1) if found else ""
        assert url, "the stream did not announce its metrics endpoint"
        before = _scrape(url)

        def produce(first: int, count: int) -> None:
            with DocumentProducer(kafka) as producer:
                for i in range(first, first + count):
                    producer.send(f"m{i}", f"document {i} about metrics and monitoring {i % 7}", version=1)
                producer.flush()

        def wait_for(check: Any, what: str) -> Samples:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                samples = _scrape(url)
                if check(samples):
                    return samples
                assert proc.poll() is None, "the stream exited"
                time.sleep(0.5)
            pytest.fail(f"metrics never showed {what}")

        produce(0, 20)
        first = wait_for(
            lambda s: (
                _value(s, "tierflow_stage_documents_total", stage="write", outcome="out")
                - _value(before, "tierflow_stage_documents_total", stage="write", outcome="out")
                >= 20
            ),
            "20 documents written",
        )
        produce(20, 15)
        second = wait_for(
            lambda s: (
                _value(s, "tierflow_stage_documents_total", stage="write", outcome="out")
                - _value(first, "tierflow_stage_documents_total", stage="write", outcome="out")
                >= 15
            ),
            "15 more documents written",
        )
        assert _value(second, "tierflow_stage_documents_total", stage="source", outcome="out") >= 35
        for stage in ("parse", "validate", "dedup", "chunk", "embed", "write"):
            assert _value(second, "tierflow_stage_documents_total", stage=stage, outcome="in") >= 35, stage
        assert _value(second, "tierflow_commits_total") > _value(first, "tierflow_commits_total") >= 1
        assert _value(second, "tierflow_embedded_chunks_total") >= 35
        assert _value(second, "tierflow_embedding_batch_seconds_count") > _value(
            first, "tierflow_embedding_batch_seconds_count"
        )
        assert _value(second, "tierflow_commit_seconds_count") == _value(second, "tierflow_commits_total")
        freshness = _value(second, "tierflow_freshness_seconds_count")
        assert freshness >= 35 and _value(second, "tierflow_freshness_seconds_sum") / freshness < 120
        lags = {
            labels: v
            for (sample, labels), v in second.items()
            if sample == "tierflow_kafka_consumer_lag_messages"
        }
        assert {dict(labels)["topic"] for labels in lags} == {name} and all(v >= 0 for v in lags.values())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
