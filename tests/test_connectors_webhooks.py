"""Webhook connector: signature vectors, event parsing, and the receiver over real HTTP on loopback."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.local_queue import LocalQueue
from connectors.webhooks import (
    EVENTS_PATH,
    WebhookConfig,
    WebhookDeadLetter,
    WebhookReceiver,
    WebhookRejected,
    decode_record,
    decode_secret,
    load_webhook_config,
    parse_event,
    record_identity,
    sign,
    sign_github,
    verify,
    verify_github,
)
from tierflow.deadletter import DeadLetter
from tierflow.errors import ConfigError, Terminal
from tierflow.records import SourcePosition

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "webhooks"
SECRET = "whsec_" + base64.b64encode(b"tierflow-test-key-0123456789abcdef").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"a-rotated-in-key-fedcba9876543210").decode()


def load_fixture(name: str) -> dict[str, Any]:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"webhook fixtures not present at {path}")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.fixture(scope="module")
def standard() -> dict[str, Any]:
    return load_fixture("standard_webhooks_vectors.json")


@pytest.fixture(scope="module")
def github() -> dict[str, Any]:
    return load_fixture("github_vectors.json")


def rejected(call: Callable[..., object], *args: Any, **kwargs: Any) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        call(*args, **kwargs)
    return info.value


# --- Standard Webhooks vectors ---------------------------------------------------------------------


def test_vectors_sign_and_verify(standard: dict[str, Any]) -> None:
    assert standard["vectors"]
    for vector in standard["vectors"]:
        payload = vector["payload"].encode()
        assert (
            sign(vector["secret"], vector["msg_id"], vector["timestamp"], payload)
            == vector["expected_signature"]
        )
        now = float(vector["timestamp"])
        assert verify([vector["secret"]], vector["headers"], payload, now) == vector["msg_id"]
        upper = {k.upper(): v for k, v in vector["headers"].items()}  # header names in any case
        assert verify(vector["secret"], upper, payload, now + 299) == vector["msg_id"]


def test_negative_vectors(standard: dict[str, Any]) -> None:
    vectors = {v["name"]: v for v in standard["vectors"]}
    negatives = {v["name"]: v for v in standard["negative_vectors"]}
    for name in ("tampered_signature_last_char", "wrong_signature_rust"):
        negative = negatives[name]
        base = vectors[negative["based_on"]]
        headers = {**base["headers"], "webhook-signature": negative["signature"]}
        error = rejected(verify, [base["secret"]], headers, base["payload"].encode(), base["timestamp"])
        assert (error.status, error.reason) == (401, "bad_signature")

    base = vectors["sign_common_cross_library"]
    payload, now = base["payload"].encode(), base["timestamp"]
    noise = negatives["non_matching_signature_list_entries"]["signatures"]
    only_noise = {**base["headers"], "webhook-signature": " ".join(noise)}
    assert rejected(verify, [base["secret"]], only_noise, payload, now).reason == "bad_signature"
    mixed = " ".join([noise[0], noise[1], base["expected_signature"], noise[0]])
    assert (
        verify([base["secret"]], {**base["headers"], "webhook-signature": mixed}, payload, now)
        == base["msg_id"]
    )

    for truncated in ("v1,", base["expected_signature"][:8]):
        headers = {**base["headers"], "webhook-signature": truncated}
        error = rejected(verify, [base["secret"]], headers, payload, now)
        assert (error.status, error.reason) == (401, "bad_signature")


def test_secret_forms(standard: dict[str, Any]) -> None:
    base = standard["vectors"][0]
    cases = standard["other_cases"]
    raw = cases["secret_without_prefix_also_accepted"]["secret"]
    assert verify([raw], base["headers"], base["payload"].encode(), base["timestamp"]) == base["msg_id"]
    for unpadded in cases["unpadded_base64_secrets_python_lib"]["secrets"]:
        padded = unpadded + "=" * (-len(unpadded) % 4)
        assert decode_secret(unpadded) == base64.b64decode(padded)
        assert sign(unpadded, "m", 1, b"x") == sign("whsec_" + padded, "m", 1, b"x")
    for empty in cases["empty_secrets_rejected"]["secrets"]:
        with pytest.raises(ConfigError):
            verify([empty], base["headers"], base["payload"].encode(), base["timestamp"])
    with pytest.raises(ConfigError):
        verify([], base["headers"], base["payload"].encode(), base["timestamp"])
    with pytest.raises(ConfigError) as info:
        decode_secret("whsec_not*base64!")
    assert "not*base64" not in str(info.value)  # never echo a secret


def test_invalid_timestamp_and_spec_example(standard: dict[str, Any]) -> None:
    base = standard["vectors"][0]
    bad = standard["other_cases"]["invalid_timestamp_header"]["value"]
    headers = {**base["headers"], "webhook-timestamp": bad}
    error = rejected(verify, [base["secret"]], headers, base["payload"].encode(), base["timestamp"])
    assert (error.status, error.reason) == (400, "malformed_timestamp")
    for value in standard["other_cases"]["invalid_timestamps_for_signing"]["values"]:
        headers = {**base["headers"], "webhook-timestamp": value}
        assert rejected(verify, [SECRET], headers, b"", 0).reason == "malformed_timestamp"

    example = standard["other_cases"]["spec_example_headers"]
    content = example["signed_content_example"]
    body = content.split(".", 2)[2].encode()
    now = int(example["headers"]["webhook-timestamp"])
    # The secret is not published: the header parses (v1 and v1a entries) but cannot match ours.
    error = rejected(verify, [SECRET], example["headers"], body, now)
    assert (error.status, error.reason) == (401, "bad_signature")


def test_github_vectors(github: dict[str, Any]) -> None:
    for vector in github["vectors"]:
        payload = vector["payload"].encode()
        header = vector["expected_header"]["X-Hub-Signature-256"]
        assert sign_github(vector["secret"], payload) == header
        verify_github(vector["secret"], header, payload)
        verify_github(["old secret", vector["secret"]], header, payload)  # rotation
        assert rejected(verify_github, vector["secret"], header, payload + b"!").reason == "bad_signature"
        assert rejected(verify_github, vector["secret"], None, payload).reason == "missing_headers"
        plain = header.removeprefix("sha256=")
        assert rejected(verify_github, vector["secret"], plain, payload).status == 401


# --- verify(): rotation, tolerance, tampering, headers ---------------------------------------------


def headers_for(
    body: bytes, msg_id: str = "msg_1", timestamp: int | None = None, secret: str = SECRET
) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, msg_id, stamp, body),
        "Content-Type": "application/json",
    }


def test_rotation_any_active_secret_accepts() -> None:
    body = b'{"doc_id": "a", "version": 1}'
    old, new = headers_for(body, timestamp=1000), headers_for(body, timestamp=1000, secret=OTHER_SECRET)
    assert verify([SECRET, OTHER_SECRET], old, body, 1000) == "msg_1"
    assert verify([SECRET, OTHER_SECRET], new, body, 1000) == "msg_1"
    assert rejected(verify, [OTHER_SECRET], old, body, 1000).reason == "bad_signature"
    both = {**old, "webhook-signature": f"{old['webhook-signature']} {new['webhook-signature']}"}
    assert verify([OTHER_SECRET], both, body, 1000) == "msg_1"  # a sender signing with both during rotation


def test_tolerance_both_ways() -> None:
    body = b"{}"
    headers = headers_for(body, timestamp=10_000)
    for now in (10_000 - 300, 10_000 + 300, 10_000 - 299.5, 10_000 + 299.5):
        assert verify([SECRET], headers, body, now) == "msg_1"
    old = rejected(verify, [SECRET], headers, body, 10_301)
    new = rejected(verify, [SECRET], headers, body, 9_699)
    assert (old.status, old.reason, new.status, new.reason) == (
        401,
        "timestamp_too_old",
        401,
        "timestamp_too_new",
    )
    assert verify([SECRET], headers, body, 10_900, tolerance_s=900) == "msg_1"


def test_tampering_is_refused() -> None:
    body = b'{"doc_id": "a", "version": 1}'
    headers = headers_for(body, timestamp=5000)
    assert rejected(verify, [SECRET], headers, body + b" ", 5000).reason == "bad_signature"
    moved = {**headers, "webhook-id": "msg_2"}
    assert rejected(verify, [SECRET], moved, body, 5000).reason == "bad_signature"
    later = {**headers, "webhook-timestamp": "5001"}
    assert rejected(verify, [SECRET], later, body, 5000).reason == "bad_signature"
    other_version = {**headers, "webhook-signature": headers["webhook-signature"].replace("v1,", "v2,")}
    assert rejected(verify, [SECRET], other_version, body, 5000).reason == "bad_signature"


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_or_empty_headers(name: str) -> None:
    body = b"{}"
    headers = headers_for(body, timestamp=5000)
    for broken in ({k: v for k, v in headers.items() if k != name}, {**headers, name: ""}):
        error = rejected(verify, [SECRET], broken, body, 5000)
        assert (error.status, error.reason) == (401, "missing_headers") and name in error.detail


def test_malformed_id() -> None:
    body = b"{}"
    headers = {**headers_for(body, timestamp=5000), "webhook-id": "has space"}
    error = rejected(verify, [SECRET], headers, body, 5000)
    assert (error.status, error.reason) == (400, "malformed_id")
    assert isinstance(error, Terminal)


# --- parse_event -------------------------------------------------------------------------------------


def test_parse_event() -> None:
    body = json.dumps(
        {
            "doc_id": "doc-1",
            "op": "upsert",
            "text": "Body.",
            "title": "Title",
            "metadata": {"lang": "en"},
            "version": 7,
            "event_time": 1700000000.5,
            "team": "search",
        }
    ).encode()
    event = parse_event(body, "msg_9", receiver="crm")
    assert (event.doc_id, event.op, event.text, event.title, event.version) == (
        "doc-1",
        "upsert",
        "Body.",
        "Title",
        7,
    )
    assert event.metadata == {"lang": "en", "team": "search"}
    assert event.event_time == 1700000000.5
    assert event.source == SourcePosition("webhook", "crm", "msg_9")

    delete = parse_event(
        b'{"doc_id": 42, "op": "delete", "text": "ignored", "version": 8}', "m", timestamp=99
    )
    assert (delete.doc_id, delete.op, delete.text, delete.event_time) == ("42", "delete", "", 99.0)
    assert parse_event(b'{"doc_id": "x", "version": 0}', "m").op == "upsert"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"doc_id": "\xff", "version": 1}', "not_utf8"),
        (b'{"doc_id": "\\ud800", "version": 1}', "not_utf8"),
        (b'{"doc_id": "a", ', "malformed_json"),
        (b"", "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b'{"version": 1}', "missing_id"),
        (b'{"doc_id": null, "version": 1}', "missing_id"),
        (b'{"doc_id": "  ", "version": 1}', "missing_id"),
        (b'{"doc_id": true, "version": 1}', "wrong_type"),
        (b'{"doc_id": ["a"], "version": 1}', "wrong_type"),
        (b'{"doc_id": "a"}', "wrong_type"),
        (b'{"doc_id": "a", "version": "7"}', "wrong_type"),
        (b'{"doc_id": "a", "version": 1.5}', "wrong_type"),
        (b'{"doc_id": "a", "version": 1, "text": 5}', "wrong_type"),
        (b'{"doc_id": "a", "version": 1, "title": {}}', "wrong_type"),
        (b'{"doc_id": "a", "version": 1, "metadata": []}', "wrong_type"),
        (b'{"doc_id": "a", "version": 1, "event_time": "yesterday"}', "wrong_type"),
        (b'{"doc_id": "a", "version": 1, "event_time": NaN}', "malformed_json"),
        (b'{"doc_id": "a", "version": 1, "metadata": {"x": NaN}}', "malformed_json"),
        (b'{"doc_id": "a", "version": 1, "metadata": {"x": Infinity}}', "malformed_json"),
        (b'{"doc_id": "a", "version": 1, "metadata": {"x": -Infinity}}', "malformed_json"),
        (b'{"doc_id": "a", "version": 1, "metadata": {"x": 1e999}}', "malformed_json"),
        (b'{"doc_id": "a", "version": 1, "metadata": {"x": 1, "x": 2}}', "malformed_json"),
        (b'{"doc_id": "a", "version": 1, "op": "insert"}', "bad_op"),
    ],
)
def test_parse_event_rejections(body: bytes, reason: str) -> None:
    error = rejected(parse_event, body, "msg_1")
    assert (error.status, error.reason, error.webhook_id) == (400, reason, "msg_1")


# --- configuration -----------------------------------------------------------------------------------


def test_config_hides_secrets_and_loads_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./tierflow.toml
    config = WebhookConfig(secrets=[SECRET, OTHER_SECRET])  # type: ignore[arg-type]
    assert config.secrets == (SECRET, OTHER_SECRET)
    for text in (repr(config), str(config)):
        assert SECRET not in text and SECRET[6:] not in text and "2 hidden" in text
    env = {
        "TIERFLOW__WEBHOOK__SECRETS": f"{SECRET}, {OTHER_SECRET}",
        "TIERFLOW__WEBHOOK__PORT": "0",
        "TIERFLOW__WEBHOOK__TOLERANCE_S": "60",
        "TIERFLOW__WEBHOOK__QUEUE_DIR": str(tmp_path),
    }
    loaded = load_webhook_config(None, environ=env)
    assert (loaded.secrets, loaded.port, loaded.tolerance_s) == ((SECRET, OTHER_SECRET), 0, 60.0)
    toml = tmp_path / "tierflow.toml"
    toml.write_text(f'[webhook]\nsecrets = ["{SECRET}"]\nmax_body_bytes = 2048\n')
    from_file = load_webhook_config(toml, overrides={"port": 9000}, environ={})
    assert (from_file.secrets, from_file.max_body_bytes, from_file.port) == ((SECRET,), 2048, 9000)
    with pytest.raises(ConfigError, match="unknown"):
        load_webhook_config(None, overrides={"secret": SECRET}, environ={})
    with pytest.raises(ConfigError, match=r"secrets\[1\]") as info:
        WebhookConfig(secrets=(SECRET, "whsec_@@@@"))
    assert "@@@@" not in str(info.value)
    with pytest.raises(ConfigError, match="at least one secret"):
        WebhookReceiver(WebhookConfig(queue_dir=str(tmp_path)))


# --- the receiver over HTTP ---------------------------------------------------------------------------


def event_body(doc_id: str = "doc-1", version: int = 1, **fields: Any) -> bytes:
    return json.dumps({"doc_id": doc_id, "version": version, "text": f"text of {doc_id}", **fields}).encode()


def request(
    receiver: WebhookReceiver,
    body: bytes | Iterable[bytes] | None,
    headers: dict[str, str],
    method: str = "POST",
    path: str = EVENTS_PATH,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, Any]]:
    host, port = receiver.address
    connection = conn or http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        payload = json.loads(response.read())
        return response.status, payload
    finally:
        if conn is None:
            connection.close()


class FlakySink:
    """A LocalQueue whose appends can be made to fail."""

    def __init__(self, queue: LocalQueue) -> None:
        self.queue = queue
        self.failing = False

    def append(self, record: bytes) -> int:
        if self.failing:
            raise OSError("disk on fire")
        return self.queue.append(record)

    def read(self, from_offset: int, max_records: int = 100, wait_s: float = 0.0) -> list[tuple[int, bytes]]:
        return self.queue.read(from_offset, max_records, wait_s)

    @property
    def start_offset(self) -> int:
        return self.queue.start_offset


Make = Callable[..., tuple[WebhookReceiver, list[DeadLetter]]]


@pytest.fixture
def make_receiver(tmp_path: Path) -> Iterator[Make]:
    started: list[WebhookReceiver] = []

    def make(sink: Any = None, **settings: Any) -> tuple[WebhookReceiver, list[DeadLetter]]:
        letters: list[DeadLetter] = []
        values = {"port": 0, "secrets": (SECRET,), "queue_dir": str(tmp_path / "queue"), **settings}
        receiver = WebhookReceiver(WebhookConfig(**values), sink, letters.append).start()
        started.append(receiver)
        return receiver, letters

    yield make
    for receiver in started:
        receiver.stop()


def queued(receiver: WebhookReceiver) -> list[bytes]:
    return [record for _, record in receiver.sink.read(0, 100_000)]


def assert_dead_letter(letter: DeadLetter, reason: str, status: int, body: bytes) -> None:
    assert isinstance(letter, WebhookDeadLetter)
    assert (letter.reason, letter.status, letter.raw) == (reason, status, body)
    assert letter.source.system == "webhook"
    assert "webhook-signature" not in letter.headers
    text = letter.to_json()
    assert SECRET not in text and SECRET[6:] not in text
    assert json.loads(text)["headers"] == letter.headers


def test_accepts_and_queues_durably(make_receiver: Make) -> None:
    receiver, letters = make_receiver(name="crm")
    body = event_body("doc-1", 3, title="T")
    status, payload = request(receiver, body, headers_for(body, "msg_ok"))
    assert (status, payload) == (202, {"accepted": "msg_ok"})
    [record] = queued(receiver)
    assert record_identity(record)[0] == "msg_ok"
    event = decode_record(record)
    assert (event.doc_id, event.version, event.title) == ("doc-1", 3, "T")
    assert event.source == SourcePosition("webhook", "crm", "msg_ok")
    assert letters == [] and receiver.counts["accepted"] == 1
    host, port = receiver.address
    health = urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5)
    assert (health.status, json.loads(health.read())) == (200, {"status": "ok"})


def test_deliveries_are_counted_by_status_for_prometheus(make_receiver: Make) -> None:
    from tierflow.metrics import REGISTRY

    def count(status: str) -> float:
        return REGISTRY.get_sample_value("tierflow_webhook_requests_total", {"status": status}) or 0.0

    receiver, _ = make_receiver()
    before = {status: count(status) for status in ("202", "401")}
    body = event_body("doc-m")
    assert request(receiver, body, headers_for(body, "msg_counted"))[0] == 202
    assert request(receiver, body, headers_for(body, "msg_forged_m", secret=OTHER_SECRET))[0] == 401
    host, port = receiver.address
    urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5).read()  # not a delivery: not counted
    assert count("202") - before["202"] == 1 and count("401") - before["401"] == 1


def test_bad_signature_is_401_with_dead_letter(make_receiver: Make) -> None:
    receiver, letters = make_receiver()
    body = event_body()
    headers = headers_for(body, "msg_forged", secret=OTHER_SECRET)
    status, payload = request(receiver, body, headers)
    assert status == 401 and payload["error"] == "bad_signature" and payload["detail"]
    [letter] = letters
    assert_dead_letter(letter, "bad_signature", 401, body)
    assert isinstance(letter, WebhookDeadLetter)
    assert letter.headers["webhook-id"] == "msg_forged" and letter.stage == "verify"
    stale = headers_for(body, "msg_stale", timestamp=int(time.time()) - 3600)
    assert request(receiver, body, stale)[1]["error"] == "timestamp_too_old"
    missing = {k: v for k, v in headers_for(body).items() if k != "webhook-signature"}
    assert request(receiver, body, missing) == (401, {"error": "missing_headers", "detail": missing_detail()})
    assert queued(receiver) == [] and len(letters) == 3


def missing_detail() -> str:
    return "missing or empty header(s): webhook-signature"


def test_malformed_body_is_400_with_dead_letter(make_receiver: Make) -> None:
    receiver, letters = make_receiver()
    for body, reason in ((b'{"doc_id": "a", ', "malformed_json"), (b'{"doc_id": "a"}', "wrong_type")):
        status, payload = request(receiver, body, headers_for(body, f"msg_{reason}"))
        assert (status, payload["error"]) == (400, reason)
    assert [letter.reason for letter in letters] == ["malformed_json", "wrong_type"]
    assert_dead_letter(letters[0], "malformed_json", 400, b'{"doc_id": "a", ')
    assert letters[1].doc_id == "a" and letters[1].stage == "parse"
    assert queued(receiver) == []
    # a malformed delivery is not remembered as accepted: fixed and re-signed, it goes through
    fixed = event_body("a")
    assert request(receiver, fixed, headers_for(fixed, "msg_wrong_type"))[0] == 202


def test_replay_is_409_even_after_a_restart(make_receiver: Make) -> None:
    receiver, letters = make_receiver()
    body = event_body()
    headers = headers_for(body, "msg_once")
    assert request(receiver, body, headers)[0] == 202
    status, payload = request(receiver, body, headers)
    assert (status, payload["error"], payload["id"]) == (409, "replayed", "msg_once")
    assert_dead_letter(letters[0], "replayed", 409, body)
    receiver.stop()

    again, letters_again = make_receiver()  # same queue directory
    stamp = int(time.time()) + 1
    resigned = headers_for(body, "msg_once", timestamp=stamp)  # a fresh signature does not help
    status, payload = request(again, body, resigned)
    assert (status, payload["error"], payload["id"]) == (409, "replayed", "msg_once")
    assert [letter.reason for letter in letters_again] == ["replayed"]
    assert len(queued(again)) == 1
    other = event_body("doc-2")
    assert request(again, other, headers_for(other, "msg_new"))[0] == 202


def test_too_large_is_413_before_reading(make_receiver: Make) -> None:
    receiver, letters = make_receiver(max_body_bytes=1024)
    host, port = receiver.address
    for expect in (False, True):
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.putrequest("POST", EVENTS_PATH)
        for name, value in headers_for(b"x", "msg_big").items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(50 << 20))  # announced, never sent
        if expect:
            connection.putheader("Expect", "100-continue")
        connection.endheaders()
        response = connection.getresponse()
        payload = json.loads(response.read())
        connection.close()
        assert (response.status, payload["error"]) == (413, "too_large")
        assert str(50 << 20) in payload["detail"]
    assert [letter.reason for letter in letters] == ["too_large", "too_large"]
    assert_dead_letter(letters[0], "too_large", 413, b"")
    assert isinstance(letters[0], WebhookDeadLetter)
    assert letters[0].headers["content-length"] == str(50 << 20)
    assert queued(receiver) == []


def test_chunked_bodies(make_receiver: Make) -> None:
    receiver, letters = make_receiver(max_body_bytes=1024)
    host, port = receiver.address
    body = event_body("doc-chunked")
    # urllib sends an iterable body with Transfer-Encoding: chunked and no Content-Length
    req = urllib.request.Request(
        f"http://{host}:{port}{EVENTS_PATH}",
        data=iter([body[:10], body[10:]]),
        headers=headers_for(body, "msg_chunked"),
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        assert (response.status, json.loads(response.read())) == (202, {"accepted": "msg_chunked"})
    assert decode_record(queued(receiver)[0]).doc_id == "doc-chunked"

    big = b"x" * 3000
    status, payload = request(
        receiver, iter([big[:700], big[700:1400], big[1400:]]), headers_for(big, "msg_huge")
    )
    assert (status, payload["error"]) == (413, "too_large")
    assert_dead_letter(letters[0], "too_large", 413, big[:700])  # what was read before the limit

    with pytest.raises(urllib.error.HTTPError) as info:  # no body at all: nothing to sign-check but headers
        urllib.request.urlopen(
            urllib.request.Request(
                f"http://{host}:{port}{EVENTS_PATH}", headers=headers_for(b"", "m0"), method="POST"
            ),
            timeout=10,
        )
    assert info.value.code == 400 and json.loads(info.value.read())["error"] == "malformed_json"
    assert len(queued(receiver)) == 1


def test_sink_failure_is_503_and_nothing_is_acknowledged(make_receiver: Make, tmp_path: Path) -> None:
    with LocalQueue(tmp_path / "flaky") as queue:
        sink = FlakySink(queue)
        receiver, letters = make_receiver(sink=sink)
        body = event_body()
        headers = headers_for(body, "msg_retry")
        sink.failing = True
        status, payload = request(receiver, body, headers)
        assert (status, payload["error"]) == (503, "sink_unavailable")
        assert queue.read(0) == [] and letters == []
        sink.failing = False
        assert request(receiver, body, headers) == (
            202,
            {"accepted": "msg_retry"},
        )  # the retry is not a replay
        assert len(queue.read(0)) == 1
        receiver.stop()


def test_routes(make_receiver: Make) -> None:
    receiver, letters = make_receiver()
    assert request(receiver, None, {}, method="GET", path="/nope")[0] == 404
    assert request(receiver, b"{}", {}, path="/v2/events")[0] == 404
    assert request(receiver, None, {}, method="GET")[0] == 405
    assert letters == []


def test_concurrent_deliveries_are_each_accepted_once(make_receiver: Make) -> None:
    receiver, letters = make_receiver()
    results: dict[str, list[int]] = {}
    lock = threading.Lock()
    host, port = receiver.address

    def client(t: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=30)  # keep-alive
        for i in range(25):
            body = event_body(f"doc-{t}-{i}", i)
            msg_id = f"msg_{t}_{i}"
            status, _ = request(receiver, body, headers_for(body, msg_id), conn=connection)
            with lock:
                results.setdefault(msg_id, []).append(status)
        connection.close()

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 200 and all(statuses == [202] for statuses in results.values())
    ids = [record_identity(record)[0] for record in queued(receiver)]
    assert sorted(ids) == sorted(results) and letters == []

    # the same delivery raced from 8 clients: exactly one wins
    body = event_body("raced")
    headers = headers_for(body, "msg_raced")
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def racer() -> None:
        barrier.wait()
        status = request(receiver, body, headers)[0]
        with lock:
            statuses.append(status)

    racers = [threading.Thread(target=racer) for _ in range(8)]
    for thread in racers:
        thread.start()
    for thread in racers:
        thread.join()
    assert sorted(statuses) == [202] + [409] * 7
    assert [record_identity(r)[0] for r in queued(receiver)].count("msg_raced") == 1


def test_default_dead_letter_file_and_owned_queue(tmp_path: Path) -> None:
    config = WebhookConfig(port=0, secrets=(SECRET,), queue_dir=str(tmp_path / "q"))
    with WebhookReceiver(config) as receiver:
        body = event_body()
        assert request(receiver, body, headers_for(body, "msg_a"))[0] == 202
        assert request(receiver, body, headers_for(body, "msg_b", secret=OTHER_SECRET))[0] == 401
    [line] = (tmp_path / "q" / "dead-letters.jsonl").read_text().splitlines()
    letter = json.loads(line)
    assert (letter["reason"], letter["status"], letter["raw"]) == ("bad_signature", 401, body.decode())
    assert SECRET[6:] not in line and OTHER_SECRET[6:] not in line
    with LocalQueue(tmp_path / "q") as queue:  # the receiver closed the queue it opened
        [(offset, record)] = queue.read(0)
        assert decode_record(record).source.position == "msg_a"


def test_serve_runs_until_stopped(tmp_path: Path) -> None:
    import socket

    from connectors.webhooks import serve

    with socket.socket() as probe:  # a free port (serve binds the configured one)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = WebhookConfig(port=port, secrets=(SECRET,), queue_dir=str(tmp_path / "q"))
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(config,), kwargs={"stop": stop})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "serve() did not come up"
                time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    LocalQueue(tmp_path / "q").close()  # serve() released the queue


def test_rejection_pickles() -> None:
    import pickle

    error = WebhookRejected(409, "replayed", "already accepted", "msg_1", "doc")
    again = pickle.loads(pickle.dumps(error))
    assert (again.status, again.reason, again.detail, again.webhook_id, again.doc_id) == (
        409,
        "replayed",
        "already accepted",
        "msg_1",
        "doc",
    )
