"""Evaluation suites: datasets × index configurations, scored, reported and gated in one command.

A suite is a TOML file::

    name = "scifact"
    ks = [1, 3, 5, 10, 100]

    [[datasets]]
    name = "scifact"
    path = "../../../shared/data/scifact"     # relative to this file; or s3://bucket/prefix
    reference = { "ndcg@10" = 0.645 }         # published numbers, shown next to ours

    [[configs]]
    name = "flat"                              # built by the ingest pipeline (or reused from the cache)
    index = { type = "flat" }

    [[configs]]
    name = "half-cold"                         # derived from "flat" without embedding anything again
    derive = "flat"
    cold_fraction = 0.5                        # this share of the documents aged out to the cold tier

    [thresholds]                               # absolute minimums (JUnit test cases)
    "ndcg@10" = 0.64

    [gate]                                     # regression gate against a committed baseline
    baseline = "baselines/scifact.json"
    max_drop = { "ndcg@10" = 0.01 }

``tierflow eval run SUITE --out DIR`` writes, per dataset × configuration, ``report.json``, ``report.md``
and ``report.html`` under ``DIR/<dataset>/<config>/``, and for the suite ``suite.json``,
``summary.md`` (the job summary / PR comment), ``junit.xml`` and, with a gate, ``compare.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evaluation.beir import BeirDataset, load_beir
from evaluation.metrics import DEFAULT_KS
from evaluation.operations import operations
from evaluation.report import write_reports
from evaluation.retrieval import evaluate_index
from indexing.cold import ColdConfig, ColdStore
from indexing.docs_table import CANONICAL, DELETED, DocState
from indexing.hot import CommitRequest, HotIndex
from indexing.search import Searcher
from tierflow.config import build, load_config
from tierflow.errors import ConfigError
from tierflow.progress import bar as tqdm_bar
from tierflow.s3 import is_s3_uri, s3_client, split_s3_uri, translate_s3_error

log = logging.getLogger(__name__)
SUMMARY_METRICS = ("ndcg@10", "recall@10", "mrr@10", "p@10", "map")


@dataclass(frozen=True)
class DatasetSpec:
    """One BEIR dataset of a suite.

    Args:
        name: Its name in reports (``DIR/<name>/...``).
        path: A directory (relative paths resolve against the suite file) or ``s3://bucket/prefix``.
        split: The qrels split.
        reference: Published scores to show next to ours.
        endpoint_url: S3 endpoint for an ``s3://`` path (empty: AWS or ``AWS_ENDPOINT_URL``).
    """

    name: str
    path: str
    split: str = "test"
    reference: dict[str, str] = field(default_factory=dict)
    endpoint_url: str = ""


@dataclass(frozen=True)
class ConfigSpec:
    """One index configuration under test.

    Args:
        name: Its name in reports.
        index: ``[index]`` settings (type, hnsw_m, ef_search ...) for the segments.
        chunking: ``[chunking]`` settings.
        derive: Build from another configuration's index instead of ingesting: re-index its vectors with
            ``index`` (compaction), age ``cold_fraction`` of the documents to the cold tier, or drop
            ``drop_fraction`` of them (a damaged or truncated index, for testing gates).
        cold_fraction: Share of the documents a lifecycle run moves to the cold tier (derived only).
        drop_fraction: Share of the documents deleted after the build (derived only).
    """

    name: str
    index: dict[str, str] = field(default_factory=dict)
    chunking: dict[str, str] = field(default_factory=dict)
    derive: str = ""
    cold_fraction: float = 0.0
    drop_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.cold_fraction <= 1.0 and 0.0 <= self.drop_fraction < 1.0):
            raise ConfigError(
                f"configs[{self.name}]: cold_fraction must be in [0, 1], drop_fraction in [0, 1)"
            )
        if (self.cold_fraction or self.drop_fraction) and not self.derive:
            raise ConfigError(f"configs[{self.name}]: cold_fraction and drop_fraction need derive = <config>")


@dataclass(frozen=True)
class GateSpec:
    """The regression gate: each result is compared with the baseline's result of the same name.

    Args:
        baseline: A suite.json (or a single report.json) of an accepted run; relative to the suite file.
        max_drop: Per metric, the largest allowed drop of the mean.
        max_drop_all: The allowed drop of every other metric the baseline has (negative: not gated).
        require_significance: Only fail on drops that are also significant (paired bootstrap).
    """

    baseline: str = ""
    max_drop: dict[str, str] = field(default_factory=dict)
    max_drop_all: float = -1.0
    require_significance: bool = False


@dataclass(frozen=True)
class Suite:
    name: str
    datasets: tuple[DatasetSpec, ...]
    configs: tuple[ConfigSpec, ...] = (ConfigSpec("flat"),)
    ks: tuple[int, ...] = DEFAULT_KS
    thresholds: dict[str, str] = field(default_factory=dict)
    gate: GateSpec = field(default_factory=GateSpec)
    base_dir: str = ""

    def resolve(self, path: str) -> str:
        """A path from the suite file, relative to the suite file's directory (``s3://`` untouched)."""
        if is_s3_uri(path) or Path(path).is_absolute():
            return path
        return str(Path(self.base_dir) / path)


def load_suite(path: str | Path) -> Suite:
    """Read a suite file; unknown keys, missing datasets and bad derivations are :class:`ConfigError`."""
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"suite file {file} does not exist")
    import tomllib

    try:
        values = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"suite file {file} is not valid TOML: {err}") from None
    values.setdefault("name", file.stem)
    values["base_dir"] = str(file.resolve().parent)
    if not values.get("datasets"):
        raise ConfigError(f"suite {file} names no [[datasets]]")
    suite: Suite = build(Suite, values, "")
    names = [c.name for c in suite.configs]
    if len(set(names)) != len(names) or len({d.name for d in suite.datasets}) != len(suite.datasets):
        raise ConfigError(f"suite {file}: dataset and configuration names must be unique")
    for config in suite.configs:
        if config.derive and config.derive not in names[: names.index(config.name)]:
            raise ConfigError(
                f"suite {file}: configs[{config.name}] derives from {config.derive!r}, which is not an "
                "earlier configuration"
            )
    return suite


def fetch_dataset(spec: DatasetSpec, suite: Suite, cache: Path) -> BeirDataset:
    """The dataset, downloaded into ``cache`` first when it lives on object storage."""
    path = suite.resolve(spec.path)
    if not is_s3_uri(path):
        return load_beir(path, spec.split)
    bucket, prefix = split_s3_uri(path.rstrip("/"))
    target = cache / "datasets" / hashlib.sha256(path.encode()).hexdigest()[:16]
    client = s3_client(spec.endpoint_url or None, None)
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{spec.split}.tsv"):
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        key = f"{prefix}/{name}" if prefix else name
        try:
            client.download_file(bucket, key, str(destination))
        except Exception as err:  # botocore: many classes
            raise translate_s3_error(
                err, f"s3://{bucket}/{key}", listing=True, endpoint_url=spec.endpoint_url
            ) from err
    return load_beir(target, spec.split)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _ingest_config(index_dir: Path, config: ConfigSpec) -> Any:
    overrides: dict[str, Any] = {"index_dir": str(index_dir)}
    if config.index:
        overrides["index"] = dict(config.index)
    if config.chunking:
        overrides["chunking"] = dict(config.chunking)
    return load_config(overrides=overrides, environ={})


def _build(dataset: BeirDataset, config: ConfigSpec, index_dir: Path, beam_args: list[str]) -> dict[str, Any]:
    from connectors.files import FileSourceConfig
    from pipelines.batch import run_batch

    if index_dir.exists():
        shutil.rmtree(index_dir)
    return run_batch(
        FileSourceConfig(str(dataset.path), format="beir"), _ingest_config(index_dir, config), beam_args
    )


def _derive(base_dir: Path, config: ConfigSpec, index_dir: Path) -> None:
    """Copy the base index, then re-index, age to cold or drop documents, as ``config`` says."""
    from indexing.faiss_index import IndexSpec
    from lifecycle.policy import LifecycleConfig
    from lifecycle.run import run_lifecycle

    if index_dir.exists():
        shutil.rmtree(index_dir)
    shutil.copytree(base_dir, index_dir, ignore=shutil.ignore_patterns("cold"))
    index = HotIndex(index_dir)
    if config.index:
        spec = _ingest_config(index_dir, config).index
        index.compact(IndexSpec.from_dict(asdict(spec)))
    canonical = sorted(d for d, s in index.docs().items() if s.status == CANONICAL)
    if config.drop_fraction:
        docs = index.docs()
        dropped = canonical[:: max(1, round(1 / config.drop_fraction))]
        index.commit(
            CommitRequest(
                "suite-drop",
                updates=[DocState(d, docs[d].version + 1, DELETED, ingest_time=time.time()) for d in dropped],
            )
        )
    if config.cold_fraction:
        moves = int(len(canonical) * config.cold_fraction)
        policy = LifecycleConfig(cold_after="1s", max_moves=moves)
        run_lifecycle(index_dir, policy, ColdConfig(uri=str(index_dir / "cold")), now=time.time() + 60)


def run_suite(
    suite: Suite,
    out: Path,
    cache: Path,
    beam_args: list[str] | None = None,
    only: list[str] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Build (or reuse from ``cache``) every index of ``suite``, score it, and write the reports.

    Returns:
        The suite result: ``{"suite", "results": {"dataset/config": report}, "thresholds", "failures"}``
        (reports without their runs; those are in each ``report.json``).
    """
    say = progress or (lambda line: log.info("%s", line))
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    steps = tqdm_bar(len(suite.datasets) * len(suite.configs), f"suite {suite.name}", unit="config")
    for spec in suite.datasets:
        dataset = fetch_dataset(spec, suite, cache)
        built: dict[str, Path] = {}
        for config in suite.configs:
            name = f"{spec.name}/{config.name}"
            parent = built.get(config.derive) if config.derive else None
            key = _key(dataset.checksums, asdict(config), str(parent) if parent else "")
            index_dir = cache / "indexes" / spec.name / f"{config.name}-{key}"
            built[config.name] = index_dir
            wanted = (
                only is None
                or name in only
                or any(_needs(suite, o, config.name) for o in only if o.startswith(f"{spec.name}/"))
            )
            steps.set_postfix_str(name)
            if not wanted:
                steps.update(1)
                continue
            marker = index_dir / "suite-key"
            if not (marker.exists() and marker.read_text() == key):
                started = time.perf_counter()
                if parent is None:
                    say(f"{name}: building the index (ingest pipeline) in {index_dir}")
                    _build(dataset, config, index_dir, beam_args or [])
                else:
                    say(f"{name}: deriving from {config.derive}")
                    _derive(parent, config, index_dir)
                marker.write_text(key)
                say(f"{name}: index ready in {time.perf_counter() - started:.1f} s")
            else:
                say(f"{name}: reusing {index_dir}")
            if not only or name in only:
                results[name] = _score(
                    suite, spec, config, dataset, index_dir, out / spec.name / config.name, say
                )
            steps.update(1)
    steps.close()
    _parity(suite, results)
    failures = [
        f"{name}: {metric} = {result['metrics']['mean'].get(metric, float('nan')):.4f} < {threshold}"
        for name, result in results.items()
        for metric, threshold in suite.thresholds.items()
        if result["metrics"]["mean"].get(metric, float("-inf")) < float(threshold)
    ]
    summary: dict[str, Any] = {
        "suite": suite.name,
        "thresholds": {k: float(v) for k, v in suite.thresholds.items()},
        "results": {name: {k: v for k, v in r.items() if k != "run"} for name, r in results.items()},
        "failures": failures,
    }
    (out / "suite.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    _write_junit(out / "junit.xml", results, summary["thresholds"])
    (out / "summary.md").write_text(summary_markdown(summary))
    return summary


def _needs(suite: Suite, wanted: str, config: str) -> bool:
    """Whether building ``wanted`` (dataset/config) needs ``config`` (a configuration it derives from)."""
    by_name = {c.name: c for c in suite.configs}
    current = by_name.get(wanted.split("/", 1)[1])
    while current is not None and current.derive:
        if current.derive == config:
            return True
        current = by_name.get(current.derive)
    return False


def _score(
    suite: Suite,
    spec: DatasetSpec,
    config: ConfigSpec,
    dataset: BeirDataset,
    index_dir: Path,
    out: Path,
    say: Any,
) -> dict[str, Any]:
    index = HotIndex(index_dir)
    manifest = index.manifest()
    location = {k: manifest.cold[k] for k in ("uri", "table", "vector_dtype")} if manifest.cold else {}
    cold_config = ColdConfig(**location)
    searcher = Searcher(index, _ingest_config(index_dir, config).embedding, cold_config)
    started = time.perf_counter()
    reference = {k: float(v) for k, v in spec.reference.items()} or None
    result = evaluate_index(
        searcher, dataset, suite.ks, reference, title=f"{suite.name}: {spec.name} / {config.name}"
    )
    result["suite"] = {"name": suite.name, "dataset": spec.name, "config": asdict(config)}
    result["thresholds"] = {k: float(v) for k, v in suite.thresholds.items()}
    result["operations"] = operations(index, ColdStore(cold_config) if manifest.cold else None)
    paths = write_reports(out, result)
    _write_html(out / "report.html", result, dataset)
    mean = result["metrics"]["mean"]
    say(
        f"{spec.name}/{config.name}: "
        + ", ".join(f"{m} {mean[m]:.4f}" for m in SUMMARY_METRICS if m in mean)
        + f" ({time.perf_counter() - started:.1f} s; {paths['markdown']})"
    )
    return result


def _parity(suite: Suite, results: dict[str, dict[str, Any]]) -> None:
    """Tier parity: a configuration that ages documents to cold, against the one it derives from."""
    by_name = {c.name: c for c in suite.configs}
    for name, result in results.items():
        dataset, config = name.split("/", 1)
        spec = by_name[config]
        base = results.get(f"{dataset}/{spec.derive}") if spec.derive and spec.cold_fraction else None
        if base is None:
            continue
        result["parity"] = {
            "against": f"{dataset}/{spec.derive}",
            "cold_fraction": spec.cold_fraction,
            "deltas": {
                m: round(result["metrics"]["mean"][m] - base["metrics"]["mean"][m], 6)
                for m in SUMMARY_METRICS
                if m in result["metrics"]["mean"] and m in base["metrics"]["mean"]
            },
        }


def _write_html(path: Path, result: dict[str, Any], dataset: BeirDataset) -> None:
    from evaluation.html import write_html

    write_html(path, result, dataset)


def _write_junit(path: Path, results: dict[str, dict[str, Any]], thresholds: dict[str, float]) -> None:
    from evaluation.junit import write_junit

    write_junit(path, [dict(r, name=name) for name, r in results.items()], thresholds)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The suite's results as one Markdown table plus threshold failures (a CI job summary)."""
    lines = [f"# Retrieval evaluation: {summary['suite']}", ""]
    header = (
        "| dataset / config | "
        + " | ".join(SUMMARY_METRICS)
        + " | tiers (hot/warm/cold vectors) | freshness p50 | embed s / 1k docs |"
    )
    lines += [header, "|---|" + "---:|" * len(SUMMARY_METRICS) + "---|---:|---:|"]
    for name, result in sorted(summary["results"].items()):
        mean = result["metrics"]["mean"]
        ops = result.get("operations", {})
        tiers = ops.get("tiers", {})
        fresh = ops.get("freshness", {}).get("p50_s")
        lines.append(
            f"| {name} | "
            + " | ".join(f"{mean[m]:.4f}" if m in mean else "-" for m in SUMMARY_METRICS)
            + f" | {tiers.get('hot', 0)}/{tiers.get('warm', 0)}/{tiers.get('cold', 0)}"
            + f" | {'-' if fresh is None else f'{fresh:.1f} s'}"
            + f" | {ops.get('cost_per_1k_docs', {}).get('embed_seconds', '-')} |"
        )
    for name, result in sorted(summary["results"].items()):
        if "parity" in result:
            deltas = ", ".join(f"{m} {d:+.4f}" for m, d in result["parity"]["deltas"].items())
            lines += ["", f"Tier parity of {name} against {result['parity']['against']}: {deltas}"]
    if summary["thresholds"]:
        lines += ["", "Thresholds: " + ", ".join(f"{m} >= {v}" for m, v in summary["thresholds"].items())]
    lines += (
        ["", *(f"- ❌ {f}" for f in summary["failures"])]
        if summary["failures"]
        else ["", "All thresholds met."]
    )
    return "\n".join(lines) + "\n"


def gate(suite: Suite, summary: dict[str, Any], out: Path, baseline: str | None = None) -> tuple[bool, str]:
    """Compare each result with the baseline's result of the same name (a file written by
    :func:`write_baseline`); returns (passed, the comparison as Markdown, also written to compare.md)."""
    from evaluation.compare import compare

    chosen = baseline or (suite.resolve(suite.gate.baseline) if suite.gate.baseline else "")
    if not chosen:
        return True, ""
    path = Path(chosen)
    try:
        saved = json.loads(path.read_text())["results"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(
            f"baseline {path} is not a suite baseline (tierflow eval run --write-baseline): {err}"
        ) from None
    allowed = {k: float(v) for k, v in suite.gate.max_drop.items()}
    if not allowed and suite.gate.max_drop_all < 0:
        raise ConfigError(f"suite {suite.name}: [gate] needs max_drop or max_drop_all to gate against {path}")
    passed, parts = True, [f"# Gate: {summary['suite']} against {path}", ""]
    for name in sorted(summary["results"]):
        if name not in saved:
            parts += [f"- {name}: not in the baseline (not gated)", ""]
            continue
        current = json.loads((out / name / "report.json").read_text())
        every = suite.gate.max_drop_all
        thresholds = {
            **(dict.fromkeys(saved[name]["metrics"]["mean"], every) if every >= 0 else {}),
            **allowed,
        }
        result = compare(
            saved[name],
            current,
            thresholds=thresholds,
            metrics=sorted(thresholds) or None,
            require_significance=suite.gate.require_significance,
        )
        passed = passed and result.passed
        parts += [f"## {name}", "", result.to_markdown(), ""]
    text = "\n".join(parts) + "\n"
    (out / "compare.md").write_text(text)
    return passed, text


def write_baseline(summary: dict[str, Any], out_dir: Path, path: Path) -> None:
    """Save the suite's results (means and per-query scores, no runs) as the gate's baseline."""
    results = {}
    for name in summary["results"]:
        report = json.loads((out_dir / name / "report.json").read_text())
        results[name] = {
            "title": report.get("title"),
            "metrics": report["metrics"],
            "provenance": report["provenance"],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"suite": summary["suite"], "results": results}, sort_keys=True, separators=(",", ":"))
        + "\n"
    )
