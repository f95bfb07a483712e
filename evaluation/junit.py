"""Write evaluation results as JUnit XML, so a CI system shows metric thresholds as passing/failing tests.

One ``<testsuite>`` per result (one dataset scored on one index configuration), named after the result's
``name`` key, else its ``title``; one ``<testcase>`` per metric threshold (a minimum), named like
``ndcg@10 >= 0.64``. A mean below its threshold is a ``<failure>``; a threshold naming a metric the result
did not compute is an ``<error>``. Each suite's ``<properties>`` carry the provenance essentials: the
dataset (path, query count, checksums), the model, the index and the code version.

Thresholds come from the ``thresholds`` argument, either one mapping for every result
(``{"ndcg@10": 0.64}``) or one per suite name (``{"scifact flat": {"ndcg@10": 0.64}}``), merged over the
result's own ``"thresholds"`` key (the argument wins for a metric named in both).
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from evaluation.report import flatten

# Provenance keys (flattened with dots) copied into <properties>: these prefixes, and the keys themselves.
_PROPERTY_PREFIXES = ("dataset", "model", "index", "code_version")
# Characters XML 1.0 cannot hold at all, even escaped: dropped from every name, message and value.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def write_junit(
    path: str | Path,
    results: Sequence[Mapping[str, Any]],
    thresholds: Mapping[str, Mapping[str, float]] | Mapping[str, float] | None = None,
) -> Path:
    """Writes the JUnit XML report of ``results`` against metric minimums to ``path``, creating parents.

    Args:
        path: The XML file to write (UTF-8, with an XML declaration).
        results: Result dicts as produced by ``evaluation.retrieval.evaluate_index`` (see evaluation.report).
        thresholds: Metric key -> minimum mean for every result, or suite name -> (metric key -> minimum).
            Merged over each result's own ``"thresholds"``; None (or empty) uses only those.

    Returns:
        The path written.

    Raises:
        ValueError: If ``thresholds`` mixes the two forms, holds a non-numeric minimum, or names a suite
            that no result has (or one that several results share).
    """
    names = [_suite_name(result, number) for number, result in enumerate(results, start=1)]
    per_suite = _per_suite_thresholds(names, thresholds or {})
    root = ET.Element("testsuites", name="tierflow evaluation")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for name, result in zip(names, results, strict=True):
        limits = {**_check_minimums(result.get("thresholds") or {}, name), **per_suite.get(name, {})}
        suite = _suite(name, result, limits)
        for key in totals:
            totals[key] += int(suite.get(key, "0"))
        root.append(suite)
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
    with out.open("a", encoding="utf-8") as tail:
        tail.write("\n")
    return out


def _suite_name(result: Mapping[str, Any], number: int) -> str:
    for key in ("name", "title"):
        value = result.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return f"result {number}"


def _per_suite_thresholds(
    names: list[str], thresholds: Mapping[str, Mapping[str, float]] | Mapping[str, float]
) -> dict[str, dict[str, float]]:
    values = list(thresholds.values())
    if all(isinstance(value, Mapping) for value in values) and values:
        unknown = sorted(set(thresholds) - set(names))
        if unknown:
            raise ValueError(f"thresholds name suites no result has: {unknown}; suites: {names}")
        shared = sorted({name for name in names if names.count(name) > 1 and name in thresholds})
        if shared:
            raise ValueError(
                f"thresholds name suites that several results share: {shared}; give each a 'name'"
            )
        return {
            name: _check_minimums(limits, name)
            for name, limits in thresholds.items()
            if isinstance(limits, Mapping)
        }
    if any(isinstance(value, Mapping) for value in values):
        raise ValueError(
            "thresholds must be either metric -> minimum for all results or suite -> (metric -> minimum), "
            f"not a mix of both: {dict(thresholds)!r}"
        )
    common = _check_minimums(thresholds, "every suite")
    return {name: dict(common) for name in names}


def _check_minimums(limits: Mapping[str, Any], where: str) -> dict[str, float]:
    checked: dict[str, float] = {}
    for key, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(float(value)):
            raise ValueError(f"threshold {key!r} for {where} must be a number, got {value!r}")
        checked[str(key)] = float(value)
    return checked


def _suite(name: str, result: Mapping[str, Any], limits: Mapping[str, float]) -> ET.Element:
    mean: Mapping[str, float] = result.get("metrics", {}).get("mean", {})
    provenance: Mapping[str, Any] = result.get("provenance", {})
    seconds = provenance.get("search_seconds", 0)
    suite = ET.Element("testsuite", name=_clean(name), time=_seconds(seconds))
    properties = ET.SubElement(suite, "properties")
    num_queries = len(result.get("metrics", {}).get("per_query", {}))
    for key, value in [("queries_scored", num_queries), *_essentials(provenance)]:
        ET.SubElement(properties, "property", name=_clean(key), value=_clean(_text(value)))
    failures = errors = 0
    for key in sorted(limits):
        minimum = limits[key]
        case = ET.SubElement(suite, "testcase", classname=_clean(name), name=_clean(f"{key} >= {minimum:g}"))
        case.set("time", "0")
        if key not in mean:
            errors += 1
            message = f"metric {key!r} was not computed; computed: {', '.join(sorted(mean)) or 'none'}"
            ET.SubElement(case, "error", message=_clean(message), type="MissingMetric").text = _clean(message)
            continue
        actual = float(mean[key])
        if not actual >= minimum:  # also catches NaN
            failures += 1
            message = f"{key} = {actual:.4f} is below the threshold {minimum:.4f} (by {minimum - actual:.4f})"
            detail = f"{message}\nactual: {actual!r}\nthreshold: {minimum!r}"
            ET.SubElement(case, "failure", message=_clean(message), type="BelowThreshold").text = _clean(
                detail
            )
        else:
            ET.SubElement(case, "system-out").text = f"{key} = {actual!r} (threshold {minimum!r})"
    suite.set("tests", str(len(limits)))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", "0")
    return suite


def _essentials(provenance: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [
        (key, value)
        for key, value in flatten(provenance)
        if any(key == prefix or key.startswith(prefix + ".") for prefix in _PROPERTY_PREFIXES)
    ]


def _seconds(value: Any) -> str:
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return "0.000"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _clean(text: str) -> str:
    return _XML_INVALID.sub("\N{REPLACEMENT CHARACTER}", text)
