"""The embedder: its reduced-precision forward pass (chosen by the hardware, the same vectors to 1e-3) and its identity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexing.embedder import Embedder, cpu_computes_bf16, declared_dimension, resolve_precision
from tierflow.config import EmbeddingConfig, load_config
from tierflow.errors import ConfigError

SCIFACT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"


def test_auto_precision_follows_the_hardware() -> None:
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("auto", "cuda:1") == "fp16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_computes_bf16() else "fp32")
    for explicit in ("fp32", "bf16"):
        assert resolve_precision(explicit, "cpu") == explicit
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_precision("fp16", "cpu")


def test_precision_is_a_checked_setting() -> None:
    assert EmbeddingConfig().precision == "auto"
    assert load_config(environ={"TIERFLOW__EMBEDDING__PRECISION": "fp32"}).embedding.precision == "fp32"
    with pytest.raises(ConfigError, match="embedding.precision must be one of"):
        EmbeddingConfig(precision="int8")
    with pytest.raises(ConfigError, match="batch_size"):
        EmbeddingConfig(batch_size=0)


@pytest.mark.model
def test_bf16_vectors_match_fp32_ones() -> None:
    lines = (SCIFACT_DIR / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:96]
    texts = [f"{d['title']}\n\n{d['text']}" for d in map(json.loads, lines)] + ["", "a", "kafka " * 600]
    exact = Embedder(EmbeddingConfig(device="cpu", precision="fp32"))
    fast = Embedder(EmbeddingConfig(device="cpu", precision="bf16"))
    a, b = exact.embed(texts), fast.embed(texts)
    assert (exact.precision, fast.precision) == ("fp32", "bf16")
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-6)
    cosines = (a * b).sum(axis=1)
    assert cosines.min() > 0.999, cosines.min()
    # The nearest neighbours of each text among the others are the same ones.
    top_exact = np.argsort(-(a @ a.T), axis=1)[:, 1:4]
    top_fast = np.argsort(-(b @ b.T), axis=1)[:, 1:4]
    assert (top_exact[:, 0] == top_fast[:, 0]).mean() >= 0.97


def _model_files(root: Path, modules: list[tuple[str, str, dict[str, object]]]) -> Path:
    entries = []
    for i, (kind, sub, config) in enumerate(modules):
        entries.append(
            {"idx": i, "name": str(i), "path": sub, "type": f"sentence_transformers.models.{kind}"}
        )
        if config:
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / "config.json").write_text(json.dumps(config))
    (root / "modules.json").write_text(json.dumps(entries))
    return root


def test_declared_dimension_reads_pooling_and_dense_modules(tmp_path: Path) -> None:
    pooling = {
        "word_embedding_dimension": 384,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_cls_token": False,
    }
    plain = _model_files(tmp_path / "a", [("Transformer", "", {}), ("Pooling", "1_Pooling", pooling)])
    assert declared_dimension(plain) == 384
    both = {**pooling, "pooling_mode_max_tokens": True}
    assert declared_dimension(_model_files(tmp_path / "b", [("Pooling", "1_Pooling", both)])) == 768
    dense = [
        ("Pooling", "1_Pooling", pooling),
        ("Dense", "2_Dense", {"in_features": 384, "out_features": 128}),
    ]
    assert declared_dimension(_model_files(tmp_path / "c", dense)) == 128
    assert declared_dimension(_model_files(tmp_path / "d", [("LSTM", "1_LSTM", {"hidden_dim": 5})])) is None
    assert declared_dimension(tmp_path / "missing") is None


@pytest.mark.model
def test_identity_needs_no_model_load_and_matches_the_loaded_one() -> None:
    cold = Embedder(EmbeddingConfig())
    identity = cold.identity()
    assert cold._model is None  # an unchanged re-ingest records its identity without loading the model
    warm = Embedder(EmbeddingConfig())
    warm.warm_up()
    assert warm.identity() == identity and identity["dim"] == 384
