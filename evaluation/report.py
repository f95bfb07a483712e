"""Write an evaluation result as ``report.json`` and a Markdown report, and summarise it for a terminal.

A result is a JSON-serialisable dict::

    {
        "title": "SciFact test, all-MiniLM-L6-v2, flat index",   # optional
        "provenance": {...},       # nested: dataset checksums, model name/revision, index config, code version
        "metrics": {"mean": {...}, "per_query": {...}},          # EvalScores as a dict
        "reference": {"ndcg@10": 0.645},                         # optional: published scores to compare
    }
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_ROW_ORDER = ("ndcg", "recall", "p", "mrr", "map")  # the order metrics are listed in
_SUMMARY = (
    ("nDCG@10", "ndcg@10"),
    ("Recall@10", "recall@10"),
    ("MRR@10", "mrr@10"),
    ("P@10", "p@10"),
    ("MAP", "map"),
)
METRIC_KEY = re.compile(r"^(?P<name>[^@]+)(?:@(?P<k>\d+))?$")  # "name" or "name@k"


def write_reports(out_dir: str | Path, result: dict[str, Any]) -> dict[str, Path]:
    """Writes ``report.json`` (sorted keys, indent 2) and ``report.md`` into ``out_dir``, creating it.

    Args:
        out_dir: Directory to write into.
        result: The result dict described in the module docstring.

    Returns:
        ``{"json": path, "markdown": path}``.

    Raises:
        ValueError: If ``result["reference"]`` names a metric missing from ``result["metrics"]["mean"]``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    markdown = _markdown(result)
    paths["json"].write_text(json.dumps(result, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown, encoding="utf-8")
    return paths


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """A few plain-text lines for a terminal: nDCG@10, Recall@10, MRR@10, P@10, MAP and the query count.

    Metrics the result lacks (e.g. no ``k=10`` cut-off) are left out.

    Example:
        >>> summary_lines({"metrics": {"mean": {"map": 0.5}, "per_query": {"q1": {"map": 0.5}}}})
        ['MAP        0.5000', 'queries    1']
    """
    mean = result["metrics"]["mean"]
    lines = [f"{label:<10} {mean[key]:.4f}" for label, key in _SUMMARY if key in mean]
    return [*lines, f"{'queries':<10} {len(result['metrics']['per_query'])}"]


def _markdown(result: Mapping[str, Any]) -> str:
    title = result.get("title")
    lines = [f"# Evaluation report: {title}" if title else "# Evaluation report", ""]
    lines += ["## What produced this", "", "| Item | Value |", "| --- | --- |"]
    lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in flatten(result.get("provenance", {}))]
    lines += ["", *_metrics_table(result["metrics"]["mean"], len(result["metrics"]["per_query"]))]
    if "reference" in result:
        lines += ["", *_comparison(result["metrics"]["mean"], result["reference"])]
    return "\n".join(lines) + "\n"


def _metrics_table(mean: Mapping[str, float], num_queries: int) -> list[str]:
    names, columns, cells = metric_grid(mean)
    header = ["Metric", *(f"@{k}" if k is not None else "full" for k in columns)]
    lines = [
        f"## Metrics (mean over {num_queries} queries)",
        "",
        _row(header),
        _row(["---"] + ["---:"] * len(columns)),
    ]
    for name in names:
        lines.append(_row([name, *(f"{cells[name][k]:.4f}" if k in cells[name] else "-" for k in columns)]))
    return lines


def _comparison(mean: Mapping[str, float], reference: Mapping[str, float]) -> list[str]:
    lines = [
        "## Comparison with reference",
        "",
        "| Metric | Ours | Reference | Delta |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key in sorted(reference):
        if key not in mean:
            raise ValueError(f"reference metric {key!r} was not computed; computed: {sorted(mean)}")
        lines.append(
            _row([key, f"{mean[key]:.4f}", f"{reference[key]:.4f}", f"{mean[key] - reference[key]:+.4f}"])
        )
    return lines


def flatten(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as sorted ``("a.b.c", value)`` pairs (how provenance is shown in tables)."""
    items: list[tuple[str, Any]] = []
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, Mapping) and value:
            items += flatten(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace("|", "\\|").replace("\n", " ")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def metric_grid(
    mean: Mapping[str, float],
) -> tuple[list[str], list[int | None], dict[str, dict[int | None, float]]]:
    """Metric names (report order), columns (cut-offs ascending, then None for 'full') and the cells."""
    cells: dict[str, dict[int | None, float]] = {}
    for key, value in mean.items():
        match = METRIC_KEY.match(key)
        if match is None:
            raise ValueError(f"metric key {key!r} is not 'name' or 'name@k'")
        cutoff = int(match["k"]) if match["k"] else None
        cells.setdefault(match["name"], {})[cutoff] = float(value)
    cutoffs = sorted({k for row in cells.values() for k in row if k is not None})
    columns: list[int | None] = [*cutoffs, *([None] if any(None in row for row in cells.values()) else [])]
    names = sorted(cells, key=lambda name: metric_order(name)[:2])
    return names, columns, cells


def metric_order(key: str) -> tuple[int, str, int]:
    """Sort key for metric keys: the report's row order (nDCG, recall, P, MRR, MAP, others), then cut-off."""
    match = METRIC_KEY.match(key)
    name = match["name"] if match else key
    k = int(match["k"]) if match and match["k"] else sys.maxsize
    return (_ROW_ORDER.index(name) if name in _ROW_ORDER else len(_ROW_ORDER), name, k)
