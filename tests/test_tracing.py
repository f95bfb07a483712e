"""OpenTelemetry spans: one trace per pipeline run, a span per stage bundle, off by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO
from tierflow import tracing
from tierflow.errors import ConfigError

DEMO = REPO / "tierflow" / "demo_data" / "corpus.jsonl"


def _spans(stderr: str) -> list[dict[str, Any]]:
    """The console exporter's JSON spans, picked out of stderr (logs may sit between them)."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while (start := stderr.find("{\n", at)) >= 0:
        try:
            value, at = decoder.raw_decode(stderr, start)
        except json.JSONDecodeError:
            at = start + 1
            continue
        if isinstance(value, dict) and "context" in value and "name" in value:
            spans.append(value)
    return spans


@pytest.mark.model
def test_an_ingest_is_one_trace_with_a_span_per_stage(tmp_path: Path) -> None:
    env = dict(os.environ, TIERFLOW__TRACING__EXPORTER="console", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "ingest", str(DEMO), "--index", str(tmp_path / "hot")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    spans = _spans(done.stderr)
    names = {span["name"] for span in spans}
    assert {"tierflow.pipeline", "tierflow.validate", "tierflow.dedup", "tierflow.chunk", "tierflow.embed",
            "tierflow.write", "tierflow.commit"} <= names, names  # fmt: skip
    (root,) = [span for span in spans if span["name"] == "tierflow.pipeline"]
    trace_id = root["context"]["trace_id"]
    assert {span["context"]["trace_id"] for span in spans} == {trace_id}, (
        "every stage span is in the run's trace"
    )
    assert all(span["parent_id"] == root["context"]["span_id"] for span in spans if span is not root)
    assert root["attributes"]["tierflow.run_id"]
    (embed,) = [span for span in spans if span["name"] == "tierflow.embed"] or [None]
    validate = [span for span in spans if span["name"] == "tierflow.validate"]
    assert sum(span["attributes"]["tierflow.records"] for span in validate) == sum(1 for _ in DEMO.open())
    assert embed is not None and embed["attributes"]["tierflow.chunks"] > 0

    searched = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "search", "wild yeast bread", "-k", "3", "--index", str(tmp_path / "hot")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert searched.returncode == 0, searched.stderr[-3000:]
    (search,) = [span for span in _spans(searched.stderr) if span["name"] == "tierflow.search"]
    assert (
        search["attributes"]["tierflow.tiers"] == "hot,warm,cold"
        and search["attributes"]["tierflow.results"] == 3
    )


def test_tracing_is_off_unless_configured() -> None:
    assert tracing.exporter_setting({}) == "none"
    assert tracing.exporter_setting({"OTEL_TRACES_EXPORTER": "otlp"}) == "otlp"
    assert (
        tracing.exporter_setting({"OTEL_TRACES_EXPORTER": "otlp", "TIERFLOW__TRACING__EXPORTER": "none"})
        == "none"
    )
    with pytest.raises(ConfigError, match="zipkin"):
        tracing.exporter_setting({"OTEL_TRACES_EXPORTER": "zipkin"})
    assert tracing.current_traceparent() == ""  # no recording span: nothing to hand to workers
