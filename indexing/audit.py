"""The audit log: one JSON line per change to an index — commit, lifecycle move, compaction, gc.

``INDEX/audit.jsonl`` answers who changed the index, what they changed, when, and which source
positions the change holds. Each line::

    {"ts": "2026-12-01T21:14:03.120Z", "action": "commit", "generation": 42, "run_id": "…",
     "actor": {"user": "tierflow", "host": "worker-1", "pid": 311, "command": "tierflow stream"},
     "sources": {"kafka:docs/0": "1042"}, "counts": {...}, "segments": {"added": [...], "removed": [...]}}

Lines are appended (``O_APPEND``) and fsynced after the manifest is published, under the index's
writer lock, so their order is the generations' order. A process killed between the two leaves a
generation without its line; the next append writes it from the manifest history, marked
``"recovered": true``, so no published generation goes unaudited. The command is the program and its
subcommand only: arguments can hold credentials, and the audit log must never hold a secret.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from indexing.durable import fsync_dir

AUDIT_FILE = "audit.jsonl"
ACTIONS = ("commit", "retier", "compact", "gc", "promote", "rollback")
UNORDERED = ("gc", "promote", "rollback")  # not a new generation of the live version: always appended
_TAIL_BYTES = 1 << 16


def actor() -> dict[str, Any]:
    """Who is changing the index: OS user, host, process id and the command (no arguments)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers running as an arbitrary uid)
        user = str(os.getuid())
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("cli.py", "__main__.py", "-m", "-c"):
        program = "tierflow"
    sub = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
    return {
        "user": user,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": f"{program} {sub}".strip(),
    }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def last_generation(root: Path) -> int:
    """The generation of the audit log's last line (0 when there is none)."""
    path = root / AUDIT_FILE
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - _TAIL_BYTES))
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["generation"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line (a crash mid-append) or the cut-off first one
    return 0


def append(root: Path, action: str, entry: Mapping[str, Any], history: list[dict[str, Any]]) -> None:
    """Append ``entry`` (a manifest history entry, plus what the action knows), after any generation
    in ``history`` that a crash left without its line. Call under the index's writer lock."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    who = actor()
    lines = []
    done = last_generation(root)
    generation = int(entry.get("generation", 0))
    for missed in history:
        gen = int(missed.get("generation", 0))
        if done < gen < generation:
            lines.append(
                _record("commit" if missed.get("run_id") != "compaction" else "compact", missed, None, True)
            )
    if action in UNORDERED or generation > done:
        lines.append(_record(action, entry, who, False))
    if not lines:
        return
    path = root / AUDIT_FILE
    new = not path.exists()
    text = "".join(json.dumps(line, sort_keys=True, default=str) + "\n" for line in lines)
    if not new and _torn(path):
        text = "\n" + text  # end a line a crash cut short, so it stays one (skipped) line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        fsync_dir(root)


def _torn(path: Path) -> bool:
    """True when the file does not end with a newline (a crash mid-append)."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if not size:
            return False
        handle.seek(size - 1)
        return handle.read(1) != b"\n"


def _record(
    action: str, entry: Mapping[str, Any], who: dict[str, Any] | None, recovered: bool
) -> dict[str, Any]:
    record = {key: value for key, value in entry.items() if key not in ("committed_at",)}
    record["action"] = action
    record["ts"] = _iso(float(entry.get("committed_at") or time.time()))
    if who is not None:
        record["actor"] = who
    if recovered:
        record["recovered"] = True
    return record


def read(root: Path) -> Iterator[dict[str, Any]]:
    """The audit log's records, oldest first (a torn last line is skipped)."""
    path = root / AUDIT_FILE
    if not path.exists():
        return
    with path.open("rb") as handle:
        for line in handle:
            try:
                yield json.loads(line)
            except ValueError:
                continue
