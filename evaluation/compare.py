"""Compare two evaluation reports: per-metric deltas, paired significance over queries, and a regression gate.

``tierflow eval compare BASELINE.json CURRENT.json`` reads two reports written by
:func:`evaluation.report.write_reports` and, for each metric, compares the two runs query by query over the
queries both reports scored:

* **Delta**: ``current - baseline`` of the means over the shared queries (equal to the reports' own means
  when both reports scored the same queries), and the delta relative to the baseline.
* **Paired t-test**: two-sided, on the per-query differences (:func:`scipy.stats.ttest_rel`). When every
  difference is 0 the p-value is 1.0; when every difference is the same non-zero value it is 0.0 (equal up
  to 1e-12, so float noise such as ``(v - 0.05) - v`` does not reach scipy). With fewer than 2 shared
  queries neither test is run: the p-values and the interval are None and nothing counts as significant.
* **Paired bootstrap**: query indices are resampled with replacement ``resamples`` times from
  ``numpy.random.default_rng(seed)``; the ``1 - alpha`` percentile interval of the resampled mean
  differences is the confidence interval of the change, and the two-sided p-value is
  ``min(1, 2 * min(P(mean <= 0), P(mean >= 0)))`` with add-one smoothing (so it is never 0, and it is
  below ``alpha`` exactly when the interval excludes 0). The same seed gives the same interval and p-value.

**Gate.** ``thresholds`` maps a metric to the largest drop allowed, in absolute units of the metric
(``{"ndcg@10": 0.01}``: the current nDCG@10 may be at most 0.01 below the baseline). A metric fails when
``delta < -threshold`` (with a 1e-9 tolerance for floating-point noise). Every metric is taken to be
"higher is better". By default significance is reported but does not excuse a failure: a drop past the
threshold fails even when it is not significant. With ``require_significance=True`` a drop past the
threshold fails only when it is also significant (bootstrap p < ``alpha``); a non-significant drop is then
reported with the verdict ``excused``. Metrics without a threshold are compared but not gated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import stats

from evaluation.report import METRIC_KEY, metric_order
from tierflow.errors import ConfigError

Verdict = Literal["pass", "fail", "excused", "ungated"]

_TOLERANCE = 1e-9  # gate slack for float noise in means
_ZERO_SPREAD = 1e-12  # per-query differences this close count as equal (zero variance)
_BOOTSTRAP_CHUNK = 4_000_000  # resampled indices held in memory at once
_VERDICT_MARK = {"pass": "✅", "fail": "❌", "excused": "✅ (drop not significant)", "ungated": "–"}


@dataclass(frozen=True)
class MetricComparison:
    """One metric of a comparison.

    Attributes:
        metric: Metric key, e.g. ``ndcg@10``.
        baseline: Baseline mean over the shared queries.
        current: Current mean over the shared queries.
        delta: ``current - baseline``.
        relative_delta: ``delta / baseline``; None when the baseline is 0.
        ci_low: Lower end of the bootstrap confidence interval of the change; None with < 2 shared queries.
        ci_high: Upper end of that interval; None with < 2 shared queries.
        p_ttest: Two-sided paired t-test p-value; None with < 2 shared queries.
        p_bootstrap: Two-sided paired bootstrap p-value; None with < 2 shared queries.
        significant: Whether ``p_bootstrap < alpha``.
        max_drop: Largest drop allowed by the gate; None when the metric is not gated.
        verdict: ``pass``, ``fail``, ``excused`` (a drop past ``max_drop`` that is not significant, under
            ``require_significance``) or ``ungated``.
        baseline_reported: The mean recorded in the baseline report (over all of its queries).
        current_reported: The mean recorded in the current report (over all of its queries).
    """

    metric: str
    baseline: float
    current: float
    delta: float
    relative_delta: float | None
    ci_low: float | None
    ci_high: float | None
    p_ttest: float | None
    p_bootstrap: float | None
    significant: bool
    max_drop: float | None
    verdict: Verdict
    baseline_reported: float
    current_reported: float


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare`.

    Attributes:
        rows: One row per compared metric, in display order.
        passed: True when no gated metric failed.
        failures: One readable message per failed metric.
        warnings: Things the reader should know (differing query sets, metrics only in one report ...).
        shared_queries: Number of queries both reports scored; the paired statistics use exactly these.
        baseline_queries: Number of queries in the baseline report.
        current_queries: Number of queries in the current report.
        resamples: Bootstrap resamples.
        seed: Bootstrap seed.
        alpha: Significance level; the confidence intervals are ``1 - alpha`` intervals.
        require_significance: Whether a drop past its threshold fails only when significant.
        baseline_title: The baseline report's title, if it has one.
        current_title: The current report's title, if it has one.
    """

    rows: list[MetricComparison]
    passed: bool
    failures: list[str]
    warnings: list[str]
    shared_queries: int
    baseline_queries: int
    current_queries: int
    resamples: int
    seed: int
    alpha: float
    require_significance: bool
    baseline_title: str | None = None
    current_title: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (no NaN or infinity: missing values are None).

        Returns:
            Every field, with ``rows`` as a list of dicts.
        """
        return asdict(self)

    def to_markdown(self) -> str:
        """A Markdown summary for a pull-request comment or a GitHub job summary.

        Returns:
            A heading, what was compared, any warnings, a table with one row per metric (baseline, current,
            delta, confidence interval, t-test and bootstrap p-values, allowed drop, verdict) and the
            outcome with the failure messages; ends with a newline.
        """
        level = _percent(self.alpha)
        lines = ["## Evaluation comparison", ""]
        if self.baseline_title or self.current_title:
            lines += [
                f"Baseline: {_cell(self.baseline_title or '(untitled)')}  ",
                f"Current: {_cell(self.current_title or '(untitled)')}",
                "",
            ]
        lines += [
            f"Paired over {self.shared_queries} shared queries (baseline {self.baseline_queries}, current "
            f"{self.current_queries}); two-sided paired t-test and paired bootstrap ({self.resamples} "
            f"resamples, seed {self.seed}, {level} CI).",
            "",
        ]
        lines += [f"> ⚠️ {_cell(warning)}" for warning in self.warnings]
        if self.warnings:
            lines.append("")
        lines += [
            f"| Metric | Baseline | Current | Delta | {level} CI | p (t-test) | p (bootstrap) "
            "| Allowed drop | Verdict |",
            "| --- | ---: | ---: | ---: | :---: | ---: | ---: | ---: | :---: |",
        ]
        for row in self.rows:
            ci = (
                "n/a"
                if row.ci_low is None or row.ci_high is None
                else f"[{row.ci_low:+.4f}, {row.ci_high:+.4f}]"
            )
            cells = [
                row.metric,
                f"{row.baseline:.4f}",
                f"{row.current:.4f}",
                f"{row.delta:+.4f}",
                ci,
                _p(row.p_ttest),
                _p(row.p_bootstrap),
                "–" if row.max_drop is None else f"{row.max_drop:.4f}",
                _VERDICT_MARK[row.verdict],
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        gated = sum(1 for row in self.rows if row.verdict != "ungated")
        if self.passed and not gated:
            lines.append("**Passed**: no metric is gated (no allowed drop was given).")
        elif self.passed:
            lines.append(f"**Passed**: no gated metric dropped past its allowed drop ({gated} gated).")
        else:
            lines.append(f"**Failed**: {len(self.failures)} metric(s) dropped past the allowed drop.")
            lines += ["", *(f"- {_cell(failure)}" for failure in self.failures)]
        return "\n".join(lines) + "\n"


def load_report(path: str | Path) -> dict[str, Any]:
    """Reads a report written by :func:`evaluation.report.write_reports`.

    Args:
        path: The ``report.json`` file, or a directory holding one.

    Returns:
        The report dict.

    Raises:
        ConfigError: If the file is missing or unreadable, is not valid JSON, or lacks ``metrics.mean`` /
            ``metrics.per_query`` in the expected shape.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "report.json"
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"evaluation report {str(file)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read evaluation report {str(file)!r}: {err}") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"evaluation report {str(file)!r} is not valid JSON: {err}") from None
    problem = _shape_problem(report)
    if problem:
        raise ConfigError(f"{str(file)!r} is not an evaluation report: {problem}")
    return dict(report)


def parse_thresholds(items: Sequence[str]) -> dict[str, float]:
    """Parses ``METRIC=MAX_DROP`` items, as given to ``--max-drop``.

    Args:
        items: Strings like ``ndcg@10=0.01``; a metric may be named once.

    Returns:
        Metric key -> largest allowed drop (a finite number ``>= 0``).

    Raises:
        ConfigError: If an item is not ``METRIC=NUMBER``, names a metric twice, or the number is negative
            or not finite.

    Example:
        >>> parse_thresholds(["ndcg@10=0.01", "recall@100=0.02"])
        {'ndcg@10': 0.01, 'recall@100': 0.02}
    """
    thresholds: dict[str, float] = {}
    for item in items:
        metric, sep, value = item.partition("=")
        metric = metric.strip()
        if not sep or not metric or not value.strip():
            raise ConfigError(f"--max-drop {item!r}: expected METRIC=MAX_DROP, e.g. ndcg@10=0.01")
        if not METRIC_KEY.match(metric):
            raise ConfigError(f"--max-drop {item!r}: {metric!r} is not a metric key like ndcg@10 or map")
        if metric in thresholds:
            raise ConfigError(f"--max-drop {item!r}: {metric} is given more than once")
        thresholds[metric] = _max_drop(value, f"--max-drop {item!r}")
    return thresholds


def compare(
    baseline: Mapping[str, Any],
    current: Mapping[str, Any],
    thresholds: Mapping[str, float] | None = None,
    metrics: Sequence[str] | None = None,
    resamples: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
    *,
    default_max_drop: float | None = None,
    require_significance: bool = False,
) -> Comparison:
    """Compares two reports metric by metric, paired over the queries both scored, and applies the gate.

    Args:
        baseline: The reference report (see :mod:`evaluation.report`).
        current: The report under test.
        thresholds: Metric -> largest allowed drop (absolute); a metric fails when
            ``delta < -threshold``. Each named metric must be among those compared.
        metrics: Metrics to compare, in this order; default: every metric in both reports' ``mean``.
        resamples: Bootstrap resamples (``>= 1``).
        seed: Seed of the bootstrap's ``numpy.random.default_rng``.
        alpha: Significance level in (0, 1); confidence intervals are ``1 - alpha`` intervals.
        default_max_drop: Largest allowed drop for compared metrics that ``thresholds`` does not name;
            None leaves them ungated.
        require_significance: When True, a drop past its threshold fails only if it is significant
            (bootstrap p < ``alpha``); otherwise it is reported as ``excused``.

    Returns:
        The :class:`Comparison`.

    Raises:
        ConfigError: If a report is malformed, a requested or gated metric is missing from either report
            (or from a shared query's scores), the reports share no query, or a parameter is out of range.
    """
    for name, report in (("baseline", baseline), ("current", current)):
        problem = _shape_problem(report)
        if problem:
            raise ConfigError(f"the {name} report is malformed: {problem}")
    if resamples < 1:
        raise ConfigError(f"resamples must be >= 1, got {resamples}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be between 0 and 1, got {alpha}")
    thresholds = dict(thresholds or {})
    limits = [
        *thresholds.items(),
        *([("unnamed metrics", default_max_drop)] if default_max_drop is not None else []),
    ]
    for metric, limit in limits:
        if not math.isfinite(limit) or limit < 0:
            raise ConfigError(f"the allowed drop for {metric} must be a finite number >= 0, got {limit}")

    base_mean: Mapping[str, float] = baseline["metrics"]["mean"]
    cur_mean: Mapping[str, float] = current["metrics"]["mean"]
    warnings: list[str] = []
    if metrics is None:
        names = sorted(set(base_mean) & set(cur_mean), key=metric_order)
        for label, only in (
            ("baseline", sorted(set(base_mean) - set(cur_mean), key=metric_order)),
            ("current", sorted(set(cur_mean) - set(base_mean), key=metric_order)),
        ):
            if only:
                warnings.append(f"metrics only in the {label} report, not compared: {', '.join(only)}")
        missing_gated = sorted(set(thresholds) - set(names))
        if missing_gated:
            raise ConfigError(_missing_message(missing_gated, base_mean, cur_mean, "a --max-drop threshold"))
        if not names:
            raise ConfigError(
                f"the reports have no metric in common (baseline: {', '.join(sorted(base_mean)) or 'none'}; "
                f"current: {', '.join(sorted(cur_mean)) or 'none'})"
            )
    else:
        names = list(dict.fromkeys(metrics))
        if not names:
            raise ConfigError("no metric to compare: the metric list is empty")
        missing = [m for m in names if m not in base_mean or m not in cur_mean]
        if missing:
            raise ConfigError(_missing_message(missing, base_mean, cur_mean, "requested"))
        not_compared = sorted(set(thresholds) - set(names))
        if not_compared:
            raise ConfigError(
                f"a threshold is set for {', '.join(not_compared)}, which is not among the compared metrics "
                f"({', '.join(names)})"
            )

    base_pq: Mapping[str, Mapping[str, float]] = baseline["metrics"]["per_query"]
    cur_pq: Mapping[str, Mapping[str, float]] = current["metrics"]["per_query"]
    shared = sorted(set(base_pq) & set(cur_pq))
    if not shared:
        raise ConfigError(
            f"the reports share no query (baseline has {len(base_pq)}, current has {len(cur_pq)}): "
            "were they run on the same dataset and split?"
        )
    only_base, only_cur = len(base_pq) - len(shared), len(cur_pq) - len(shared)
    if only_base or only_cur:
        warnings.append(
            f"the query sets differ: {len(shared)} shared, {only_base} only in the baseline, {only_cur} only in "
            f"the current report; means, deltas and tests use the {len(shared)} shared queries only"
        )
    if len(shared) < 2:
        warnings.append("fewer than 2 shared queries: significance cannot be tested")

    base_values = np.column_stack([_column(base_pq, shared, metric, "baseline") for metric in names])
    cur_values = np.column_stack([_column(cur_pq, shared, metric, "current") for metric in names])
    # One set of resampled query sets for every metric: a metric's interval does not depend on the others.
    boot = _bootstrap_means(cur_values - base_values, resamples, seed) if len(shared) >= 2 else None
    rows: list[MetricComparison] = []
    failures: list[str] = []
    for j, metric in enumerate(names):
        row = _compare_metric(
            metric,
            base_values[:, j],
            cur_values[:, j],
            None if boot is None else boot[:, j],
            thresholds.get(metric, default_max_drop),
            alpha=alpha,
            require_significance=require_significance,
            reported=(float(base_mean[metric]), float(cur_mean[metric])),
        )
        rows.append(row)
        if row.verdict == "fail":
            failures.append(_failure_message(row, alpha))
    return Comparison(
        rows=rows,
        passed=not failures,
        failures=failures,
        warnings=warnings,
        shared_queries=len(shared),
        baseline_queries=len(base_pq),
        current_queries=len(cur_pq),
        resamples=resamples,
        seed=seed,
        alpha=alpha,
        require_significance=require_significance,
        baseline_title=_title(baseline),
        current_title=_title(current),
    )


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``eval compare`` arguments to ``parser`` (for wiring into a sub-command).

    Args:
        parser: The parser to extend; :func:`run_compare` reads the resulting namespace.
    """
    parser.add_argument("baseline", metavar="BASELINE", help="baseline report.json (or its folder)")
    parser.add_argument("current", metavar="CURRENT", help="current report.json (or its folder)")
    parser.add_argument(
        "--max-drop",
        action="append",
        default=[],
        metavar="METRIC=V",
        help="fail when METRIC drops by more than V (absolute), e.g. ndcg@10=0.01; repeatable",
    )
    parser.add_argument(
        "--max-drop-all",
        default=None,
        metavar="V",
        help="largest allowed drop for every compared metric not named by --max-drop (default: ungated)",
    )
    parser.add_argument(
        "--metrics", default=None, metavar="M1,M2", help="metrics to compare (default: all in both reports)"
    )
    parser.add_argument(
        "--require-significance",
        action="store_true",
        help="a drop past its allowed drop fails only when significant (bootstrap p < alpha)",
    )
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    parser.add_argument("--out", default=None, metavar="DIR", help="write compare.json and compare.md here")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the Markdown table")


def run_compare(args: argparse.Namespace) -> int:
    """Runs a comparison from parsed arguments (see :func:`add_compare_arguments`).

    Args:
        args: The parsed namespace.

    Returns:
        0 when the gate passes, 1 when it fails.

    Raises:
        ConfigError: On bad input (unreadable report, bad threshold, unknown metric ...).
        OSError: If ``--out`` or ``GITHUB_STEP_SUMMARY`` cannot be written.
    """
    thresholds = parse_thresholds(args.max_drop)
    default = None if args.max_drop_all is None else _max_drop(args.max_drop_all, "--max-drop-all")
    metrics = None
    if args.metrics is not None:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        if not metrics:
            raise ConfigError(f"--metrics {args.metrics!r}: expected a comma-separated list like ndcg@10,map")
    result = compare(
        load_report(args.baseline),
        load_report(args.current),
        thresholds,
        metrics,
        resamples=args.resamples,
        seed=args.seed,
        alpha=args.alpha,
        default_max_drop=default,
        require_significance=args.require_significance,
    )
    markdown = result.to_markdown()
    as_json = json.dumps(result.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
    print(as_json if args.json else markdown, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(as_json, encoding="utf-8")
        (out / "compare.md").write_text(markdown, encoding="utf-8")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(markdown + "\n")
    if not result.passed:
        print(f"tierflow: comparison failed: {'; '.join(result.failures)}", file=sys.stderr)
    return 0 if result.passed else 1


def compare_main(argv: Sequence[str] | None = None) -> int:
    """``tierflow eval compare``: parses ``argv``, compares, prints and writes the result.

    Args:
        argv: Arguments after ``eval compare``:
            ``BASELINE CURRENT [--max-drop M=V ...] [--max-drop-all V] [--metrics m1,m2]
            [--require-significance] [--resamples N] [--seed N] [--alpha A] [--out DIR] [--json]``.

    Returns:
        0 when the gate passes, 1 when a metric dropped past its allowed drop, 2 on bad input (the error is
        printed to stderr as ``tierflow: error: ...``; argparse's own usage errors also return 2).
    """
    parser = argparse.ArgumentParser(
        prog="tierflow eval compare",
        description="Compare two evaluation reports: per-metric deltas, paired significance and a gate.",
    )
    add_compare_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed by argparse)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return run_compare(args)
    except (ConfigError, OSError) as err:
        print(f"tierflow: error: {err}", file=sys.stderr)
        return 2


def _compare_metric(
    metric: str,
    base: np.ndarray,
    cur: np.ndarray,
    boot: np.ndarray | None,
    max_drop: float | None,
    *,
    alpha: float,
    require_significance: bool,
    reported: tuple[float, float],
) -> MetricComparison:
    base_mean = math.fsum(base.tolist()) / len(base)
    cur_mean = math.fsum(cur.tolist()) / len(cur)
    delta = cur_mean - base_mean
    diffs = cur - base
    ci_low = ci_high = p_ttest = p_boot = None
    if boot is not None:
        p_ttest = _ttest(base, cur, diffs)
        ci_low, ci_high, p_boot = _bootstrap_summary(boot, alpha)
    significant = p_boot is not None and p_boot < alpha
    verdict: Verdict = "ungated"
    if max_drop is not None:
        verdict = "pass"
        if delta < -max_drop - _TOLERANCE:
            verdict = "fail" if significant or not require_significance else "excused"
    return MetricComparison(
        metric=metric,
        baseline=base_mean,
        current=cur_mean,
        delta=delta,
        relative_delta=delta / base_mean if base_mean != 0 else None,
        ci_low=ci_low,
        ci_high=ci_high,
        p_ttest=p_ttest,
        p_bootstrap=p_boot,
        significant=significant,
        max_drop=max_drop,
        verdict=verdict,
        baseline_reported=reported[0],
        current_reported=reported[1],
    )


def _ttest(base: np.ndarray, cur: np.ndarray, diffs: np.ndarray) -> float:
    # Zero variance (up to float noise, e.g. ``v - 0.05 - v``): the t statistic is 0/0 or +-inf.
    if float(np.ptp(diffs)) <= _ZERO_SPREAD:
        return 1.0 if abs(float(diffs.mean())) <= _ZERO_SPREAD else 0.0
    p = float(stats.ttest_rel(cur, base).pvalue)
    return 1.0 if math.isnan(p) else p


def _bootstrap_means(diffs: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Mean per-query difference of every metric (columns of ``diffs``) in each of ``resamples`` resamples.

    Each resample draws ``n`` query indices with replacement from ``default_rng(seed)``; it is applied as a
    count per query (a weight matrix), so all metrics share the same resampled query sets.
    """
    rng = np.random.default_rng(seed)
    n = diffs.shape[0]
    chunk = max(1, _BOOTSTRAP_CHUNK // n)
    means = np.empty((resamples, diffs.shape[1]))
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        rows = stop - start
        picks = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
        counts = np.bincount(picks.ravel(), minlength=rows * n).reshape(rows, n)
        means[start:stop] = counts @ diffs / n
    return means


def _bootstrap_summary(means: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """Percentile CI of the mean difference and the two-sided bootstrap p-value (add-one smoothed)."""
    resamples = len(means)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    at_most = (1 + int(np.count_nonzero(means <= 0))) / (1 + resamples)
    at_least = (1 + int(np.count_nonzero(means >= 0))) / (1 + resamples)
    return float(low), float(high), min(1.0, 2 * min(at_most, at_least))


def _column(
    per_query: Mapping[str, Mapping[str, float]], qids: list[str], metric: str, label: str
) -> np.ndarray:
    values = []
    for qid in qids:
        scores = per_query[qid]
        if metric not in scores:
            raise ConfigError(f"the {label} report has no {metric} score for query {qid!r}")
        value = scores[metric]
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"the {label} report's {metric} for query {qid!r} is not a number: {value!r}")
        values.append(float(value))
    return np.asarray(values, dtype=np.float64)


def _failure_message(row: MetricComparison, alpha: float) -> str:
    text = (
        f"{row.metric} dropped {-row.delta:.4f} ({row.baseline:.4f} -> {row.current:.4f}), "
        f"past the allowed {row.max_drop:.4f}"
    )
    if row.p_ttest is not None and row.ci_low is not None and row.ci_high is not None:
        text += (
            f"; paired t-test p{_p_eq(row.p_ttest)}, bootstrap {_percent(alpha)} CI of the change "
            f"[{row.ci_low:+.4f}, {row.ci_high:+.4f}]"
        )
    return text


def _shape_problem(report: Any) -> str | None:
    if not isinstance(report, Mapping):
        return f"expected a JSON object, got {type(report).__name__}"
    metrics = report.get("metrics")
    if not isinstance(metrics, Mapping):
        return "it has no 'metrics' object"
    mean, per_query = metrics.get("mean"), metrics.get("per_query")
    if not isinstance(mean, Mapping) or not mean:
        return "it has no non-empty 'metrics.mean' object"
    if not isinstance(per_query, Mapping) or not per_query:
        return "it has no non-empty 'metrics.per_query' object"
    for key, value in mean.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"metrics.mean[{key!r}] is not a number: {value!r}"
    for qid, scores in per_query.items():
        if not isinstance(scores, Mapping):
            return f"metrics.per_query[{qid!r}] is not an object"
    return None


def _missing_message(
    missing: Sequence[str], base_mean: Mapping[str, float], cur_mean: Mapping[str, float], what: str
) -> str:
    parts = []
    for metric in missing:
        absent = [
            name for name, mean in (("baseline", base_mean), ("current", cur_mean)) if metric not in mean
        ]
        parts.append(f"{metric} (missing from the {' and '.join(absent)} report)")
    available = sorted(set(base_mean) & set(cur_mean), key=metric_order)
    return (
        f"{what} metric not in both reports: {', '.join(parts)}; "
        f"metrics in both: {', '.join(available) or 'none'}"
    )


def _max_drop(value: str, where: str) -> float:
    try:
        limit = float(value)
    except ValueError:
        raise ConfigError(f"{where}: {value.strip()!r} is not a number") from None
    if not math.isfinite(limit) or limit < 0:
        raise ConfigError(f"{where}: the allowed drop must be a finite number >= 0, got {value.strip()!r}")
    return limit


def _title(report: Mapping[str, Any]) -> str | None:
    title = report.get("title")
    return title if isinstance(title, str) and title else None


def _percent(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _p_eq(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"={p:.4f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
