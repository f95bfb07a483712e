"""Blue/green re-indexing while a stream keeps writing to the live version, against a real Kafka-protocol
broker (Tansu): updates produced during the re-index are in the candidate when it is promoted; a worker
still configured for the old version is refused after the switch (nothing mixed, nothing acknowledged),
and one configured for the new version resumes from the positions the promoted version recorded."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.kafka_client import DocumentProducer
from evaluation.promotion import PromoteConfig, promote
from indexing.docs_table import DELETED
from indexing.hot import HotIndex
from pipelines.reindex import build_candidate
from pipelines.stream import BatchPolicy, KafkaSource, MicroBatchStream
from tests.helpers import SCIFACT, assert_exactly_once, config
from tests.kafka_broker import kafka_config
from tierflow.errors import IncompatibleIndex

pytestmark = [pytest.mark.kafka, pytest.mark.model]
POLICY = BatchPolicy(max_records=100, max_wait_s=0.3)


def _docs(n: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (SCIFACT / "corpus.jsonl").read_text().splitlines()[:n]]


def _wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_streaming_updates_during_a_reindex_are_in_the_promoted_version(
    kafka_broker: str, topic: Any, tmp_path: Path
) -> None:
    docs_topic = topic("docs", partitions=2)
    kafka = kafka_config(kafka_broker, (docs_topic,))
    root = tmp_path / "hot"
    live_cfg = config(root, write_shards=1)
    new_cfg = config(root, write_shards=1, chunking={"max_tokens": 96, "overlap_tokens": 8})
    docs = _docs(80)
    with DocumentProducer(kafka) as producer:
        for i, doc in enumerate(docs):
            producer.send(doc["_id"], doc["text"], doc["title"], version=10 + i)
    MicroBatchStream(KafkaSource(kafka), live_cfg, POLICY).run(idle_exit_s=3)
    assert len(HotIndex(root).docs()) == 80

    # A stream worker keeps following the topic into the live version while the candidate is built.
    stop = threading.Event()
    old_worker = MicroBatchStream(KafkaSource(kafka), live_cfg, POLICY)
    worker_error: list[BaseException] = []

    def follow() -> None:
        try:
            old_worker.run(stop=stop)
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            worker_error.append(err)

    follower = threading.Thread(target=follow)
    follower.start()
    building = threading.Thread(target=build_candidate, args=(live_cfg, new_cfg, "v2"))
    updates: dict[str, str] = {}
    sent_while_building = 0
    with DocumentProducer(kafka) as producer:
        building.start()
        i = 0
        while building.is_alive() or i < 6:
            doc = docs[i % len(docs)]
            text = f"{doc['text']} Revision {i} during the re-index."
            producer.send(doc["_id"], text, doc["title"], version=1_000 + i)
            producer.flush()
            updates[doc["_id"]] = text
            sent_while_building += building.is_alive()
            i += 1
            time.sleep(0.3)
        producer.send("new-during-reindex", "A document first seen while the index was rebuilt.", "New", version=5)
        producer.delete(docs[50]["_id"], version=2_000)
    building.join()
    assert sent_while_building >= 3, "the updates must overlap the build"

    def live_has_everything() -> bool:
        state = HotIndex(root).docs()
        return (
            "new-during-reindex" in state
            and state[docs[50]["_id"]].status == DELETED
            and all(state[d].version >= 1_000 for d in updates)
        )

    _wait_for(live_has_everything, 120, "the live worker to index every update")
    report = promote(live_cfg, "v2", PromoteConfig(), tmp_path / "promotion", force=True)
    assert report["switched"]

    # Everything the live version had is in the promoted one, made with the new chunking.
    live = HotIndex(root)
    assert live.manifest().version == "v2" and live.manifest().chunking["max_tokens"] == 96
    state = live.docs()
    assert "new-during-reindex" in state and state[docs[50]["_id"]].status == DELETED
    rows, _ = live.doc_vectors([state[d] for d in updates])
    texts = " ".join(row["text"] for row in rows)
    for text in updates.values():
        assert text.split(" Revision ")[1] in texts

    # A change after the switch: the old worker's commit is refused; a worker for v2 resumes and has it.
    with DocumentProducer(kafka) as producer:
        producer.send(docs[0]["_id"], "Written after the promotion.", docs[0]["title"], version=3_000)
    follower.join(120)
    stop.set()
    assert worker_error and isinstance(worker_error[0], IncompatibleIndex), worker_error
    assert HotIndex(root).docs()[docs[0]["_id"]].version < 3_000
    MicroBatchStream(KafkaSource(kafka), new_cfg, POLICY).run(idle_exit_s=3)
    assert HotIndex(root).docs()[docs[0]["_id"]].version == 3_000
    assert_exactly_once(root)
