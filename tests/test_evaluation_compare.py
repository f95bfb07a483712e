"""Tests for evaluation.compare: deltas, paired significance, the regression gate and the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evaluation import evaluate
from evaluation.compare import compare, compare_main, load_report, parse_thresholds
from tierflow.errors import ConfigError

RESAMPLES = 2_000  # enough for stable p-values, quick on a busy CPU


def make_report(per_query: dict[str, dict[str, float]], title: str | None = None) -> dict[str, Any]:
    keys = next(iter(per_query.values()))
    mean = {key: sum(scores[key] for scores in per_query.values()) / len(per_query) for key in keys}
    report: dict[str, Any] = {"provenance": {}, "metrics": {"mean": mean, "per_query": per_query}}
    if title:
        report["title"] = title
    return report


def scores(ndcg: list[float], recall: list[float] | None = None) -> dict[str, dict[str, float]]:
    recall = recall if recall is not None else ndcg
    return {
        f"q{i:03d}": {"ndcg@10": n, "recall@10": r} for i, (n, r) in enumerate(zip(ndcg, recall, strict=True))
    }


def baseline_values(n: int = 200, seed: int = 7) -> list[float]:
    return [float(v) for v in np.random.default_rng(seed).uniform(0.3, 0.9, n)]


def write(path: Path, report: dict[str, Any]) -> Path:
    path.write_text(json.dumps(report), encoding="utf-8")
    return path


def test_identical_reports_pass_with_zero_delta_and_p_one() -> None:
    report = make_report(scores(baseline_values(50)), title="toy")
    result = compare(report, report, {"ndcg@10": 0.0}, resamples=RESAMPLES)
    assert result.passed and result.failures == [] and result.warnings == []
    assert result.shared_queries == 50
    assert [row.metric for row in result.rows] == ["ndcg@10", "recall@10"]
    for row in result.rows:
        assert row.delta == 0.0
        assert row.relative_delta == 0.0
        assert row.p_ttest == 1.0 and row.p_bootstrap == 1.0
        assert (row.ci_low, row.ci_high) == (0.0, 0.0)
        assert not row.significant
    assert [row.verdict for row in result.rows] == ["pass", "ungated"]


def test_drop_on_many_queries_fails_with_readable_message() -> None:
    base = baseline_values()
    lowered = [v - 0.05 if i % 2 == 0 else v for i, v in enumerate(base)]  # half the queries lose 0.05
    result = compare(
        make_report(scores(base)),
        make_report(scores(lowered, base)),
        {"ndcg@10": 0.01, "recall@10": 0.01},
        resamples=RESAMPLES,
    )
    assert not result.passed
    assert len(result.failures) == 1
    message = result.failures[0]
    assert message.startswith("ndcg@10 dropped 0.0250 (")
    assert "past the allowed 0.0100" in message
    assert "paired t-test p" in message and "bootstrap 95% CI of the change [" in message
    ndcg, recall = result.rows
    assert ndcg.verdict == "fail" and recall.verdict == "pass"
    assert ndcg.delta == pytest.approx(-0.025)
    assert ndcg.ci_low is not None and ndcg.ci_high is not None
    assert ndcg.ci_low < -0.025 < ndcg.ci_high < 0


def test_drop_within_threshold_passes() -> None:
    base = baseline_values()
    result = compare(
        make_report(scores(base)), make_report(scores([v - 0.005 for v in base])), {"ndcg@10": 0.01}
    )
    assert result.passed
    assert result.rows[0].significant  # significant, but within the allowed drop


def test_drop_exactly_at_threshold_passes_despite_float_noise() -> None:
    base = make_report({"q1": {"map": 0.66}, "q2": {"map": 0.66}})
    current = make_report({"q1": {"map": 0.65}, "q2": {"map": 0.65}})
    assert compare(base, current, {"map": 0.01}, resamples=RESAMPLES).passed
    assert not compare(base, current, {"map": 0.0099}, resamples=RESAMPLES).passed


def test_small_consistent_drop_is_significant() -> None:
    base = baseline_values(300)
    noise = np.random.default_rng(3).normal(0.0, 0.01, len(base))
    current = [v - 0.01 + float(e) for v, e in zip(base, noise, strict=True)]
    row = compare(make_report(scores(base)), make_report(scores(current)), resamples=RESAMPLES).rows[0]
    assert row.delta < 0
    assert row.p_ttest is not None and row.p_ttest < 0.001
    assert row.p_bootstrap is not None and row.p_bootstrap < 0.01
    assert row.significant and row.ci_high is not None and row.ci_high < 0


def test_noisy_zero_mean_change_is_not_significant() -> None:
    base = baseline_values(200)
    current = [v + (0.1 if i % 2 else -0.1) for i, v in enumerate(base)]  # large swings that cancel out
    row = compare(make_report(scores(base)), make_report(scores(current)), resamples=RESAMPLES).rows[0]
    assert row.delta == pytest.approx(0.0, abs=1e-12)
    assert row.p_ttest is not None and row.p_ttest > 0.5
    assert row.p_bootstrap is not None and row.p_bootstrap > 0.5
    assert not row.significant
    assert row.ci_low is not None and row.ci_high is not None and row.ci_low < 0 < row.ci_high


def test_require_significance_excuses_a_non_significant_drop() -> None:
    # A 0.02 average drop made of a few large swings over 10 queries: past the threshold, not significant.
    base = [0.5] * 10
    current = [0.5, 0.5, 0.9, 0.5, 0.1, 0.5, 0.5, 0.3, 0.5, 0.5]
    kwargs: dict[str, Any] = {"thresholds": {"ndcg@10": 0.01}, "metrics": ["ndcg@10"], "resamples": RESAMPLES}
    strict = compare(make_report(scores(base)), make_report(scores(current)), **kwargs)
    assert not strict.passed and strict.rows[0].verdict == "fail"
    lenient = compare(
        make_report(scores(base)), make_report(scores(current)), require_significance=True, **kwargs
    )
    assert lenient.passed and lenient.failures == []
    assert lenient.rows[0].verdict == "excused" and not lenient.rows[0].significant
    assert "drop not significant" in lenient.to_markdown()
    # A significant drop still fails under require_significance.
    big = compare(
        make_report(scores(base)),
        make_report(scores([v - 0.05 for v in base])),
        require_significance=True,
        **kwargs,
    )
    assert not big.passed and big.rows[0].verdict == "fail"


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    base = baseline_values(100)
    current = [v + float(e) for v, e in zip(base, np.random.default_rng(5).normal(0, 0.05, 100), strict=True)]
    b, c = make_report(scores(base)), make_report(scores(current))
    first = compare(b, c, resamples=RESAMPLES, seed=11).rows[0]
    again = compare(b, c, resamples=RESAMPLES, seed=11).rows[0]
    other = compare(b, c, resamples=RESAMPLES, seed=12).rows[0]
    assert (first.ci_low, first.ci_high, first.p_bootstrap) == (
        again.ci_low,
        again.ci_high,
        again.p_bootstrap,
    )
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)
    assert first.p_ttest == other.p_ttest  # the t-test does not depend on the seed


def test_mismatched_query_sets_pair_over_shared_queries_and_warn() -> None:
    base = make_report({"q1": {"map": 0.2}, "q2": {"map": 0.4}, "q3": {"map": 1.0}})
    current = make_report({"q1": {"map": 0.3}, "q2": {"map": 0.5}, "q4": {"map": 0.0}})
    result = compare(base, current, resamples=RESAMPLES)
    assert result.shared_queries == 2
    assert (result.baseline_queries, result.current_queries) == (3, 3)
    row = result.rows[0]
    assert (row.baseline, row.current) == pytest.approx((0.3, 0.4))  # over q1 and q2 only
    assert row.delta == pytest.approx(0.1)
    assert row.baseline_reported == pytest.approx(1.6 / 3)
    assert any("query sets differ" in w and "2 shared" in w for w in result.warnings)
    assert "query sets differ" in result.to_markdown()


def test_no_shared_query_is_an_error() -> None:
    with pytest.raises(ConfigError, match="share no query"):
        compare(make_report({"q1": {"map": 0.2}}), make_report({"q2": {"map": 0.2}}))


def test_missing_metric_is_an_error_naming_it() -> None:
    base = make_report({"q1": {"map": 0.2, "ndcg@10": 0.3}, "q2": {"map": 0.4, "ndcg@10": 0.5}})
    current = make_report({"q1": {"map": 0.2}, "q2": {"map": 0.4}})
    with pytest.raises(ConfigError, match=r"ndcg@10 \(missing from the current report\)"):
        compare(base, current, metrics=["map", "ndcg@10"])
    with pytest.raises(ConfigError, match=r"recall@100 \(missing from the baseline and current report\)"):
        compare(base, current, thresholds={"recall@100": 0.01})
    # By default only the shared metrics are compared, with a warning about the rest.
    result = compare(base, current, resamples=RESAMPLES)
    assert [row.metric for row in result.rows] == ["map"]
    assert result.warnings == ["metrics only in the baseline report, not compared: ndcg@10"]


def test_threshold_on_a_metric_not_compared_is_an_error() -> None:
    report = make_report({"q1": {"map": 0.2, "p@5": 0.2}, "q2": {"map": 0.4, "p@5": 0.2}})
    with pytest.raises(ConfigError, match="p@5, which is not among the compared metrics"):
        compare(report, report, thresholds={"p@5": 0.01}, metrics=["map"])


def test_parse_thresholds() -> None:
    assert parse_thresholds(["ndcg@10=0.01", " recall@100 = 0.02", "map=0"]) == {
        "ndcg@10": 0.01,
        "recall@100": 0.02,
        "map": 0.0,
    }
    assert parse_thresholds([]) == {}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("ndcg@10", "expected METRIC=MAX_DROP"),
        ("=0.01", "expected METRIC=MAX_DROP"),
        ("ndcg@10=", "expected METRIC=MAX_DROP"),
        ("ndcg@10=abc", "'abc' is not a number"),
        ("ndcg@10=-0.01", "finite number >= 0"),
        ("ndcg@10=nan", "finite number >= 0"),
        ("ndcg@ten=0.01", "is not a metric key"),
    ],
)
def test_parse_thresholds_rejects_bad_items(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_thresholds([item])


def test_parse_thresholds_rejects_duplicates() -> None:
    with pytest.raises(ConfigError, match="more than once"):
        parse_thresholds(["map=0.01", "map=0.02"])


def test_load_report_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_report(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_report(tmp_path / "bad.json")
    write(tmp_path / "nometrics.json", {"title": "x"})
    with pytest.raises(ConfigError, match="no 'metrics' object"):
        load_report(tmp_path / "nometrics.json")
    write(tmp_path / "noperquery.json", {"metrics": {"mean": {"map": 0.5}}})
    with pytest.raises(ConfigError, match="metrics.per_query"):
        load_report(tmp_path / "noperquery.json")
    report = make_report({"q1": {"map": 0.5}})
    write(tmp_path / "report.json", report)
    assert load_report(tmp_path) == report  # a report folder works too


def test_markdown_and_dict() -> None:
    base = make_report(scores(baseline_values(30)), title="baseline | flat")
    result = compare(base, base, {"ndcg@10": 0.01}, resamples=RESAMPLES)
    markdown = result.to_markdown()
    assert (
        "| Metric | Baseline | Current | Delta | 95% CI | p (t-test) | p (bootstrap) | Allowed drop | Verdict |"
        in (markdown)
    )
    assert "| ndcg@10 |" in markdown and "✅" in markdown and "**Passed**" in markdown
    assert "baseline \\| flat" in markdown
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["passed"] is True and data["shared_queries"] == 30
    assert data["rows"][0]["metric"] == "ndcg@10" and data["rows"][0]["verdict"] == "pass"


def test_single_shared_query_has_no_significance() -> None:
    result = compare(make_report({"q1": {"map": 0.5}}), make_report({"q1": {"map": 0.4}}), {"map": 0.01})
    row = result.rows[0]
    assert row.p_ttest is None and row.p_bootstrap is None and row.ci_low is None
    assert not result.passed and "fewer than 2 shared queries" in result.warnings[0]
    assert "n/a" in result.to_markdown()
    json.dumps(result.to_dict(), allow_nan=False)


def test_realistic_reports_from_evaluate() -> None:
    # 40 queries, one relevant document each. The baseline ranks it first; the current run ranks it third
    # on every other query.
    qrels = {f"q{i:02d}": {f"rel{i}": 1} for i in range(40)}
    baseline_run = {q: {f"rel{i}": 3.0, "x": 2.0, "y": 1.0} for i, q in enumerate(qrels)}
    current_run = {
        q: {
            f"rel{i}": 1.0 if i % 2 == 0 else 3.0,
            "x": 3.0 if i % 2 == 0 else 2.0,
            "y": 2.0 if i % 2 == 0 else 1.0,
        }
        for i, q in enumerate(qrels)
    }
    reports: list[dict[str, Any]] = []
    for run in (baseline_run, current_run):
        ev = evaluate(run, qrels, ks=(1, 10))
        reports.append({"metrics": {"mean": ev.mean, "per_query": ev.per_query}, "run": run})
    result = compare(reports[0], reports[1], {"ndcg@10": 0.05, "recall@10": 0.0}, resamples=RESAMPLES)
    rows = {row.metric: row for row in result.rows}
    assert rows["recall@10"].delta == 0.0 and rows["recall@10"].verdict == "pass"
    assert rows["ndcg@10"].baseline == pytest.approx(reports[0]["metrics"]["mean"]["ndcg@10"])
    assert rows["ndcg@10"].delta == pytest.approx(0.5 * (1 / np.log2(4) - 1))  # rank 1 -> rank 3 on half
    assert rows["ndcg@10"].verdict == "fail" and rows["ndcg@10"].significant
    assert rows["p@1"].verdict == "ungated" and rows["p@1"].delta == pytest.approx(-0.5)
    assert not result.passed
    assert [f.split(" ")[0] for f in result.failures] == ["ndcg@10"]


@pytest.fixture
def report_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    base = baseline_values(60)
    baseline = write(tmp_path / "baseline.json", make_report(scores(base), title="baseline"))
    same = write(tmp_path / "same.json", make_report(scores(base), title="same"))
    worse = write(tmp_path / "worse.json", make_report(scores([v - 0.05 for v in base]), title="worse"))
    return baseline, same, worse


def test_compare_main_exit_codes(
    report_files: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline, same, worse = report_files
    fast = ["--resamples", str(RESAMPLES)]
    assert compare_main([str(baseline), str(same), "--max-drop", "ndcg@10=0.01", *fast]) == 0
    out = capsys.readouterr().out
    assert "## Evaluation comparison" in out and "| ndcg@10 |" in out

    assert compare_main([str(baseline), str(worse), "--max-drop-all", "0.01", *fast]) == 1
    captured = capsys.readouterr()
    assert "❌" in captured.out and "ndcg@10 dropped 0.0500" in captured.err

    # Only recall@10 gated and with room: passes; --metrics limits the rows.
    assert compare_main([str(baseline), str(worse), "--max-drop", "recall@10=0.1", *fast]) == 0
    capsys.readouterr()
    assert compare_main([str(baseline), str(worse), "--metrics", "recall@10", "--json", *fast]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["metric"] for row in data["rows"]] == ["recall@10"]

    for bad in (
        [str(baseline), str(tmp_path / "nope.json")],
        [str(baseline), str(same), "--max-drop", "ndcg@10"],
        [str(baseline), str(same), "--max-drop-all", "-1"],
        [str(baseline), str(same), "--max-drop-all", "nan"],
        [str(baseline), str(same), "--metrics", " , "],
        [str(baseline), str(same), "--metrics", "mrr@10"],
        [str(baseline)],  # argparse usage error
    ):
        assert compare_main([*bad, *fast]) == 2, bad
        assert "error" in capsys.readouterr().err
    assert compare_main(["--help"]) == 0
    assert "--max-drop" in capsys.readouterr().out


def test_compare_main_writes_out_dir_and_step_summary(
    report_files: tuple[Path, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    baseline, _, worse = report_files
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    out = tmp_path / "cmp"
    argv = [str(baseline), str(worse), "--max-drop", "ndcg@10=0.01", "--out", str(out), "--json"]
    assert compare_main([*argv, "--resamples", str(RESAMPLES)]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert printed["passed"] is False and printed["failures"][0].startswith("ndcg@10 dropped")
    markdown = (out / "compare.md").read_text(encoding="utf-8")
    assert "**Failed**" in markdown
    assert summary.read_text(encoding="utf-8") == "# earlier step\n" + markdown + "\n"
