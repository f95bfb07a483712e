"""``tierflow schedule``: cron fire times, no overlapping runs, timeouts, clean stop; the real CLI runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexing import audit
from lifecycle.synthetic import build_synthetic_index
from tests.helpers import REPO
from tierflow.errors import ConfigError
from tierflow.schedule import Job, ScheduleConfig, Scheduler, load_schedule_config

T0 = 1_780_000_000.5  # the fake clock starts mid-second; fire times come from cron


class FakeProcess:
    """A child process whose exit the test decides (unit tests only; the real one runs below)."""

    def __init__(self) -> None:
        self.code: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig == signal.SIGKILL:
            self.code = -9


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _scheduler(*jobs: Job) -> tuple[Scheduler, Clock, list[tuple[str, FakeProcess]]]:
    clock, started = Clock(), []

    def launcher(job: Job) -> FakeProcess:
        process = FakeProcess()
        started.append((job.name, process))
        return process

    return Scheduler(ScheduleConfig(jobs=jobs), launcher, clock), clock, started


def test_jobs_fire_at_their_cron_times_and_never_overlap() -> None:
    scheduler, clock, started = _scheduler(
        Job("every-minute", "* * * * *", ("gc",)), Job("hourly", "0 * * * *", ("compact",))
    )
    first = scheduler.next_fire(scheduler.config.jobs[0], T0)
    assert first > T0 and first % 60 == 0
    clock.now = first
    scheduler.tick()
    assert [name for name, _ in started] == ["every-minute"]
    clock.now = first + 60  # still running at its next fire time: skipped, not queued
    scheduler.tick()
    assert len(started) == 1 and scheduler.history[-1][:2] == ("every-minute", "skipped")
    started[0][1].code = 0
    clock.now = first + 61
    scheduler.tick()
    assert scheduler.history[-1][:2] == ("every-minute", "ok")
    clock.now = first + 120
    scheduler.tick()
    assert len(started) == 2
    started[1][1].code = 3
    clock.now = first + 121
    scheduler.tick()
    assert scheduler.history[-1][:2] == ("every-minute", "failed")


def test_a_run_past_its_timeout_gets_sigterm_then_sigkill() -> None:
    scheduler, clock, started = _scheduler(Job("slow", "* * * * *", ("lifecycle", "run"), timeout="10s"))
    clock.now = scheduler.next_fire(scheduler.config.jobs[0], T0)
    scheduler.tick()
    process = started[0][1]
    clock.now += 10
    scheduler.tick()
    assert process.signals == [signal.SIGTERM]
    clock.now += 31
    scheduler.tick()
    assert process.signals == [signal.SIGTERM, signal.SIGKILL]
    clock.now += 1
    scheduler.tick()
    assert scheduler.history[-1][:2] == ("slow", "timeout")


@pytest.mark.parametrize(
    ("job", "words"),
    [
        ({"name": "x", "cron": "every day", "command": ["gc"]}, "not a valid cron"),
        ({"name": "x", "cron": "* * * * *", "command": []}, "non-empty list"),
        ({"name": "x", "cron": "* * * * *", "command": ["schedule"]}, "not 'schedule'"),
        ({"name": "", "cron": "* * * * *", "command": ["gc"]}, "needs a name"),
        ({"name": "x", "cron": "* * * * *", "command": ["gc"], "timeout": "soon"}, "timeout"),
        ({"name": "x", "cron": "* * * * *", "command": ["gc"], "every": "1m"}, "unknown setting"),
    ],
)
def test_bad_jobs_are_configuration_errors(job: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_schedule_config(None, {"jobs": [job]})


def test_unknown_zone_duplicate_names_and_no_jobs_are_refused() -> None:
    with pytest.raises(ConfigError, match="time zone"):
        ScheduleConfig(timezone="Mars/Olympus")
    with pytest.raises(ConfigError, match="unique"):
        ScheduleConfig(jobs=(Job("a", "* * * * *", ("gc",)), Job("a", "* * * * *", ("gc",))))
    with pytest.raises(ConfigError, match="nothing to schedule"):
        load_schedule_config(None, {"timezone": "UTC"})


def test_the_real_scheduler_runs_the_cli_and_stops_cleanly(tmp_path: Path) -> None:
    index = tmp_path / "hot"
    build_synthetic_index(index, 300, 1, 16, segment_docs=100)  # three segments to compact
    config = tmp_path / "tierflow.toml"
    config.write_text(
        f"""
[[schedule.jobs]]
name = "compact"
cron = "* * * * * */3"
command = ["compact", "--index", "{index}"]
timeout = "2m"
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierflow.cli", "schedule", "--config", str(config)],
        cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(r["action"] == "compact" for r in audit.read(index)):
        time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)  # every thread's stack on stderr (faulthandler); it goes on
    time.sleep(1)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "(most recent call first)" in stderr and "tierflow/schedule.py" in stderr
    compactions = [r for r in audit.read(index) if r["action"] == "compact"]
    assert len(compactions) == 1 and compactions[0]["actor"]["command"].endswith("compact")
    assert "schedule: compact next at" in stderr
