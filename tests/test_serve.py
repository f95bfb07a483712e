"""The HTTP search service (``tierflow serve``) over real HTTP on loopback, with the real embedding model:
the same results as ``tierflow search``, tier selection, metadata filters, every error status, readiness,
reloading after a commit, the OpenAPI document, and a clean exit on SIGTERM."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from indexing.hot import HotIndex, tier_vectors
from indexing.search import Searcher, metadata_matches
from indexing.service import (
    OPENAPI_PATH,
    SEARCH_PATH,
    SearchService,
    ServeConfig,
    load_serve_config,
    openapi,
    parse_search_request,
)
from tests.helpers import REPO, demo_docs, write_jsonl
from tierflow.cli import main
from tierflow.config import load_config
from tierflow.errors import ConfigError
from tierflow.s3 import ObjectStoreUnavailable

QUERIES = (
    "how do Kafka consumers resume after a restart",
    "fast approximate vector search",
    "bread with wild yeast",
    "why is the sky blue",
)
JSON = {"Content-Type": "application/json"}


def _with_metadata(doc: dict[str, Any], i: int) -> dict[str, Any]:
    """Extra fields of a JSON-lines record become the document's metadata."""
    topic = doc["_id"].split("-")[0]
    return {**doc, "topic": topic, "year": 2020 + i % 3, "tags": ["demo", "even" if i % 2 == 0 else "odd"]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-corpus")
    docs: list[dict[str, Any] | bytes] = [_with_metadata(doc, i) for i, doc in enumerate(demo_docs())]
    return write_jsonl(root / "docs.jsonl", docs, mtime_ns=1_000)


@pytest.fixture(scope="module")
def index_dir(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    hot = tmp_path_factory.mktemp("serve") / "hot"
    assert main(["ingest", str(corpus), "--index", str(hot), "--json"]) == 0
    return hot


def _searcher(index: Path, track_access: bool = False) -> Searcher:
    return Searcher(HotIndex(index), load_config(environ={}).embedding, track_access=track_access)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``start(index_dir, **settings)`` -> a started SearchService (stopped after the test)."""
    started: list[SearchService] = []

    def make(index: Path, ready: bool = True, **settings: Any) -> SearchService:
        service = SearchService(_searcher(index), ServeConfig(**{"port": 0, **settings})).start()
        started.append(service)
        if ready:
            assert service.wait_ready(120), service.readiness()[1]
        return service

    yield make
    for service in started:
        service.stop()


def call(
    service: SearchService,
    method: str = "POST",
    path: str = SEARCH_PATH,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One request on a fresh connection: status, JSON answer, headers (names lower-case)."""
    host, port = service.address
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=JSON if headers is None else headers)
        response = connection.getresponse()
        raw = response.read()
        return (
            response.status,
            json.loads(raw) if raw else {},
            {k.lower(): v for k, v in response.getheaders()},
        )
    finally:
        connection.close()


def search(service: SearchService, **request: Any) -> dict[str, Any]:
    status, answer, _ = call(service, body=request)
    assert status == 200, answer
    return answer


def cli_search(index: Path, query: str, k: int, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["search", query, "-k", str(k), "--index", str(index), "--json"]) == 0
    results: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return results


# --- unit: request parsing, filters, configuration (no model) ---------------------------------------


def test_metadata_filter_semantics() -> None:
    metadata = {"topic": "kafka", "year": 2021, "tags": ["demo", "odd"], "draft": False, "owner": None}
    assert metadata_matches(metadata, {})
    assert metadata_matches(metadata, {"topic": "kafka", "year": 2021})
    assert metadata_matches(metadata, {"topic": ["cdc", "kafka"], "year": [2020.0, 2021.0]})
    assert metadata_matches(metadata, {"tags": "odd"}) and metadata_matches(metadata, {"tags": ["x", "demo"]})
    assert metadata_matches(metadata, {"draft": False, "owner": None})
    assert not metadata_matches(metadata, {"topic": "cdc"})
    assert not metadata_matches(metadata, {"missing": None})  # absent is not null
    assert not metadata_matches(metadata, {"draft": 0})  # JSON values: false is not 0
    assert not metadata_matches({"n": 1}, {"n": True}) and not metadata_matches({"n": "1"}, {"n": 1})


@pytest.mark.parametrize(
    "body,detail",
    [
        (b"", "Expecting value"),
        (b'{"query": "x",', "Expecting"),
        (b"\xff\xfe", "UTF-8"),
        (b'{"query": "x", "k": NaN}', "NaN"),
        (b'["x"]', "JSON object"),
        (b'{"query": "x", "top_k": 3}', "unknown field(s) top_k"),
        (b'{"query": "  "}', "query"),
        (b'{"query": 7}', "query"),
        (b'{"query": "x", "k": 0}', "k must be"),
        (b'{"query": "x", "k": 101}', "[1, 100]"),
        (b'{"query": "x", "k": true}', "k must be"),
        (b'{"query": "x", "k": 2.5}', "k must be"),
        (b'{"query": "x", "tiers": []}', "tiers"),
        (b'{"query": "x", "tiers": ["hot", "lukewarm"]}', "tiers"),
        (b'{"query": "x", "tiers": ["hot", "hot"]}', "distinct"),
        (b'{"query": "x", "tiers": "hot"}', "tiers"),
        (b'{"query": "x", "filter": ["topic"]}', "filter must be an object"),
        (b'{"query": "x", "filter": {"topic": {"a": 1}}}', "filter.topic"),
        (b'{"query": "x", "filter": {"topic": []}}', "filter.topic"),
        (b'{"query": "x", "filter": {"topic": [["a"]]}}', "filter.topic"),
        (b'{"query": "x", "filter": {"": "a"}}', "non-empty"),
    ],
)
def test_bad_requests_are_400_with_the_field_named(body: bytes, detail: str) -> None:
    from indexing.service import RequestRefused

    with pytest.raises(RequestRefused) as info:
        parse_search_request(body, max_k=100)
    assert info.value.status == 400 and info.value.error in ("malformed_json", "invalid_field")
    assert detail in info.value.detail


def test_request_defaults_and_limits() -> None:
    request = parse_search_request(b'{"query": "q"}', max_k=5)
    assert (request.query, request.k, request.tiers, request.filter) == ("q", 5, None, None)
    full = parse_search_request(
        b'{"query": "q", "k": 3, "tiers": ["cold", "hot"], "filter": {"a": [1, "b", null], "c": true}}', 100
    )
    assert (full.k, full.tiers, full.filter) == (3, ("cold", "hot"), {"a": [1, "b", None], "c": True})


def test_config_defaults_env_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./tierflow.toml
    config = load_serve_config(None, environ={})
    assert config == ServeConfig() and config.host == "127.0.0.1"
    env = {"TIERFLOW__SERVE__MAX_K": "5", "TIERFLOW__SERVE__MAX_CONCURRENT": "3"}
    assert (
        load_serve_config(None, environ=env).max_k,
        load_serve_config(None, environ=env).max_concurrent,
    ) == (5, 3)
    (tmp_path / "tierflow.toml").write_text("[serve]\nport = 9001\nrequest_timeout_s = 2.5\n")
    from_file = load_serve_config(tmp_path / "tierflow.toml", overrides={"host": "::1"}, environ={})
    assert (from_file.port, from_file.request_timeout_s, from_file.host) == (9001, 2.5, "::1")
    # the ingest config ignores the [serve] table: it is a component section
    assert load_config(tmp_path / "tierflow.toml", environ={}).index_dir == "tierflow-data/hot"
    for bad in ({"max_k": 0}, {"max_concurrent": 0}, {"port": 70000}, {"request_timeout_s": 0}):
        with pytest.raises(ConfigError):
            load_serve_config(None, overrides=bad, environ={})
    with pytest.raises(ConfigError, match="unknown"):
        load_serve_config(None, overrides={"workers": 4}, environ={})
    readme = (REPO / "README.md").read_text()  # the README's configuration example shows the defaults
    (tmp_path / "readme.toml").write_text(
        "index_dir" + readme.split("```toml\nindex_dir", 1)[1].split("```", 1)[0]
    )
    assert load_serve_config(tmp_path / "readme.toml", environ={}) == ServeConfig()


def test_openapi_document_is_valid_and_carries_the_limits() -> None:
    from openapi_spec_validator import validate

    document = openapi(ServeConfig(max_k=7, max_body_bytes=1000))
    validate(document)  # raises on an invalid OpenAPI 3.1 document
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {SEARCH_PATH, "/healthz", "/readyz", OPENAPI_PATH, "/metrics"}
    request = document["components"]["schemas"]["SearchRequest"]
    assert request["properties"]["k"]["maximum"] == 7
    responses = document["paths"][SEARCH_PATH]["post"]["responses"]
    assert {"200", "400", "405", "408", "411", "413", "415", "500", "503"} <= set(responses)
    assert "Retry-After" in responses["503"]["headers"]


# --- the service over HTTP --------------------------------------------------------------------------


def _schema_validator(document: dict[str, Any], name: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    )


@pytest.mark.model
def test_results_are_those_of_tierflow_search(
    corpus: Path, index_dir: Path, start: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    service = start(index_dir)
    for query in QUERIES:
        answer = search(service, query=query, k=5)
        assert answer["generation"] == 1 and answer["took_ms"] >= 0
        assert answer["results"] == cli_search(index_dir, query, 5, capsys)
    top = search(service, query="bread with wild yeast", k=1)["results"][0]
    assert top["doc_id"] == "cook-1" and top["tier"] == "hot" and top["chunk_id"] == "cook-1#0"
    [record] = [json.loads(line) for line in corpus.read_text().splitlines() if '"cook-1"' in line]
    assert top["metadata"] == {k: record[k] for k in ("topic", "year", "tags")}
    assert top["lineage"]["model"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    # answers and errors match the OpenAPI document's schemas
    status, document, _ = call(service, "GET", OPENAPI_PATH)
    assert status == 200 and document == openapi(service.config)
    _schema_validator(document, "SearchResponse").validate(search(service, query="kafka", k=3))
    _schema_validator(document, "SearchRequest").validate({"query": "kafka", "k": 3, "filter": {"a": [1]}})
    _schema_validator(document, "Error").validate(call(service, body={"query": ""})[1])
    _schema_validator(document, "Ready").validate(call(service, "GET", "/readyz")[1])
    _schema_validator(document, "Health").validate(call(service, "GET", "/healthz")[1])


@pytest.mark.model
def test_metadata_filters_over_fetch_until_k_or_exhausted(index_dir: Path, start: Any) -> None:
    service = start(index_dir)
    everything = search(service, query="how do Kafka consumers resume after a restart", k=100)["results"]
    assert len(everything) == len(demo_docs())

    def expected(where: dict[str, Any], k: int) -> list[str]:
        return [r["doc_id"] for r in everything if metadata_matches(r["metadata"], where)][:k]

    # cook-* rank near the bottom for a Kafka query: the first round (4 chunks per wanted document) misses
    # them, so the search fetches more until it has k, or every tier is exhausted
    for where, k in (
        ({"topic": "cook"}, 2),
        ({"topic": "cook"}, 5),  # only 2 exist
        ({"topic": ["astro", "health"], "year": 2021}, 3),
        ({"tags": "even"}, 4),
        ({"topic": "no-such-topic"}, 3),
    ):
        found = search(service, query="how do Kafka consumers resume after a restart", k=k, filter=where)
        assert [r["doc_id"] for r in found["results"]] == expected(where, k), where
        assert all(metadata_matches(r["metadata"], where) for r in found["results"])
    assert len(search(service, query="kafka", k=5, filter={"topic": "cook"})["results"]) == 2


@pytest.mark.model
def test_tier_selection_over_hot_warm_and_cold(
    index_dir: Path, start: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from indexing.cold import ColdConfig
    from lifecycle.policy import LifecycleConfig, TierRule
    from lifecycle.run import run_lifecycle

    tiered = tmp_path / "hot"
    shutil.copytree(index_dir, tiered)
    policy = LifecycleConfig(
        warm_after="1d",
        cold_after="2d",
        rules=(
            TierRule(name="hot", metadata={"year": "2020"}, pin="hot"),
            TierRule(name="warm", metadata={"year": "2021"}, pin="warm"),
        ),
    )
    run_lifecycle(tiered, policy, ColdConfig(uri=str(tmp_path / "cold")), time.time() + 10 * 86400)
    counts = tier_vectors(HotIndex(tiered))
    assert all(counts[tier] > 0 for tier in ("hot", "warm", "cold")), counts
    service = start(tiered)
    query = "how do Kafka consumers resume after a restart"
    everything = search(service, query=query, k=100)["results"]
    assert {r["tier"] for r in everything} == {"hot", "warm", "cold"}
    assert {(r["tier"], r["metadata"]["year"]) for r in everything} == {
        ("hot", 2020),
        ("warm", 2021),
        ("cold", 2022),
    }
    for tiers in (["hot"], ["warm"], ["cold"], ["hot", "cold"], ["warm", "cold"]):
        found = search(service, query=query, k=100, tiers=tiers)["results"]
        assert [r["doc_id"] for r in found] == [r["doc_id"] for r in everything if r["tier"] in tiers]
    found = search(service, query=query, k=3, tiers=["cold"], filter={"tags": "odd"})["results"]
    assert found and all(r["tier"] == "cold" and "odd" in r["metadata"]["tags"] for r in found)
    for query in QUERIES:  # federated over all three tiers: still what `tierflow search` finds
        assert search(service, query=query, k=5)["results"] == cli_search(tiered, query, 5, capsys)


@pytest.mark.model
def test_error_statuses(index_dir: Path, start: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    service = start(index_dir, max_body_bytes=2048, max_k=20)
    host, port = service.address

    assert call(service, body=b'{"query": ')[:2] == (
        400,
        {"error": "malformed_json", "detail": "Expecting value at line 1 column 11"},
    )
    status, answer, _ = call(service, body={"query": "x", "k": 21})
    assert (status, answer["error"]) == (400, "invalid_field") and "[1, 20]" in answer["detail"]
    status, answer, _ = call(service, body={"query": "x"}, headers={"Content-Type": "text/plain"})
    assert (status, answer["error"]) == (415, "unsupported_media_type")
    assert call(service, body={"query": "x"}, headers={})[0] == 415  # no content type at all
    charset = {"Content-Type": "application/json; charset=utf-8"}
    assert call(service, body={"query": "x"}, headers=charset)[0] == 200
    status, answer, _ = call(service, body={"query": "x" * 3000})
    assert (status, answer["error"]) == (413, "too_large")
    assert call(service, "GET", "/nope")[:2] == (
        404,
        {"error": "not_found", "detail": f"no such endpoint; see GET {OPENAPI_PATH}"},
    )
    assert call(service, "POST", "/v2/search", body={"query": "x"})[0] == 404
    for method, path, allow in (
        ("GET", SEARCH_PATH, "POST"),
        ("POST", "/healthz", "GET"),
        ("DELETE", SEARCH_PATH, "POST"),
        ("PUT", "/readyz", "GET"),
    ):
        status, answer, headers = call(service, method, path, body=b"{}")
        assert (status, answer["error"], headers["allow"]) == (405, "method_not_allowed", allow), method

    def raw(lines: list[str], body: bytes = b"") -> tuple[int, dict[str, Any]]:
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            sock.shutdown(socket.SHUT_WR)  # nothing more comes
            response = http.client.HTTPResponse(sock)
            response.begin()
            return response.status, json.loads(response.read())

    post = [f"POST {SEARCH_PATH} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    assert raw(post)[1]["error"] == "length_required"
    assert raw([*post, "Transfer-Encoding: chunked"], b"0\r\n\r\n")[0] == 411
    assert raw([*post, "Content-Length: 12abc"])[:2] == (
        400,
        {"error": "bad_framing", "detail": "Content-Length is not one integer"},
    )
    status, answer = raw([*post, f"Content-Length: {50 << 20}", "Expect: 100-continue"])  # never sent
    assert (status, answer["error"]) == (413, "too_large")
    # An unknown method, JSON all the same: 405 (with Allow, checked by schemathesis) on a known path, 404 elsewhere.
    assert raw([f"BREW {SEARCH_PATH} HTTP/1.1", f"Host: {host}"])[:2] == (
        405,
        {"error": "method_not_allowed", "detail": f"POST {SEARCH_PATH}"},
    )
    assert raw(["BREW /pot HTTP/1.1", f"Host: {host}"])[0] == 404
    status, answer = raw([f"GET / {host} HTTP/1.1", f"Host: {host}"])
    assert (status, answer["error"]) == (400, "bad_request") and "Bad request syntax" in answer["detail"]
    status, answer = raw([*post, "Content-Length: 20"], b'{"query": ')  # the client stops sending
    assert (status, answer) == (400, {"error": "incomplete_body", "detail": "got 10 of 20 bytes"})

    def failing(error: Exception) -> Any:
        def search_many(*_: Any, **__: Any) -> Any:
            raise error

        return search_many

    monkeypatch.setattr(service.searcher, "search_many", failing(RuntimeError("segment file vanished")))
    status, answer, _ = call(service, body={"query": "x"})
    assert (status, answer["error"]) == (500, "internal") and "vanished" not in answer["detail"]
    monkeypatch.setattr(
        service.searcher, "search_many", failing(ObjectStoreUnavailable("s3://b", "503 Slow Down"))
    )
    status, answer, headers = call(service, body={"query": "x"})
    assert (status, answer["error"], headers["retry-after"]) == (503, "tier_unavailable", "1")


@pytest.mark.model
def test_over_max_concurrent_is_503_with_retry_after(index_dir: Path, start: Any) -> None:
    # The holders' bodies may wait up to request_timeout_s: long enough that a loaded machine cannot
    # free their slots before the probe below is refused.
    service = start(index_dir, max_concurrent=2, request_timeout_s=90)
    host, port = service.address
    body = json.dumps({"query": "kafka consumer groups", "k": 2}).encode()
    holders = []
    for _ in range(2):  # two admitted searches whose bodies are still on their way
        sock = socket.create_connection((host, port), timeout=30)
        sock.sendall(
            f"POST {SEARCH_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        holders.append(sock)
    # Probe only once both holders are admitted: a probe admitted first would take a holder's slot
    # (that holder is refused instead) and every later probe would find a slot free.
    deadline = time.monotonic() + 60
    while service.admission.in_use < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert service.admission.in_use == 2
    status, answer, headers = call(service, body={"query": "x"})
    assert (status, answer["error"], headers["retry-after"]) == (503, "overloaded", "1")
    assert "2 searches are in progress" in answer["detail"]
    for sock in holders:
        sock.sendall(body[5:])
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200 and len(json.loads(response.read())["results"]) == 2
        sock.close()
    assert call(service, body={"query": "x"})[0] == 200  # the slots are free again

    assert service.counts["refused.overloaded"] >= 1

    # admitted, but the index stays busy for longer than request_timeout_s: 503 timeout, not a long queue
    hurried = start(index_dir, request_timeout_s=0.5)
    with hurried._index_lock:
        status, answer, headers = call(hurried, body={"query": "x"})
    assert (status, answer["error"], headers["retry-after"]) == (503, "timeout", "1")
    # a body trickling in for longer than request_timeout_s in all: 408, and the slot is free again
    with socket.create_connection(hurried.address, timeout=30) as slow:
        slow.sendall(
            f"POST {SEARCH_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        for i in range(4):
            time.sleep(0.2)  # each piece within the socket timeout, the whole body not
            with contextlib.suppress(OSError):
                slow.sendall(body[i : i + 1])
        response = http.client.HTTPResponse(slow)
        response.begin()
        assert (response.status, json.loads(response.read())["error"]) == (408, "request_timeout")
    # The slot is free again. With a 0.5 s budget a loaded machine may still answer 503 "timeout" (a
    # legitimate refusal): retry a few times, as a client honouring Retry-After would.
    for _ in range(20):
        status, answer, _ = call(hurried, body={"query": "x"})
        if status != 503:
            break
        assert answer["error"] == "timeout", answer
        time.sleep(0.5)
    assert status == 200, answer


@pytest.mark.model
def test_metrics_endpoint_counts_searches_by_status_and_times_them(index_dir: Path, start: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    service = start(index_dir)

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        host, port = service.address
        connection = http.client.HTTPConnection(host, port, timeout=60)
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Content-Type", "").startswith("text/plain")
        text = response.read().decode()
        connection.close()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    before = scrape()
    search(service, query="kafka consumer groups", k=3)
    search(service, query="kafka consumer groups", k=3, tiers=["hot"])
    assert call(service, body={"query": "x", "k": 0})[0] == 400
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("tierflow_search_requests_total", status="200") == 2
    assert delta("tierflow_search_requests_total", status="400") == 1
    assert delta("tierflow_search_seconds_count", tiers="hot,warm,cold") == 1
    assert delta("tierflow_search_seconds_count", tiers="hot") == 1
    assert delta("tierflow_search_seconds_sum", tiers="hot") > 0


@pytest.mark.model
def test_readiness_and_reload_after_a_commit(index_dir: Path, start: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    service = start(empty, ready=False)
    assert service.wait_ready(120) is False
    assert call(service, "GET", "/healthz")[:2] == (200, {"status": "ok"})  # alive, but not ready
    status, answer, headers = call(service, "GET", "/readyz")
    assert (status, answer["error"], headers["retry-after"]) == (503, "not_ready", "1")
    assert "no committed generation" in answer["detail"]
    status, answer, _ = call(service, body={"query": "kafka"})
    assert (status, answer["error"]) == (503, "not_ready")

    live = tmp_path / "live"
    shutil.copytree(index_dir, live)
    reloading = start(live)
    assert call(reloading, "GET", "/readyz")[:2] == (200, {"status": "ready", "generation": 1})
    query = "qubits and superconducting quantum processors"
    before = search(reloading, query=query, k=1)
    assert before["generation"] == 1 and before["results"][0]["doc_id"] != "quantum-1"
    new = write_jsonl(
        tmp_path / "new.jsonl",
        [
            {
                "_id": "quantum-1",
                "title": "Quantum computers",
                "text": "Superconducting qubits in a quantum processor are entangled by microwave pulses.",
                "topic": "quantum",
            }
        ],
    )
    assert main(["ingest", str(new), "--index", str(live), "--json"]) == 0
    after = search(reloading, query=query, k=1)
    assert after["generation"] == 2 and after["results"][0]["doc_id"] == "quantum-1"
    assert after["results"][0]["metadata"] == {"topic": "quantum"}
    assert call(reloading, "GET", "/readyz")[1]["generation"] == 2
    assert (
        search(reloading, query=query, k=3, filter={"topic": "quantum"})["results"][0]["doc_id"]
        == "quantum-1"
    )

    # a new commit makes the empty index's service ready too
    shutil.copytree(live, empty, dirs_exist_ok=True)
    assert call(service, "GET", "/readyz")[:2] == (200, {"status": "ready", "generation": 2})
    assert search(service, query=query, k=1)["results"][0]["doc_id"] == "quantum-1"


@pytest.mark.model
def test_keep_alive_and_concurrent_clients(index_dir: Path, start: Any) -> None:
    service = start(index_dir, max_concurrent=8)
    host, port = service.address
    expected = {q: [r["doc_id"] for r in search(service, query=q, k=3)["results"]] for q in QUERIES}
    failures: list[str] = []

    def client() -> None:
        connection = http.client.HTTPConnection(host, port, timeout=60)  # one connection, many requests
        for query in QUERIES * 2:
            connection.request("POST", SEARCH_PATH, json.dumps({"query": query, "k": 3}), JSON)
            response = connection.getresponse()
            answer = json.loads(response.read())
            if response.status != 200 or [r["doc_id"] for r in answer["results"]] != expected[query]:
                failures.append(f"{response.status} {answer}")
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- the command ---------------------------------------------------------------------------------------


def test_serve_binds_loopback_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ServeConfig().host == "127.0.0.1"
    assert load_serve_config(None, environ={}).host == "127.0.0.1"
    service = SearchService(_searcher(tmp_path / "hot"), ServeConfig(port=0))
    with service:
        assert service.address[0] == "127.0.0.1" and service.url.startswith("http://127.0.0.1:")
    assert load_serve_config(None, environ={"TIERFLOW__SERVE__HOST": "0.0.0.0"}).host == "0.0.0.0"
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    assert "bind address (default 127.0.0.1)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.model
def test_tierflow_serve_answers_and_stops_cleanly_on_sigterm(index_dir: Path, tmp_path: Path) -> None:
    live = tmp_path / "hot"
    shutil.copytree(index_dir, live)
    shutil.rmtree(live / "access", ignore_errors=True)  # hits other tests' searches logged
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW__")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierflow.cli", "serve", "--index", str(live), "--port", "0"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("tierflow serve: listening on http://127.0.0.1:"), first
        url = first.split("listening on ", 1)[1].split(SEARCH_PATH)[0]
        assert proc.stdout.readline().strip() == "tierflow serve: ready"
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        connection.request("POST", SEARCH_PATH, json.dumps({"query": "bread with wild yeast", "k": 1}), JSON)
        answer = json.loads(connection.getresponse().read())
        connection.close()
        assert answer["results"][0]["doc_id"] == "cook-1"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() - started < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list((live / "access").glob("*.parquet"))  # the access log was flushed on the way out
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()


# --- schemathesis: the API against its own OpenAPI document ------------------------------------------


# Loaded from the document the service serves for this configuration (schemathesis' lazy fixture
# loader does not run under pytest 9); the calls go to a live service started with the same settings.
SCHEMA_CONFIG = ServeConfig(port=0, max_concurrent=64)
schema = schemathesis.openapi.from_dict(openapi(SCHEMA_CONFIG))


@pytest.fixture(scope="module")
def live_url(index_dir: Path) -> Iterator[str]:
    service = SearchService(_searcher(index_dir), SCHEMA_CONFIG).start()
    try:
        assert service.wait_ready(120), service.readiness()[1]
        assert call(service, "GET", OPENAPI_PATH)[1] == openapi(SCHEMA_CONFIG)  # the document it serves
        yield service.url
    finally:
        service.stop()


@pytest.mark.model
@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_the_api_conforms_to_its_openapi_document(case: Any, live_url: str) -> None:
    """Every check schemathesis has: no 5xx, documented status codes, content types, headers and
    response schemas, invalid requests refused and valid ones accepted."""
    case.call_and_validate(base_url=live_url)
