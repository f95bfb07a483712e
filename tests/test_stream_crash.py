"""Kill -9 the stream process repeatedly while producers write (updates, deletes, out-of-order versions);
after a final restart every document is in the index exactly once at its newest version, deleted ones
are absent, and nothing was embedded twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.kafka_client import DocumentProducer
from indexing.hot import HotIndex
from tests.helpers import REPO, live_docs, live_vectors
from tests.kafka_broker import CONSUMER_PROPERTIES, kafka_config

pytestmark = [pytest.mark.kafka, pytest.mark.model]
KILLS = 5
DOCS = 30


def _toml(values: dict[str, Any]) -> str:
    return "\n".join(f'"{k}" = {json.dumps(v)}' for k, v in values.items())


def test_sigkill_stream_while_producing(kafka_broker: str, topic: Any, tmp_path: Path) -> None:
    name = topic("crash", partitions=2)
    kafka = kafka_config(kafka_broker, (name,))
    config_file = tmp_path / "tierflow.toml"
    config_file.write_text(
        f'index_dir = "{tmp_path / "hot"}"\nwrite_shards = 1\n\n[kafka]\nbootstrap_servers = "{kafka_broker}"\n'
        f'topics = "{name}"\ngroup_id = "{kafka.group_id}"\n\n[kafka.consumer_properties]\n{_toml(CONSUMER_PROPERTIES)}\n'
    )
    rng = random.Random(20261129)
    truth: dict[str, tuple[int, str | None]] = {}  # doc id -> (newest version, text or None when deleted)
    upserts_sent = 0
    done = threading.Event()

    def produce() -> None:
        nonlocal upserts_sent
        with DocumentProducer(kafka) as producer:
            version = 0
            while not done.is_set():
                version += 1
                doc_id = f"d{rng.randrange(DOCS)}"
                roll = rng.random()
                if roll < 0.15:
                    producer.delete(doc_id, version=version)
                    truth[doc_id] = (version, None)
                elif roll < 0.25 and doc_id in truth:
                    # An out-of-order older version: it must never win.
                    old = max(0, truth[doc_id][0] - 1)
                    producer.send(doc_id, f"stale text of {doc_id} at {old}", version=old)
                    upserts_sent += 1
                else:
                    text = f"document {doc_id} at version {version} about topic {rng.randrange(1000)}"
                    producer.send(doc_id, text, version=version)
                    truth[doc_id] = (version, text)
                    upserts_sent += 1
                producer.flush()
                time.sleep(0.02)

    command = [
        sys.executable,
        "-m",
        "tierflow.cli",
        "stream",
        "--config",
        str(config_file),
        "--max-wait",
        "0.3",
    ]
    writer = threading.Thread(target=produce)
    writer.start()
    kills = []
    try:
        for _ in range(KILLS):
            proc = subprocess.Popen(
                command, cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            delay = rng.uniform(4.0, 14.0)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append(round(delay, 1))
    finally:
        done.set()
        writer.join()
    final = subprocess.run(
        [*command, "--exit-when-idle", "6"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert final.returncode == 0, final.stderr[-3000:]

    index_dir = tmp_path / "hot"
    vectors = live_vectors(index_dir)  # asserts no vector is live twice
    docs = live_docs(index_dir)
    expected_live = {doc_id for doc_id, (_, text) in truth.items() if text is not None}
    assert set(docs) == expected_live, f"kills at {kills}"
    texts = set(vectors.values())
    for doc_id in expected_live:
        assert truth[doc_id][1] in texts, f"{doc_id} is not at its newest version (kills at {kills})"
    assert not any(text.startswith("stale text") for text in texts)
    # Every committed embedding lives in exactly one committed segment; count them over all generations.
    store = HotIndex(index_dir).store
    segments = {
        seg.info.segment_id: seg.info.n_vectors
        for gen in store.generations()
        for seg in store.load(store.file_name(gen)).segments
    }
    embedded = sum(segments.values())
    assert embedded <= upserts_sent, (
        f"{embedded} embeddings for {upserts_sent} upserts: something was embedded twice"
    )
