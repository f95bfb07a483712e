"""Reference scores from trec_eval itself (through ``pytrec_eval``), to cross-check ``evaluation.metrics``.

trec_eval's ``recip_rank`` has no cut-off, so ``mrr@k`` is computed by truncating each query's run to its
top ``k`` in trec_eval order (:func:`evaluation.metrics.trec_order`) and scoring ``recip_rank`` on that.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytrec_eval

from evaluation.metrics import DEFAULT_KS, Qrels, Run, trec_order

_CUT_MEASURES = {"P": "p", "recall": "recall", "ndcg_cut": "ndcg", "map_cut": "map"}


def trec_eval_scores(run: Run, qrels: Qrels, ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
    """Per-query trec_eval scores under the metric keys of :func:`evaluation.metrics.evaluate`.

    Args:
        run: Query id -> doc id -> retrieval score.
        qrels: Query id -> doc id -> graded judgment (``>= 1`` is relevant).
        ks: Positive cut-offs.

    Returns:
        Query id -> metric key -> value, for the queries present in both ``run`` and ``qrels`` (trec_eval
        scores no other query), keys sorted.
    """
    cutoffs = sorted(set(ks))
    cut_list = ",".join(str(k) for k in cutoffs)
    qrels_in = {qid: dict(judged) for qid, judged in qrels.items()}
    run_in = {qid: {doc: float(score) for doc, score in docs.items()} for qid, docs in run.items()}

    measures = {f"{measure}.{cut_list}" for measure in _CUT_MEASURES} | {"map"}
    raw = pytrec_eval.RelevanceEvaluator(qrels_in, measures).evaluate(run_in)
    scores: dict[str, dict[str, float]] = {qid: {"map": values["map"]} for qid, values in raw.items()}
    for qid, values in raw.items():
        for measure, name in _CUT_MEASURES.items():
            for k in cutoffs:
                scores[qid][f"{name}@{k}"] = values[f"{measure}_{k}"]

    recip_rank = pytrec_eval.RelevanceEvaluator(qrels_in, {"recip_rank"})
    for k in cutoffs:
        top_k = {qid: {doc: docs[doc] for doc in trec_order(docs)[:k]} for qid, docs in run_in.items()}
        for qid, values in recip_rank.evaluate(top_k).items():
            scores[qid][f"mrr@{k}"] = values["recip_rank"]
    return {qid: dict(sorted(scores[qid].items())) for qid in sorted(scores)}
