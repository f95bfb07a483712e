"""Unit tests for pipelines.reconcile (what a run changes per document) and pipelines.dedup (exact and
MinHash near-duplicate linking). Pure functions: no index, no model."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace

import numpy as np
import pytest

from indexing.docs_table import CANONICAL, DELETED, DUPLICATE, DocState
from pipelines.dedup import (
    EXACT,
    NEAR,
    Candidate,
    Link,
    best_link,
    candidate_keys,
    links_in_group,
    shingles,
    signature,
    similarity,
)
from pipelines.reconcile import (
    DELETE,
    UPSERT,
    Plan,
    merge_outcomes,
    merge_promotion,
    newest,
    promotion_plan,
    reconcile,
)
from tierflow.config import DedupConfig
from tierflow.records import DocumentEvent, SourcePosition

FP = "model@rev/chunk256"


def event(
    doc_id: str,
    version: int,
    op: str = "upsert",
    text: str = "body",
    position: str = "",
    uri: str = "a.jsonl",
) -> DocumentEvent:
    return DocumentEvent(
        doc_id,
        op,  # type: ignore[arg-type]
        text if op == "upsert" else "",
        "Title",
        {"k": version},
        SourcePosition("file", uri, position or f"line:{version}"),
        version,
    )


def committed(
    doc_id: str,
    version: int,
    status: str = CANONICAL,
    text: str = "body",
    fingerprint: str = FP,
    uri: str = "a.jsonl",
) -> DocState:
    return DocState(
        doc_id,
        version,
        status,
        content_hash=event(doc_id, version, text=text).content_hash if status != DELETED else "",
        fingerprint=fingerprint,
        segment_id="seg" if status == CANONICAL else None,
        n_chunks=2 if status == CANONICAL else 0,
        source_system="file",
        source_uri=uri,
        source_position=f"line:{version}",
    )


def duplicate_of(doc_id: str, target: str, version: int = 1) -> DocState:
    return DocState(
        doc_id,
        version,
        DUPLICATE,
        content_hash="h",
        canonical_id=target,
        dedup=EXACT,
        similarity=1.0,
        title="Dup title",
        text="dup text",
        source_system="kafka",
        source_uri="topic/0",
        source_position="offset:7",
        event_time=123.0,
        metadata=json.dumps({"lang": "en"}),
    )


# ---- reconcile -------------------------------------------------------------------------------------


def test_new_document_is_upserted() -> None:
    out = reconcile("d", [event("d", 1)], None, [], FP)
    assert out.plan is not None and out.skipped is None
    assert (out.plan.doc_id, out.plan.action, out.plan.event.version, out.plan.previous) == (
        "d",
        UPSERT,
        1,
        None,
    )
    assert out.promote == []


def test_unchanged_content_and_fingerprint_is_skipped() -> None:
    state = committed("d", 1)
    # A newer version whose normalised content is the same (case and spacing only) is still unchanged.
    out = reconcile("d", [event("d", 2, text="  BODY ")], state, [], FP)
    assert out.plan is None and out.skipped == "unchanged"
    assert out.unchanged_canonical is state


def test_changed_content_is_upserted_with_its_previous_state() -> None:
    state = committed("d", 1)
    out = reconcile("d", [event("d", 2, text="new body")], state, [], FP)
    assert out.plan is not None and out.plan.action == UPSERT
    assert out.plan.previous is state and out.plan.event.text == "new body"


def test_fingerprint_change_re_embeds_unchanged_content() -> None:
    state = committed("d", 1, fingerprint="old-model")
    out = reconcile("d", [event("d", 1)], state, [], FP)
    assert out.plan is not None and out.plan.action == UPSERT and out.skipped is None


def test_stale_event_is_skipped() -> None:
    state = committed("d", 5)
    out = reconcile("d", [event("d", 3, text="older edit"), event("d", 4, op="delete")], state, [], FP)
    assert out.plan is None and out.skipped == "stale"
    assert out.unchanged_canonical is state


def test_upsert_at_the_version_of_a_delete_is_stale() -> None:
    out = reconcile("d", [event("d", 3, text="x")], committed("d", 3, DELETED), [], FP)
    assert out.plan is None and out.skipped == "stale"


def test_delete_of_live_document_and_of_deleted_one() -> None:
    state = committed("d", 1)
    out = reconcile("d", [event("d", 2, op="delete")], state, [], FP)
    assert out.plan is not None and out.plan.action == DELETE and out.plan.previous is state
    gone = committed("d", 2, DELETED)
    # A newer delete of a deleted document records its version: an upsert of version 3, arriving later
    # (out of order), must lose to it rather than bring the document back.
    out = reconcile("d", [event("d", 3, op="delete")], gone, [], FP)
    assert out.plan is not None and out.plan.action == DELETE and out.plan.event.version == 3
    replay = reconcile("d", [event("d", 2, op="delete")], gone, [], FP)
    assert replay.plan is None and replay.skipped == "unchanged"


def test_unchanged_content_at_a_newer_version_is_a_bump_not_a_plan() -> None:
    state = committed("d", 2)
    out = reconcile("d", [event("d", 5)], state, [], FP)
    assert out.plan is None and out.skipped == "unchanged" and out.bump is not None
    assert (out.bump.version, out.bump.segment_id, out.bump.n_chunks) == (5, "seg", 2)
    assert json.loads(out.bump.metadata) == {"k": 5} and out.bump.source_position == "line:5"
    replay = reconcile("d", [event("d", 2)], state, [], FP)
    assert replay.skipped == "unchanged" and replay.bump is None


def test_upsert_after_delete_with_same_content_revives() -> None:
    gone = committed("d", 2, DELETED)
    gone.content_hash = event("d", 1).content_hash  # even if the tombstoned state kept its hash
    out = reconcile("d", [event("d", 3)], gone, [], FP)
    assert out.plan is not None and out.plan.action == UPSERT


def test_full_sync_deletes_documents_missing_from_their_source() -> None:
    state = committed("d", 4, uri="docs.jsonl")
    out = reconcile("d", [], state, [], FP, full_sync_uris=frozenset({"docs.jsonl"}))
    assert out.plan is not None and out.plan.action == DELETE
    assert out.plan.event.version == 5 and out.plan.event.op == "delete"
    assert out.plan.event.source.uri == "docs.jsonl"
    # Another file's document, an already deleted one, or an incremental run: left alone.
    assert reconcile("d", [], state, [], FP, full_sync_uris=frozenset({"other.jsonl"})).plan is None
    assert (
        reconcile(
            "d", [], committed("d", 4, DELETED, uri="docs.jsonl"), [], FP, frozenset({"docs.jsonl"})
        ).plan
        is None
    )
    untouched = reconcile("d", [], state, [], FP)
    assert untouched.plan is None and untouched.unchanged_canonical is state


def test_deleting_or_changing_a_canonical_requests_promotion_of_its_duplicates() -> None:
    state = committed("c", 1)
    dups = [duplicate_of("x", "c"), duplicate_of("y", "c")]
    out = reconcile("c", [event("c", 2, op="delete")], state, dups, FP)
    assert out.plan is not None and out.plan.action == DELETE
    assert [d.doc_id for d in out.promote] == ["x", "y"]
    out = reconcile("c", [event("c", 2, text="rewritten")], state, dups, FP)
    assert [d.doc_id for d in out.promote] == ["x", "y"]
    # Full-sync deletion promotes too.
    out = reconcile("c", [], state, dups, FP, frozenset({"a.jsonl"}))
    assert [d.doc_id for d in out.promote] == ["x", "y"]
    # Unchanged: no promotion.
    assert reconcile("c", [event("c", 2)], state, dups, FP).promote == []
    # A duplicate that is deleted or changes has nothing to promote.
    assert reconcile("x", [event("x", 2, op="delete")], duplicate_of("x", "c"), [], FP).promote == []


def test_newest_picks_highest_version_and_delete_at_ties_in_any_order() -> None:
    events = [
        event("d", 3, text="three"),
        event("d", 7, text="seven", position="line:7"),
        event("d", 7, op="delete", position="line:2"),
        event("d", 5, op="delete"),
        event("d", 1),
    ]
    for perm in itertools.permutations(events):
        winner = newest(list(perm))
        assert (winner.version, winner.op) == (7, "delete")
    without_delete = [e for e in events if e.op == "upsert"]
    for perm in itertools.permutations(without_delete):
        assert newest(list(perm)).text == "seven"


def test_newest_orders_equal_versions_by_numeric_position() -> None:
    a = event("d", 4, text="from line 9", position="line:9")
    b = event("d", 4, text="from line 10", position="line:10")
    assert newest([a, b]).text == "from line 10"
    assert newest([b, a]).text == "from line 10"


def test_merge_promotion() -> None:
    own = Plan("x", UPSERT, event("x", 9))
    dup = duplicate_of("x", "c", version=3)
    assert merge_promotion([own], [dup]) is own  # the document's own change wins
    assert merge_promotion([], []) is None
    plan = merge_promotion([], [dup])
    assert plan is not None and plan.promoted and plan.action == UPSERT and plan.previous is dup
    e = plan.event
    assert (e.doc_id, e.op, e.text, e.title, e.version, e.event_time) == (
        "x",
        "upsert",
        "dup text",
        "Dup title",
        3,
        123.0,
    )
    assert e.metadata == {"lang": "en"}
    assert e.source == SourcePosition("kafka", "topic/0", "offset:7")
    # A newer unchanged version of the duplicate arrived in the same run: it is promoted as of that version.
    newer = replace(event("x", 8, text="dup text"), title="Dup title")
    bumped = reconcile(
        "x", [newer], replace(dup, content_hash=newer.content_hash, fingerprint=FP), [], FP
    ).bump
    assert bumped is not None
    promoted = merge_promotion([], [dup], [bumped])
    assert promoted is not None and promoted.event.version == 8 and promoted.event.text == "dup text"
    assert merge_outcomes([], [], [bumped]) == [("bump", bumped)]
    assert merge_outcomes([], [dup], [bumped])[0][0] == "plan" and merge_outcomes([], [], []) == []
    assert promotion_plan(dup).event.content_hash == e.content_hash


# ---- dedup -----------------------------------------------------------------------------------------

CFG = DedupConfig()
WORD_TEXT = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
    "upsilon phi chi psi omega river mountain forest ocean desert valley canyon glacier meadow island"
)
WORDS = WORD_TEXT.split()


def text_of(seed: int, n: int = 120) -> str:
    rnd = random.Random(seed)
    return " ".join(rnd.choice(WORDS) + str(rnd.randint(0, 50)) for _ in range(n))


def cand(doc_id: str, text: str, committed: bool = False, cfg: DedupConfig = CFG) -> Candidate:
    return Candidate(doc_id, DocumentEvent(doc_id, text=text).content_hash, signature(text, cfg), committed)


def test_signature_is_deterministic_and_sized() -> None:
    text = text_of(1)
    sig = signature(text, CFG)
    assert sig == signature(text, CFG)
    assert len(sig) == CFG.num_perm * 8
    assert signature(text.upper().replace(" ", "   "), CFG) == sig  # normalised before shingling
    assert signature(text_of(2), CFG) != sig


def test_similarity_identical_near_and_unrelated() -> None:
    base = text_of(1)
    words = base.split()
    near = " ".join([*words[:-1], "changed"])  # one word of 120 differs
    assert similarity(signature(base, CFG), signature(base, CFG)) == 1.0
    assert similarity(signature(base, CFG), signature(near, CFG)) > 0.85
    assert similarity(signature(base, CFG), signature(text_of(99), CFG)) < 0.1


def test_candidate_keys() -> None:
    c = cand("a", text_of(1))
    keys = candidate_keys(c, CFG)
    assert keys[0] == f"h:{c.content_hash}"
    assert len(keys) == 1 + CFG.bands and len(set(keys)) == len(keys)
    assert [k.split(":")[0] for k in keys[1:]] == [f"b{i}" for i in range(CFG.bands)]
    assert candidate_keys(cand("b", text_of(1)), CFG) == keys  # same text, same keys, whatever the id
    near = cand("n", " ".join([*text_of(1).split()[:-1], "changed"]))
    assert set(candidate_keys(near, CFG)[1:]) & set(keys[1:])  # a near duplicate shares at least one band
    no_near = DedupConfig(near_duplicates=False)
    assert candidate_keys(c, no_near) == [f"h:{c.content_hash}"]


def test_links_exact_near_and_below_threshold() -> None:
    base = text_of(1)
    a = cand("a", base)
    exact = cand("b", "  " + base.upper() + " ")
    near = cand("c", " ".join([*base.split()[:-1], "changed"]))
    far = cand("d", " ".join(base.split()[:60] + text_of(5).split()[60:]))  # half rewritten
    links = {(link.doc_id, link.target): link for link in links_in_group([a, exact, near, far], CFG)}
    assert links[("b", "a")].kind == EXACT and links[("b", "a")].similarity == 1.0
    assert links[("c", "a")].kind == NEAR and links[("c", "a")].similarity >= CFG.threshold
    assert not any(doc == "d" for doc, _ in links)
    assert not any(doc == "a" for doc, _ in links)  # the smallest id stays canonical
    # With near-duplicates off only the exact link remains.
    off = links_in_group([a, exact, near], DedupConfig(near_duplicates=False))
    assert [(link.doc_id, link.target, link.kind) for link in off] == [("b", "a", EXACT)]


def test_links_never_demote_a_committed_document_and_only_point_to_smaller_new_ids() -> None:
    text = text_of(3)
    old = cand("m", text, committed=True)
    a, z = cand("a", text), cand("z", text)
    links = links_in_group([z, old, a], CFG)
    pairs = {(link.doc_id, link.target) for link in links}
    assert ("m", "a") not in pairs and ("m", "z") not in pairs and not any(d == "m" for d, _ in pairs)
    assert pairs == {("a", "m"), ("z", "m"), ("z", "a")}
    assert all(link.target_committed == (link.target == "m") for link in links)
    # Two committed documents are never linked to each other.
    assert links_in_group([old, cand("n", text, committed=True)], CFG) == []


def test_links_are_independent_of_input_order() -> None:
    base = text_of(8)
    members = [
        cand("k", base, committed=True),
        cand("b", base),
        cand("c", " ".join([*base.split()[:-1], "edited"])),
        cand("a", text_of(9)),
        cand("d", base),
    ]
    reference = sorted(links_in_group(members, CFG), key=lambda link: (link.doc_id, link.target))
    assert reference
    for perm in itertools.permutations(members):
        got = sorted(links_in_group(list(perm) + [perm[0]], CFG), key=lambda link: (link.doc_id, link.target))
        assert got == reference


def test_best_link_prefers_exact_then_committed_then_smallest_id() -> None:
    near_committed = Link("x", "m", NEAR, 0.95, True)
    exact_new_b = Link("x", "b", EXACT, 1.0, False)
    exact_new_a = Link("x", "a", EXACT, 1.0, False)
    exact_committed = Link("x", "z", EXACT, 1.0, True)
    near_new = Link("x", "c", NEAR, 0.99, False)
    assert best_link([]) is None
    assert best_link([near_committed, exact_new_b]) == exact_new_b
    assert best_link([exact_new_a, exact_committed, exact_new_b]) == exact_committed
    assert best_link([exact_new_b, exact_new_a]) == exact_new_a
    assert best_link([near_new, near_committed]) == near_committed
    for perm in itertools.permutations([near_committed, exact_new_b, exact_new_a, exact_committed, near_new]):
        assert best_link(list(perm)) == exact_committed


@pytest.mark.parametrize("threshold", [0.5, 0.99])
def test_near_link_respects_the_configured_threshold(threshold: float) -> None:
    cfg = DedupConfig(threshold=threshold)
    base = text_of(11)
    edited = " ".join(base.split()[:100] + text_of(12).split()[100:])  # ~20 of 120 words differ
    a, b = cand("a", base, cfg=cfg), cand("b", edited, cfg=cfg)
    sim = similarity(a.signature, b.signature)
    assert 0.5 < sim < 0.99
    links = links_in_group([a, b], cfg)
    assert bool(links) == (sim >= threshold)


def test_signature_is_datasketchs_own_minhash() -> None:
    """Permutations are drawn once per process; the signature stays what datasketch computes itself."""
    from datasketch import MinHash

    config = DedupConfig()
    text = "The Rhine carries barges from Basel to Rotterdam all year, past vineyards and castles."
    reference = MinHash(num_perm=config.num_perm, seed=1)
    reference.update_batch(list(shingles(text, config.shingle_words)))
    expected = np.asarray(reference.hashvalues, dtype=np.uint64).tobytes()
    assert signature(text, config) == signature(text, config) == expected


def test_normalise_collapses_exactly_the_whitespace_the_regex_did() -> None:
    """Content hashes of committed documents depend on ``normalise``: it must give what the regex form
    (``re.sub(r"\\s+", " ", ...).strip()``, its earlier body) gave, for every whitespace character."""
    import re
    import sys
    import unicodedata

    from tierflow.records import normalise

    def by_regex(text: str) -> str:
        return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()

    spaces = [chr(i) for i in range(sys.maxunicode + 1) if re.fullmatch(r"\s", chr(i))]
    assert "\x1c" in spaces and "\u3000" in spaces and "\u200b" not in spaces
    rng = random.Random(3)
    for _ in range(2000):
        parts = [rng.choice(["Fever", "ÉCOLE", "ﬁ", "x", "", "\u200b"]) for _ in range(6)]
        text = "".join(p + "".join(rng.choices(spaces, k=rng.randint(0, 3))) for p in parts)
        assert normalise(text) == by_regex(text), repr(text)
