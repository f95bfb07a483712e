"""Named failure points for crash tests: ``TIERFLOW_FAILPOINTS=lifecycle.copied=kill`` makes the process
kill itself (SIGKILL, no cleanup, like a power cut or an OOM kill) when it reaches that point.

Production code calls :func:`failpoint` at the steps whose crash safety the tests prove; with the
variable unset it is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "TIERFLOW_FAILPOINTS"


def _armed() -> dict[str, str]:
    spec = os.environ.get(ENV, "")
    armed = {}
    for part in filter(None, spec.split(",")):
        name, _, action = part.partition("=")
        armed[name.strip()] = action.strip() or "kill"
    return armed


def failpoint(name: str) -> None:
    """Act on ``name`` if it is armed: ``kill`` sends SIGKILL to this process."""
    action = _armed().get(name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
