"""GPU paths are chosen at run time: on a machine without one, the same code runs on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from indexing.embedder import resolve_device
from indexing.faiss_index import IndexSpec, build_index, gpu_available, to_search_device
from tierflow.errors import ConfigError


def test_auto_device_follows_the_hardware() -> None:
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


def test_search_device_is_the_cpu_index_without_a_gpu() -> None:
    vectors = np.eye(4, dtype=np.float32)
    index = build_index(vectors, np.arange(4, dtype=np.int64), IndexSpec())
    if gpu_available():
        pytest.skip("a GPU is present: the CPU fallback is not what runs here")
    assert to_search_device(index, IndexSpec(use_gpu="auto")) is index
    assert to_search_device(index, IndexSpec(use_gpu="never")) is index
    with pytest.raises(ConfigError, match="faiss-gpu"):
        to_search_device(index, IndexSpec(use_gpu="always"))
