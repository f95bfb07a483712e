"""Crash-consistency harness: SIGKILL ingest, compaction, lifecycle and streaming processes at seeded random
points, restart them, and check the invariants of design.md after every kill and after every recovery.

    python -m tests.harness.crash --target all --runs 50 --seed 1 --out crash.json   # release check
    python -m tests.harness.crash --target compact --runs 3                            # what CI runs
    python -m tests.harness.crash --target stream --runs 3                             # also in CI

Kill times (and, for ``stream``, the records produced) are drawn from the seed: a run is reproducible from
the seed and its number. There are two kinds of target.

Jobs (``ingest``, ``compact``, ``lifecycle``): a command that runs to completion. Each run copies a prepared
index, starts the command as a subprocess, kills it with SIGKILL after a delay drawn from
``[interpreter start-up, 1.2 × the time an uninterrupted run takes]``, then checks:

- the manifest loads and every live segment passes its checksums;
- every committed document is findable exactly once, at the version the committed state names, and no
  deleted document is visible; the state is all-before or all-after the interrupted command (atomicity);
- re-running the command finishes the job (the final state is the intended one);
- after ``tierflow gc --keep 1 --min-age 0`` no segment, tombstone or document-table file is left that
  no manifest names, and no cold row is left that no manifest names.

Stream (``stream``): ``tierflow stream`` following a Kafka topic, which never finishes on its own. All runs
share one Tansu broker, one topic of two partitions and one index, while a seeded producer thread writes
upserts (some re-sending a document's unchanged text), deletes and stale older versions of a bounded set
of documents; only the records the broker acknowledged count as the truth. Each run starts the stream and
kills it, by a seeded draw, either during start-up, after a delay drawn from ``[interpreter and model
start-up, the first commit of a restarted stream]`` (both measured before the runs), or once it has
committed, a delay drawn from ``[0, 5 s]`` after its first commit. After every kill it checks:

- the manifest loads, every live segment passes its checksums, and no vector is findable twice;
- the committed documents are what the records up to the positions the manifest records make them: each
  at the newest version among those records (so no stale version wins and nothing held is lost), and
  deleted ones invisible;
- no document's committed version goes backwards from one kill to the next.

After the last run the producer stops, ``tierflow stream --exit-when-idle`` recovers (run again, up to 3
times, while it stopped short of the topic's end, idle while the test broker was slow), and: every
acknowledged document is present exactly once at its newest version and every deleted one is absent; the
recorded positions reach the end of the topic; nothing was embedded twice (no record's chunk is in two
committed segments, and all committed segments of all generations hold no more vectors than upserts were
sent); no orphans after gc, as for the jobs.

The JSON summary counts runs, kills that landed before the process finished, violations, documents lost,
orphans after gc and (stream) acknowledged messages produced; a stream target also counts its problems by
kind, and keeps its work directory (index, logs, ``records.jsonl``) when it found any. A run passes when
violations, documents lost and orphans are all 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tierflow.errors import TierflowError

REPO = Path(__file__).resolve().parents[2]
DAY = 86400.0
# What a failed check raises: an assertion, a failed command, or a file the index refuses (IndexCorrupt).
CHECK_FAILURES = (AssertionError, subprocess.CalledProcessError, subprocess.TimeoutExpired, TierflowError)


# ---- processes ---------------------------------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tierflow.cli", *args]


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    env.pop("TIERFLOW_FAILPOINTS", None)
    return env


def _seconds(command: list[str], env: dict[str, str]) -> float:
    """How long ``command`` takes to run to completion."""
    started = time.monotonic()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    return time.monotonic() - started


def _spawn(command: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` from the repository root; its output goes to ``log`` (discarded without one)."""
    with log.open("wb") if log else open(os.devnull, "wb") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _kill_after(proc: subprocess.Popen[bytes], delay: float) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after now and reap it; True when it had finished first."""
    finished = False
    try:
        time.sleep(delay)
        finished = proc.poll() is not None
    finally:  # also when the harness itself is stopped meanwhile
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    return finished


def _counts(**extra: int) -> dict[str, int]:
    """The counters every target reports, plus its own."""
    return {
        "runs": 0,
        "killed_before_finish": 0,
        "violations": 0,
        "documents_lost": 0,
        "orphans_after_gc": 0,
        "recoveries": 0,
        **extra,
    }


# ---- invariants shared by every target -----------------------------------------------------------------
def _state(work: Path) -> dict[str, Any]:
    """Committed documents (live ones, tiers, texts, versions) and source positions, after verifying
    checksums and the exactly-once rule."""
    from indexing.cold import ColdConfig
    from indexing.docs_table import DELETED
    from indexing.hot import HotIndex, tier_of
    from tests.helpers import assert_exactly_once

    index = HotIndex(work / "hot")
    manifest = index.manifest()
    for live in manifest.segments:
        index.reader(live).index  # noqa: B018 - raises IndexCorrupt when a checksum fails
        index.reader(live).chunks  # noqa: B018
    assert_exactly_once(work / "hot", ColdConfig(uri=str(work / "cold")))
    docs = index.docs(manifest)
    storage = {live.info.segment_id: live.storage for live in manifest.segments}
    last: dict[str, tuple[int, str]] = {}  # each document's last chunk (where an appended sentence lands)
    for live in manifest.segments:
        dead = set(index.tombstones(live).tolist())
        for row in index.reader(live).chunks.select(["vector_id", "doc_id", "ordinal", "text"]).to_pylist():
            if row["vector_id"] not in dead and row["ordinal"] >= last.get(row["doc_id"], (-1, ""))[0]:
                last[row["doc_id"]] = (row["ordinal"], row["text"])
    texts = {doc_id: text for doc_id, (_, text) in last.items()}
    return {
        "generation": manifest.generation,
        "live": {d for d, s in docs.items() if s.status != DELETED},
        "tiers": {d: tier_of(s, storage) for d, s in docs.items() if tier_of(s, storage)},
        "texts": texts,
        "versions": {d: s.version for d, s in docs.items()},
        "sources": dict(manifest.sources),
        "segments": len(manifest.segments),
    }


def _no_orphans(work: Path) -> int:
    """Run gc and count files no manifest names, plus cold rows no manifest names."""
    from indexing.cold import ColdConfig, ColdStore
    from indexing.hot import HotIndex

    index = HotIndex(work / "hot")
    index.collect_garbage(keep_generations=1, min_age_s=0)
    manifest = index.manifest()
    named = {f"segments/{s.info.segment_id}" for s in manifest.segments}
    named |= {s.tombstones for s in manifest.segments if s.tombstones}
    named |= {manifest.docs_file} if manifest.docs_file else set()
    orphans = 0
    for sub in ("segments", "tombstones", "docs"):
        folder = work / "hot" / sub
        if folder.exists():
            orphans += sum(1 for p in folder.iterdir() if f"{sub}/{p.name}" not in named)
    if manifest.cold and (work / "cold").exists():
        docs = index.docs(manifest)
        rows = ColdStore(ColdConfig(uri=str(work / "cold"))).placements()
        orphans += sum(
            1
            for batch, ids in rows.items()
            for d in ids
            if docs.get(d) is None or docs[d].cold_batch != batch
        )
    return orphans


# ---- jobs: commands that run to completion on a prepared index ---------------------------------------
@dataclass
class Job:
    """How to prepare, run and judge one command that runs to completion."""

    name: str
    prepare: Callable[[Path], None]
    command: Callable[[Path], list[str]]
    intended: Callable[[Path], dict[str, Any]]
    env: dict[str, str] = field(default_factory=dict)


def _docs() -> list[dict[str, Any]]:
    from tests.helpers import demo_docs

    return demo_docs()


def _write(path: Path, records: list[dict[str, Any]], mtime_ns: int) -> None:
    from tests.helpers import write_jsonl

    write_jsonl(path, list(records), mtime_ns=mtime_ns)


# ingest: v1 committed, then v2 (every text changed, a quarter deleted) is interrupted
def _prepare_ingest(work: Path) -> None:
    docs = _docs()
    corpus = work / "docs.jsonl"
    _write(corpus, [{**d, "op": "upsert"} for d in docs], 1_000)
    subprocess.run(_ingest_command(work), cwd=REPO, env=_env({}), check=True, capture_output=True)
    updated = [
        {**d, "op": "delete"} if i % 4 == 0 else {**d, "op": "upsert", "text": d["text"] + " Second edition."}
        for i, d in enumerate(docs)
    ]
    _write(corpus, updated, 2_000)


def _ingest_command(work: Path) -> list[str]:
    return _cli("ingest", str(work / "docs.jsonl"), "--index", str(work / "hot"), "--op-field", "op")


def _ingest_intended(work: Path) -> dict[str, Any]:
    docs = _docs()
    return {
        "live": {d["_id"] for i, d in enumerate(docs) if i % 4},
        "text_suffix": " Second edition.",
    }


# compaction: an index of several segments with tombstones
def _prepare_compact(work: Path) -> None:
    from lifecycle.synthetic import build_synthetic_index

    build_synthetic_index(work / "hot", 30_000, 2, 64, segment_docs=5_000)
    from indexing.docs_table import DELETED, DocState
    from indexing.hot import CommitRequest, HotIndex
    from lifecycle.synthetic import doc_name

    HotIndex(work / "hot").commit(
        CommitRequest("deletes", updates=[DocState(doc_name(i), 2, DELETED) for i in range(0, 30_000, 3)])
    )


def _compact_intended(work: Path) -> dict[str, Any]:
    from lifecycle.synthetic import doc_name

    return {"live": {doc_name(i) for i in range(30_000) if i % 3}, "segments": 1}


# lifecycle: a third to cold, a third to warm
def _prepare_lifecycle(work: Path) -> None:
    from lifecycle.synthetic import build_synthetic_index

    now = time.time()
    ages = (60 * DAY, 10 * DAY, 0.0)
    build_synthetic_index(
        work / "hot", 6_300, 1, 16, ingest_time=lambda i: now - ages[i % 3], segment_docs=2_500
    )


def _lifecycle_intended(work: Path) -> dict[str, Any]:
    from lifecycle.synthetic import doc_name

    return {
        "live": {doc_name(i) for i in range(6_300)},
        "tiers": {doc_name(i): ("cold", "warm", "hot")[i % 3] for i in range(6_300)},
    }


JOBS = {
    "ingest": Job(
        "ingest", _prepare_ingest, _ingest_command, _ingest_intended, {"TIERFLOW__WRITE_SHARDS": "2"}
    ),
    "compact": Job(
        "compact", _prepare_compact, lambda w: _cli("compact", "--index", str(w / "hot")), _compact_intended
    ),
    "lifecycle": Job(
        "lifecycle",
        _prepare_lifecycle,
        lambda w: _cli("lifecycle", "run", "--index", str(w / "hot"), "--cold", str(w / "cold")),
        _lifecycle_intended,
        {"TIERFLOW__LIFECYCLE__WARM_AFTER": "7d", "TIERFLOW__LIFECYCLE__COLD_AFTER": "30d"},
    ),
}


def _check_job(
    target: str, work: Path, before: dict[str, Any], intended: dict[str, Any], finished: bool
) -> str:
    """After a kill: the state is the one before or the intended one, never a mix. Returns which."""
    now = _state(work)
    if _is_intended(target, now, intended):
        return "after"
    if now["live"] == before["live"] and now["tiers"] == before["tiers"] and now["texts"] == before["texts"]:
        if finished:
            raise AssertionError(f"{target}: the command finished but its result is not visible")
        return "before"
    raise AssertionError(f"{target}: a partial result is visible (generation {now['generation']})")


def _is_intended(target: str, now: dict[str, Any], intended: dict[str, Any]) -> bool:
    if now["live"] != intended["live"]:
        return False
    if target == "ingest":
        return all(text.endswith(intended["text_suffix"]) for text in now["texts"].values())
    if target == "compact":
        return now["segments"] == intended["segments"]
    return bool(now["tiers"] == intended["tiers"])


def run_job(spec: Job, runs: int, seed: int, workdir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Kill ``spec``'s command ``runs`` times, each on a fresh copy of its prepared index, and re-run it."""
    name = spec.name
    template = workdir / f"{name}-template"
    if template.exists():
        shutil.rmtree(template)
    template.mkdir(parents=True)
    say(f"{name}: preparing the index")
    spec.prepare(template)
    before = _state(template)
    intended = spec.intended(template)

    timing = workdir / f"{name}-timing"
    shutil.rmtree(timing, ignore_errors=True)
    shutil.copytree(template, timing)
    full = _seconds(spec.command(timing), _env(spec.env))
    assert _is_intended(name, _state(timing), intended), (
        f"{name}: an uninterrupted run did not reach its result"
    )
    startup = min(_seconds(_cli("--help"), _env(spec.env)), 0.5 * full)
    say(f"{name}: an uninterrupted run takes {full:.1f} s (interpreter start-up {startup:.1f} s)")

    rng = random.Random(f"{seed}-{name}")
    counts = _counts(state_before=0, state_after=0)
    failures: list[str] = []
    for number in range(runs):
        work = workdir / f"{name}-run"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(template, work)
        delay = rng.uniform(startup, 1.2 * full)
        proc = _spawn(spec.command(work), _env(spec.env))
        finished = _kill_after(proc, delay)
        counts["killed_before_finish"] += not finished
        counts["runs"] += 1
        try:
            outcome = _check_job(name, work, before, intended, finished and proc.returncode == 0)
            counts[f"state_{outcome}"] += 1
            subprocess.run(spec.command(work), cwd=REPO, env=_env(spec.env), check=True, capture_output=True)
            final = _state(work)
            if not _is_intended(name, final, intended):
                raise AssertionError(f"{name}: the re-run did not reach the intended result")
            counts["documents_lost"] += len(intended["live"] - final["live"])
            counts["recoveries"] += 1
            counts["orphans_after_gc"] += _no_orphans(work)
        except CHECK_FAILURES as err:
            counts["violations"] += 1
            failures.append(f"run {number} (kill at {delay:.2f} s): {err}")
        say(
            f"{name}: run {number + 1}/{runs}, kill at {delay:.2f} s, {'finished first' if finished else 'killed'}"
        )
    shutil.rmtree(workdir / f"{name}-run", ignore_errors=True)
    return {"target": name, "seed": seed, "uninterrupted_s": round(full, 2), **counts, "failures": failures}


# ---- stream: `tierflow stream` on a topic a seeded producer keeps writing ----------------------------
STREAM_DOCS = 40  # document ids the producer draws from
STREAM_PARTITIONS = 2
STREAM_BURST = 10  # records sent, then flushed together: fewer and larger record batches for the broker
STREAM_PRODUCE_EVERY_S = 0.2  # pause between bursts
STREAM_KILLS_AFTER_COMMIT = 0.5  # the share of kills that wait for the run's first commit
STREAM_KILL_AFTER_COMMIT_S = 5.0  # ... and then land up to this long after it
STREAM_IDLE_EXIT_S = 6.0  # the recovery run stops after this long without records
STREAM_RECOVERY_TIMEOUT_S = 600.0
STREAM_RECOVERY_ATTEMPTS = 3  # recovery runs while the index does not hold the topic's last records
STREAM_START_TIMEOUT_S = 300.0
# What `tierflow stream` loads before its first micro-batch: the interpreter, its modules and the model.
_STREAM_STARTUP = (
    "import tierflow.cli, pipelines.stream\n"
    "from indexing.embedder import Embedder\n"
    "from tierflow.config import EmbeddingConfig\n"
    "Embedder(EmbeddingConfig()).warm_up()\n"
)


@dataclass(frozen=True)
class Produced:
    """A record the broker acknowledged: which version of which document, and where it landed."""

    doc_id: str
    version: int
    text: str | None  # None: a delete
    partition: int
    offset: int


class _Deliveries:
    """A ``confluent_kafka.Producer`` that notes where the last record it was given landed once the broker
    acknowledges it, so that the truth can be matched against the source positions a manifest records."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self.landed: list[tuple[int, int]] = []  # the last record's (partition, offset), once acknowledged

    def produce(self, topic: str, **kwargs: Any) -> None:
        report = kwargs.pop("on_delivery")
        self.landed = landed = []

        def noted(err: Any, msg: Any) -> None:
            if err is None:
                landed.append((msg.partition(), msg.offset()))
            report(err, msg)

        self._producer.produce(topic, on_delivery=noted, **kwargs)

    def __len__(self) -> int:  # records not yet acknowledged (len() does not go through __getattr__)
        return len(self._producer)

    def __bool__(self) -> bool:  # with an empty queue it is still a producer (``producer or Producer(...)``)
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


class SeededProducer:
    """Writes upserts, deletes and stale older versions of ``docs`` document ids from a thread, in bursts
    of :data:`STREAM_BURST` records flushed together, in an order drawn from ``seed``. Some upserts re-send
    a document's unchanged text at a newer version (nothing to embed, but the version must be recorded).

    Real versions are even (2, 4, 6 ...); a stale record re-sends a document at one below its newest
    version, so the stale versions are exactly the odd ones. Only acknowledged records are kept, with their
    partition and offset. A document with a record whose delivery failed has no certain truth: it is
    listed in ``unsure`` and left out of the checks.

    Example:
        >>> producer = SeededProducer(kafka, seed=1)
        >>> producer.start()
        >>> with producer.paused():  # every record sent so far is acknowledged (or unsure)
        ...     truth = list(producer.acked)
        >>> producer.stop()
    """

    def __init__(self, kafka: Any, seed: int, docs: int = STREAM_DOCS) -> None:
        self.kafka = kafka
        self.docs = docs
        self.rng = random.Random(f"{seed}-stream-producer")
        self.acked: list[Produced] = []
        self.unsure: set[str] = set()
        self.sent = 0
        self.upserts_sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="crash-harness-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the producer between two bursts."""
        with self._lock:
            self._raise()
            yield

    def stop(self, check: bool = True) -> None:
        """Stop producing (idempotent); with ``check``, raise what stopped the thread, if anything did."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if check:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the producer thread failed: {self._error!r}") from self._error

    def _run(self) -> None:
        from confluent_kafka import Producer

        from connectors.kafka_client import DocumentProducer

        deliveries = _Deliveries(Producer(self.kafka.producer_settings()))
        producer = DocumentProducer(self.kafka, producer=deliveries)
        newest: dict[str, tuple[int, str | None]] = {}
        try:
            while not self._stop.is_set():
                with self._lock:
                    self._produce_burst(producer, deliveries, newest)
                time.sleep(STREAM_PRODUCE_EVERY_S)
        except BaseException as err:  # reported by stop() / paused(), in the harness's thread
            self._error = err

    def _produce_burst(
        self, producer: Any, deliveries: _Deliveries, newest: dict[str, tuple[int, str | None]]
    ) -> None:
        from connectors.kafka_client import KafkaClientError

        sent: list[tuple[str, int, str | None, list[tuple[int, int]]]] = []
        for _ in range(STREAM_BURST):
            doc_id, version, text = self._next(newest)
            if text is None:
                producer.delete(doc_id, version=version)
            else:
                producer.send(doc_id, text, version=version)
            sent.append((doc_id, version, text, deliveries.landed))
            self.sent += 1
            self.upserts_sent += text is not None
        with suppress(KafkaClientError):  # the records without a delivery report are unsure, below
            producer.flush(30.0)
        for doc_id, version, text, landed in sent:
            if not landed:  # not acknowledged (yet): whether it reaches the topic is unknown
                self.unsure.add(doc_id)
                continue
            ((partition, offset),) = landed
            self.acked.append(Produced(doc_id, version, text, partition, offset))

    def _next(self, newest: dict[str, tuple[int, str | None]]) -> tuple[str, int, str | None]:
        """The next record (document, version, text or None for a delete), drawn from the seed."""
        version = 2 * (self.sent + 1)
        doc_id = f"d{self.rng.randrange(self.docs)}"
        roll = self.rng.random()
        if roll < 0.15:
            newest[doc_id] = (version, None)
            return doc_id, version, None
        if roll < 0.25 and doc_id in newest:
            stale = newest[doc_id][0] - 1  # out of order: it must never win
            return doc_id, stale, f"stale text of {doc_id} at {stale}"
        text = newest.get(doc_id, (0, None))[1]
        if roll < 0.30 and text is not None:
            newest[doc_id] = (version, text)  # re-sent unchanged at a newer version: not embedded again
            return doc_id, version, text
        topics = " ".join(str(self.rng.randrange(10_000)) for _ in range(6))  # no near-duplicates
        text = f"document {doc_id} at version {version} about topics {topics}"
        newest[doc_id] = (version, text)
        return doc_id, version, text


def _winners(records: list[Produced], upto: dict[int, int] | None = None) -> dict[str, Produced]:
    """Each document's newest record among those at or before ``upto`` (partition -> offset; all records
    when None): what an index that holds exactly those records must show."""
    out: dict[str, Produced] = {}
    for record in records:
        if upto is not None and record.offset > upto.get(record.partition, -1):
            continue
        if record.doc_id not in out or record.version > out[record.doc_id].version:
            out[record.doc_id] = record
    return out


def _positions(sources: dict[str, str], topic: str) -> dict[int, int]:
    """partition -> offset of the last record of ``topic`` that manifest ``sources`` hold."""
    from connectors.kafka_documents import parse_source_key

    out: dict[int, int] = {}
    for key, position in sources.items():
        parsed = parse_source_key(key)
        if parsed is not None and parsed[0] == topic:
            out[parsed[1]] = int(position)
    return out


class Problem(NamedTuple):
    """One thing wrong with a committed index: its kind, what it is about (one document at one committed
    version, say: a problem that lasts is found again by later checks) and a message."""

    kind: str
    subject: str
    message: str


class StreamViolation(AssertionError):
    """Problems found in a committed index."""

    def __init__(self, generation: int, problems: list[Problem]) -> None:
        shown = "; ".join(problem.message for problem in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"generation {generation}: {shown}{more}")
        self.problems = problems


def _check_stream(
    work: Path, topic: str, producer: SeededProducer, seen: dict[str, int], final: bool = False
) -> dict[str, Any]:
    """The committed index against the acknowledged records (call with the producer paused or stopped).

    Checks checksums and exactly-once (``_state``), that each document is at the newest version among the
    records up to the recorded positions with that record's text, or invisible when that record is a
    delete, and that no version went back since the last check (``seen``, updated). ``final``: the
    positions must also reach the last acknowledged record of each partition.

    Raises:
        StreamViolation: With every problem found.
    """
    state = _state(work)
    positions = _positions(state["sources"], topic)
    records = producer.acked
    wanted = _winners(records, positions)
    versions, live, texts = state["versions"], state["live"], state["texts"]
    problems: list[Problem] = []
    if final:
        ends = {r.partition: r.offset for r in records}  # offsets grow: the last one is the end
        problems += [
            Problem(
                "not_read_to_end",
                f"partition {p}",
                f"partition {p} is held up to {positions.get(p, -1)}, not to its end {end}",
            )
            for p, end in ends.items()
            if positions.get(p, -1) < end
        ]
    for doc_id in sorted((set(wanted) | set(versions)) - producer.unsure):
        want, have = wanted.get(doc_id), versions.get(doc_id)
        subject = f"{doc_id}@v{have}"
        if have is not None and have < seen.get(doc_id, -1):
            problems.append(
                Problem("went_back", subject, f"{doc_id} went back from v{seen[doc_id]} to v{have}")
            )
        if have is not None:
            seen[doc_id] = max(have, seen.get(doc_id, -1))
        if have is not None and have % 2:
            problems.append(Problem("stale_won", subject, f"{doc_id}: the stale v{have} won"))
        elif want is None:
            problems.append(
                Problem(
                    "unknown",
                    subject,
                    f"{doc_id} v{have} is committed, no record of it is within the positions",
                )
            )
        elif have is None:
            problems.append(
                Problem(
                    "lost",
                    f"{doc_id}@v{want.version}",
                    f"{doc_id} v{want.version} is within the positions but not committed",
                )
            )
        elif have > want.version:
            problems.append(
                Problem(
                    "ahead", subject, f"{doc_id} is at v{have}, ahead of the records within the positions"
                )
            )
        elif have < want.version:
            problems.append(_behind(doc_id, have, want, doc_id in live, texts.get(doc_id)))
        elif want.text is None and (doc_id in live or doc_id in texts):
            problems.append(
                Problem("deleted_visible", subject, f"{doc_id} was deleted at v{have} and is still visible")
            )
        elif want.text is not None and (doc_id not in live or texts.get(doc_id) != want.text):
            problems.append(
                Problem(
                    "wrong_text", subject, f"{doc_id} v{have} does not show its text: {texts.get(doc_id)!r}"
                )
            )
    if problems:
        raise StreamViolation(state["generation"], problems)
    return state


def _behind(doc_id: str, have: int, want: Produced, live: bool, text: str | None) -> Problem:
    """A document committed at an older version than its newest record within the positions. When what
    is visible is still right, the newer record was taken for a no-op and its version not recorded: a
    record older than it (but newer than the committed version) would then win."""
    subject = f"{doc_id}@v{have}"
    message = f"{doc_id} is at v{have}, its newest record within the positions is v{want.version}"
    if want.text is None and not live:
        return Problem(
            "repeated_delete_not_recorded", subject, f"{message} (a delete of the deleted document)"
        )
    if want.text is not None and live and text == want.text:
        return Problem(
            "unchanged_upsert_not_recorded", subject, f"{message} (an upsert of its unchanged text)"
        )
    return Problem("behind", subject, message)


def _embeddings(index_dir: Path) -> tuple[int, dict[tuple[str, str], int]]:
    """Vectors in all segments that any manifest on disk names, and each chunk (document, text) found in
    more than one of those segments (embedded twice)."""
    from indexing.hot import HotIndex

    index = HotIndex(index_dir)
    store = index.store
    segments = {
        seg.info.segment_id: seg.info
        for generation in store.generations()
        for seg in store.load(store.file_name(generation)).segments
    }
    chunks: Counter[tuple[str, str]] = Counter()
    for info in segments.values():
        rows = index.reader(info).chunks.select(["doc_id", "text"]).to_pylist()
        chunks.update({(row["doc_id"], row["text"]) for row in rows})
    twice = {chunk: n for chunk, n in chunks.items() if n > 1}
    return sum(info.n_vectors for info in segments.values()), twice


def _stream_config(path: Path, index_dir: Path, kafka: Any) -> Path:
    values = "\n".join(f'"{k}" = {json.dumps(v)}' for k, v in kafka.consumer_properties.items())
    path.write_text(
        f'index_dir = "{index_dir}"\nwrite_shards = 1\n\n[kafka]\nbootstrap_servers = "{kafka.bootstrap_servers}"\n'
        f'topics = "{",".join(kafka.topics)}"\ngroup_id = "{kafka.group_id}"\n\n'
        f"[kafka.consumer_properties]\n{values}\n"
    )
    return path


def _stream_command(config_file: Path, *extra: str) -> list[str]:
    # -v: the log (of the last run, and of the recovery) shows group assignments and every commit.
    return _cli("stream", "--config", str(config_file), "--max-wait", "0.3", "-v", *extra)


def _tail(log: Path, size: int = 3000) -> str:
    return log.read_bytes()[-size:].decode("utf-8", "replace") if log.exists() else ""


def _wait_for_commit(proc: subprocess.Popen[bytes], index_dir: Path, before: int, log: Path) -> None:
    """Wait until ``proc`` commits past generation ``before``.

    Raises:
        AssertionError: It exited first, or did not commit within :data:`STREAM_START_TIMEOUT_S`.
    """
    from indexing.hot import HotIndex

    deadline = time.monotonic() + STREAM_START_TIMEOUT_S
    while HotIndex(index_dir).manifest().generation == before:
        if proc.poll() is not None:
            raise AssertionError(f"the stream exited with {proc.returncode} before committing: {_tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the stream did not commit in {STREAM_START_TIMEOUT_S:.0f} s: {_tail(log)}")
        time.sleep(0.05)


def _first_commit_s(config_file: Path, index_dir: Path, log: Path) -> float:
    """Seconds from starting a stream to its first commit; the stream is then killed, as in a run."""
    from indexing.hot import HotIndex

    before = HotIndex(index_dir).manifest().generation
    proc = _spawn(_stream_command(config_file), _env({}), log)
    started = time.monotonic()
    try:
        _wait_for_commit(proc, index_dir, before, log)
        return time.monotonic() - started
    finally:
        _kill_after(proc, 0.0)


def _generation(work: Path, default: int) -> int:
    """The committed generation (``default`` when the manifest cannot be read: a violation found already)."""
    from indexing.hot import HotIndex

    try:
        return HotIndex(work / "hot").manifest().generation
    except TierflowError:
        return default


def _violation(
    counts: dict[str, int],
    failures: list[str],
    problems: set[tuple[str, str]],
    where: str,
    err: BaseException,
) -> None:
    """Count one failed check: a violation, its message, and the distinct problems it found. (A problem
    that lasts, such as a version recorded wrong, is found again by each later check until fixed.)"""
    counts["violations"] += 1
    failures.append(f"{where}: {err}")
    found = (
        err.problems if isinstance(err, StreamViolation) else [Problem(type(err).__name__, where, str(err))]
    )
    problems.update((problem.kind, problem.subject) for problem in found)


def _recover(config_file: Path, log: Path) -> None:
    """Run the stream until it has been idle for :data:`STREAM_IDLE_EXIT_S`.

    Raises:
        AssertionError: It failed.
        subprocess.TimeoutExpired: It ran longer than :data:`STREAM_RECOVERY_TIMEOUT_S`.
    """
    proc = _spawn(_stream_command(config_file, "--exit-when-idle", str(STREAM_IDLE_EXIT_S)), _env({}), log)
    try:
        proc.wait(timeout=STREAM_RECOVERY_TIMEOUT_S)
    finally:
        _kill_after(proc, 0.0)  # only if it is still running
    if proc.returncode != 0:
        raise AssertionError(f"exited with {proc.returncode}: {_tail(log)}")


def _manifest_sources(work: Path) -> dict[str, str]:
    from indexing.hot import HotIndex

    return dict(HotIndex(work / "hot").manifest().sources)


def _judge_recovery(
    work: Path,
    topic: str,
    producer: SeededProducer,
    seen: dict[str, int],
    counts: dict[str, int],
    failures: list[str],
    problems: set[tuple[str, str]],
) -> int:
    """After the recovery run: everything acknowledged is there at its newest version, nothing was
    embedded twice, no orphans after gc. Updates ``counts``, ``failures`` and ``problems``; returns the
    vectors embedded."""
    state: dict[str, Any] = {"versions": {}, "texts": {}}
    embedded = 0
    try:
        state = _check_stream(work, topic, producer, seen, final=True)
    except CHECK_FAILURES as err:
        _violation(counts, failures, problems, "after recovery", err)
    try:
        state = state if state["versions"] else _state(work)
        embedded, twice = _embeddings(work / "hot")
        if twice:
            raise StreamViolation(
                state.get("generation", -1),
                [
                    Problem("embedded_twice", f"{d} {t!r}", f"{d} {t!r} is in {n} segments")
                    for (d, t), n in twice.items()
                ],
            )
        if embedded > producer.upserts_sent:
            raise AssertionError(
                f"{embedded} embeddings for {producer.upserts_sent} upserts: something was embedded twice"
            )
        counts["orphans_after_gc"] = _no_orphans(work)
    except CHECK_FAILURES as err:
        _violation(counts, failures, problems, "after recovery", err)
    # Lost: a document whose newest acknowledged record is an upsert and whose text is not what is visible
    # (a version recorded wrong with the right text visible is a violation, not a loss).
    counts["documents_lost"] = sum(
        1
        for doc_id, record in _winners(producer.acked).items()
        if record.text is not None
        and doc_id not in producer.unsure
        and state["texts"].get(doc_id) != record.text
    )
    return embedded


def run_stream(runs: int, seed: int, workdir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Kill ``tierflow stream`` ``runs`` times while a seeded producer writes, then recover and judge."""
    from connectors.tansu import run_broker
    from tests.kafka_broker import create_topic_factory, kafka_config

    work = workdir / "stream-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "stream.log"
    counts = _counts(runs_that_committed=0, commits=0)
    failures: list[str] = []
    problems: set[tuple[str, str]] = set()
    with run_broker(work) as bootstrap:
        topic = create_topic_factory(bootstrap)("crash-stream", partitions=STREAM_PARTITIONS)
        config_file = _stream_config(work / "tierflow.toml", work / "hot", kafka_config(bootstrap, (topic,)))
        producer = SeededProducer(kafka_config(bootstrap, (topic,)), seed)
        producer.start()
        try:
            startup = _seconds([sys.executable, "-c", _STREAM_STARTUP], _env({}))
            timing = work / "timing"
            timing.mkdir()
            # Every run restarts a killed stream (whose group member lingers until its session times out)
            # on an index with commits: time the first commit of such a restart, on an index of its own.
            timing_config = _stream_config(
                timing / "tierflow.toml", timing / "hot", kafka_config(bootstrap, (topic,))
            )
            first_start = _first_commit_s(timing_config, timing / "hot", log)
            first_commit = _first_commit_s(timing_config, timing / "hot", log)
            shutil.rmtree(timing)
            first_commit = max(startup, first_commit)
            say(
                f"stream: start-up {startup:.1f} s (interpreter and model); first commit at {first_start:.1f} s "
                f"on an empty index, {first_commit:.1f} s after a restart"
            )

            rng = random.Random(f"{seed}-stream")
            seen: dict[str, int] = {}
            generation = 0
            for number in range(runs):
                # All three are drawn every run, so that a run does the same whatever the runs before chose.
                after_commit = rng.random() < STREAM_KILLS_AFTER_COMMIT
                startup_delay = rng.uniform(startup, first_commit)
                commit_delay = rng.uniform(0.0, STREAM_KILL_AFTER_COMMIT_S)
                when = (
                    f"{commit_delay:.2f} s after its first commit"
                    if after_commit
                    else f"at {startup_delay:.2f} s"
                )
                proc = _spawn(_stream_command(config_file), _env({}), log)
                started = time.monotonic()
                stuck: AssertionError | None = None
                try:
                    if after_commit:
                        _wait_for_commit(proc, work / "hot", generation, log)
                    finished = _kill_after(proc, commit_delay if after_commit else startup_delay)
                except AssertionError as err:  # it exited, or did not commit in time
                    stuck, finished = err, _kill_after(proc, 0.0)
                lasted = time.monotonic() - started
                counts["killed_before_finish"] += not finished
                counts["runs"] += 1
                where = f"run {number} (killed {when})"
                if stuck is not None or finished:
                    exited = AssertionError(
                        f"the stream exited on its own with {proc.returncode}: {_tail(log)}"
                    )
                    _violation(counts, failures, problems, where, stuck or exited)
                try:
                    with producer.paused():
                        _check_stream(work, topic, producer, seen)
                except CHECK_FAILURES as err:
                    _violation(counts, failures, problems, where, err)
                now = _generation(work, generation)
                counts["runs_that_committed"] += now > generation
                counts["commits"] += now - generation
                generation = now
                say(
                    f"stream: run {number + 1}/{runs}, killed {when} ({lasted:.1f} s), "
                    f"generation {generation}, {len(producer.acked)} records acknowledged"
                )
        except BaseException:
            producer.stop(check=False)  # what went wrong here matters more
            raise
        producer.stop()

        say(f"stream: {len(producer.acked)} records acknowledged; recovering with --exit-when-idle")
        ends = {record.partition: record.offset for record in producer.acked}  # offsets grow
        for attempt in range(1, STREAM_RECOVERY_ATTEMPTS + 1):
            try:
                _recover(config_file, work / f"recovery-{attempt}.log")
            except CHECK_FAILURES as err:
                _violation(counts, failures, problems, f"recovery {attempt}", err)
                break
            counts["recoveries"] = attempt
            held = _positions(_manifest_sources(work), topic)
            if all(held.get(p, -1) >= end for p, end in ends.items()):
                break  # else it stopped while records were left: idle for a while, as the broker was slow

    embedded = _judge_recovery(work, topic, producer, seen, counts, failures, problems)
    if failures:  # kept for a post-mortem: the index, the logs, and what the broker acknowledged
        with (work / "records.jsonl").open("w") as out:
            out.writelines(json.dumps(asdict(record)) + "\n" for record in producer.acked)
    else:
        shutil.rmtree(work, ignore_errors=True)
    newest = _winners(producer.acked)
    return {
        "target": "stream",
        "seed": seed,
        "startup_s": round(startup, 2),
        "first_commit_s": round(first_commit, 2),
        **counts,
        "messages_produced": len(producer.acked),
        "messages_unacknowledged": producer.sent - len(producer.acked),
        "documents_unsure": len(producer.unsure),
        "upserts_sent": producer.upserts_sent,
        "embedded": embedded,
        "documents": len(newest),
        "documents_deleted": sum(1 for record in newest.values() if record.text is None),
        "problems": dict(sorted(Counter(kind for kind, _ in problems).items())),  # distinct ones, by kind
        "failures": failures,
    }


# ---- driver --------------------------------------------------------------------------------------------
TARGETS = (*JOBS, "stream")


def run_target(name: str, runs: int, seed: int, workdir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Run one target's kills and checks; its counters, failures and wall time."""
    started = time.monotonic()
    result = (
        run_stream(runs, seed, workdir, say)
        if name == "stream"
        else run_job(JOBS[name], runs, seed, workdir, say)
    )
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.crash", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    parser.add_argument("--runs", type=int, default=3, help="kills per target (release checks: 50)")
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--workdir", default="", help="scratch directory (default: a temporary one)")
    parser.add_argument("--out", help="write the JSON summary here")
    args = parser.parse_args(argv)
    import tempfile

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tierflow-crash-"))
    workdir.mkdir(parents=True, exist_ok=True)
    targets = TARGETS if args.target == "all" else (args.target,)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    # SIGTERM unwinds like Ctrl-C: the broker and the process under test are stopped, not left behind.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results = [run_target(t, args.runs, args.seed, workdir, say) for t in targets]
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = {
        "targets": results,
        "runs": sum(r["runs"] for r in results),
        "kills_before_finish": sum(r["killed_before_finish"] for r in results),
        "violations": sum(r["violations"] for r in results),
        "documents_lost": sum(r["documents_lost"] for r in results),
        "orphans_after_gc": sum(r["orphans_after_gc"] for r in results),
        "messages_produced": sum(r.get("messages_produced", 0) for r in results),
        "wall_s": round(sum(r["wall_s"] for r in results), 1),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    bad = summary["violations"] or summary["documents_lost"] or summary["orphans_after_gc"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
