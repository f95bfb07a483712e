"""A local durable queue: the source the pipeline drains when Kafka is not configured.

Records live in append-only segment files (``<base offset>.seg``, 20 digits) under one directory. Each
record is framed as::

    length (u32, big-endian) | crc32 (u32) | offset (u64) | payload (length bytes)

where the CRC covers ``length | offset | payload``. Offsets are record numbers (0, 1, 2, ...), not byte
positions; a segment holds the consecutive offsets from its base.

Guarantees:

- :meth:`LocalQueue.append` returns only after the record is fsynced (``fdatasync``); concurrent
  appenders share fsyncs (group commit), so a burst costs one disk flush, not one per record.
- :meth:`LocalQueue.read` serves only durable records and checks every record's CRC; a record that
  fails it raises :class:`QueueCorrupt` and is never served.
- A torn tail (a crash mid-append) is found by length/CRC on open and truncated; it was never
  acknowledged. Damage followed by a valid record (media corruption, not a torn write) raises
  :class:`QueueCorrupt` rather than dropping acknowledged records.
- The consumer offset is written atomically (write, fsync, rename) by :meth:`LocalQueue.commit`.
  It is the *next* offset to read, as in Kafka: ``commit(n)`` says every record below ``n`` is done.
- :meth:`LocalQueue.truncate_before` deletes whole segments below the committed offset (never the
  active segment).

One process owns a queue directory at a time (an advisory lock, released when the process dies);
inside that process one :class:`LocalQueue` is shared by appenders and the consumer, and every method
is thread-safe.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import struct
import threading
import time
import zlib
from array import array
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from indexing.durable import atomic_write_bytes, exclusive_lock, fsync_dir
from tierflow.errors import IndexConflict, Terminal, TierflowError, Transient

__all__ = [
    "LocalQueue",
    "QueueClosed",
    "QueueCorrupt",
    "QueueError",
    "QueueLocked",
]

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IIQ")  # length, crc32, offset
SEGMENT_SUFFIX = ".seg"
COMMITTED_FILE = "committed.json"
LOCK_FILE = "queue.lock"
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_MAX_RECORD_BYTES = 16 << 20

_sync = getattr(os, "fdatasync", os.fsync)


class QueueError(TierflowError, Transient):
    """The queue could not take or serve a record (disk full, I/O error); retrying may succeed."""


class QueueLocked(QueueError):
    """Another process has the queue directory open."""


class QueueClosed(QueueError, Terminal):
    """The queue was closed (or failed and must be reopened)."""


class QueueCorrupt(TierflowError, Terminal):
    """A record that was acknowledged no longer passes its CRC; it is refused, not served."""


def _crc(length: int, offset: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack(">IQ", length, offset)))


def frame(offset: int, payload: bytes) -> bytes:
    """The on-disk bytes of one record (exposed for tests that forge torn tails)."""
    return HEADER.pack(len(payload), _crc(len(payload), offset, payload), offset) + payload


@dataclass
class _Segment:
    base: int
    path: Path
    positions: array = field(default_factory=lambda: array("Q"))  # byte position of each record
    size: int = 0  # bytes of valid records
    fd: int | None = None

    @property
    def end(self) -> int:
        """The offset after this segment's last record."""
        return self.base + len(self.positions)


class LocalQueue:
    """An append-only, fsynced, CRC-checked record log with one committed consumer offset.

    Args:
        directory: The queue directory (created if missing).
        segment_bytes: Roll to a new segment file once the active one reaches this size.
        max_record_bytes: Largest payload :meth:`append` takes (also bounds what a length field may say).
        keep_recent_s: :meth:`truncate_before` keeps segments written to in the last ``keep_recent_s``
            seconds (by file mtime), even when they are committed; the webhook receiver uses this to
            keep the ids it must refuse as replays.
        lock_timeout_s: How long to wait for another process to release the directory.

    Raises:
        QueueLocked: Another process holds the directory.
        QueueCorrupt: A record other than a torn tail fails its checks, or segments do not follow on.

    Example:
        >>> with LocalQueue(tmp_path / "q") as q:  # doctest: +SKIP
        ...     q.append(b"hello")
        0
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        keep_recent_s: float = 0.0,
        lock_timeout_s: float = 5.0,
    ) -> None:
        if segment_bytes < 1 or max_record_bytes < 0 or max_record_bytes >= 1 << 32:
            raise ValueError("segment_bytes must be >= 1 and max_record_bytes in [0, 2**32)")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.max_record_bytes = max_record_bytes
        self.keep_recent_s = keep_recent_s
        self.torn_bytes_dropped = 0
        self._cond = threading.Condition(threading.Lock())
        self._commit_lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._next = 0  # offset the next append gets
        self._durable = 0  # every offset below this is fsynced
        self._syncing = False
        self._failed: BaseException | None = None
        self._closed = False
        self._committed = 0
        self._stack = ExitStack()
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._stack.enter_context(exclusive_lock(self.directory / LOCK_FILE, lock_timeout_s))
        except IndexConflict:
            raise QueueLocked(
                f"queue {self.directory} is open in another process; stop it or use another queue_dir"
            ) from None
        try:
            self._recover()
        except BaseException:
            self._close_fds()
            self._stack.close()
            raise

    # --- opening ---------------------------------------------------------------------------------

    def _recover(self) -> None:
        for stale in self.directory.glob(f".{COMMITTED_FILE}.tmp-*"):
            stale.unlink(missing_ok=True)
        paths = sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}"))
        segments: list[_Segment] = []
        for i, path in enumerate(paths):
            try:
                base = int(path.name[: -len(SEGMENT_SUFFIX)])
            except ValueError:
                raise QueueCorrupt(f"unexpected file {path} in queue directory") from None
            segment = _Segment(base, path)
            if segments and segments[-1].end != base:
                raise QueueCorrupt(
                    f"segment {path.name} starts at offset {base} but the one before ends at "
                    f"{segments[-1].end}; a segment file is missing"
                )
            self._scan(segment, last=i == len(paths) - 1)
            segments.append(segment)
        self._committed = self._read_committed()
        if not segments:
            segments.append(self._create_segment(self._committed))
        self._segments = segments
        active = segments[-1]
        if active.fd is None:
            active.fd = os.open(active.path, os.O_RDWR)
        os.fsync(active.fd)  # what an earlier process wrote but did not flush is served from now on
        fsync_dir(self.directory)
        self._next = self._durable = active.end
        if self._committed < segments[0].base or self._committed > self._next:
            raise QueueCorrupt(
                f"committed offset {self._committed} is outside the queue's records "
                f"[{segments[0].base}, {self._next})"
            )

    def _scan(self, segment: _Segment, last: bool) -> None:
        """Index a segment's records; truncate a torn tail of the last one, refuse any other damage."""
        data = segment.path.read_bytes()
        pos, offset = 0, segment.base
        while pos < len(data):
            problem = self._check(data, pos, offset)
            if problem is None:
                segment.positions.append(pos)
                pos += HEADER.size + HEADER.unpack_from(data, pos)[0]
                offset += 1
                continue
            if not last:
                raise QueueCorrupt(f"{segment.path.name}: record {offset} at byte {pos}: {problem}")
            if self._valid_record_follows(data, pos, offset):
                raise QueueCorrupt(
                    f"{segment.path.name}: record {offset} at byte {pos} is damaged ({problem}) but "
                    "later records are intact; refusing to drop acknowledged records"
                )
            self.torn_bytes_dropped = len(data) - pos
            log.warning(
                "queue %s: dropping a torn tail of %d bytes at offset %d (%s); it was never acknowledged",
                segment.path,
                len(data) - pos,
                offset,
                problem,
            )
            with open(segment.path, "rb+") as handle:
                handle.truncate(pos)
                handle.flush()
                os.fsync(handle.fileno())
            break
        segment.size = pos

    def _check(self, data: bytes, pos: int, offset: int) -> str | None:
        if pos + HEADER.size > len(data):
            return "header cut short"
        length, crc, stored_offset = HEADER.unpack_from(data, pos)
        if length > self.max_record_bytes:
            return f"length field {length} is over max_record_bytes"
        if pos + HEADER.size + length > len(data):
            return "payload cut short"
        if stored_offset != offset:
            return f"offset field {stored_offset}, expected {offset}"
        payload = memoryview(data)[pos + HEADER.size : pos + HEADER.size + length]
        if _crc(length, offset, payload) != crc:
            return "CRC mismatch"
        return None

    def _valid_record_follows(self, data: bytes, pos: int, offset: int) -> bool:
        """Whether a damaged record's length field leads to an intact next record (so it is not torn)."""
        length = HEADER.unpack_from(data, pos)[0] if pos + HEADER.size <= len(data) else 0
        following = pos + HEADER.size + length
        return (
            length <= self.max_record_bytes
            and following < len(data)
            and self._check(data, following, offset + 1) is None
        )

    def _read_committed(self) -> int:
        path = self.directory / COMMITTED_FILE
        try:
            value = json.loads(path.read_bytes())["offset"]
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError) as err:
            raise QueueCorrupt(f"{path} is not a committed-offset record: {err}") from None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise QueueCorrupt(f"{path} holds offset {value!r}, not a non-negative integer")
        return value

    def _create_segment(self, base: int) -> _Segment:
        path = self.directory / f"{base:020d}{SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fsync_dir(self.directory)
        return _Segment(base, path, fd=fd)

    # --- appending -------------------------------------------------------------------------------

    def append(self, record: bytes) -> int:
        """Append one record; return its offset once it is on disk (fsynced).

        Raises:
            ValueError: The record is over ``max_record_bytes``.
            QueueError: Writing or flushing failed; the record is not acknowledged. After a failed
                flush the queue refuses further appends (:class:`QueueClosed`) until it is reopened.
        """
        if len(record) > self.max_record_bytes:
            raise ValueError(f"record is {len(record)} bytes, over max_record_bytes={self.max_record_bytes}")
        with self._cond:
            self._ensure_open()
            while self._segments[-1].size >= self.segment_bytes:
                if self._syncing:
                    self._cond.wait()
                    self._ensure_open()
                    continue
                self._roll()
            segment = self._segments[-1]
            offset = self._next
            data = frame(offset, bytes(record))
            assert segment.fd is not None
            try:
                written = 0
                while written < len(data):
                    written += os.pwrite(segment.fd, data[written:], segment.size + written)
            except OSError as err:
                try:
                    os.ftruncate(segment.fd, segment.size)
                except OSError:
                    self._fail(err)
                raise QueueError(f"cannot write to {segment.path}: {err}") from err
            segment.positions.append(segment.size)
            segment.size += len(data)
            self._next = offset + 1
            self._wait_durable(offset)
        return offset

    def _wait_durable(self, offset: int) -> None:
        """With the lock held: flush until ``offset`` is durable, sharing one fsync among waiters."""
        while self._durable <= offset:
            if self._closed:
                raise QueueClosed(f"queue {self.directory} was closed before record {offset} was flushed")
            if self._failed is not None:
                raise QueueClosed(f"queue {self.directory} failed to flush: {self._failed}")
            if self._syncing:
                self._cond.wait()
                continue
            self._syncing = True
            target, fd = self._next, self._segments[-1].fd
            assert fd is not None
            self._cond.release()
            error: OSError | None = None
            try:
                _sync(fd)
            except OSError as err:
                error = err
            finally:
                self._cond.acquire()
                self._syncing = False
            if error is not None:
                self._fail(error)
                raise QueueError(f"cannot flush {self.directory}: {error}") from error
            self._durable = max(self._durable, target)
            self._cond.notify_all()

    def _roll(self) -> None:
        """With the lock held and no flush running: seal the active segment and start the next."""
        active = self._segments[-1]
        assert active.fd is not None
        try:
            _sync(active.fd)
            self._durable = self._next
            self._segments.append(self._create_segment(self._next))
        except OSError as err:
            self._fail(err)
            raise QueueError(f"cannot start a new segment in {self.directory}: {err}") from err
        self._cond.notify_all()

    def _fail(self, err: BaseException) -> None:
        # After a failed fsync the kernel may have dropped the dirty pages: nothing written since the
        # last good flush can be trusted, so stop taking records until the queue is reopened.
        self._failed = err
        self._cond.notify_all()

    def _ensure_open(self) -> None:
        if self._closed:
            raise QueueClosed(f"queue {self.directory} is closed")
        if self._failed is not None:
            raise QueueClosed(f"queue {self.directory} failed ({self._failed}); reopen it")

    # --- reading ---------------------------------------------------------------------------------

    def read(self, from_offset: int, max_records: int = 100, wait_s: float = 0.0) -> list[tuple[int, bytes]]:
        """Up to ``max_records`` durable records from ``from_offset`` on, as ``(offset, payload)``.

        Args:
            from_offset: The first offset wanted; at or past the end gives ``[]``.
            max_records: The most records returned.
            wait_s: When nothing is there yet, wait up to this long for an append.

        Raises:
            ValueError: ``from_offset`` is below :attr:`start_offset` (its segment was deleted).
            QueueCorrupt: A record fails its CRC.
        """
        if max_records < 1:
            return []
        deadline = time.monotonic() + wait_s
        with self._cond:
            if self._closed:
                raise QueueClosed(f"queue {self.directory} is closed")
            while from_offset >= self._durable and wait_s > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            if self._closed:
                raise QueueClosed(f"queue {self.directory} is closed")
            start = self._segments[0].base
            if from_offset < start:
                raise ValueError(f"offset {from_offset} was deleted; the queue starts at {start}")
            out: list[tuple[int, bytes]] = []
            offset, end = from_offset, min(self._durable, from_offset + max_records)
            while offset < end:
                index = bisect.bisect_right([s.base for s in self._segments], offset) - 1
                segment = self._segments[index]
                stop = min(end, segment.end)
                out.extend(self._read_segment(segment, offset, stop))
                offset = stop
            return out

    def _read_segment(self, segment: _Segment, first: int, stop: int) -> list[tuple[int, bytes]]:
        if segment.fd is None:
            segment.fd = os.open(segment.path, os.O_RDONLY)
        begin = segment.positions[first - segment.base]
        finish = segment.positions[stop - segment.base] if stop < segment.end else segment.size
        data = os.pread(segment.fd, finish - begin, begin)
        out = []
        for offset in range(first, stop):
            rel = segment.positions[offset - segment.base] - begin
            problem = self._check(data, rel, offset)
            if problem is not None:
                raise QueueCorrupt(f"{segment.path.name}: record {offset}: {problem}; refusing to serve it")
            length = HEADER.unpack_from(data, rel)[0]
            out.append((offset, data[rel + HEADER.size : rel + HEADER.size + length]))
        return out

    # --- consumer offset and retention -----------------------------------------------------------

    def commit(self, offset: int) -> None:
        """Record that every record below ``offset`` is processed (atomically: write, fsync, rename).

        Raises:
            ValueError: ``offset`` is below :attr:`start_offset` or past the durable end.
        """
        with self._commit_lock:
            with self._cond:
                self._ensure_open()
                if not self._segments[0].base <= offset <= self._durable:
                    raise ValueError(
                        f"cannot commit offset {offset}: the queue holds [{self._segments[0].base}, "
                        f"{self._durable})"
                    )
            atomic_write_bytes(self.directory / COMMITTED_FILE, json.dumps({"offset": offset}).encode())
            with self._cond:
                self._committed = offset

    def committed(self) -> int:
        """The committed consumer offset: the next offset to process (0 when nothing was committed)."""
        with self._cond:
            return self._committed

    def truncate_before(self, offset: int) -> int:
        """Delete segments whose records are all below ``offset`` and below the committed offset.

        The active segment, and segments written to within ``keep_recent_s``, are kept. Returns the
        number of segment files deleted.
        """
        with self._cond:
            self._ensure_open()
            limit = min(offset, self._committed)
            cutoff = time.time() - self.keep_recent_s
            doomed: list[_Segment] = []
            for segment in self._segments[:-1]:
                if segment.end > limit:
                    break
                if self.keep_recent_s > 0 and segment.path.stat().st_mtime > cutoff:
                    break
                doomed.append(segment)
            for segment in doomed:
                if segment.fd is not None:
                    os.close(segment.fd)
                    segment.fd = None
                segment.path.unlink()
            if doomed:
                fsync_dir(self.directory)
                self._segments = self._segments[len(doomed) :]
            return len(doomed)

    @property
    def start_offset(self) -> int:
        """The oldest offset still held."""
        with self._cond:
            return self._segments[0].base

    @property
    def end_offset(self) -> int:
        """The offset after the last durable record (what the next append gets, when none is in flight)."""
        with self._cond:
            return self._durable

    def lag(self) -> int:
        """Durable records not yet committed."""
        with self._cond:
            return self._durable - self._committed

    # --- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the files and release the directory; idempotent. Appends in flight finish first."""
        with self._cond:
            if self._closed:
                return
            while self._syncing:
                self._cond.wait()
            active = self._segments[-1] if self._segments else None
            if active is not None and active.fd is not None and self._durable < self._next:
                try:  # appenders waiting for a flush get it rather than an error
                    _sync(active.fd)
                    self._durable = self._next
                except OSError as err:
                    self._fail(err)
            self._closed = True
            self._close_fds()
            self._cond.notify_all()
        self._stack.close()

    def _close_fds(self) -> None:
        for segment in self._segments:
            if segment.fd is not None:
                os.close(segment.fd)
                segment.fd = None

    def __enter__(self) -> LocalQueue:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalQueue({str(self.directory)!r})"
