"""Lineage: the record every chunk carries into both tiers, answering "where did this vector come from"."""

from __future__ import annotations

import functools
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tierflow

REPO_ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def code_version() -> str:
    """``tierflow <version>+g<commit>[.dirty]`` when run from a git checkout, else the package version."""

    def git(*args: str) -> str:
        command = ["git", "-C", str(REPO_ROOT), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=5, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return f"tierflow {tierflow.__version__}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"tierflow {tierflow.__version__}"


def new_run_id() -> str:
    return time.strftime("run-%Y%m%dT%H%M%SZ-", time.gmtime()) + uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class RunContext:
    """What is the same for every record of one pipeline run, fixed when the pipeline is built."""

    run_id: str
    code_version: str
    model: dict[str, Any]
    chunking: dict[str, Any]
    validation_suite: str
    started_at: float = field(default_factory=time.time)

    @property
    def fingerprint(self) -> str:
        """Identity of how vectors are made (model + chunking): a change re-embeds unchanged text."""
        import hashlib
        import json

        blob = json.dumps({"model": self.model, "chunking": self.chunking}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def document_lineage(
    run: RunContext,
    source: dict[str, str],
    event_time: float | None,
    content_hash: str,
    dedup: dict[str, Any],
) -> dict[str, Any]:
    """Lineage of one document version; chunk lineage adds the chunk's ordinal and hash to it."""
    return {
        "source": source,
        "event_time": event_time,
        "ingest_time": time.time(),
        "run_id": run.run_id,
        "code_version": run.code_version,
        "model": run.model,
        "chunking": run.chunking,
        "validation_suite": run.validation_suite,
        "content_hash": content_hash,
        "dedup": dedup,
    }


def run_context_dict(run: RunContext) -> dict[str, Any]:
    return asdict(run)
