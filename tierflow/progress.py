"""Progress bars for long commands (ingest's embedding, lifecycle copies, evaluation suites).

Bars go to stderr and show only on a terminal, so logs, CI output and pipes stay clean;
``TIERFLOW_PROGRESS=1`` forces them on, ``TIERFLOW_PROGRESS=0`` off. Every command still ends with
its summary on stdout.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm


def enabled() -> bool | None:
    """True/False when ``TIERFLOW_PROGRESS`` says so; None lets the bar decide (on when stderr is a TTY)."""
    value = os.environ.get("TIERFLOW_PROGRESS", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def bar(total: int, desc: str, unit: str = "it", **options: Any) -> tqdm:
    """A progress bar on stderr over ``total`` units; use as a context manager and call ``update(n)``."""
    forced = enabled()
    disable = (not sys.stderr.isatty()) if forced is None else not forced
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
        smoothing=0.1,
        **options,
    )
