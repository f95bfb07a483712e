"""Tests for evaluation.report: report.json, report.md and the terminal summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evaluation import evaluate, summary_lines, write_reports


def make_result(**extra: Any) -> dict[str, Any]:
    scores = evaluate(
        {"q1": {"a": 2.0, "b": 1.0}, "q2": {"c": 1.0}}, {"q1": {"b": 1}, "q2": {"d": 1}}, ks=(1, 10)
    )
    return {
        "provenance": {
            "dataset": {"name": "toy", "checksums": {"qrels/test.tsv": "ab12"}},
            "model": {"name": "all-MiniLM-L6-v2", "revision": "c9745ed"},
            "index": {"type": "IndexFlatIP", "dim": 384},
            "code_version": "da060ac",
        },
        "metrics": {"mean": scores.mean, "per_query": scores.per_query},
        **extra,
    }


def test_writes_json_with_sorted_keys(tmp_path: Path) -> None:
    result = make_result()
    paths = write_reports(tmp_path / "out", result)
    assert paths == {"json": tmp_path / "out" / "report.json", "markdown": tmp_path / "out" / "report.md"}
    text = paths["json"].read_text(encoding="utf-8")
    assert json.loads(text) == result
    assert text == json.dumps(result, sort_keys=True, indent=2) + "\n"


def test_markdown_has_provenance_and_metrics_tables(tmp_path: Path) -> None:
    markdown = write_reports(tmp_path, make_result(title="toy run"))["markdown"].read_text(encoding="utf-8")
    assert markdown.startswith("# Evaluation report: toy run\n")
    assert "| dataset.checksums.qrels/test.tsv | ab12 |" in markdown
    assert "| model.revision | c9745ed |" in markdown
    assert "| index.dim | 384 |" in markdown
    assert "## Metrics (mean over 2 queries)" in markdown
    # q1 ranks its relevant document second; q2 retrieves nothing relevant.
    assert "| Metric | @1 | @10 | full |" in markdown
    assert "| ndcg | 0.0000 | 0.3155 | - |" in markdown
    assert "| p | 0.0000 | 0.0500 | - |" in markdown
    assert "| map | 0.0000 | 0.2500 | 0.2500 |" in markdown
    assert "Comparison" not in markdown


def test_markdown_compares_with_reference(tmp_path: Path) -> None:
    result = make_result(reference={"ndcg@10": 0.3, "map": 0.3})
    markdown = write_reports(tmp_path, result)["markdown"].read_text(encoding="utf-8")
    assert "## Comparison with reference" in markdown
    assert "| ndcg@10 | 0.3155 | 0.3000 | +0.0155 |" in markdown
    assert "| map | 0.2500 | 0.3000 | -0.0500 |" in markdown


def test_reference_metric_not_computed_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reference metric 'ndcg@5' was not computed"):
        write_reports(tmp_path, make_result(reference={"ndcg@5": 0.5}))
    assert not (tmp_path / "report.json").exists()


def test_summary_lines() -> None:
    assert summary_lines(make_result()) == [
        "nDCG@10    0.3155",
        "Recall@10  0.5000",
        "MRR@10     0.2500",
        "P@10       0.0500",
        "MAP        0.2500",
        "queries    2",
    ]
