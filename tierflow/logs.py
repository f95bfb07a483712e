"""Logging set-up: plain text for people, one JSON object per line for log pipelines.

JSON lines carry ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the run id of the work in
progress (:func:`run_context`), the active trace and span ids when tracing is on, any ``extra=``
fields of the call (``doc_id``, ``doc_ids``, ``generation``...), and ``exception`` with the traceback.

    tierflow --log-format json stream --config tierflow.toml
    TIERFLOW_LOG_FORMAT=json tierflow ingest ...
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tierflow.errors import ConfigError

FORMATS = ("text", "json")
_RUN_ID: contextvars.ContextVar[str] = contextvars.ContextVar("tierflow_run_id", default="")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
QUIET_LOGGERS = (  # chatty libraries: their INFO only with --verbose, else errors only
    "apache_beam",
    "great_expectations",
    "urllib3",
    "httpx",
    "sentence_transformers",
    "faiss",
    "distributed",
    "transformers",
    "huggingface_hub",
    "botocore",
    "lancedb",
)
# Beam logs a failing DoFn's traceback at ERROR before the exception reaches the CLI, which then prints
# the error in one line: without --verbose that traceback is noise.
SILENT_UNLESS_VERBOSE = ("apache_beam.runners",)
# Library warnings through the root logger that say nothing to a tierflow user.
_IGNORED = ("apitools not found",)


@contextmanager
def run_context(run_id: str) -> Iterator[None]:
    """Log records inside the block carry ``run_id`` (this thread and tasks it starts)."""
    token = _RUN_ID.set(run_id)
    try:
        yield
    finally:
        _RUN_ID.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        run_id = getattr(record, "run_id", None) or _RUN_ID.get()
        if run_id:
            out["run_id"] = run_id
        out.update(_trace_ids())
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _trace_ids() -> dict[str, str]:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def log_format(requested: str | None = None) -> str:
    """The format asked for: the option, else ``TIERFLOW_LOG_FORMAT``, else text."""
    value = (requested or os.environ.get("TIERFLOW_LOG_FORMAT") or "text").strip().lower()
    if value not in FORMATS:
        raise ConfigError(f"log format {value!r} is not one of {', '.join(FORMATS)}")
    return value


def setup(verbose: bool = False, fmt: str | None = None, stream: TextIO | None = None) -> None:
    """Configure the root logger: INFO with ``verbose`` (else WARNING), text or JSON, on stderr.

    Like :func:`logging.basicConfig`, it leaves a root logger that something else configured (an
    application embedding tierflow, pytest) alone, apart from quietening chatty libraries.
    """
    fmt = log_format(fmt)
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "tierflow", False)]
    if len(ours) == len(root.handlers):
        for old in ours:
            root.removeHandler(old)
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.tierflow = True  # type: ignore[attr-defined]
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(lambda record: not any(text in record.getMessage() for text in _IGNORED))
        root.addHandler(handler)
        root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    for name in SILENT_UNLESS_VERBOSE:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.CRITICAL)
