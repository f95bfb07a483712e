"""Exact top-k by float32 brute force: the ground truth the benchmarks hold approximate search to.

Only numpy: the GPU check (``indexing.bench_gpu``) uses it where nothing but torch and faiss is installed.
"""

from __future__ import annotations

import numpy as np

EXACT_BLOCK = 64  # queries per block of the exact search (bounds the score matrix)


def exact_top_k(queries: np.ndarray, matrix: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Vector ids of the exact top ``k`` by inner product (float32 brute force), best first."""
    out = np.empty((len(queries), min(k, len(ids))), dtype=np.int64)
    for start in range(0, len(queries), EXACT_BLOCK):
        scores = queries[start : start + EXACT_BLOCK] @ matrix.T
        top = np.argpartition(-scores, out.shape[1] - 1, axis=1)[:, : out.shape[1]]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start : start + EXACT_BLOCK] = ids[np.take_along_axis(top, order, axis=1)]
    return out
