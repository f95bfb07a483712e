"""Tests for evaluation.metrics: hand-computed cases and a cross-check against trec_eval (pytrec_eval)."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest

from evaluation import evaluate, load_beir, trec_eval_scores, trec_order

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"
KS = (1, 3, 5, 10, 100)


def test_trec_order_breaks_ties_by_doc_id_descending() -> None:
    assert trec_order({"a": 1.0, "b": 1.0, "c": 0.5, "d10": 2.0, "d9": 2.0}) == ["d9", "d10", "b", "a", "c"]


def test_ties_follow_trec_order() -> None:
    # Ranking is b, a, c: "b" wins the tie at 1.0, so the only relevant document sits at rank 2.
    scores = evaluate({"q": {"a": 1.0, "b": 1.0, "c": 0.5}}, {"q": {"a": 1}}, ks=(1, 3)).per_query["q"]
    assert scores == pytest.approx(
        {
            "map": 0.5,
            "map@1": 0.0,
            "map@3": 0.5,
            "mrr@1": 0.0,
            "mrr@3": 0.5,
            "ndcg@1": 0.0,
            "ndcg@3": 1 / math.log2(3),
            "p@1": 0.0,
            "p@3": 1 / 3,
            "recall@1": 0.0,
            "recall@3": 1.0,
        },
        abs=1e-12,
    )


def test_graded_relevance() -> None:
    qrels = {"q": {"a": 2, "b": 1, "c": 0, "d": 3}}
    scores = evaluate({"q": {"a": 3.0, "b": 2.0, "c": 1.0}}, qrels, ks=(1, 3, 10)).per_query["q"]
    # Gains in rank order 2, 1, 0; ideal gains 3, 2, 1; three relevant documents, a and b retrieved.
    assert scores["ndcg@1"] == pytest.approx(2 / 3, abs=1e-12)
    ideal_3 = 3 + 2 / math.log2(3) + 1 / 2
    assert scores["ndcg@3"] == pytest.approx((2 + 1 / math.log2(3)) / ideal_3, abs=1e-12)
    assert scores["ndcg@10"] == pytest.approx((2 + 1 / math.log2(3)) / ideal_3, abs=1e-12)
    assert scores["p@3"] == pytest.approx(2 / 3, abs=1e-12)
    assert scores["p@10"] == pytest.approx(0.2, abs=1e-12)  # P@k divides by k, not by the number retrieved
    assert scores["recall@3"] == pytest.approx(2 / 3, abs=1e-12)
    assert scores["map@1"] == pytest.approx(1 / 3, abs=1e-12)
    assert scores["map"] == pytest.approx(2 / 3, abs=1e-12)
    assert scores["mrr@1"] == 1.0


def test_no_relevant_retrieved_scores_zero() -> None:
    scores = evaluate({"q": {"x": 2.0, "y": 1.0}}, {"q": {"a": 1, "x": 0}}, ks=(1, 10)).per_query["q"]
    assert set(scores.values()) == {0.0}


def test_query_missing_from_run_scores_zero_and_counts_in_mean() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    result = evaluate({"q1": {"a": 1.0}, "not-judged": {"b": 1.0}}, qrels, ks=(1,))
    assert sorted(result.per_query) == ["q1", "q2"]
    assert set(result.per_query["q2"].values()) == {0.0}
    assert result.mean == {"map": 0.5, "map@1": 0.5, "mrr@1": 0.5, "ndcg@1": 0.5, "p@1": 0.5, "recall@1": 0.5}


def test_result_does_not_depend_on_dict_order() -> None:
    run = {"q2": {"b": 1.0, "a": 1.0}, "q1": {"c": 0.3, "a": 0.7}}
    qrels = {"q2": {"a": 1}, "q1": {"c": 2, "a": 1}}
    reversed_run = {q: dict(reversed(docs.items())) for q, docs in reversed(run.items())}
    reversed_qrels = {q: dict(reversed(docs.items())) for q, docs in reversed(qrels.items())}
    first, second = evaluate(run, qrels), evaluate(reversed_run, reversed_qrels)
    assert first == second
    assert list(first.per_query) == ["q1", "q2"]
    assert list(first.mean) == sorted(first.mean)


@pytest.mark.parametrize("ks", [(), (0,), (5, -1), (2.5,)])
def test_rejects_bad_cutoffs(ks: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="cut-offs"):
        evaluate({"q": {"a": 1.0}}, {"q": {"a": 1}}, ks=ks)


def test_rejects_empty_qrels() -> None:
    with pytest.raises(ValueError, match="qrels is empty"):
        evaluate({"q": {"a": 1.0}}, {})


def assert_agrees_with_trec_eval(
    run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], ks: tuple[int, ...]
) -> None:
    ours = evaluate(run, qrels, ks)
    reference = trec_eval_scores(run, qrels, ks)
    assert set(reference) == set(run) & set(qrels)
    for qid in qrels:
        expected = reference.get(qid, dict.fromkeys(ours.mean, 0.0))
        assert ours.per_query[qid].keys() == expected.keys()
        for key, value in expected.items():
            assert ours.per_query[qid][key] == pytest.approx(value, abs=1e-9), (qid, key)
    for key, value in ours.mean.items():
        assert value == pytest.approx(sum(s[key] for s in reference.values()) / len(qrels), abs=1e-9), key


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_trec_eval_on_random_runs_with_ties(seed: int) -> None:
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(40)]  # "d10" < "d9" as strings: tie-breaking is not numeric
    qrels = {
        f"q{i}": {doc: rng.choice([0, 0, 1, 2, 3]) for doc in rng.sample(docs, rng.randint(1, 8))}
        for i in range(60)
    }
    run = {
        qid: {doc: rng.choice([0.0, 0.25, 0.5, 1.0, 1.5]) for doc in rng.sample(docs, rng.randint(0, 30))}
        for qid in [*rng.sample(sorted(qrels), 50), "unjudged-1", "unjudged-2"]
    }
    assert_agrees_with_trec_eval(run, qrels, (1, 2, 3, 5, 10, 20, 100))


def tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@pytest.mark.skipif(not SCIFACT.is_dir(), reason=f"SciFact not found at {SCIFACT}")
def test_agrees_with_trec_eval_on_a_scifact_run() -> None:
    dataset = load_beir(SCIFACT)
    relevant = {doc for judged in dataset.qrels.values() for doc in judged}
    doc_tokens = {
        record["_id"]: tokens(f"{record['title']} {record['text']}")
        for number, record in enumerate(dataset.iter_corpus())
        if number < 1000 or record["_id"] in relevant
    }
    run: dict[str, dict[str, float]] = {}
    for qid, text in dataset.queries.items():
        query = tokens(text)
        overlaps = {doc: float(len(query & words)) for doc, words in doc_tokens.items()}
        run[qid] = {doc: score for doc, score in overlaps.items() if score > 0}
    assert_agrees_with_trec_eval(run, dataset.qrels, KS)
