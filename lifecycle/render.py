"""Text output of the lifecycle commands: the plan, a run's summary, byte sizes, ``--as-of`` times."""

from __future__ import annotations

import datetime
import time
from typing import Any

from lifecycle.policy import TIERS, Plan, parse_duration


def as_of(text: str | None) -> float:
    """``None`` (now), ``+30d`` (from now) or an ISO date/time (UTC unless it says otherwise)."""
    if not text:
        return time.time()
    if text.startswith("+"):
        return time.time() + (parse_duration(text[1:], "--as-of") or 0.0)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        from tierflow.errors import ConfigError

        raise ConfigError(f"--as-of must be +DURATION (+30d) or an ISO date/time, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def stamp(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def print_plan(plan: Plan, limit: int) -> None:
    when = stamp(plan.now)
    print(f"lifecycle plan for generation {plan.generation} as of {when}")
    print(f"{'tier':<6} {'docs now':>9} {'vectors':>9}   {'docs after':>10} {'vectors':>9}")
    for tier in TIERS:
        b, a = plan.before[tier], plan.after[tier]
        print(f"{tier:<6} {b['documents']:>9} {b['vectors']:>9}   {a['documents']:>10} {a['vectors']:>9}")
    if not plan.moves:
        print("nothing to move")
    for kind, n in sorted(plan.counts().items()):
        print(f"  {kind:<14} {n} document(s)")
    for move in plan.moves[:limit]:
        rule = f" [{move.rule}]" if move.rule and move.rule != "default" else ""
        print(
            f"  {move.doc_id:<24} {move.source:>5} -> {move.target:<7} {move.vectors:>4} vec  {move.reason}{rule}"
        )
    if len(plan.moves) > limit:
        print(f"  ... and {len(plan.moves) - limit} more (--limit N or --json)")
    for doc_id, reason in plan.held[:limit]:
        print(f"  held {doc_id}: {reason}")


def print_run(summary: dict[str, Any]) -> None:
    if summary.get("run_id"):
        print(f"lifecycle run {summary['run_id']} committed generation {summary['generation']}")
    else:
        print(f"lifecycle: nothing to move at generation {summary['generation']}")
    print(f"  moved {summary['applied']} document(s), skipped {summary['skipped']} changed meanwhile")
    for key, value in sorted(summary.get("moved", {}).items()):
        print(f"  {key:<22} {human_bytes(value) if key.endswith('bytes') else value}")
    if summary.get("resumed"):
        print(f"  resumed: {summary['resumed']}")
    for tier in TIERS:
        t = summary["tiers"][tier]
        print(f"  {tier:<5} {t['documents']:>8} docs {t['vectors']:>9} vectors")
    print(f"  seconds: {summary['seconds']}")
