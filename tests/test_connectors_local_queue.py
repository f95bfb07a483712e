"""The local durable queue: append/read/commit, restarts, torn tails, concurrency, SIGKILL mid-append."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

import connectors.local_queue as lq
from connectors.local_queue import HEADER, LocalQueue, QueueClosed, QueueCorrupt, QueueLocked, frame

REPO = Path(__file__).resolve().parents[1]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_append_read_commit(tmp_path: Path) -> None:
    with LocalQueue(tmp_path / "q") as queue:
        assert queue.committed() == 0 and queue.end_offset == 0 and queue.read(0) == []
        offsets = [queue.append(f"record {i}".encode()) for i in range(5)]
        assert offsets == [0, 1, 2, 3, 4]
        assert queue.append(b"") == 5  # empty payloads are records too
        assert queue.read(0, 3) == [(0, b"record 0"), (1, b"record 1"), (2, b"record 2")]
        assert queue.read(4) == [(4, b"record 4"), (5, b"")]
        assert queue.read(6) == [] and queue.read(100) == []
        queue.commit(3)
        assert queue.committed() == 3 and queue.lag() == 3
        assert json.loads((tmp_path / "q" / "committed.json").read_text()) == {"offset": 3}
        with pytest.raises(ValueError, match="cannot commit"):
            queue.commit(7)
        with pytest.raises(ValueError, match="max_record_bytes"):
            queue.append(b"x" * (queue.max_record_bytes + 1))


def test_restart_keeps_records_offsets_and_commit(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    with LocalQueue(directory) as queue:
        for i in range(3):
            queue.append(b"a%d" % i)
        queue.commit(2)
    with LocalQueue(directory) as queue:
        assert queue.committed() == 2
        assert queue.read(0) == [(0, b"a0"), (1, b"a1"), (2, b"a2")]
        assert queue.append(b"b") == 3
    assert not list(directory.glob(".*tmp*"))


def test_one_owner_and_closed_queue(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "q")
    with pytest.raises(QueueLocked):
        LocalQueue(tmp_path / "q", lock_timeout_s=0.1)
    queue.close()
    queue.close()  # idempotent
    with pytest.raises(QueueClosed):
        queue.append(b"x")
    LocalQueue(tmp_path / "q").close()  # the lock went with the close


def test_segments_roll_and_truncate_before(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    payload = b"p" * 100
    with LocalQueue(directory, segment_bytes=3 * (HEADER.size + 100)) as queue:
        for i in range(10):
            assert queue.append(payload + b"%d" % i) == i
        assert [p.name for p in segments(directory)] == [f"{b:020d}.seg" for b in (0, 3, 6, 9)]
        assert [o for o, _ in queue.read(0, 100)] == list(range(10))  # across segments
        assert queue.read(2, 5)[-1] == (6, payload + b"6")
        assert queue.truncate_before(10) == 0  # nothing committed yet
        queue.commit(7)
        assert queue.truncate_before(100) == 2  # limited to the commit: segments 0-2 and 3-5 go
        assert queue.start_offset == 6
        with pytest.raises(ValueError, match="deleted"):
            queue.read(5)
        queue.commit(10)
        assert queue.truncate_before(10) == 1  # 6-8; the active segment (9) stays
        assert queue.start_offset == 9 and queue.read(10) == []
        assert queue.append(b"next") == 10
    with LocalQueue(directory) as queue:
        assert queue.start_offset == 9 and queue.committed() == 10
        assert queue.read(9) == [(9, payload + b"9"), (10, b"next")]


def test_truncate_keeps_recent_segments(tmp_path: Path) -> None:
    with LocalQueue(tmp_path / "q", segment_bytes=1, keep_recent_s=3600) as queue:
        for i in range(3):
            queue.append(b"%d" % i)
        queue.commit(3)
        assert queue.truncate_before(3) == 0
        old = time.time() - 7200
        os.utime(segments(tmp_path / "q")[0], (old, old))
        assert queue.truncate_before(3) == 1 and queue.start_offset == 1


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(lambda f: f[:7], id="header-cut"),
        pytest.param(lambda f: f[: len(f) // 2], id="payload-cut"),
        pytest.param(lambda f: f[:-1] + bytes([f[-1] ^ 0xFF]), id="bad-crc"),
        pytest.param(lambda f: bytes(len(f)), id="zeros"),
        pytest.param(lambda f: b"\xff" * 5000, id="huge-length"),
    ],
)
def test_torn_tail_is_truncated_on_open(tmp_path: Path, tail: Callable[[bytes], bytes]) -> None:
    directory = tmp_path / "q"
    with LocalQueue(directory) as queue:
        for i in range(3):
            queue.append(b"good %d" % i)
    segment = segments(directory)[0]
    good_size = segment.stat().st_size
    with open(segment, "ab") as handle:  # a crash in the middle of appending record 3
        handle.write(tail(frame(3, b"half-written record " * 20)))
    with LocalQueue(directory) as queue:
        assert queue.torn_bytes_dropped > 0
        assert segment.stat().st_size == good_size
        assert queue.read(0) == [(0, b"good 0"), (1, b"good 1"), (2, b"good 2")]
        assert queue.append(b"after") == 3
        assert queue.read(3) == [(3, b"after")]


def test_damage_before_intact_records_is_refused_not_truncated(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    with LocalQueue(directory) as queue:
        for i in range(3):
            queue.append(b"record %d" % i)
    segment = segments(directory)[0]
    data = bytearray(segment.read_bytes())
    data[HEADER.size + 2] ^= 0x01  # a bit flip inside record 0's payload
    segment.write_bytes(bytes(data))
    with pytest.raises(QueueCorrupt, match="later records are intact"):
        LocalQueue(directory)
    assert segment.stat().st_size == len(data)  # nothing dropped


def test_damage_in_a_sealed_segment_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    with LocalQueue(directory, segment_bytes=1) as queue:
        for i in range(3):
            queue.append(b"record %d" % i)
    first = segments(directory)[0]
    first.write_bytes(first.read_bytes()[:-2])
    with pytest.raises(QueueCorrupt, match="record 0"):
        LocalQueue(directory)


def test_read_refuses_a_record_damaged_after_open(tmp_path: Path) -> None:
    with LocalQueue(tmp_path / "q") as queue:
        queue.append(b"fine")
        queue.append(b"soon damaged")
        segment = segments(tmp_path / "q")[0]
        with open(segment, "rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            handle.write(b"X")
        assert queue.read(0, 1) == [(0, b"fine")]
        with pytest.raises(QueueCorrupt, match="record 1"):
            queue.read(0)


def test_append_flushes_before_returning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: list[int] = []
    real = lq._sync

    def spy(fd: int) -> None:
        real(fd)
        flushed.append(os.fstat(fd).st_size)

    monkeypatch.setattr(lq, "_sync", spy)
    with LocalQueue(tmp_path / "q") as queue:
        for i in range(3):
            queue.append(b"r%d" % i)
            size = segments(tmp_path / "q")[0].stat().st_size
            assert flushed and flushed[-1] >= size  # a flush covering the record ran before append returned


def test_concurrent_appenders(tmp_path: Path) -> None:
    threads, per_thread = 8, 50
    results: dict[int, bytes] = {}
    lock = threading.Lock()
    with LocalQueue(tmp_path / "q", segment_bytes=4096) as queue:

        def work(t: int) -> None:
            for i in range(per_thread):
                payload = b"thread %d record %d " % (t, i) + os.urandom(i % 50)
                offset = queue.append(payload)
                with lock:
                    assert offset not in results
                    results[offset] = payload

        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert sorted(results) == list(range(threads * per_thread))
        assert dict(queue.read(0, 10_000)) == results
    with LocalQueue(tmp_path / "q") as queue:
        assert dict(queue.read(0, 10_000)) == results


def test_read_waits_for_an_append(tmp_path: Path) -> None:
    with LocalQueue(tmp_path / "q") as queue:
        timer = threading.Timer(0.1, queue.append, args=(b"late",))
        timer.start()
        started = time.monotonic()
        assert queue.read(0, 10, wait_s=5) == [(0, b"late")]
        assert time.monotonic() - started < 4
        assert queue.read(1, 10, wait_s=0.05) == []
        timer.join()


CHILD = r"""
import sys, threading
from connectors.local_queue import LocalQueue

directory, run = sys.argv[1], int(sys.argv[2])
queue = LocalQueue(directory, segment_bytes=256 << 10)
out = threading.Lock()

def payload(thread, seq):
    return (f"run{run}-t{thread}-s{seq}-".encode() * (1 + (seq * 7919 + thread) % 3000))[:40000]

def work(thread):
    seq = 0
    while True:
        offset = queue.append(payload(thread, seq))
        with out:
            sys.stdout.write(f"{offset} {thread} {seq}\n")
            sys.stdout.flush()
        seq += 1

for t in range(3):
    threading.Thread(target=work, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def collect_lines(stream: IO[bytes], into: list[bytes]) -> None:
    into.extend(line for line in iter(stream.readline, b"") if line.endswith(b"\n"))


def expected_payload(run: int, thread: int, seq: int) -> bytes:
    return (f"run{run}-t{thread}-s{seq}-".encode() * (1 + (seq * 7919 + thread) % 3000))[:40000]


def test_sigkill_mid_append_loses_no_acknowledged_record(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    rng = random.Random(20240611)
    acknowledged: dict[int, bytes] = {}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for run in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory), str(run)],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=env,
        )
        stdout = child.stdout
        assert stdout is not None
        lines: list[bytes] = []
        reader = threading.Thread(target=collect_lines, args=(stdout, lines))
        reader.start()
        deadline = time.monotonic() + 20
        while len(lines) < 5 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.01)
        assert lines, "the child appended nothing"
        time.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        reader.join()
        for line in lines:
            offset, thread, seq = map(int, line.split())
            assert offset not in acknowledged
            acknowledged[offset] = expected_payload(run, thread, seq)
        with LocalQueue(directory) as queue:
            for offset, payload in acknowledged.items():
                assert queue.read(offset, 1) == [(offset, payload)], f"acknowledged offset {offset} lost"
            stored = queue.read(0, 1_000_000)
            assert [o for o, _ in stored] == list(range(queue.end_offset))  # no gaps, every record intact
    assert len(acknowledged) > 20
