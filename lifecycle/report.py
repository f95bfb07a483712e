"""``tierflow storage report``: vectors and bytes per tier now, flash saved, oldest/newest per tier, and a
plot of the tier sizes over the lifecycle runs (``storage.png``, embedded in ``storage.html``).

Example:
    >>> report = storage_report(Path("tierflow-data/hot"), ColdConfig(), Path("out/storage"))
    >>> print(report["markdown"])
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from indexing.cold import ColdConfig, ColdStore
from indexing.hot import HotIndex
from lifecycle.policy import TIERS
from lifecycle.render import human_bytes, stamp
from lifecycle.stats import read_history, tier_stats


def storage_report(index_dir: Path, cold_config: ColdConfig, out: Path) -> dict[str, Any]:
    """Write ``storage.json``, ``storage.md``, ``storage.png`` and ``storage.html`` under ``out``.

    Returns the report dict with ``markdown`` (the text) and ``files`` (the paths written).
    """
    index = HotIndex(index_dir)
    manifest = index.manifest()
    cold = None
    if manifest.cold:
        location = {k: manifest.cold[k] for k in ("uri", "table", "vector_dtype")}
        cold = ColdStore(replace(cold_config, **location))
    now = tier_stats(index, cold)
    history = read_history(index)
    out.mkdir(parents=True, exist_ok=True)
    markdown = _markdown(index_dir, now, history)
    files = [out / "storage.json", out / "storage.md", out / "storage.png", out / "storage.html"]
    files[0].write_text(json.dumps({"now": now, "history": history}, indent=2, sort_keys=True))
    files[1].write_text(markdown)
    _plot(history, now, files[2])
    png = base64.b64encode(files[2].read_bytes()).decode()
    files[3].write_text(
        "<!doctype html><meta charset='utf-8'><title>tierflow storage report</title>"
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}pre{background:#f6f6f6;padding:1em}</style>"
        f"<h1>Storage report: {html.escape(str(index_dir))}</h1>"
        f"<img alt='tier sizes over lifecycle runs' src='data:image/png;base64,{png}' style='max-width:100%'>"
        f"<pre>{html.escape(markdown)}</pre>"
    )
    return {"now": now, "history": history, "markdown": markdown, "files": [str(f) for f in files]}


def _markdown(index_dir: Path, now: dict[str, Any], history: list[dict[str, Any]]) -> str:
    tiers = now["tiers"]
    lines = [
        f"# Storage report: {index_dir}",
        "",
        f"Generation {now['generation']}, {stamp(now['at'])}; cold tier: {now['cold'].get('uri') or 'not used yet'}",
        "",
        "| tier | documents | vectors | RAM | flash | object storage | oldest | newest |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for tier in TIERS:
        t = tiers[tier]
        lines.append(
            f"| {tier} | {t['documents']} | {t['vectors']} | {human_bytes(t['ram_bytes'])} | "
            f"{human_bytes(t['flash_bytes'])} | {human_bytes(t['object_bytes'])} | {stamp(t['oldest'])} | "
            f"{stamp(t['newest'])} |"
        )
    lines += [
        "",
        f"- Flash saved by the cold tier: **{human_bytes(now['flash_saved_bytes'])}** "
        f"({tiers['cold']['vectors']} vectors at the hot tier's bytes per vector).",
        f"- Flash held by older manifests or orphans (freed by `tierflow gc`): {human_bytes(now['flash_held_bytes'])}.",
        f"- Cold table rows, including rows no manifest names yet or any more: {tiers['cold'].get('table_rows', 0)}.",
        f"- Lifecycle runs recorded: {len(history)} (plot: storage.png).",
        "",
        "RAM counts hot segments' FAISS files (read into memory); warm segments are memory-mapped and use only",
        "page cache, which the kernel reclaims under pressure.",
    ]
    return "\n".join(lines) + "\n"


def _plot(history: list[dict[str, Any]], now: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [*history, now] if not history or history[-1].get("generation") != now["generation"] else history
    runs = list(range(len(points)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    colours = {"hot": "#d62728", "warm": "#ff7f0e", "cold": "#1f77b4"}
    for tier in TIERS:
        top.plot(
            runs, [p["tiers"][tier]["vectors"] for p in points], marker="o", label=tier, color=colours[tier]
        )
    top.set_ylabel("vectors")
    top.legend(loc="upper left")
    top.set_title("Tier sizes over lifecycle runs")
    mib = 2**20
    series = (
        ("RAM (hot)", lambda p: p["tiers"]["hot"]["ram_bytes"], {"marker": "o", "color": colours["hot"]}),
        ("flash (hot + warm)", lambda p: p["flash_bytes"], {"marker": "s", "color": colours["warm"]}),
        (
            "object storage",
            lambda p: p["tiers"]["cold"]["object_bytes"],
            {"marker": "^", "color": colours["cold"]},
        ),
        ("flash saved", lambda p: p["flash_saved_bytes"], {"linestyle": "--", "color": "#2ca02c"}),
    )
    for label, value, style in series:
        bottom.plot(runs, [value(p) / mib for p in points], label=label, **style)
    bottom.set_ylabel("MiB")
    bottom.set_xlabel("lifecycle run")
    bottom.legend(loc="upper left")
    labels = [
        "start" if p.get("run") is None and i == 0 else f"run {i}\ngen {p['generation']}"
        for i, p in enumerate(points)
    ]
    bottom.set_xticks(runs, labels, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
