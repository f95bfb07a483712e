"""Durable file primitives: write-fsync-rename, directory fsync, checksums, and an exclusive commit lock.

A full disk (``ENOSPC``, or ``EDQUOT`` over a quota) while writing is a :class:`~tierflow.errors.DiskFull`
that names the device, its free space and what to do; every writer here removes what it half-wrote, so a
failed write leaves no partial file behind (a file is whole or absent).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tierflow.errors import DiskFull, IndexConflict

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DISK_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "[errno 28]")


def is_disk_full(err: BaseException) -> bool:
    """True when ``err`` says the device is full: an ``OSError`` with ``ENOSPC``/``EDQUOT``, or a library
    error that only says so in its text (pyarrow, faiss)."""
    if isinstance(err, DiskFull):
        return True
    if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
        return True
    return isinstance(err, OSError | RuntimeError) and any(t in str(err).lower() for t in _DISK_FULL_TEXTS)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def disk_full_error(err: BaseException, path: Path, doing: str) -> DiskFull:
    """The :class:`DiskFull` for ``err``, raised while ``doing`` under ``path``."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        usage = shutil.disk_usage(where)
        space = f"{_size(usage.free)} free of {_size(usage.total)}"
    except OSError:
        space = "free space unknown"
    return DiskFull(
        f"no space left on the device holding {path} while {doing} ({space}; "
        f"{os.strerror(errno.ENOSPC)}: {err}). Nothing was published: the index still serves its last "
        "committed generation. Free space on that device (or move index_dir to a larger one) and run "
        "again; `tierflow gc` removes what the failed run left behind"
    )


@contextmanager
def disk_guard(path: Path, doing: str) -> Iterator[None]:
    """Turn a full disk inside the block into :class:`DiskFull` (naming ``path`` and ``doing``); other
    errors pass unchanged."""
    try:
        yield
    except DiskFull:
        raise
    except (OSError, RuntimeError) as err:
        if is_disk_full(err):
            raise disk_full_error(err, path, doing) from err
        raise


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and new entries in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _write_synced(path: Path, data: Any) -> None:
    """Write a bytes-like ``data`` to a new ``path`` and fsync it; on any failure remove the partial file."""
    try:
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as err:
        path.unlink(missing_ok=True)
        if is_disk_full(err) and not isinstance(err, DiskFull):
            raise disk_full_error(err, path, f"writing {path.name}") from err
        raise


def write_durably(path: Path, data: Any) -> None:
    """Write a bytes-like ``data`` to ``path`` (a new file: a segment's, a tombstone array) and fsync it;
    a failure (a full disk: :class:`DiskFull`) leaves no partial file. The caller fsyncs the directory."""
    _write_synced(path, data)


def write_npy_durably(path: Path, array: Any) -> None:
    """:func:`write_durably` of a NumPy array in ``.npy`` format (``np.save`` reports a full disk only as a
    short write, without ``ENOSPC``)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    _write_synced(path, buffer.getbuffer())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    Raises:
        DiskFull: The device is full; the old file is untouched and no temporary file is left.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_synced(tmp, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with disk_guard(path, f"syncing the directory of {path.name}"):
        fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def exclusive_lock(path: Path, timeout_s: float = 60.0) -> Iterator[None]:
    """Hold an advisory ``flock`` on ``path``; raise :class:`IndexConflict` if it is not free in time.

    The lock dies with its process, so a writer killed mid-commit never leaves the index locked.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise IndexConflict(f"commit lock {path} is held by another writer") from None
                time.sleep(0.05)
        yield
