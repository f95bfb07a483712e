"""Index versions: several hot-tier indexes (models, chunkings, index types) in one directory, one live.

A version is a chain of manifests in the index directory, with its own pointer. The live version's pointer
is ``CURRENT``, which every reader follows (search, the service, lifecycle, evaluation), so switching
versions is one atomic rename of ``CURRENT``, exactly like a commit. A candidate's pointer is
``versions/<name>/HEAD``; it shares the directory's generation numbers, segments and document tables
(a candidate made the same way as the live version starts as the very same segments: nothing is
copied). ``versions/REGISTRY.json`` says which version is live, each version's identity (embedding model,
chunking, FAISS index settings, the code that made it) and the settings to embed its queries with, and
every switch (promote, rollback) with its reason.

Writes never mix: a commit into a version whose identity is another model or another chunking is refused
(:class:`~tierflow.errors.IncompatibleIndex`), so a change of model is a new version, built by
``tierflow reindex`` beside the live one, caught up, and switched to by ``tierflow promote`` behind the
evaluation gate (``pipelines.reindex``). ``tierflow rollback`` switches back in one step. Retired versions
beyond ``keep`` are dropped (:func:`retain`); ``tierflow gc`` then frees their files.

Switches are made holding the directory's writer lock, so no commit is half-way through when ``CURRENT``
changes; a writer that was waiting then commits into the new live version if its vectors are of that
version's identity, and is refused otherwise (restart it with the new version's settings: a stream
resumes from the source positions the version recorded).

Example:
    >>> registry = load_registry(Path("tierflow-data/hot"))
    >>> registry.live, sorted(registry.versions)
    ('v1', ['v1', 'v2'])
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexing import audit
from indexing.durable import atomic_write_bytes
from indexing.manifest import CURRENT, ManifestStore
from tierflow.errors import ConfigError, VersionError

REGISTRY = "versions/REGISTRY.json"
LIVE, CANDIDATE, RETIRED = "live", "candidate", "retired"
FIRST = "v1"  # the name the version of an index made before versions existed is registered under
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass
class Registry:
    """``versions/REGISTRY.json``: which version is live, every kept version, and every switch."""

    live: str = FIRST
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    switches: list[dict[str, Any]] = field(default_factory=list)

    def entry(self, name: str) -> dict[str, Any]:
        try:
            return self.versions[name]
        except KeyError:
            raise VersionError(
                f"no index version {name!r}; kept versions: {', '.join(sorted(self.versions)) or 'none'}"
            ) from None

    def pointer(self, name: str) -> str:
        """The pointer (relative to the index root) version ``name`` reads and commits through:
        ``CURRENT`` while it is live, its own ``HEAD`` otherwise."""
        if name == self.live:
            return CURRENT
        self.entry(name)
        return head_pointer(name)

    def candidates(self) -> list[str]:
        return sorted(name for name, entry in self.versions.items() if entry["state"] == CANDIDATE)

    def previous(self) -> str | None:
        """The version the last switch left (what a rollback returns to), if it is still kept."""
        for switch in reversed(self.switches):
            if switch["to"] == self.live:
                name = str(switch["from"])
                return name if name in self.versions else None
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"live": self.live, "versions": self.versions, "switches": self.switches}


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ConfigError(f"version name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    return name


def load_registry(root: Path) -> Registry:
    """The registry of the index at ``root`` (an index never re-indexed has none: one live version).

    Which version is live is what ``CURRENT`` names (its manifest records its version): a switch renames
    ``CURRENT`` first and records it here second, so after a crash between the two the registry read here
    is corrected to match.
    """
    path = Path(root) / REGISTRY
    if not path.exists():
        return Registry()
    data = json.loads(path.read_bytes())
    registry = Registry(data["live"], data["versions"], data.get("switches", []))
    actual = ManifestStore(Path(root)).current().version or FIRST
    if actual != registry.live and actual in registry.versions:
        old = registry.live
        registry.versions[old] = {**registry.versions[old], "state": RETIRED, "retired_at": time.time()}
        registry.versions[actual] = {**registry.versions[actual], "state": LIVE}
        registry.switches.append({"action": "recovered", "from": old, "to": actual, "at": time.time()})
        registry.live = actual
    return registry


def save_registry(root: Path, registry: Registry) -> None:
    """Write the registry atomically (call holding the writer lock)."""
    path = Path(root) / REGISTRY
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(registry.to_dict(), indent=1, sort_keys=True).encode())


def head_pointer(name: str) -> str:
    """A non-live version's pointer file, relative to the index root."""
    return f"versions/{check_name(name)}/HEAD"


def pointer_of(root: Path, name: str | None) -> str:
    """The pointer (relative to ``root``) that version ``name`` reads and commits through: ``CURRENT``
    for the live version (and for ``None``: whatever is live), its own ``HEAD`` for any other."""
    return CURRENT if name is None else load_registry(root).pointer(name)


def identity_of(embedding: dict[str, Any], chunking: dict[str, Any], index: dict[str, Any]) -> dict[str, Any]:
    """What makes two versions' vectors comparable: the embedding model's identity and the chunking
    (vectors of either kind never mix), and the FAISS index settings (recorded; segments of two index
    types can hold the same vectors)."""
    return {"embedding": embedding, "chunking": chunking, "index": index}


def ensure_registry(root: Path, live_identity: dict[str, Any], settings: dict[str, Any]) -> Registry:
    """The registry, created when the index has none: its live version registered as :data:`FIRST` with
    the identity its manifest records and the query ``settings`` it was built with. Call under the lock."""
    registry = load_registry(root)
    if (Path(root) / REGISTRY).exists():
        return registry
    registry.versions[FIRST] = {
        "state": LIVE,
        "created_at": time.time(),
        "identity": live_identity,
        "settings": {k: v for k, v in settings.items() if k != "code_version"},
        "code_version": settings.get("code_version", ""),
    }
    save_registry(root, registry)
    return registry


def add_candidate(
    root: Path, name: str, identity: dict[str, Any], settings: dict[str, Any], code_version: str
) -> Registry:
    """Register candidate version ``name`` (call under the lock). A kept version of the same name and
    identity that is not live (a candidate being built, a retired version to catch up) is resumed; any
    other version of that name is a conflict."""
    registry = load_registry(root)
    check_name(name)
    found = registry.versions.get(name)
    if found is not None:
        if found["state"] != LIVE and found["identity"] == identity:
            return registry
        raise VersionError(
            f"index version {name!r} exists ({found['state']}, made with {found['identity']['embedding']}); "
            "pick another --name"
        )
    registry.versions[name] = {
        "state": CANDIDATE,
        "created_at": time.time(),
        "identity": identity,
        "settings": settings,
        "code_version": code_version,
    }
    save_registry(root, registry)
    return registry


def switch(root: Path, to: str, action: str, reason: str) -> dict[str, Any]:
    """Make version ``to`` live: the live version's head is kept as its own pointer, and ``CURRENT``
    names ``to``'s head, in one rename; the registry and the audit log record the switch (``action``:
    promote or rollback, and why). Call holding the writer lock. Returns the switch's record, with the
    generation now live."""
    root = Path(root)
    registry = load_registry(root)
    if to == registry.live:
        raise VersionError(f"version {to!r} is live already")
    entry = registry.entry(to)
    store_to = ManifestStore(root, head_pointer(to))
    if not store_to.pointer.exists():
        raise VersionError(f"version {to!r} has no committed state ({store_to.pointer} is missing)")
    target = store_to.pointer.read_bytes().strip()
    head = store_to.load(target.decode())  # checked before it goes live
    old = registry.live
    live_pointer = root / CURRENT
    old_head = root / head_pointer(old)
    old_head.parent.mkdir(parents=True, exist_ok=True)
    if live_pointer.exists():
        atomic_write_bytes(old_head, live_pointer.read_bytes().strip())
    atomic_write_bytes(live_pointer, target)  # the switch
    now = time.time()
    registry.versions[old] = {**registry.versions[old], "state": RETIRED, "retired_at": now}
    registry.versions[to] = {**entry, "state": LIVE, "live_since": now}
    registry.live = to
    record = {"action": action, "from": old, "to": to, "at": now, "reason": reason}
    registry.switches.append(record)
    save_registry(root, registry)
    entry_line = {"generation": head.generation, "run_id": f"{action}-{to}", "committed_at": now}
    audit.append(root, action, {**entry_line, "from": old, "to": to, "reason": reason}, [])
    return {**record, "generation": head.generation}


def retain(root: Path, keep: int) -> list[str]:
    """Drop retired versions beyond the ``keep`` most recently retired (call under the lock): their
    pointers go, and ``tierflow gc`` frees the files no kept version names. Returns the names dropped."""
    registry = load_registry(root)
    retired = sorted(
        (name for name, entry in registry.versions.items() if entry["state"] == RETIRED),
        key=lambda name: registry.versions[name].get("retired_at", 0.0),
        reverse=True,
    )
    dropped = retired[max(keep, 0) :]
    for name in dropped:
        del registry.versions[name]
        shutil.rmtree(Path(root) / "versions" / name, ignore_errors=True)
    if dropped:
        save_registry(root, registry)
    return dropped


def kept_heads(root: Path) -> list[str]:
    """The manifest files every kept non-live version's pointer names (garbage collection keeps them)."""
    folder = Path(root) / "versions"
    if not folder.exists():
        return []
    return sorted(
        pointer.read_bytes().decode("utf-8", "replace").strip() for pointer in folder.glob("*/HEAD")
    )


def query_settings(root: Path, embedding_identity: dict[str, Any]) -> dict[str, Any] | None:
    """The embedding settings (``model_path``, ``model_name``, ``normalize``) of the kept version whose
    vectors have ``embedding_identity``, for embedding queries to search it; None when none is kept."""
    registry = load_registry(root)
    for entry in registry.versions.values():
        if entry["identity"].get("embedding") == embedding_identity:
            settings = entry.get("settings", {}).get("embedding", {})
            return {
                key: settings[key] for key in ("model_path", "model_name", "normalize") if key in settings
            }
    return None


def version_query_settings(root: Path, name: str) -> dict[str, Any]:
    """:func:`query_settings` of version ``name``."""
    entry = load_registry(root).entry(name)
    found = query_settings(root, entry["identity"]["embedding"])
    return found or {}


def next_name(root: Path) -> str:
    """The first ``vN`` no kept version uses (v2 for an index that was never re-indexed)."""
    taken = set(load_registry(root).versions) | {FIRST}
    n = 2
    while f"v{n}" in taken:
        n += 1
    return f"v{n}"


def describe(root: Path) -> list[dict[str, Any]]:
    """One row per kept version (live first): state, head generation, model, chunking, index type."""
    root = Path(root)
    registry = load_registry(root)
    if not registry.versions:
        current = ManifestStore(root).current()
        registry.versions[FIRST] = {
            "state": LIVE,
            "identity": identity_of(current.embedding, current.chunking, current.index),
        }
    rows = []
    for name, entry in sorted(registry.versions.items(), key=lambda kv: (kv[0] != registry.live, kv[0])):
        store = ManifestStore(root, registry.pointer(name))
        generation = store.current().generation if store.pointer.exists() else 0
        identity = entry["identity"]
        rows.append(
            {
                "name": name,
                "state": entry["state"],
                "generation": generation,
                "model": identity["embedding"].get("model"),
                "normalize": identity["embedding"].get("normalize"),
                "chunking": {k: identity["chunking"].get(k) for k in ("max_tokens", "overlap_tokens", "include_title")},
                "index_type": identity.get("index", {}).get("type", "?"),
                "created_at": entry.get("created_at"),
                "code_version": entry.get("code_version", ""),
            }
        )
    return rows
