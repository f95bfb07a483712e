"""The load harness (tests/harness/load.py) in its short mode, and the webhook receiver's concurrency limit.

Release checks run it long: ``python -m tests.harness.load --target all --concurrency 16 --duration 60``.
Nothing here asserts a timing (the machine is shared and noisy): only that no event is lost or stored
twice, that every refusal is a 429/503 with ``Retry-After``, that nothing else fails, that the servers
exit cleanly on SIGTERM, and that overload leaves their memory within the stated bound.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.webhooks import EVENTS_PATH, WebhookConfig, WebhookReceiver, load_webhook_config, sign
from tests.harness.load import SECRET, build_demo_index, percentile, run_target
from tierflow.errors import ConfigError


def _signed(body: bytes, webhook_id: str) -> dict[str, str]:
    stamp = int(time.time())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(SECRET, webhook_id, stamp, body),
    }


def _post(receiver: WebhookReceiver, body: bytes, webhook_id: str) -> tuple[int, dict[str, Any], str | None]:
    connection = http.client.HTTPConnection(*receiver.address, timeout=30)
    try:
        connection.request("POST", EVENTS_PATH, body, _signed(body, webhook_id))
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response.getheader("Retry-After")
    finally:
        connection.close()


def test_webhook_max_concurrent_setting() -> None:
    assert WebhookConfig().max_concurrent == 64
    env = {"TIERFLOW__WEBHOOK__MAX_CONCURRENT": "3", "TIERFLOW__WEBHOOK__SECRETS": SECRET}
    config = load_webhook_config(None, environ=env)
    assert config.max_concurrent == 3 and "max_concurrent=3" in repr(config)
    with pytest.raises(ConfigError, match="max_concurrent"):
        WebhookConfig(max_concurrent=0)


def test_webhook_over_max_concurrent_is_503_with_retry_after(tmp_path: Path) -> None:
    letters: list[Any] = []
    config = WebhookConfig(port=0, secrets=(SECRET,), queue_dir=str(tmp_path / "q"), max_concurrent=1)
    with WebhookReceiver(config, dead_letters=letters.append) as receiver:
        held = json.dumps({"doc_id": "held", "version": 1, "text": "slow sender"}).encode()
        holder = socket.create_connection(receiver.address, timeout=30)  # takes the one slot, body half sent
        head = "".join(f"{k}: {v}\r\n" for k, v in _signed(held, "msg_held").items())
        holder.sendall(
            f"POST {EVENTS_PATH} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(held)}\r\n\r\n".encode()
            + held[:10]
        )
        body = json.dumps({"doc_id": "next", "version": 1, "text": "t"}).encode()
        # Probe only once the holder is admitted: a probe admitted first would take its slot (the
        # holder is refused instead) and every later probe would find the slot free.
        deadline = time.monotonic() + 30
        while receiver.admission.in_use < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert receiver.admission.in_use == 1
        n = 1
        status, answer, retry_after = _post(receiver, body, f"msg_next_{n}")
        assert (status, answer["error"], retry_after) == (503, "overloaded", "1")
        assert "1 deliveries are in progress" in answer["detail"]
        assert letters == []  # a refusal to wait is not a dead letter: the sender retries
        holder.sendall(held[10:])
        response = http.client.HTTPResponse(holder)
        response.begin()
        assert (response.status, json.loads(response.read())) == (202, {"accepted": "msg_held"})
        holder.close()
        assert _post(receiver, body, f"msg_next_{n}")[:2] == (202, {"accepted": f"msg_next_{n}"})  # same id
        assert receiver.counts["overloaded"] >= 1 and receiver.counts["accepted"] == 2


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 99) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([float(i) for i in range(1, 101)], 100) == 100.0


def _assert_sound(result: dict[str, Any]) -> None:
    """What a passing run means; no timing in it."""
    phases = (result["nominal"], result["overload"])
    assert result["errors"] == 0, [p["errors"] for p in phases]
    assert result["rejected_without_retry_after"] == 0
    assert result["unclean_exits"] == 0, [p["server"] for p in phases]
    assert result["rss_bounded"], (result["rss_bound_mib"], [p["server"] for p in phases])
    assert all(p["accepted"] > 0 for p in phases)
    assert all(p["sent"] == p["accepted"] + sum(p["rejected"].values()) for p in phases)
    assert result["overload_rejected"] > 0  # 10x the limit: the server refused work rather than queueing it
    assert result["ok"]


def test_webhook_receiver_under_load_loses_nothing(tmp_path: Path) -> None:
    result = run_target("webhook", concurrency=4, duration_s=3, workdir=tmp_path)
    _assert_sound(result)
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["stored_after_refusal"] == 0
    for phase in (result["nominal"], result["overload"]):
        assert phase["queue"]["stored"] == phase["accepted"] + phase["queue"]["stored_unanswered"]


@pytest.mark.model
def test_search_service_under_load(tmp_path: Path) -> None:
    index = build_demo_index(tmp_path / "demo" / "hot")
    result = run_target("search", concurrency=4, duration_s=3, workdir=tmp_path, index=index)
    _assert_sound(result)
