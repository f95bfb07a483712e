"""FAISS index construction and search for one segment: exact (Flat) or ANN (HNSW), GPU when there is one."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tierflow.errors import ConfigError

INDEX_TYPES = ("flat", "hnsw")


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index a segment is built as. Scores are inner products of normalised vectors (cosine).

    Args:
        type: ``flat`` (exact) or ``hnsw`` (approximate, graph based).
        hnsw_m: HNSW graph degree.
        ef_construction: HNSW build-time candidate list size.
        ef_search: HNSW query-time candidate list size (recall vs latency).
        use_gpu: ``auto`` (GPU when faiss-gpu and a device are present), ``never`` or ``always``.

    Example:
        >>> IndexSpec(type="hnsw", ef_search=256)
    """

    type: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 256
    use_gpu: str = "auto"

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise ConfigError(f"index.type must be one of {INDEX_TYPES}, got {self.type!r}")
        if self.use_gpu not in ("auto", "never", "always"):
            raise ConfigError(f"index.use_gpu must be auto, never or always, got {self.use_gpu!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexSpec:
        return cls(**data)


def gpu_available() -> bool:
    """True when this faiss build has GPU support and a CUDA device is visible."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(vectors: np.ndarray, ids: np.ndarray, spec: IndexSpec) -> Any:
    """Build a CPU index (``IndexIDMap2`` over Flat or HNSW) holding ``vectors`` under 64-bit ``ids``.

    A flat index is built on the GPU when one is present and copied back, so the segment on disk is
    always a CPU index that any machine can read.
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    dim = vectors.shape[1]
    if spec.type == "flat":
        base: Any = faiss.IndexFlatIP(dim)
    else:
        base = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = spec.ef_construction
        base.hnsw.efSearch = spec.ef_search
    index = faiss.IndexIDMap2(base)
    if len(ids):
        index.add_with_ids(vectors, ids)
    return index


def to_search_device(index: Any, spec: IndexSpec) -> Any:
    """Move a flat index to the GPU for search when the spec allows it and one is present."""
    import faiss

    wants = spec.use_gpu == "always" or (spec.use_gpu == "auto" and gpu_available())
    if not wants or spec.type != "flat":
        return index
    if not gpu_available():
        raise ConfigError("index.use_gpu=always but faiss has no GPU support here; install faiss-gpu")
    resources = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(resources, 0, index)


def excluding(vector_ids: np.ndarray) -> Any:
    """A FAISS selector that skips ``vector_ids`` (a segment's tombstones), for :class:`PreparedSearch`.

    Building one hashes every id, so it is built once per tombstone array and reused by every search.
    """
    import faiss

    return faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(vector_ids, dtype=np.int64)))


class PreparedSearch:
    """Repeated top-``k`` inner-product searches of one index with the same settings; what every search
    would build again (search parameters, the selector translated for an ``IndexIDMap``: about 5 µs) is
    built once.

    An ``IndexIDMap`` is searched through its inner index: its own search maps the labels in an OpenMP
    loop that wakes every thread for each call, which costs a single query milliseconds when the other
    cores are busy. :meth:`search` returns positions in the index (insertion order), or maps them to
    vector ids here.

    Args:
        index: A FAISS index, usually an ``IndexIDMap2`` (:func:`build_index`).
        index_type: ``flat`` or ``hnsw`` (:attr:`IndexSpec.type`).
        ef_search: HNSW efSearch (an HNSW search asked for more than ``ef_search`` results searches with
            efSearch = k). Searches of up to ``ef_search`` results with the same ``ef_search`` visit the
            same graph nodes, so the best ``k`` of them are the first ``k`` of a longer search.
        excluded: A selector of ids to skip (:func:`excluding`), or None.

    Example:
        >>> prepared = PreparedSearch(index, "hnsw", 64)
        >>> scores, positions = prepared.search(queries, 10)
    """

    def __init__(self, index: Any, index_type: str, ef_search: int, excluded: Any = None) -> None:
        import faiss

        self.index = index
        mapped = isinstance(index, faiss.IndexIDMap)
        self.searched = index.index if mapped else index
        self.ntotal = int(index.ntotal)
        # The vector id of each position: a view of the id map, not a copy (self.index keeps it alive).
        self.id_map: np.ndarray | None = None
        if mapped:
            empty = np.zeros(0, dtype=np.int64)
            self.id_map = faiss.rev_swig_ptr(index.id_map.data(), self.ntotal) if self.ntotal else empty
        self.index_type = index_type
        self.ef_search = ef_search
        if mapped and excluded is not None:
            excluded = faiss.IDSelectorTranslated(index.id_map, excluded)
        # Parameters are built with keyword arguments: the faiss wrapper then keeps the selector alive.
        self._extra: dict[str, Any] = {"sel": excluded} if excluded is not None else {}
        self._params: dict[int, Any] = {}  # efSearch -> search parameters
        self.dim = int(index.d)
        # FAISS's Python search (index.search) checks and allocates what search() does, in more Python:
        # calling the C++ search it wraps saves a single query some 5 µs.
        self._search_c = self.searched.search_c
        self._pointer = faiss.swig_ptr

    def _parameters(self, k: int) -> Any:
        ef = max(self.ef_search, k)
        if ef not in self._params:
            import faiss

            if self.index_type == "hnsw":
                params: Any = faiss.SearchParametersHNSW(efSearch=ef, **self._extra)  # type: ignore[attr-defined]
            else:
                params = faiss.SearchParameters(**self._extra) if self._extra else None
            self._params[ef] = params
        return self._params[ef]

    def search(self, queries: np.ndarray, k: int, ids: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Scores and positions (with ``ids``: vector ids) of the best ``min(k, ntotal)`` of each query,
        best first; -1 where there are fewer."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {queries.shape}")
        k = min(k, self.ntotal)
        n = len(queries)
        if k <= 0:
            empty = np.zeros((n, 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores = np.empty((n, k), dtype=np.float32)
        labels = np.empty((n, k), dtype=np.int64)
        pointer = self._pointer
        self._search_c(n, pointer(queries), k, pointer(scores), pointer(labels), self._parameters(k))
        if ids and self.id_map is not None:
            labels = np.where(labels >= 0, self.id_map[labels], labels)
        return scores, labels


def index_vectors(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """All (ids, vectors) stored in an ``IndexIDMap2`` over Flat or HNSW storage, in insertion order."""
    import faiss

    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    vectors = (
        index.index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d), np.float32)
    )
    return ids, np.asarray(vectors, dtype=np.float32)
