"""Structured logs: ``--log-format json`` gives one JSON object per line, with run and document ids."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tierflow import logs
from tierflow.errors import ConfigError

DEMO = REPO / "tierflow" / "demo_data" / "corpus.jsonl"


@pytest.mark.model
def test_an_ingest_logs_json_lines_with_run_and_document_ids(tmp_path: Path) -> None:
    bad = tmp_path / "docs.jsonl"
    bad.write_text(DEMO.read_text() + '{"_id": "broken", "text": NaN}\n')
    done = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "--log-format", "json", "ingest", str(bad), "--index", str(tmp_path / "hot"), "--json"],
        cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every stderr line is a JSON object
    run_id = json.loads(done.stdout)["run_id"]
    (commit,) = [r for r in records if "committed generation" in r["message"]]
    assert commit["run_id"] == run_id and commit["level"] == "info" and commit["logger"] == "pipelines.write"
    summary = json.loads(done.stdout)
    assert commit["documents"] == summary["applied"] + summary["stale"] > 0
    assert commit["doc_ids"] == sorted(commit["doc_ids"])
    assert commit["ts"].endswith("Z")
    dead = [r for r in records if "dead-lettered" in r["message"]]
    assert all(r["level"] == "warning" and r["run_id"] == run_id for r in dead)
    reasons: dict[str, int] = {}
    for r in dead:
        for reason, n in r["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    assert reasons == summary["dead_letters"]["by_reason"] and reasons["malformed_json"] >= 1


def test_json_formatter_carries_context_extras_and_exceptions() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("tierflow.test_logs")
    log.addHandler(handler)
    log.propagate = False
    try:
        with logs.run_context("run-7"):
            log.warning("moved %d", 3, extra={"doc_ids": ["a", "b"]})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "moved 3" and first["run_id"] == "run-7" and first["doc_ids"] == ["a", "b"]
    assert "run_id" not in second and "ValueError: boom" in second["exception"]


def test_unknown_log_format_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFLOW_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="xml"):
        logs.log_format()
    assert logs.log_format("json") == "json"
