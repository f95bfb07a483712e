"""Promote a candidate index version behind the evaluation gate, or roll back to the previous one.

``tierflow promote --name V`` (settings in ``[promote]``, :class:`PromoteConfig`):

1. catches candidate ``V`` up on the live version (``pipelines.reindex.catch_up``), unlocked;
2. scores the live version and the candidate on the configured labelled query set (a BEIR directory)
   with the very searcher the service uses, and compares them per query (``evaluation.compare``): the
   gate passes when the candidate's gated metric (nDCG@10 by default) is at least the live one's minus
   ``max_drop`` (0: at least as good);
3. if it passes, takes the index directory's writer lock (live writers wait), catches up once more (what
   was committed while it scored), checks nothing is left, and switches ``CURRENT`` to the candidate in
   one atomic rename (``indexing.versions.switch``); retired versions beyond ``keep_versions`` are
   dropped.

Either way it writes a report (``promotion.json``, ``promotion.md`` and ``promotion.png``: both versions'
metrics side by side) that says what was compared and why it switched or did not. ``tierflow rollback``
switches back to the version the last switch left, in one step: its results are exactly those it gave
before (documents committed since to the version being left are counted in the report; a ``reindex``
of them catches the older version up if they should stay).

Searchers follow the switch: they read ``CURRENT``, and embed queries with the model of the version it
names (``Searcher.embedder_for``).

Example:
    >>> report = promote(config, "v2", PromoteConfig(dataset="../shared/data/scifact"), out=Path("out/p"))
    >>> report["switched"], report["gate"]["passed"]
    (True, True)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evaluation.beir import load_beir
from evaluation.compare import compare
from evaluation.retrieval import evaluate_index
from indexing import versions
from indexing.cold import ColdConfig
from indexing.faiss_index import IndexSpec
from indexing.hot import HotIndex
from indexing.search import Searcher
from pipelines.reindex import catch_up, pending
from tierflow.config import ChunkingConfig, EmbeddingConfig, IngestConfig
from tierflow.errors import ConfigError, VersionError

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromoteConfig:
    """``[promote]``: the gate a candidate version must pass to go live, and what is kept.

    Args:
        dataset: A BEIR directory (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) whose
            corpus is what the index holds; its queries score both versions.
        split: The qrels split.
        metric: The gated metric (``ndcg@10``, ``recall@100``, ``mrr@10``, ``map``, ...).
        max_drop: How far below the live version's score the candidate's may be (0: at least as good).
        catch_up_rounds: Catch-ups before the locked one, while they still find changes.
        keep_versions: Retired versions kept for rollback (older ones are dropped at each promotion).
    """

    dataset: str = ""
    split: str = "test"
    metric: str = "ndcg@10"
    max_drop: float = 0.0
    catch_up_rounds: int = 3
    keep_versions: int = 2

    def __post_init__(self) -> None:
        if self.max_drop < 0:
            raise ConfigError(f"promote.max_drop must be >= 0, got {self.max_drop}")
        if self.keep_versions < 1:
            raise ConfigError(
                f"promote.keep_versions must be >= 1 (rollback needs one), got {self.keep_versions}"
            )


def version_config(base: IngestConfig, name: str) -> IngestConfig:
    """``base`` (index directory, dedup, validation ...) with version ``name``'s model, chunking and
    index settings as its registry entry records them."""
    settings = versions.load_registry(Path(base.index_dir)).entry(name).get("settings", {})
    return replace(
        base,
        index_version=name,
        embedding=replace(base.embedding, **_known(EmbeddingConfig, settings.get("embedding", {}))),
        chunking=ChunkingConfig(**_known(ChunkingConfig, settings.get("chunking", {}))),
        index=IndexSpec.from_dict(settings["index"]) if settings.get("index") else base.index,
    )


def _known(cls: type[Any], values: dict[str, Any]) -> dict[str, Any]:
    names = set(cls.__dataclass_fields__)
    return {k: v for k, v in values.items() if k in names and k not in ("device", "batch_size", "precision")}


def score_versions(
    base: IngestConfig, name: str, gate: PromoteConfig, cold: ColdConfig | None = None
) -> dict[str, Any]:
    """Both versions' retrieval reports on ``gate.dataset`` and their comparison (candidate against
    live), with ``passed`` and the reason."""
    if not gate.dataset:
        raise ConfigError(
            "promote needs a labelled query set to gate on: set [promote] dataset (a BEIR directory), or "
            "TIERFLOW__PROMOTE__DATASET, or pass --dataset (or --force to switch without a gate)"
        )
    root = Path(base.index_dir)
    dataset = load_beir(gate.dataset, gate.split)
    registry = versions.load_registry(root)
    reports = {}
    for role, version in (("live", registry.live), ("candidate", name)):
        config = version_config(base, version)
        index = HotIndex(root) if role == "live" else HotIndex(root, version=version)
        searcher = Searcher(index, config.embedding, cold)
        reports[role] = evaluate_index(searcher, dataset, title=f"{role}: version {version}")
    comparison = compare(
        reports["live"], reports["candidate"], thresholds={gate.metric: gate.max_drop}, resamples=2000
    )
    live_score = reports["live"]["metrics"]["mean"][gate.metric]
    cand_score = reports["candidate"]["metrics"]["mean"][gate.metric]
    verdict = "at least as good as" if cand_score >= live_score else "below"
    reason = (
        f"candidate {name} {gate.metric} {cand_score:.4f} is {verdict} live {registry.live} "
        f"{live_score:.4f} (Δ {cand_score - live_score:+.4f}; allowed drop {gate.max_drop})"
    )
    return {
        "passed": comparison.passed,
        "reason": reason,
        "metric": gate.metric,
        "max_drop": gate.max_drop,
        "dataset": {"path": str(dataset.path), "split": gate.split, "queries": len(dataset.queries)},
        "live": {"version": registry.live, "mean": reports["live"]["metrics"]["mean"]},
        "candidate": {"version": name, "mean": reports["candidate"]["metrics"]["mean"]},
        "comparison": comparison.to_dict(),
        "markdown": comparison.to_markdown(),
    }


def promote(
    base: IngestConfig,
    name: str,
    gate: PromoteConfig,
    out: Path,
    cold: ColdConfig | None = None,
    beam_args: list[str] | None = None,
    force: bool = False,
    say: Callable[[str], None] = LOG.info,
) -> dict[str, Any]:
    """Catch candidate ``name`` up, gate it against the live version, and switch to it if it passes (or
    with ``force``, which skips the gate and says so). Returns the report (also written to ``out``).

    Raises:
        VersionError: ``name`` is not a kept version, or is live already, or is not fully caught up
            under the lock (documents whose text could not be rebuilt: re-ingest them first, or ``force``).
    """
    started = time.time()
    root = Path(base.index_dir)
    registry = versions.load_registry(root)
    registry.entry(name)
    if name == registry.live:
        raise VersionError(f"version {name!r} is live already")
    config = version_config(base, name)
    rounds = []
    for _ in range(max(gate.catch_up_rounds, 1)):
        caught = catch_up(config, name, beam_args, cold, say=say)
        rounds.append(caught.to_dict())
        if caught.events == 0:
            break
    if not force:
        _refuse_unrecoverable(name, rounds[-1]["unrecoverable"])
    report: dict[str, Any] = {
        "action": "promote",
        "candidate": name,
        "live": registry.live,
        "started_at": started,
        "catch_up": rounds,
        "switched": False,
    }
    if force:
        report["gate"] = {"passed": True, "reason": "gate skipped (--force)", "forced": True}
    else:
        say(f"promote: scoring live {registry.live} and candidate {name} on {gate.dataset}")
        report["gate"] = score_versions(base, name, gate, cold)
    say(f"promote: gate {'passed' if report['gate']['passed'] else 'FAILED'}: {report['gate']['reason']}")
    if report["gate"]["passed"]:
        live = HotIndex(root)
        with live.writer_lock():
            final = catch_up(config, name, beam_args, cold, say=say)
            report["catch_up"].append({**final.to_dict(), "locked": True})
            if not force:
                _refuse_unrecoverable(name, final.unrecoverable)
            left = pending(config, name) - len(final.unrecoverable)
            if left:
                raise VersionError(
                    f"candidate {name} still lacks {left} live document(s) after the final catch-up"
                )
            record = versions.switch(root, name, "promote", report["gate"]["reason"])
            report["dropped_versions"] = versions.retain(root, gate.keep_versions)
        report.update(switched=True, generation=record["generation"], unrecoverable=final.unrecoverable)
        say(
            f"promote: version {name} is live (generation {record['generation']}); {record['from']} is kept "
            "for rollback"
        )
    report["seconds"] = round(time.time() - started, 3)
    write_report(out, report)
    return report


def _refuse_unrecoverable(name: str, unrecoverable: list[str]) -> None:
    if unrecoverable:
        raise VersionError(
            f"candidate {name} lacks {len(unrecoverable)} live document(s) whose text could not be rebuilt "
            f"from the index ({', '.join(unrecoverable[:10])}): re-ingest them from their sources, or "
            "promote with --force to go live without them"
        )


def rollback(base: IngestConfig, out: Path, to: str | None = None, reason: str = "") -> dict[str, Any]:
    """Switch back to ``to`` (default: the version the last switch left), holding the writer lock.

    Raises:
        VersionError: There is nothing to roll back to.
    """
    root = Path(base.index_dir)
    live = HotIndex(root)
    with live.writer_lock():
        registry = versions.load_registry(root)
        target = to or registry.previous()
        if target is None:
            raise VersionError(f"{root}: no earlier version is kept to roll back to")
        if registry.entry(target)["state"] != versions.RETIRED:
            raise VersionError(
                f"version {target!r} was never live: roll back only to a retired version; a candidate "
                f"goes live through the gate (tierflow promote --name {target})"
            )
        leaving = registry.live
        record = versions.switch(root, target, "rollback", reason or "rollback")
    behind = pending(base, target, source=leaving)
    report = {
        "action": "rollback",
        "from": leaving,
        "to": target,
        "generation": record["generation"],
        "at": record["at"],
        "documents_behind": behind,
    }
    write_report(out, report, name="rollback")
    return report


def write_report(out: Path, report: dict[str, Any], name: str = "promotion") -> dict[str, Path]:
    """``<name>.json``, ``<name>.md`` and, when the gate scored both versions, ``<name>.png``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "markdown": out / f"{name}.md"}
    body = {k: v for k, v in report.items() if k != "gate"}
    gate = report.get("gate", {})
    body["gate"] = {k: v for k, v in gate.items() if k != "markdown"}
    paths["json"].write_text(json.dumps(body, indent=1, sort_keys=True, default=str))
    paths["markdown"].write_text(_markdown(report))
    if gate.get("live") and gate.get("candidate"):
        paths["plot"] = out / f"{name}.png"
        _plot(gate, paths["plot"])
    return paths


def _markdown(report: dict[str, Any]) -> str:
    if report["action"] == "rollback":
        return (
            f"# Rollback: {report['from']} → {report['to']}\n\n"
            f"Version {report['to']} is live again (generation {report['generation']}), with the results it "
            f"gave before. It is behind {report['from']} on {report['documents_behind']} document(s) (changes "
            f"committed while {report['from']} was live).\n"
        )
    gate = report.get("gate", {})
    outcome = (
        f"**Switched**: version {report['candidate']} is live (generation {report.get('generation')})."
        if report["switched"]
        else f"**Not switched**: version {report['live']} stays live."
    )
    lines = [
        f"# Promotion of {report['candidate']} over {report['live']}",
        "",
        outcome,
        "",
        f"Gate: {gate.get('reason')}",
        "",
    ]
    if gate.get("markdown"):
        lines += [gate["markdown"], ""]
    lines.append(
        "Catch-up rounds (documents indexed): " + ", ".join(str(r["events"]) for r in report["catch_up"])
    )
    return "\n".join(lines) + "\n"


def _plot(gate: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = [
        m
        for m in ("ndcg@10", "recall@10", "mrr@10", "p@10", "map", "recall@100")
        if m in gate["live"]["mean"]
    ]
    x = np.arange(len(metrics))
    fig, ax = plt.subplots(figsize=(8, 4))
    for offset, role in ((-0.2, "live"), (0.2, "candidate")):
        values = [gate[role]["mean"][m] for m in metrics]
        ax.bar(x + offset, values, 0.4, label=f"{role} ({gate[role]['version']})")
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 1)
    ax.set_title(f"Gate on {gate['metric']}: {'passed' if gate['passed'] else 'failed'}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
