"""Lifecycle policies (``[lifecycle]`` in tierflow.toml) and the plan they make: which document goes to which
tier, and why.

Tiers: ``hot`` (segments in RAM), ``warm`` (segments memory-mapped from flash), ``cold`` (the Lance table
on object storage). A document moves as a whole (all its chunks). Per document the policy looks at:

- its **age**: time since its current version was ingested (``age_from = "ingest"``) or since the source
  says it changed (``age_from = "event"``, falling back to ingest time);
- its **idle time**: time since the later of that update and the last search that returned it;
- its **hits** within ``promote_window``.

In order: ``ttl`` (age) deletes the document from every tier; a warm or cold document with at least
``promote_hits`` hits goes back to hot; ``cold_after`` (idle) moves it to cold; ``warm_after`` (idle)
moves a hot one to warm. Then the caps: while RAM-resident hot bytes exceed ``hot_max_bytes`` the least
recently used hot documents go to warm, and while flash bytes (hot + warm) exceed ``flash_max_bytes``
the least recently used go to cold. ``[[lifecycle.rules]]`` override those settings for the documents
they match (source system, source uri glob, metadata values; the first matching rule wins), and can pin
documents to a tier.

Example:
    >>> config = load_settings(LifecycleConfig, "lifecycle")
    >>> plan = plan_lifecycle(HotIndex("tierflow-data/hot"), config, now=time.time())
    >>> plan.counts()
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

from indexing.access import Access, read_access
from indexing.docs_table import DELETED, DUPLICATE, DocState
from indexing.hot import COLD, HOT, TIERS, WARM, HotIndex, tier_of
from indexing.manifest import Manifest
from indexing.segment import INDEX_FILE
from tierflow.errors import ConfigError

DELETE = "deleted"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_SIZES = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10}
_SIZES.update({"mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_duration(text: str, where: str) -> float | None:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"2w"``, ``"1y"`` as seconds; empty means never."""
    if text in ("", "never"):
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdwy])\s*", text)
    if not match:
        raise ConfigError(f"{where} must be a duration like 30d, 12h, 90m, 2w or 1y (or empty), got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_size(text: str, where: str) -> int | None:
    """``"8GiB"``, ``"500MB"``, ``"1048576"`` as bytes; empty means no cap."""
    if text in ("", "none"):
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", text.lower())
    if not match:
        raise ConfigError(f"{where} must be a size like 8GiB, 500MB or a number of bytes, got {text!r}")
    return int(float(match.group(1)) * _SIZES[match.group(2) or ""])


@dataclass(frozen=True)
class TierRule:
    """Settings for the documents a rule matches; empty settings fall back to the defaults.

    Args:
        name: Shown in plans.
        source_system: Matches ``DocState.source_system`` exactly (``kafka``, ``file``, ``postgres`` ...).
        source_uri: A glob over the source uri (``s3://docs/legal/*``, ``orders-*``).
        metadata: Every key must equal (as text) the document's metadata value.
        warm_after, cold_after, ttl: Override the defaults (``never`` switches one off).
        pin: ``hot`` or ``warm``: never demoted below that tier by age or caps (TTL still applies).
    """

    name: str = ""
    source_system: str = ""
    source_uri: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    warm_after: str = ""
    cold_after: str = ""
    ttl: str = ""
    pin: str = ""

    def __post_init__(self) -> None:
        where = f"lifecycle.rules[{self.name or '?'}]"
        if self.pin not in ("", HOT, WARM):
            raise ConfigError(f"{where}.pin must be hot or warm (or empty), got {self.pin!r}")
        for name in ("warm_after", "cold_after", "ttl"):
            parse_duration(getattr(self, name), f"{where}.{name}")
        if not (self.source_system or self.source_uri or self.metadata):
            raise ConfigError(f"{where} matches everything: give source_system, source_uri or metadata")

    def matches(self, state: DocState, metadata: dict[str, Any]) -> bool:
        if self.source_system and state.source_system != self.source_system:
            return False
        if self.source_uri and not fnmatch.fnmatchcase(state.source_uri, self.source_uri):
            return False
        return all(str(metadata.get(k)) == v for k, v in self.metadata.items())


@dataclass(frozen=True)
class LifecycleConfig:
    """The default policy and its rules (``[lifecycle]`` and ``[[lifecycle.rules]]``).

    Args:
        warm_after: Idle time after which a hot document goes to warm (empty: never).
        cold_after: Idle time after which a document goes to cold (empty: never).
        ttl: Age after which a document is deleted from every tier (empty: kept).
        age_from: ``ingest`` or ``event`` (the source's own change time).
        hot_max_bytes: Cap on RAM-resident hot segment bytes (empty: none).
        flash_max_bytes: Cap on flash bytes, hot and warm (empty: none).
        promote_hits: Hits within ``promote_window`` that bring a warm or cold document back to hot
            (0: never).
        promote_window: The window hits are counted in.
        access_retention: How long hourly hit counts are kept (last-hit times are kept for ever).
        compact_deleted_fraction: After a run, compact when this share of flash vectors is deleted.
        keep_generations: Manifests (and the cold rows they name) kept for rollback, like ``tierflow gc``.
        max_moves: At most this many documents move per run (0: no limit), most idle first.
        rules: Per-source and per-metadata overrides.
    """

    warm_after: str = ""
    cold_after: str = "30d"
    ttl: str = ""
    age_from: str = "ingest"
    hot_max_bytes: str = ""
    flash_max_bytes: str = ""
    promote_hits: int = 0
    promote_window: str = "1d"
    access_retention: str = "30d"
    compact_deleted_fraction: float = 0.2
    keep_generations: int = 5
    max_moves: int = 0
    rules: tuple[TierRule, ...] = ()

    def __post_init__(self) -> None:
        for name in ("warm_after", "cold_after", "ttl", "promote_window", "access_retention"):
            parse_duration(getattr(self, name), f"lifecycle.{name}")
        for name in ("hot_max_bytes", "flash_max_bytes"):
            parse_size(getattr(self, name), f"lifecycle.{name}")
        if self.age_from not in ("ingest", "event"):
            raise ConfigError(f"lifecycle.age_from must be ingest or event, got {self.age_from!r}")
        if self.promote_hits < 0 or self.max_moves < 0 or self.keep_generations < 1:
            raise ConfigError("lifecycle.promote_hits and max_moves must be >= 0, keep_generations >= 1")
        if not 0.0 < self.compact_deleted_fraction <= 1.0:
            raise ConfigError("lifecycle.compact_deleted_fraction must be in (0, 1]")

    def seconds(self, name: str) -> float | None:
        return parse_duration(getattr(self, name), f"lifecycle.{name}")


@dataclass(frozen=True)
class Policy:
    """The settings in force for one document (defaults with its rule applied)."""

    rule: str
    warm_after: float | None
    cold_after: float | None
    ttl: float | None
    pin: str


@dataclass
class Move:
    """One planned document move."""

    doc_id: str
    source: str
    target: str
    reason: str
    vectors: int
    bytes: int
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k.name: getattr(self, k.name) for k in fields(self)}


@dataclass
class Plan:
    """What a lifecycle run would do, as of ``now``."""

    now: float
    generation: int
    moves: list[Move]
    held: list[tuple[str, str]]
    before: dict[str, dict[str, int]]
    after: dict[str, dict[str, int]]
    states: dict[str, DocState] = field(repr=False, default_factory=dict)

    def counts(self) -> dict[str, int]:
        return dict(Counter(f"{m.source}->{m.target}" for m in self.moves))

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "generation": self.generation,
            "counts": self.counts(),
            "tiers_before": self.before,
            "tiers_after": self.after,
            "moves": [m.to_dict() for m in self.moves],
            "held": [{"doc_id": d, "reason": r} for d, r in self.held],
        }


def policies(config: LifecycleConfig) -> tuple[Policy, list[tuple[TierRule, Policy]]]:
    """The default policy and one per rule (empty rule settings inherit the defaults)."""
    default = Policy(
        "default", config.seconds("warm_after"), config.seconds("cold_after"), config.seconds("ttl"), ""
    )
    ruled: list[tuple[TierRule, Policy]] = []
    for rule in config.rules:
        where = f"lifecycle.rules[{rule.name}]"
        pick = {
            name: parse_duration(getattr(rule, name), f"{where}.{name}") if getattr(rule, name) else None
            for name in ("warm_after", "cold_after", "ttl")
        }
        ruled.append(
            (
                rule,
                Policy(
                    rule.name or f"rule{len(ruled)}",
                    pick["warm_after"] if rule.warm_after else default.warm_after,
                    pick["cold_after"] if rule.cold_after else default.cold_after,
                    pick["ttl"] if rule.ttl else default.ttl,
                    rule.pin,
                ),
            )
        )
    return default, ruled


def segment_bytes(index: HotIndex, manifest: Manifest) -> dict[str, float]:
    """Flash bytes per stored vector of each live segment (its FAISS file over its vectors)."""
    out = {}
    for live in manifest.segments:
        path = index.segments_dir / live.info.segment_id / INDEX_FILE
        size = os.path.getsize(path) if path.exists() else 0
        out[live.info.segment_id] = size / max(1, live.info.n_vectors)
    return out


def plan_lifecycle(
    index: HotIndex,
    config: LifecycleConfig,
    now: float,
    access: dict[str, Access] | None = None,
    cold_bytes_per_vector: float = 0.0,
) -> Plan:
    """Decide, for every document of the current manifest, whether and where it moves.

    Args:
        index: The hot tier.
        config: The lifecycle settings.
        now: The time the plan is made for (a dry run can ask about a future time).
        access: Per-document access (default: read from the index's access log).
        cold_bytes_per_vector: For the projected cold-tier bytes in the plan (0 when unknown).
    """
    manifest = index.manifest()
    docs = index.docs(manifest)
    window = config.seconds("promote_window") or 0.0
    access = read_access(index.root, now, window) if access is None else access
    storage_of = {live.info.segment_id: live.storage for live in manifest.segments}
    per_vector = segment_bytes(index, manifest)
    default, ruled = policies(config)

    def bytes_of(state: DocState) -> int:
        return int(state.n_chunks * per_vector.get(state.segment_id or "", cold_bytes_per_vector))

    def policy_of(state: DocState) -> Policy:
        if not ruled:
            return default
        metadata = json.loads(state.metadata or "{}")
        for rule, policy in ruled:
            if rule.matches(state, metadata if isinstance(metadata, dict) else {}):
                return policy
        return default

    def updated_at(state: DocState) -> float:
        if config.age_from == "event" and state.event_time:
            return float(state.event_time)
        return float(state.ingest_time)

    def last_touch(state: DocState) -> float:
        hit = access.get(state.doc_id)
        return max(updated_at(state), hit.last_hit if hit else 0.0)

    moves: dict[str, Move] = {}
    held: list[tuple[str, str]] = []
    expired: set[str] = set()
    for state in docs.values():
        policy = policy_of(state)
        if state.status != DELETED and policy.ttl is not None and now - updated_at(state) >= policy.ttl:
            expired.add(state.doc_id)
    live_dups: dict[str, list[str]] = {}
    for state in docs.values():
        if state.status == DUPLICATE and state.canonical_id and state.doc_id not in expired:
            live_dups.setdefault(state.canonical_id, []).append(state.doc_id)

    tier_now: dict[str, str] = {}
    for state in sorted(docs.values(), key=lambda s: s.doc_id):
        tier = tier_of(state, storage_of)
        policy = policy_of(state)
        if state.doc_id in expired:
            if state.doc_id in live_dups:
                held.append(
                    (state.doc_id, f"ttl reached but {len(live_dups[state.doc_id])} duplicate(s) live")
                )
            else:
                age = _human(now - updated_at(state))
                moves[state.doc_id] = Move(
                    state.doc_id,
                    tier or state.status,
                    DELETE,
                    f"ttl: updated {age} ago",
                    state.n_chunks if tier else 0,
                    bytes_of(state) if tier else 0,
                    policy.rule,
                )
                continue
        if tier is None:
            continue
        tier_now[state.doc_id] = tier
        hits = access.get(state.doc_id)
        idle = now - last_touch(state)
        target, reason = None, ""
        if tier != HOT and config.promote_hits and hits and hits.hits >= config.promote_hits:
            target, reason = HOT, f"{hits.hits} hits in {config.promote_window}"
        elif policy.pin == HOT:
            pass
        elif (
            policy.cold_after is not None
            and idle >= policy.cold_after
            and tier != COLD
            and policy.pin != WARM
        ):
            target, reason = COLD, f"idle {_human(idle)} >= cold_after"
        elif policy.warm_after is not None and idle >= policy.warm_after and tier == HOT:
            target, reason = WARM, f"idle {_human(idle)} >= warm_after"
        if target is not None:
            moves[state.doc_id] = Move(
                state.doc_id, tier, target, reason, state.n_chunks, bytes_of(state), policy.rule
            )

    _apply_caps(config, docs, tier_now, moves, bytes_of, last_touch, policy_of)
    ordered = sorted(moves.values(), key=lambda m: (last_touch(docs[m.doc_id]), m.doc_id))
    if config.max_moves and len(ordered) > config.max_moves:
        held.extend(
            (m.doc_id, f"over lifecycle.max_moves ({config.max_moves})") for m in ordered[config.max_moves :]
        )
        ordered = ordered[: config.max_moves]
    before = _tally(docs, tier_now, {}, bytes_of)
    after = _tally(docs, tier_now, {m.doc_id: m for m in ordered}, bytes_of)
    return Plan(now, manifest.generation, ordered, held, before, after, dict(docs))


def _apply_caps(
    config: LifecycleConfig,
    docs: dict[str, DocState],
    tier_now: dict[str, str],
    moves: dict[str, Move],
    bytes_of: Any,
    last_touch: Any,
    policy_of: Any,
) -> None:
    """Demote least recently used documents until the RAM and flash caps hold."""
    hot_cap = parse_size(config.hot_max_bytes, "lifecycle.hot_max_bytes")
    flash_cap = parse_size(config.flash_max_bytes, "lifecycle.flash_max_bytes")

    def where(doc_id: str) -> str:
        move = moves.get(doc_id)
        return move.target if move else tier_now[doc_id]

    def total(tiers: tuple[str, ...]) -> int:
        return sum(bytes_of(docs[d]) for d in tier_now if where(d) in tiers)

    lru = sorted(tier_now, key=lambda d: (last_touch(docs[d]), d))
    for cap, tiers, target, pins in (
        (hot_cap, (HOT,), WARM, (HOT,)),
        (flash_cap, (HOT, WARM), COLD, (HOT, WARM)),
    ):
        if cap is None:
            continue
        excess = total(tiers) - cap
        for doc_id in lru:
            if excess <= 0:
                break
            state = docs[doc_id]
            if where(doc_id) not in tiers or policy_of(state).pin in pins:
                continue
            name = "hot_max_bytes" if target == WARM else "flash_max_bytes"
            moves[doc_id] = Move(
                doc_id,
                tier_now[doc_id],
                target,
                f"{name} cap, least recently used",
                state.n_chunks,
                bytes_of(state),
                policy_of(state).rule,
            )
            excess -= bytes_of(state)


def _tally(
    docs: dict[str, DocState], tier_now: dict[str, str], moves: dict[str, Move], bytes_of: Any
) -> dict[str, dict[str, int]]:
    out = {t: {"documents": 0, "vectors": 0} for t in TIERS}
    for doc_id, tier in tier_now.items():
        move = moves.get(doc_id)
        target = move.target if move else tier
        if target == DELETE:
            continue
        out[target]["documents"] += 1
        out[target]["vectors"] += docs[doc_id].n_chunks
    return out


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
