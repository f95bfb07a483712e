"""``tierflow schedule``: run tierflow commands on cron schedules, on one machine.

For a single host without Kubernetes or Airflow (``infra/k8s`` and ``infra/airflow`` hold those
examples; they call the same commands). Jobs live in the config file::

    [schedule]
    timezone = "UTC"

    [[schedule.jobs]]
    name = "ingest"
    cron = "*/15 * * * *"                      # five fields; a sixth, seconds, is allowed
    command = ["ingest", "s3://docs/", "--index", "/data/hot"]
    timeout = "1h"

    [[schedule.jobs]]
    name = "lifecycle"
    cron = "30 2 * * *"
    command = ["lifecycle", "run", "--index", "/data/hot"]

Each run is ``tierflow COMMAND...`` in a child process (the same CLI an operator types), with its
output passed through. A job never overlaps itself: a fire time that finds the previous run still
going is skipped and logged. Fire times missed while the scheduler was down are not replayed (cron's
rule); the next one runs. A run past its ``timeout`` gets SIGTERM, then SIGKILL 30 s later. SIGTERM or
SIGINT stops scheduling and waits for running jobs (up to their timeouts) before exiting.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from prometheus_client import Counter

from tierflow import metrics
from tierflow.errors import ConfigError

LOG = logging.getLogger(__name__)
KILL_AFTER_S = 30.0

SCHEDULED_RUNS = Counter(
    "tierflow_scheduled_runs",
    "Scheduled job runs by job and outcome (ok, failed, timeout, skipped: still running at its next fire time).",
    ["job", "outcome"],
    registry=metrics.REGISTRY,
)


@dataclass(frozen=True)
class Job:
    """One scheduled command.

    Args:
        name: Unique; shown in logs and metrics.
        cron: A cron expression (five fields, or six with seconds last).
        command: The tierflow command and its arguments, as a list (no shell).
        timeout: How long a run may take (``30s``, ``15m``, ``2h``; empty: no limit).
    """

    name: str = ""
    cron: str = ""
    command: tuple[str, ...] = ()
    timeout: str = ""

    def __post_init__(self) -> None:
        where = f"schedule.jobs[{self.name or '?'}]"
        if not self.name.strip():
            raise ConfigError(f"{where}: a job needs a name")
        if not croniter.is_valid(self.cron):
            raise ConfigError(f"{where}: cron {self.cron!r} is not a valid cron expression")
        if not self.command or not all(isinstance(part, str) and part for part in self.command):
            raise ConfigError(f'{where}: command must be a non-empty list of strings, e.g. ["gc"]')
        if self.command[0] in ("schedule", "tierflow"):
            raise ConfigError(
                f"{where}: command is a tierflow subcommand without 'tierflow', and not 'schedule'"
            )
        self.timeout_s  # noqa: B018 - validates the duration

    @property
    def timeout_s(self) -> float | None:
        from lifecycle.policy import parse_duration

        return parse_duration(self.timeout, f"schedule.jobs[{self.name}].timeout") if self.timeout else None


@dataclass(frozen=True)
class ScheduleConfig:
    """``[schedule]``: the time zone cron fields are read in, and the jobs."""

    timezone: str = "UTC"
    jobs: tuple[Job, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"schedule.timezone {self.timezone!r} is not a known time zone") from None
        names = [job.name for job in self.jobs]
        if len(set(names)) != len(names):
            raise ConfigError(f"schedule.jobs: job names must be unique, got {names}")


def load_schedule_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ScheduleConfig:
    from tierflow.config import load_settings

    config: ScheduleConfig = load_settings(ScheduleConfig, "schedule", path, overrides)
    if not config.jobs:
        raise ConfigError("no [[schedule.jobs]] in the configuration: nothing to schedule")
    return config


class Process(Protocol):
    def poll(self) -> int | None: ...
    def send_signal(self, sig: int) -> None: ...


Launcher = Callable[[Job], Process]


def launch(job: Job) -> Process:
    """Start ``tierflow COMMAND...`` in a child process (stdout/stderr passed through)."""
    return subprocess.Popen([sys.executable, "-m", "tierflow.cli", *job.command], stdin=subprocess.DEVNULL)


@dataclass
class _Running:
    process: Process
    started: float
    deadline: float | None
    terminated_at: float | None = None


class Scheduler:
    """Fires jobs at their cron times. ``clock`` and ``launcher`` are injectable for tests."""

    def __init__(
        self,
        config: ScheduleConfig,
        launcher: Launcher = launch,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.launcher = launcher
        self.clock = clock
        self.zone = ZoneInfo(config.timezone)
        self.running: dict[str, _Running] = {}
        self.history: list[tuple[str, str, float]] = []  # (job, outcome, at)
        now = clock()
        self._next = {job.name: self.next_fire(job, now) for job in config.jobs}

    def next_fire(self, job: Job, after: float) -> float:
        start = datetime.fromtimestamp(after, self.zone)
        return float(croniter(job.cron, start).get_next(float))

    def upcoming(self, count: int) -> list[tuple[str, datetime]]:
        """The next ``count`` fire times of every job, in order (for ``--dry-run``)."""
        out: list[tuple[str, datetime]] = []
        for job in self.config.jobs:
            at = self.clock()
            for _ in range(count):
                at = self.next_fire(job, at)
                out.append((job.name, datetime.fromtimestamp(at, self.zone)))
        return sorted(out, key=lambda item: item[1])

    def _record(self, job: str, outcome: str, at: float) -> None:
        self.history.append((job, outcome, at))
        SCHEDULED_RUNS.labels(job, outcome).inc()

    def tick(self) -> float:
        """Reap finished runs, enforce timeouts, start due jobs; returns seconds until the next event."""
        now = self.clock()
        for name, run in list(self.running.items()):
            code = run.process.poll()
            if code is not None:
                del self.running[name]
                outcome = "timeout" if run.terminated_at is not None else ("ok" if code == 0 else "failed")
                self._record(name, outcome, now)
                log = LOG.info if outcome == "ok" else LOG.warning
                log("job %s finished: %s (exit %s) after %.1f s", name, outcome, code, now - run.started,
                    extra={"job": name, "exit_code": code, "seconds": round(now - run.started, 3)})  # fmt: skip
            elif run.deadline is not None and now >= run.deadline and run.terminated_at is None:
                LOG.warning("job %s passed its timeout: SIGTERM", name, extra={"job": name})
                run.process.send_signal(signal.SIGTERM)
                run.terminated_at = now
            elif run.terminated_at is not None and now - run.terminated_at >= KILL_AFTER_S:
                run.process.send_signal(signal.SIGKILL)
        for job in self.config.jobs:
            due = self._next[job.name]
            if now < due:
                continue
            self._next[job.name] = self.next_fire(job, now)
            if job.name in self.running:
                self._record(job.name, "skipped", now)
                LOG.warning(
                    "job %s is still running at its next fire time: skipped",
                    job.name,
                    extra={"job": job.name},
                )
                continue
            LOG.info("job %s starting: tierflow %s", job.name, " ".join(job.command), extra={"job": job.name})
            timeout = job.timeout_s
            self.running[job.name] = _Running(self.launcher(job), now, now + timeout if timeout else None)
        wake = min(self._next.values()) - now
        return max(0.05, min(wake, 1.0 if self.running else wake))

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set, then wait for running jobs (enforcing their timeouts)."""
        while not stop.is_set():
            stop.wait(self.tick())
        if self.running:
            LOG.warning("stopping: waiting for %s", ", ".join(sorted(self.running)))
        for job in self.config.jobs:
            self._next[job.name] = float("inf")  # no new runs while draining; tick() still enforces timeouts
        while self.running:
            self.tick()
            time.sleep(0.1)


def serve(config: ScheduleConfig) -> None:
    """Run the scheduler in the foreground until SIGTERM or SIGINT."""
    from tierflow.http import stop_on_signals

    scheduler = Scheduler(config)
    for name, at in scheduler.upcoming(1):
        print(f"schedule: {name} next at {at.isoformat()}", file=sys.stderr, flush=True)
    with stop_on_signals() as stop:
        scheduler.run(stop)
