"""Retrieval evaluation: BEIR datasets, trec_eval-exact metrics, a trec_eval cross-check and reports."""

from evaluation.beir import BeirDataset, load_beir
from evaluation.metrics import DEFAULT_KS, EvalScores, evaluate, trec_order
from evaluation.report import summary_lines, write_reports
from evaluation.trec import trec_eval_scores

__all__ = [
    "DEFAULT_KS",
    "BeirDataset",
    "EvalScores",
    "evaluate",
    "load_beir",
    "summary_lines",
    "trec_eval_scores",
    "trec_order",
    "write_reports",
]
