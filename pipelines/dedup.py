"""Deduplication: exact (normalised content hash) and near-duplicate (MinHash LSH) detection.

Everything here is a pure function of one document or one candidate group, so the Beam stages that use
it can run on any number of workers: documents meet their candidates through a GroupByKey on the
content hash and on each LSH band, never through shared in-process state.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from tierflow.config import DedupConfig
from tierflow.records import normalise

EXACT = "exact"
NEAR = "near"
MAX_COMPARISONS = 64  # per document per candidate group: bounds the work a hot band can cause


@dataclass(frozen=True)
class Candidate:
    """A document as the dedup stage sees it.

    ``committed`` documents are canonical ones already in the index and unchanged by this run: they can
    be the target of a link but are never demoted.
    """

    doc_id: str
    content_hash: str
    signature: bytes
    committed: bool


@dataclass(frozen=True)
class Link:
    """``doc_id`` duplicates ``target``: exactly (same normalised content) or nearly (estimated Jaccard)."""

    doc_id: str
    target: str
    kind: str
    similarity: float
    target_committed: bool

    def rank(self) -> tuple[int, int, str]:
        """Prefer exact links, then links to committed documents, then the smallest target id."""
        return (0 if self.kind == EXACT else 1, 0 if self.target_committed else 1, self.target)


def shingles(text: str, words: int) -> set[bytes]:
    tokens = normalise(text).split(" ")
    if len(tokens) <= words:
        return {" ".join(tokens).encode()}
    return {" ".join(tokens[i : i + words]).encode() for i in range(len(tokens) - words + 1)}


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int) -> tuple[Any, Any]:
    """The seeded MinHash permutations and their scheme, drawn once per process (datasketch draws them
    for every object)."""
    from datasketch import MinHash

    first = MinHash(num_perm=num_perm, seed=1)
    return first.permutations, first.scheme


def signature(text: str, config: DedupConfig) -> bytes:
    """MinHash signature (datasketch, fixed seed, so every worker computes the same one) as bytes."""
    from datasketch import MinHash

    permutations, scheme = _permutations(config.num_perm)
    minhash = MinHash(num_perm=config.num_perm, seed=1, permutations=permutations, scheme=scheme)
    minhash.update_batch(list(shingles(text, config.shingle_words)))
    return np.asarray(minhash.hashvalues, dtype=np.uint64).tobytes()


def similarity(a: bytes, b: bytes) -> float:
    """Estimated Jaccard similarity of two signatures: the fraction of equal MinHash values."""
    return float(np.mean(np.frombuffer(a, dtype=np.uint64) == np.frombuffer(b, dtype=np.uint64)))


def candidate_keys(candidate: Candidate, config: DedupConfig) -> list[str]:
    """Group keys: the content hash (exact) and, for near-duplicates, one hash per LSH band."""
    keys = [f"h:{candidate.content_hash}"]
    if config.near_duplicates and candidate.signature:
        rows = config.num_perm // config.bands
        values = np.frombuffer(candidate.signature, dtype=np.uint64)
        for band in range(config.bands):
            digest = hashlib.blake2b(
                values[band * rows : (band + 1) * rows].tobytes(), digest_size=12
            ).hexdigest()
            keys.append(f"b{band}:{digest}")
    return keys


def links_in_group(members: list[Candidate], config: DedupConfig) -> list[Link]:
    """Links from each new document in one candidate group to the documents it may be linked to:
    committed ones, or new ones with a smaller id (so the first of a set stays canonical)."""
    ordered = sorted(set(members), key=lambda m: (not m.committed, m.doc_id))
    links = []
    for doc in ordered:
        if doc.committed:
            continue
        compared = 0
        for other in ordered:
            if other.doc_id == doc.doc_id or (not other.committed and other.doc_id > doc.doc_id):
                continue
            if compared == MAX_COMPARISONS:
                break
            compared += 1
            if other.content_hash == doc.content_hash:
                links.append(Link(doc.doc_id, other.doc_id, EXACT, 1.0, other.committed))
            elif config.near_duplicates:
                sim = similarity(doc.signature, other.signature)
                if sim >= config.threshold:
                    links.append(Link(doc.doc_id, other.doc_id, NEAR, sim, other.committed))
    return links


def best_link(links: list[Link]) -> Link | None:
    return min(links, key=Link.rank) if links else None
