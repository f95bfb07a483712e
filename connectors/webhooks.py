"""Webhook connector: verify signed HTTP deliveries and queue them durably as document events.

Senders sign deliveries as `Standard Webhooks <https://www.standardwebhooks.com/>`_ specifies: headers
``webhook-id``, ``webhook-timestamp`` (unix seconds) and ``webhook-signature`` (space-separated
``v1,<base64>`` entries), where each signature is HMAC-SHA256 over ``{id}.{timestamp}.{body}`` keyed by
the base64 part of a ``whsec_...`` secret. Several secrets may be active at once (rotation): any one
that matches accepts. GitHub's ``X-Hub-Signature-256`` scheme is checked by :func:`verify_github`.

:class:`WebhookReceiver` serves ``POST /v1/events`` (and ``GET /healthz``) on the standard library's
threading HTTP server. Each delivery goes through, in order:

===========  ======  ===============================================================================
check        status  reason codes
===========  ======  ===============================================================================
rate         429     ``rate_limited`` (``Retry-After``; the body is not read, not dead-lettered)
load         503     ``overloaded``: ``max_concurrent`` deliveries are in progress (``Retry-After``;
                     the body is not read, not dead-lettered)
framing      400     ``bad_framing`` (bad Content-Length / Transfer-Encoding, both given),
                     ``incomplete_body`` (the client stopped sending), ``duplicate_header``
size         413     ``too_large``: from Content-Length before reading, or while reading a
                     chunked body
headers      401     ``missing_headers``
             400     ``malformed_id``, ``malformed_timestamp``
freshness    401     ``timestamp_too_old``, ``timestamp_too_new`` (outside ``tolerance_s``)
signature    401     ``bad_signature``
replay       409     ``replayed``: this webhook id was already accepted (the answer carries ``id``)
body         400     ``not_utf8``, ``malformed_json``, ``not_an_object``, ``missing_id``,
                     ``wrong_type``, ``bad_op``
queue        503     ``sink_unavailable`` (``Retry-After: 1``; nothing acknowledged, not dead-lettered)
accepted     202     ``{"accepted": "<webhook id>"}``, only after the record is fsynced in the queue
===========  ======  ===============================================================================

Every rejection (4xx but 429) answers ``{"error": reason, "detail": "..."}`` and becomes a
:class:`WebhookDeadLetter` (reason, detail, the request headers minus signatures and credentials, and
the body; at most 64 KiB of it for deliveries that were not authenticated). Secret values are never
logged, stored or shown in a repr.

Rate limit: each client address has a token bucket of ``rate_burst`` deliveries refilled at
``rate_limit_per_s`` a second (``rate_limit_per_s = 0`` switches it off). It is checked before anything
else, so floods of unsigned requests cost neither HMACs nor dead-letter writes. Behind a reverse proxy
every sender shares the proxy's address: raise the limit there, or limit at the proxy.

Load: at most ``max_concurrent`` deliveries are read, verified and stored at once; one more is answered
503 straight away instead of waiting, so bodies in memory stay under ``max_concurrent × max_body_bytes``.

Replays: accepted ids live in the queue's own records (the envelope written by :func:`encode_record`),
so the set survives a restart; it is rebuilt on start from the records whose timestamp is still inside
the tolerance window (older ones are refused as stale anyway).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

from connectors.local_queue import LocalQueue
from tierflow import jsonparse, metrics
from tierflow.deadletter import DeadLetter
from tierflow.errors import ConfigError, Terminal, TierflowError
from tierflow.http import (
    Admission,
    BackgroundServer,
    JsonRequestHandler,
    JsonServer,
    content_length,
    stop_on_signals,
)
from tierflow.jsonparse import is_finite_number, json_type
from tierflow.records import OPS, DocumentEvent, Op, SourcePosition

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_RATE_BURST",
    "DEFAULT_RATE_LIMIT_PER_S",
    "DEFAULT_TOLERANCE_S",
    "EVENTS_PATH",
    "HEALTH_PATH",
    "EventSink",
    "JsonlDeadLetters",
    "WebhookConfig",
    "WebhookDeadLetter",
    "WebhookReceiver",
    "WebhookRejected",
    "decode_record",
    "decode_secret",
    "encode_record",
    "load_webhook_config",
    "parse_event",
    "record_identity",
    "serve",
    "sign",
    "sign_github",
    "verify",
    "verify_github",
]

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE_S = 300.0
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_RATE_LIMIT_PER_S = 100.0
DEFAULT_RATE_BURST = 500
DEFAULT_MAX_CONCURRENT = 64
DEFAULT_NAME = "webhooks"
EVENTS_PATH = "/v1/events"
HEALTH_PATH = "/healthz"
SECRET_PREFIX = "whsec_"
RAW_KEEP_BYTES = 64 << 10
SIGNATURE_HEADERS = frozenset({"webhook-signature", "x-hub-signature", "x-hub-signature-256"})
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
ENV_PREFIX = "TIERFLOW__WEBHOOK__"

_ID = re.compile(r"[\x21-\x7e]{1,256}")
_MIN_VERSION, _MAX_VERSION = -(1 << 63), (1 << 63) - 1  # versions are stored as int64
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_MAX_CHUNK_LINE = 1024


class WebhookRejected(TierflowError, Terminal):
    """A delivery is refused: ``status`` is the HTTP answer, ``reason`` a short stable code.

    Args:
        status: 400, 401, 409 or 413.
        reason: See the module's table.
        detail: What was wrong, for the sender; never contains a secret.
        webhook_id: The delivery id, when it was read.
        doc_id: The document id, when it was read.
    """

    def __init__(
        self, status: int, reason: str, detail: str, webhook_id: str | None = None, doc_id: str | None = None
    ) -> None:
        super().__init__(status, reason, detail, webhook_id, doc_id)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.webhook_id = webhook_id
        self.doc_id = doc_id

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.detail}"


# --- signatures ------------------------------------------------------------------------------------


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64 after an optional ``whsec_`` prefix.

    Unpadded base64 is accepted, as the reference libraries do.

    Raises:
        ConfigError: The secret is empty or not base64 (the message never includes it).
    """
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    encoded = encoded.strip()
    if not encoded:
        raise ConfigError("a webhook secret is empty; expected 'whsec_' followed by a base64 key")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            "a webhook secret is not valid base64 after 'whsec_' (its value is not shown)"
        ) from None
    if not key:
        raise ConfigError("a webhook secret decodes to an empty key")
    return key


def _keys(secrets: str | bytes | Sequence[str | bytes]) -> list[bytes]:
    items: Sequence[str | bytes] = [secrets] if isinstance(secrets, str | bytes) else secrets
    keys = [item if isinstance(item, bytes) else decode_secret(item) for item in items]
    if not keys:
        raise ConfigError("no webhook secrets are configured; every delivery would be refused")
    return keys


def _signature(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature a sender puts in ``webhook-signature`` (secret: ``whsec_...``)."""
    key = secret if isinstance(secret, bytes) else decode_secret(secret)
    return "v1," + _signature(key, msg_id, timestamp, body).decode("ascii")


def verify(
    secrets: str | bytes | Sequence[str | bytes],
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> str:
    """Check a Standard Webhooks delivery; return its webhook id.

    Args:
        secrets: Active secrets (``whsec_...``, or decoded keys); any match accepts.
        headers: The request headers (names in any case).
        body: The raw request body, exactly as received.
        now: The current unix time.
        tolerance_s: How far the timestamp may be from ``now``, either way.

    Raises:
        WebhookRejected: 401 ``missing_headers``, ``timestamp_too_old``, ``timestamp_too_new`` or
            ``bad_signature``; 400 ``malformed_id`` or ``malformed_timestamp``.
        ConfigError: No secret, or a secret that is not base64.
    """
    keys = _keys(secrets)
    lower = {name.lower(): value for name, value in headers.items()}
    msg_id = lower.get("webhook-id") or ""
    stamp = lower.get("webhook-timestamp") or ""
    header = lower.get("webhook-signature") or ""
    missing = [name for name, value in (("webhook-id", msg_id), ("webhook-timestamp", stamp),
                                        ("webhook-signature", header)) if not value.strip()]  # fmt: skip
    if missing:
        raise WebhookRejected(401, "missing_headers", f"missing or empty header(s): {', '.join(missing)}")
    if not _ID.fullmatch(msg_id):
        raise WebhookRejected(400, "malformed_id", "webhook-id must be 1-256 printable ASCII characters")
    if not _TIMESTAMP.fullmatch(stamp.strip()):
        raise WebhookRejected(
            400, "malformed_timestamp", "webhook-timestamp must be integer unix seconds", msg_id
        )
    timestamp = int(stamp.strip())
    if now - timestamp > tolerance_s:
        raise WebhookRejected(
            401,
            "timestamp_too_old",
            f"webhook-timestamp is {now - timestamp:.0f} s old; the tolerance is {tolerance_s:.0f} s",
            msg_id,
        )
    if timestamp - now > tolerance_s:
        raise WebhookRejected(
            401,
            "timestamp_too_new",
            f"webhook-timestamp is {timestamp - now:.0f} s ahead; the tolerance is {tolerance_s:.0f} s",
            msg_id,
        )
    candidates = []
    for entry in header.split():
        version, _, value = entry.partition(",")
        if version == "v1" and value:
            candidates.append(value.encode("utf-8", "replace"))
    matched = False
    for key in keys:
        expected = _signature(key, msg_id, stamp.strip(), body)
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        detail = "no v1 signature matches" if candidates else "webhook-signature has no 'v1,<base64>' entry"
        raise WebhookRejected(401, "bad_signature", detail, msg_id)
    return msg_id


def sign_github(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends: ``sha256=`` + hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_github(secret: str | Sequence[str], header: str | None, body: bytes) -> None:
    """Check GitHub's ``X-Hub-Signature-256`` header against one or more secrets (plain strings).

    Raises:
        WebhookRejected: 401 ``missing_headers`` or ``bad_signature``.
        ConfigError: No secret given.
    """
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets or not all(secrets):
        raise ConfigError("no GitHub webhook secret is configured")
    if not header:
        raise WebhookRejected(401, "missing_headers", "missing header X-Hub-Signature-256")
    given = header.strip().encode("utf-8", "replace")
    matched = False
    for item in secrets:
        matched |= hmac.compare_digest(sign_github(item, body).encode("ascii"), given)
    if not matched:
        raise WebhookRejected(401, "bad_signature", "X-Hub-Signature-256 does not match the body")


# --- event bodies ----------------------------------------------------------------------------------

_EVENT_FIELDS = ("doc_id", "op", "text", "title", "metadata", "version", "event_time")


def parse_event(
    body: bytes, webhook_id: str, *, receiver: str = DEFAULT_NAME, timestamp: float | None = None
) -> DocumentEvent:
    """Decode a delivery body into a :class:`DocumentEvent`.

    The body is a JSON object: ``doc_id`` (string or integer, required), ``op`` (``upsert`` by default
    or ``delete``), ``text``, ``title``, ``metadata`` (object), ``version`` (64-bit integer, required: it
    orders the document's changes), ``event_time`` (epoch seconds; defaults to ``timestamp``). Other
    top-level fields are kept in ``metadata`` (``metadata``'s own keys win). Deletes carry no text. The
    JSON is strict (:func:`tierflow.jsonparse.loads`): ``NaN``, ``Infinity``, numbers that overflow a
    double and names repeated in an object are ``malformed_json`` anywhere in the body.

    Args:
        body: The raw body.
        webhook_id: The delivery id: the event's position ``("webhook", receiver, webhook_id)``.
        receiver: The receiver's name.
        timestamp: The delivery's ``webhook-timestamp``.

    Raises:
        WebhookRejected: 400 with reason ``not_utf8``, ``malformed_json``, ``not_an_object``,
            ``missing_id``, ``wrong_type`` or ``bad_op``.
    """

    def reject(reason: str, detail: str, doc_id: str | None = None) -> WebhookRejected:
        return WebhookRejected(400, reason, detail, webhook_id, doc_id)

    try:
        record = jsonparse.loads(body)
    except jsonparse.JsonRejected as err:
        raise reject(err.reason, err.detail) from None
    if not isinstance(record, dict):
        raise reject("not_an_object", f"the body is a JSON {json_type(record)}, expected an object")

    raw_id = record.get("doc_id")
    if raw_id is None:
        raise reject("missing_id", f"doc_id is {'absent' if 'doc_id' not in record else 'null'}")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise reject("wrong_type", f"doc_id is a JSON {json_type(raw_id)}; expected a string")
    doc_id = str(raw_id)
    if not doc_id.strip():
        raise reject("missing_id", "doc_id is empty")

    raw_op = record.get("op")
    if raw_op is not None and raw_op not in OPS:
        raise reject("bad_op", f"op is {raw_op!r}; expected 'upsert' or 'delete'", doc_id)
    op: Op = "delete" if raw_op == "delete" else "upsert"

    version = record.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        state = "absent" if "version" not in record else f"a JSON {json_type(version)}"
        raise reject("wrong_type", f"version is {state}; expected an integer (larger is newer)", doc_id)
    if not _MIN_VERSION <= version <= _MAX_VERSION:
        shown = str(version) if len(str(version)) <= 24 else f"{str(version)[:20]}..."
        raise reject("wrong_type", f"version {shown} is out of range; expected a 64-bit integer", doc_id)

    strings = {}
    for name in ("text", "title"):
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise reject("wrong_type", f"{name} is a JSON {json_type(value)}; expected a string", doc_id)
        strings[name] = value or ""

    metadata = record.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise reject("wrong_type", f"metadata is a JSON {json_type(metadata)}; expected an object", doc_id)

    event_time = record.get("event_time")
    if event_time is None:
        event_time = timestamp
    elif isinstance(event_time, bool) or not isinstance(event_time, int | float):
        raise reject(
            "wrong_type", f"event_time is a JSON {json_type(event_time)}; expected epoch seconds", doc_id
        )
    elif not is_finite_number(event_time):
        raise reject("wrong_type", f"event_time is {event_time}; expected a finite number", doc_id)

    extras = {k: v for k, v in record.items() if k not in _EVENT_FIELDS}
    return DocumentEvent(
        doc_id=doc_id,
        op=op,
        text=strings["text"] if op == "upsert" else "",
        title=strings["title"] if op == "upsert" else "",
        metadata={**extras, **(metadata or {})},
        source=SourcePosition("webhook", receiver, webhook_id),
        version=version,
        event_time=None if event_time is None else float(event_time),
    )


# --- queue records ---------------------------------------------------------------------------------


def encode_record(webhook_id: str, timestamp: int, body: bytes, receiver: str, received_at: float) -> bytes:
    """The queue record of an accepted delivery: its id, timestamp and exact body (valid UTF-8)."""
    envelope = {
        "webhook_id": webhook_id,
        "timestamp": timestamp,
        "received_at": received_at,
        "receiver": receiver,
        "body": body.decode("utf-8"),
    }
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _envelope(record: bytes) -> dict[str, Any]:
    envelope = jsonparse.loads(record)
    if not isinstance(envelope, dict) or not isinstance(envelope.get("webhook_id"), str):
        raise ValueError("not a webhook queue record")
    return envelope


def record_identity(record: bytes) -> tuple[str, int]:
    """``(webhook id, webhook timestamp)`` of a queue record written by :func:`encode_record`."""
    envelope = _envelope(record)
    return envelope["webhook_id"], int(envelope["timestamp"])


def decode_record(record: bytes) -> DocumentEvent:
    """The document event of a queue record written by :func:`encode_record` (what the pipeline reads).

    Raises:
        ValueError: The record is not a webhook queue record.
        WebhookRejected: The stored body no longer parses (it did when it was accepted).
    """
    envelope = _envelope(record)
    return parse_event(
        envelope["body"].encode("utf-8"),
        envelope["webhook_id"],
        receiver=envelope.get("receiver", DEFAULT_NAME),
        timestamp=envelope.get("timestamp"),
    )


# --- dead letters ----------------------------------------------------------------------------------


@dataclass
class WebhookDeadLetter(DeadLetter):
    """A :class:`DeadLetter` of a refused delivery, with its request headers (signatures removed)."""

    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        return {**super().to_json_dict(), "headers": self.headers, "status": self.status}


class JsonlDeadLetters:
    """A dead-letter sink appending one JSON line per rejection to a file (thread-safe)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def __call__(self, letter: DeadLetter) -> None:
        line = (letter.to_json() + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as handle:
                handle.write(line)

    def __repr__(self) -> str:
        return f"JsonlDeadLetters({str(self.path)!r})"


def _safe_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        if key in SIGNATURE_HEADERS or key in CREDENTIAL_HEADERS:
            continue
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


# --- configuration ---------------------------------------------------------------------------------


def _split_secrets(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part for part in re.split(r"[\s,]+", value) if part)
    if isinstance(value, list | tuple):
        if not all(isinstance(item, str) for item in value):
            raise ConfigError("webhook.secrets must be strings ('whsec_...')")
        return tuple(value)
    raise ConfigError(f"webhook.secrets must be a list of strings, got a {type(value).__name__}")


@dataclass(frozen=True, repr=False)
class WebhookConfig:
    """The webhook receiver's settings.

    Args:
        host: Address to bind; loopback by default (put a TLS-terminating proxy in front to expose it).
        port: TCP port; 0 picks a free one.
        secrets: Active ``whsec_...`` secrets (several during a rotation); never shown in a repr.
        tolerance_s: How far ``webhook-timestamp`` may be from the receiver's clock, either way.
        max_body_bytes: Largest body accepted (413 above it).
        queue_dir: Directory of the durable local queue the receiver appends to.
        name: The receiver's name, in every event's source position.
        read_timeout_s: Socket timeout while reading a request.
        rate_limit_per_s: Deliveries a second each client address may sustain (429 above it); 0 = no limit.
        rate_burst: Deliveries a client address may send at once before the rate applies.
        max_concurrent: Deliveries handled at once (read, verified, stored); more are answered 503.
    """

    host: str = "127.0.0.1"
    port: int = 8787
    secrets: tuple[str, ...] = ()
    tolerance_s: float = DEFAULT_TOLERANCE_S
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    queue_dir: str = "tierflow-data/webhooks"
    name: str = DEFAULT_NAME
    read_timeout_s: float = 30.0
    rate_limit_per_s: float = DEFAULT_RATE_LIMIT_PER_S
    rate_burst: int = DEFAULT_RATE_BURST
    max_concurrent: int = DEFAULT_MAX_CONCURRENT

    def __post_init__(self) -> None:
        object.__setattr__(self, "secrets", _split_secrets(self.secrets))
        for i, secret in enumerate(self.secrets):
            try:
                decode_secret(secret)
            except ConfigError as err:
                raise ConfigError(f"webhook.secrets[{i}]: {err}") from None
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"webhook.port must be in [0, 65535], got {self.port}")
        if not self.tolerance_s > 0:
            raise ConfigError(f"webhook.tolerance_s must be > 0, got {self.tolerance_s}")
        if self.max_body_bytes < 1:
            raise ConfigError(f"webhook.max_body_bytes must be >= 1, got {self.max_body_bytes}")
        if not self.read_timeout_s > 0:
            raise ConfigError(f"webhook.read_timeout_s must be > 0, got {self.read_timeout_s}")
        if not self.name:
            raise ConfigError("webhook.name must not be empty")
        if not (math.isfinite(self.rate_limit_per_s) and self.rate_limit_per_s >= 0):
            raise ConfigError(
                f"webhook.rate_limit_per_s must be >= 0 (0: no limit), got {self.rate_limit_per_s}"
            )
        if self.rate_burst < 1:
            raise ConfigError(f"webhook.rate_burst must be >= 1, got {self.rate_burst}")
        if self.max_concurrent < 1:
            raise ConfigError(f"webhook.max_concurrent must be >= 1, got {self.max_concurrent}")

    def __repr__(self) -> str:
        return (
            f"WebhookConfig(host={self.host!r}, port={self.port}, secrets=<{len(self.secrets)} hidden>, "
            f"tolerance_s={self.tolerance_s}, max_body_bytes={self.max_body_bytes}, "
            f"queue_dir={self.queue_dir!r}, name={self.name!r}, read_timeout_s={self.read_timeout_s}, "
            f"rate_limit_per_s={self.rate_limit_per_s}, rate_burst={self.rate_burst}, "
            f"max_concurrent={self.max_concurrent})"
        )

    __str__ = __repr__


def load_webhook_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> WebhookConfig:
    """Resolve the receiver's settings: overrides > ``TIERFLOW__WEBHOOK__*`` > ``[webhook]`` in TOML > defaults.

    ``TIERFLOW__WEBHOOK__SECRETS`` holds one or more secrets separated by spaces or commas.

    Raises:
        ConfigError: A missing or invalid file, an unknown key, or a bad value.
    """
    from tierflow.config import load_settings

    config: WebhookConfig = load_settings(
        WebhookConfig, "webhook", path, dict(overrides or {}), None if environ is None else dict(environ)
    )
    return config


# --- the receiver ----------------------------------------------------------------------------------


class EventSink(Protocol):
    """Where accepted deliveries go: :class:`~connectors.local_queue.LocalQueue` or anything like it.

    ``append`` must return only once the record is durable. ``read``/``start_offset`` let the receiver
    rebuild its set of accepted ids on start.
    """

    def append(self, record: bytes) -> int: ...

    def read(
        self, from_offset: int, max_records: int = 100, wait_s: float = 0.0
    ) -> list[tuple[int, bytes]]: ...

    @property
    def start_offset(self) -> int: ...


DeadLetterSink = Callable[[DeadLetter], None]


class _RateLimiter:
    """Token buckets per client address: ``burst`` tokens, refilled at ``rate`` a second; a delivery takes one."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, monotonic time)
        self._last_prune = 0.0

    def take(self, address: str, now: float) -> float:
        """0.0 when ``address`` may deliver now (a token is taken), else the seconds until it may."""
        with self._lock:
            if now - self._last_prune > 10.0:  # forget buckets that are full again: they hold no state
                refill_s = self.burst / self.rate
                self._buckets = {a: b for a, b in self._buckets.items() if now - b[1] < refill_s}
                self._last_prune = now
            tokens, at = self._buckets.get(address, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[address] = (tokens - 1.0, now)
                return 0.0
            self._buckets[address] = (tokens, now)
            return (1.0 - tokens) / self.rate


class _Server(JsonServer):
    receiver: WebhookReceiver


class WebhookReceiver(BackgroundServer):
    """An HTTP server taking signed deliveries on ``POST /v1/events`` into a durable sink.

    Args:
        config: Bind address, secrets and limits.
        sink: Where accepted records are appended; by default a :class:`LocalQueue` in
            ``config.queue_dir``, opened on :meth:`start` and closed on :meth:`stop`.
        dead_letters: Called with a :class:`WebhookDeadLetter` for every rejection; by default
            ``<queue_dir>/dead-letters.jsonl``.

    Example:
        >>> with WebhookReceiver(WebhookConfig(port=0, secrets=("whsec_...",), queue_dir="q")) as r:  # doctest: +SKIP
        ...     print(r.url)
    """

    def __init__(
        self, config: WebhookConfig, sink: EventSink | None = None, dead_letters: DeadLetterSink | None = None
    ) -> None:
        if not config.secrets:
            raise ConfigError(
                "the webhook receiver needs at least one secret (webhook.secrets or TIERFLOW__WEBHOOK__SECRETS)"
            )
        super().__init__()
        self.config = config
        self._keys = _keys(config.secrets)
        self._limiter = (
            _RateLimiter(config.rate_limit_per_s, config.rate_burst) if config.rate_limit_per_s > 0 else None
        )
        self.admission = Admission(config.max_concurrent)
        self._sink = sink
        self._owns_sink = sink is None
        self.dead_letters = dead_letters or JsonlDeadLetters(Path(config.queue_dir) / "dead-letters.jsonl")
        self.counts: Counter[str] = Counter()
        self._ids_lock = threading.Lock()
        self._accepted: dict[str, int] = {}  # webhook id -> its timestamp
        self._pending: dict[str, threading.Event] = {}
        self._last_prune = 0.0

    # lifecycle

    def start(self) -> Self:
        """Open the sink, rebuild the accepted-id set from it, bind and serve in a background thread."""
        self._check_startable()
        if self._sink is None:
            # Keep segments that may hold ids still inside the replay window (a timestamp may be up to
            # tolerance ahead of its arrival), even once the pipeline has committed them.
            self._sink = LocalQueue(self.config.queue_dir, keep_recent_s=2 * self.config.tolerance_s + 60)
        try:
            self._recover_ids()
            server = _Server.create(self.config.host, self.config.port, _Handler, self.config.read_timeout_s)
        except BaseException:
            self._close_sink()
            raise
        server.receiver = self
        self._serve_in_thread(server, "webhook-receiver")
        log.info("webhook receiver %r listening on %s", self.config.name, self.url)
        return self

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop taking requests, let those in flight finish (up to ``drain_s``), close an owned sink."""
        self._stop_serving(drain_s)
        self._close_sink()

    def _close_sink(self) -> None:
        if self._owns_sink and isinstance(self._sink, LocalQueue):
            self._sink.close()

    @property
    def sink(self) -> EventSink:
        if self._sink is None:
            raise RuntimeError("the receiver is not started")
        return self._sink

    # accepted ids

    def _recover_ids(self) -> None:
        sink = self.sink
        floor = time.time() - self.config.tolerance_s
        offset, skipped = sink.start_offset, 0
        while batch := sink.read(offset, 1000):
            for _, record in batch:
                try:
                    webhook_id, timestamp = record_identity(record)
                except (ValueError, KeyError, TypeError):
                    skipped += 1
                    continue
                if timestamp >= floor:
                    self._accepted[webhook_id] = timestamp
            offset = batch[-1][0] + 1
        if skipped:
            log.warning("webhook receiver: %d queue records are not webhook deliveries", skipped)
        log.info("webhook receiver: %d accepted ids inside the replay window", len(self._accepted))

    def _reserve(self, webhook_id: str) -> bool:
        """Claim a delivery id; False when it was already accepted. Waits while another request holds it."""
        while True:
            with self._ids_lock:
                if webhook_id in self._accepted:
                    return False
                holder = self._pending.get(webhook_id)
                if holder is None:
                    self._pending[webhook_id] = threading.Event()
                    return True
            holder.wait()

    def _release(self, webhook_id: str, accepted_timestamp: int | None) -> None:
        with self._ids_lock:
            holder = self._pending.pop(webhook_id)
            if accepted_timestamp is not None:
                self._accepted[webhook_id] = accepted_timestamp
                now = time.time()
                if now - self._last_prune > 1.0:
                    floor = now - self.config.tolerance_s
                    self._accepted = {k: v for k, v in self._accepted.items() if v >= floor}
                    self._last_prune = now
        holder.set()

    def _count(self, key: str) -> None:
        with self._ids_lock:
            self.counts[key] += 1

    def _dead_letter(self, letter: WebhookDeadLetter) -> None:
        self._count(f"rejected.{letter.reason}")
        try:
            self.dead_letters(letter)
        except Exception:
            self._count("dead_letter_failed")
            log.exception("webhook receiver: cannot write a dead letter (%s)", letter.reason)


class _Framing(Exception):
    def __init__(self, rejection: WebhookRejected, raw: bytes = b"") -> None:
        super().__init__(rejection)
        self.rejection = rejection
        self.raw = raw


class _Handler(JsonRequestHandler):
    server: _Server
    server_version = "tierflow-webhooks"
    logger = log

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        if urlsplit(getattr(self, "path", "")).path == EVENTS_PATH:
            metrics.WEBHOOK_REQUESTS.labels(str(code)).inc()

    @property
    def receiver(self) -> WebhookReceiver:
        return self.server.receiver

    @property
    def max_body_bytes(self) -> int:
        return self.receiver.config.max_body_bytes

    # responses

    def _refuse(self, rejection: WebhookRejected, raw: bytes, authenticated: bool, stage: str) -> None:
        receiver = self.receiver
        keep = raw if authenticated else raw[:RAW_KEEP_BYTES]
        detail = rejection.detail
        if len(keep) < len(raw):
            detail += f" (body of {len(raw)} bytes; the first {len(keep)} kept)"
        position = SourcePosition("webhook", receiver.config.name, rejection.webhook_id or "")
        receiver._dead_letter(
            WebhookDeadLetter(
                rejection.reason,
                detail,
                stage,
                position,
                keep,
                rejection.doc_id,
                headers=_safe_headers(self.headers.items()),
                status=rejection.status,
            )
        )
        payload: dict[str, Any] = {"error": rejection.reason, "detail": rejection.detail}
        if rejection.status == 409 and rejection.webhook_id:
            payload["id"] = rejection.webhook_id
        self.send_refusal(rejection.status, payload, unread=rejection.status == 413)

    # body framing

    def _read_body(self) -> bytes:
        limit = self.receiver.config.max_body_bytes
        lengths = self.headers.get_all("Content-Length") or []
        encodings = self.headers.get_all("Transfer-Encoding") or []
        if lengths and encodings:
            self.close_connection = True
            raise _Framing(WebhookRejected(400, "bad_framing", "both Content-Length and Transfer-Encoding"))
        if lengths:
            length = content_length(lengths[0]) if len(set(lengths)) == 1 else None
            if length is None:
                self.close_connection = True
                raise _Framing(WebhookRejected(400, "bad_framing", "Content-Length is not one integer"))
            if length > limit:
                shown = lengths[0].strip()
                shown = shown if len(shown) <= 24 else f"{shown[:20]}..."
                raise _Framing(
                    WebhookRejected(413, "too_large", f"Content-Length {shown} is over the limit of {limit}")
                )
            body = self.rfile.read(length)
            if len(body) < length:
                self.close_connection = True
                raise _Framing(
                    WebhookRejected(400, "incomplete_body", f"got {len(body)} of {length} bytes"), body
                )
            return body
        if encodings:
            if [e.strip().lower() for e in ",".join(encodings).split(",")] != ["chunked"]:
                self.close_connection = True
                raise _Framing(WebhookRejected(400, "bad_framing", "only Transfer-Encoding: chunked is read"))
            return self._read_chunked(limit)
        return b""  # RFC 9112: a request with neither header has no body

    def _read_chunked(self, limit: int) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(_MAX_CHUNK_LINE + 1)
            size_text = line.split(b";", 1)[0].strip()
            if not line.endswith(b"\n") or not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_text):
                self.close_connection = True
                kind, what = (
                    ("incomplete_body", "the body ended") if not line else ("bad_framing", "bad chunk size")
                )
                raise _Framing(WebhookRejected(400, kind, f"{what} after {len(body)} bytes"), bytes(body))
            size = int(size_text, 16)
            if size == 0:
                while True:  # trailer fields, up to the blank line
                    trailer = self.rfile.readline(_MAX_CHUNK_LINE + 1)
                    if trailer in (b"\r\n", b"\n", b""):
                        return bytes(body)
            if len(body) + size > limit:
                raise _Framing(
                    WebhookRejected(
                        413, "too_large", f"the chunked body passes the limit of {limit} bytes while reading"
                    ),
                    bytes(body),
                )
            chunk = self.rfile.read(size)
            ending = self.rfile.readline(3)
            if len(chunk) < size or ending not in (b"\r\n", b"\n"):
                self.close_connection = True
                raise _Framing(
                    WebhookRejected(400, "incomplete_body", f"a chunk ended early after {len(body)} bytes"),
                    bytes(body) + chunk,
                )
            body += chunk

    # routes

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == HEALTH_PATH:
            stopping = self.receiver._stopping
            self.send_json(503 if stopping else 200, {"status": "stopping" if stopping else "ok"})
        elif path == EVENTS_PATH:
            self.send_json(
                405, {"error": "method_not_allowed", "detail": f"POST to {EVENTS_PATH}"}, {"Allow": "POST"}
            )
        else:
            self.send_json(404, {"error": "not_found", "detail": f"deliveries go to POST {EVENTS_PATH}"})

    def do_POST(self) -> None:
        if urlsplit(self.path).path != EVENTS_PATH:
            self.close_connection = True  # the body is not read
            self.send_json(404, {"error": "not_found", "detail": f"deliveries go to POST {EVENTS_PATH}"})
            return
        receiver = self.receiver
        if receiver._limiter is not None:
            wait = receiver._limiter.take(self.client_address[0], time.monotonic())
            if wait > 0:
                receiver._count("rate_limited")
                log.debug("webhook receiver: %s is over the rate limit", self.client_address[0])
                limit = f"{receiver.config.rate_limit_per_s:g}/s (burst {receiver.config.rate_burst})"
                detail = f"over {limit} for {self.client_address[0]}"
                self._turn_away(429, "rate_limited", detail, max(1, math.ceil(wait)))
                return
        if not receiver.admission.try_enter():
            receiver._count("overloaded")
            detail = f"{receiver.config.max_concurrent} deliveries are in progress; retry later"
            self._turn_away(503, "overloaded", detail, 1)
            return
        try:
            if not receiver._enter():
                self._turn_away(503, "shutting_down", "the receiver is stopping", 5)
                return
            try:
                self._deliver(receiver)
            finally:
                receiver._leave()
        finally:
            receiver.admission.leave()

    def _turn_away(self, status: int, error: str, detail: str, retry_after_s: int) -> None:
        """Refuse a delivery before reading its body (not dead-lettered: the sender retries)."""
        payload = {"error": error, "detail": detail}
        self.send_refusal(status, payload, {"Retry-After": str(retry_after_s)}, unread=True)

    def _deliver(self, receiver: WebhookReceiver) -> None:
        config = receiver.config
        try:
            body = self._read_body()
        except _Framing as err:
            self._refuse(err.rejection, err.raw, authenticated=False, stage="receive")
            return
        except (TimeoutError, ConnectionError) as err:
            self.close_connection = True
            broken = WebhookRejected(400, "incomplete_body", f"reading the body failed: {type(err).__name__}")
            self._refuse(broken, b"", authenticated=False, stage="receive")
            return
        duplicated = [
            name
            for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
            if len(self.headers.get_all(name) or []) > 1
        ]
        if duplicated:
            duplicate = WebhookRejected(
                400, "duplicate_header", f"header(s) given twice: {', '.join(duplicated)}"
            )
            self._refuse(duplicate, body, authenticated=False, stage="verify")
            return
        headers = {
            name: self.headers.get(name, "")
            for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
        }
        received_at = time.time()
        try:
            webhook_id = verify(receiver._keys, headers, body, received_at, config.tolerance_s)
        except WebhookRejected as rejection:
            self._refuse(rejection, body, authenticated=False, stage="verify")
            return
        timestamp = int(headers["webhook-timestamp"].strip())
        if not receiver._reserve(webhook_id):
            replayed = WebhookRejected(
                409, "replayed", f"webhook id {webhook_id} was already accepted", webhook_id
            )
            self._refuse(replayed, body, authenticated=True, stage="verify")
            return
        accepted: int | None = None
        try:
            try:
                parse_event(body, webhook_id, receiver=config.name, timestamp=timestamp)
            except WebhookRejected as rejection:
                self._refuse(rejection, body, authenticated=True, stage="parse")
                return
            record = encode_record(webhook_id, timestamp, body, config.name, received_at)
            try:
                offset = receiver.sink.append(record)
            except Exception as err:
                receiver._count("sink_unavailable")
                log.error("webhook receiver: the queue refused delivery %s: %s", webhook_id, err)
                self.close_connection = True
                self.send_json(
                    503,
                    {"error": "sink_unavailable", "detail": "the event could not be stored; retry later"},
                    {"Retry-After": "1"},
                )
                return
            accepted = timestamp
            receiver._count("accepted")
            log.debug("webhook receiver: delivery %s stored at offset %d", webhook_id, offset)
        finally:
            receiver._release(webhook_id, accepted)
        self.send_json(202, {"accepted": webhook_id})


def serve(
    config: WebhookConfig, *, stop: threading.Event | None = None, sink: EventSink | None = None
) -> None:
    """Run a :class:`WebhookReceiver` until SIGINT/SIGTERM (or until ``stop`` is set).

    Signal handlers are installed only when called from the main thread. ``sink`` replaces the local
    durable queue (e.g. ``connectors.kafka_client.KafkaEventSink`` for a document topic).
    """
    with stop_on_signals(stop) as stopped:
        receiver = WebhookReceiver(config, sink=sink)
        try:
            receiver.start()
            print(f"tierflow webhooks: listening on {receiver.url}{EVENTS_PATH}", flush=True)
            while not stopped.wait(0.5):
                pass
        finally:
            receiver.stop()
