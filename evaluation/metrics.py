"""Retrieval metrics with trec_eval's exact semantics: P@k, Recall@k, MRR@k, nDCG@k, MAP@k and MAP.

Ranking follows trec_eval: score descending, ties broken by doc id descending (``comp_sim_docno`` compares
``strcmp(docno2, docno1)``; Python's code-point order equals UTF-8 byte order). A document is relevant when
its qrel score is ``>= 1``; nDCG uses the qrel score as gain, discount ``1 / log2(rank + 1)`` and an ideal
DCG built from the qrels, cut at the same ``k`` (trec_eval's ``ndcg_cut``).

Means are taken over every query in the qrels: a query with no run entries scores 0 on every metric
(trec_eval instead leaves such a query out of its mean unless run with ``-c``). Run queries without qrels
are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10, 100)


@dataclass(frozen=True)
class EvalScores:
    """Scores of one run against one set of qrels.

    Attributes:
        per_query: Query id -> metric key -> value, for every query in the qrels, keys sorted.
        mean: Metric key -> mean over all queries in the qrels, keys sorted.
    """

    per_query: dict[str, dict[str, float]]
    mean: dict[str, float]


def trec_order(scores: Mapping[str, float]) -> list[str]:
    """Doc ids ranked as trec_eval ranks them: score descending, ties by doc id descending.

    Example:
        >>> trec_order({"a": 1.0, "b": 1.0, "c": 2.0})
        ['c', 'b', 'a']
    """
    return sorted(scores, key=lambda doc: (scores[doc], doc), reverse=True)


def evaluate(run: Run, qrels: Qrels, ks: Sequence[int] = DEFAULT_KS) -> EvalScores:
    """Scores ``run`` against ``qrels`` at cut-offs ``ks``.

    Args:
        run: Query id -> doc id -> retrieval score (higher is better).
        qrels: Query id -> doc id -> graded judgment (``>= 1`` is relevant).
        ks: Positive cut-offs; duplicates are dropped.

    Returns:
        Per-query values and means over all queries in ``qrels`` (a query missing from ``run`` scores 0),
        with keys ``p@k``, ``recall@k``, ``mrr@k``, ``ndcg@k``, ``map@k`` for each ``k`` and ``map``.

    Raises:
        ValueError: If ``qrels`` is empty or a cut-off is not a positive integer.
    """
    if not qrels:
        raise ValueError("qrels is empty: there is no query to evaluate")
    cutoffs = _cutoffs(ks)
    per_query = {
        qid: _query_scores(trec_order(run.get(qid, {})), qrels[qid], cutoffs) for qid in sorted(qrels)
    }
    keys = next(iter(per_query.values()))
    mean = {key: math.fsum(scores[key] for scores in per_query.values()) / len(per_query) for key in keys}
    return EvalScores(per_query=per_query, mean=mean)


def _cutoffs(ks: Sequence[int]) -> list[int]:
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"cut-offs must be a non-empty sequence of positive integers, got {ks!r}")
    return sorted(set(ks))


def _query_scores(ranking: list[str], judged: Mapping[str, int], cutoffs: list[int]) -> dict[str, float]:
    num_rel = sum(1 for grade in judged.values() if grade >= 1)
    gains = [judged.get(doc, 0) for doc in ranking]
    ideal = sorted((grade for grade in judged.values() if grade > 0), reverse=True)

    hits = 0
    first_hit = 0  # 1-based rank of the first relevant document; 0 when none
    precision_sum = 0.0
    dcg = 0.0
    prefix: list[tuple[int, float, float]] = []  # after each rank: (hits, precision_sum, dcg)
    for rank, gain in enumerate(gains, start=1):
        if gain >= 1:
            hits += 1
            first_hit = first_hit or rank
            precision_sum += hits / rank
        if gain > 0:
            dcg += gain / math.log2(rank + 1)
        prefix.append((hits, precision_sum, dcg))

    scores = {"map": precision_sum / num_rel if num_rel else 0.0}
    for k in cutoffs:
        hits_k, precision_sum_k, dcg_k = prefix[min(k, len(prefix)) - 1] if prefix else (0, 0.0, 0.0)
        ideal_dcg = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(ideal[:k], start=1))
        scores[f"p@{k}"] = hits_k / k
        scores[f"recall@{k}"] = hits_k / num_rel if num_rel else 0.0
        scores[f"mrr@{k}"] = 1.0 / first_hit if 0 < first_hit <= k else 0.0
        scores[f"ndcg@{k}"] = dcg_k / ideal_dcg if ideal_dcg > 0 else 0.0
        scores[f"map@{k}"] = precision_sum_k / num_rel if num_rel else 0.0
    return dict(sorted(scores.items()))
