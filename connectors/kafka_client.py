"""Kafka clients for tierflow: configuration, a document producer, a consumer with manual commits only,
and a dead-letter producer. The message format is :mod:`connectors.kafka_documents`.

Delivery guarantees:

- :class:`DocumentProducer` and :class:`DeadLetterProducer` produce with ``acks=all`` and
  ``enable.idempotence=true`` (no duplicates or reordering from retries) and the Java client's key
  partitioner (``murmur2_random``), so a document id lands on the same partition whichever client
  wrote it. Sends are asynchronous; :meth:`flush` waits for every acknowledgement and raises the
  failures, as :class:`KafkaUnavailable` (retrying may help: broker down, timeouts) or
  :class:`KafkaRejected` (it cannot: too large, not authorised, unknown topic).
- :class:`DocumentConsumer` never commits on its own (``enable.auto.commit=false``). The pipeline
  calls :meth:`DocumentConsumer.commit` with the next offsets only after the index commit that holds
  the records is durable (and after the dead letters among them are flushed), so a crash re-delivers
  records and never skips one. On restart it resumes from the index manifest's positions
  (``subscribe(start_offsets=next_offsets(manifest.sources))``), which are never behind the group's
  committed offsets.

Broker outages (a restart, a failover, a network partition) are transient: librdkafka reconnects with
backoff on its own. Each client logs the outage once when it starts (``brokers unreachable``) and once
when it ends (``brokers reachable again after N s``), with a reminder every
:data:`OUTAGE_REMINDER_S` in between, instead of a line per reconnect attempt. Records sent while the
brokers are down stay in the producer's queue and are delivered when they return, for up to
``message.timeout.ms`` (librdkafka's default: 300 s); :meth:`DocumentProducer.flush` raises
:class:`KafkaUnavailable` while any is unacknowledged (and keeps them queued), and the ones that timed
out are named in ``failed`` and can be re-queued with :meth:`DocumentProducer.retry_failed`. Nothing is
reported delivered (``on_delivery``) that the brokers did not acknowledge. :meth:`DocumentConsumer.commit`
raises :class:`KafkaUnavailable` after a few seconds without a coordinator; the stream
(``pipelines.stream``) then keeps the offsets owed and commits them once the brokers are back.

None of the clients is thread-safe: use one per thread.

Example::

    config = KafkaConfig("broker:9092", topics=("documents",), group_id="tierflow-ingest",
                         dead_letter_topic="documents.dlq",
                         security={"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
                                   "sasl.username": "ingest", "sasl.password": "..."})
    with DocumentConsumer(config) as consumer:
        consumer.subscribe(start_offsets=next_offsets(manifest.sources))
        records = consumer.poll_batch(500, 1.0)
        events = [consumer.decode(record) for record in records]
        ...  # index the events, commit the index
        consumer.commit(next_offsets_of(records))
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, Self

from confluent_kafka import (
    OFFSET_INVALID,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from connectors.kafka_documents import (
    CONTENT_TYPE,
    CONTENT_TYPE_HEADER,
    DEFAULT_MAX_BYTES,
    decode_message,
    encode_document,
)
from tierflow.deadletter import DeadLetter
from tierflow.errors import BadRecord, ConfigError, Terminal, TierflowError, Transient
from tierflow.records import DocumentEvent, SourcePosition

__all__ = [
    "DLQ_HEADER_PREFIX",
    "DeadLetterProducer",
    "DocumentConsumer",
    "DocumentProducer",
    "KafkaClientError",
    "KafkaConfig",
    "KafkaRecord",
    "KafkaRejected",
    "KafkaUnavailable",
    "TopicPartitionKey",
    "dead_letter_headers",
    "kafka_error",
    "next_offsets_of",
    "Outage",
    "read_dead_letter",
    "redact",
]

log = logging.getLogger(__name__)
librdkafka_log = log.getChild("librdkafka")  # librdkafka's own log lines (connection failures and such)

OUTAGE_REMINDER_S = 30.0
"""While the brokers stay unreachable, each client logs a reminder with the outage's length this often."""

# Errors that say the brokers cannot be reached (as opposed to one request failing). A plain _TRANSPORT
# "Disconnected" (a broker reaping an idle connection) starts no outage; a failed connect does.
_OUTAGE_CODES = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE})
_CONNECT_FAILED = ("Connect to", "Connection refused", "Failed to resolve")

TopicPartitionKey = tuple[str, int]
"""``(topic, partition)``: how offsets are keyed throughout this module."""

REDACTED = "***"
DLQ_HEADER_PREFIX = "tierflow."
SECURITY_PREFIXES: tuple[str, ...] = ("security.protocol", "sasl.", "ssl.", "enable.ssl.")
_SECRET_NAMES = frozenset({"ssl.key.pem", "sasl.oauthbearer.config", "sasl.jaas.config"})
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_HEADROOM_BYTES = 64 << 10  # key, headers and framing on top of the largest value

_CONSUMER_OWNED = ("bootstrap.servers", "group.id", "enable.auto.commit")
_PRODUCER_OWNED = ("bootstrap.servers", "acks", "request.required.acks", "enable.idempotence")

# Error codes that are worth retrying although librdkafka does not flag them retriable.
_TRANSIENT_CODES = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._QUEUE_FULL,
        KafkaError._RESOLVE,
        KafkaError._WAIT_COORD,
        KafkaError._IN_PROGRESS,
        KafkaError._PREV_IN_PROGRESS,
        KafkaError._RETRY,
        KafkaError._MAX_POLL_EXCEEDED,
        KafkaError._ASSIGNMENT_LOST,
        KafkaError._NODE_UPDATE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.NOT_COORDINATOR,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.THROTTLING_QUOTA_EXCEEDED,
        KafkaError.UNSTABLE_OFFSET_COMMIT,
    }
)
# Error codes that no retry can fix, whatever the retriable flag says.
_TERMINAL_CODES = frozenset(
    {
        KafkaError._FATAL,
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_CONFIG,
        KafkaError._INVALID_ARG,
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.UNSUPPORTED_SASL_MECHANISM,
        KafkaError.UNSUPPORTED_VERSION,
        KafkaError.UNSUPPORTED_COMPRESSION_TYPE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_REQUIRED_ACKS,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.INVALID_GROUP_ID,
        KafkaError.INVALID_SESSION_TIMEOUT,
        KafkaError.INVALID_COMMIT_OFFSET_SIZE,
        KafkaError.OFFSET_METADATA_TOO_LARGE,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
    }
)


# --- errors ---------------------------------------------------------------------------------------


class KafkaClientError(TierflowError):
    """A Kafka operation failed. Use :class:`KafkaUnavailable` / :class:`KafkaRejected` to decide retries.

    Args:
        message: What failed and why, with librdkafka's error text.
        code: librdkafka's error code (:class:`confluent_kafka.KafkaError` constants), if any.
        name: Its name (``_MSG_TIMED_OUT``, ``MSG_SIZE_TOO_LARGE`` ...).
        failed: For delivery failures, the document ids (or dead-letter labels) that were not written.
    """

    def __init__(self, message: str, code: int | None = None, name: str = "", failed: Sequence[str] = ()):
        super().__init__(message, code, name, tuple(failed))
        self.message = message
        self.code = code
        self.name = name
        self.failed = tuple(failed)

    def __str__(self) -> str:
        return self.message


class KafkaUnavailable(KafkaClientError, Transient):
    """The broker could not be reached or was not ready (timeouts, leader changes, rebalances); retry."""


class KafkaRejected(KafkaClientError, Terminal):
    """The broker or client refused the operation for good (size, authorisation, configuration)."""


def kafka_error(err: KafkaError | KafkaException | BaseException, doing: str) -> KafkaClientError:
    """The tierflow error for a librdkafka error: Transient or Terminal by its code.

    Fatal errors and the codes in ``_TERMINAL_CODES`` are terminal; the codes in ``_TRANSIENT_CODES``
    and any other code librdkafka flags retriable are transient; every other code is terminal, so an
    unexpected error surfaces instead of being retried forever.

    Args:
        err: A ``KafkaError``, or a ``KafkaException`` wrapping one.
        doing: What was being done, for the message (``"committing offsets"``).
    """
    inner = err.args[0] if isinstance(err, KafkaException) and err.args else err
    if not isinstance(inner, KafkaError):
        return KafkaRejected(f"{doing} failed: {inner}")
    code, name = inner.code(), inner.name()
    message = f"{doing} failed: {inner.str()} ({name})"
    if inner.fatal() or code in _TERMINAL_CODES:
        return KafkaRejected(message, code, name)
    if code in _TRANSIENT_CODES or inner.retriable():
        return KafkaUnavailable(message, code, name)
    return KafkaRejected(message, code, name)


# --- configuration --------------------------------------------------------------------------------


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return "password" in lowered or "secret" in lowered or lowered in _SECRET_NAMES


def redact(properties: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of librdkafka properties with passwords, secrets and private keys replaced by ``***``."""
    return {name: REDACTED if _is_secret(name) else value for name, value in properties.items()}


def _topics(value: str | Iterable[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(item.strip() for item in items if item.strip())


def _check_topic(name: str, where: str) -> None:
    if not isinstance(name, str) or not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"{where} {name!r} is not a valid Kafka topic name (1-249 of A-Z a-z 0-9 . _ -)")


@dataclass(frozen=True)
class KafkaConfig:
    """Where the brokers are, what to read and write, and how to authenticate.

    Args:
        bootstrap_servers: ``host:port[,host:port...]``.
        topics: Topics the consumer reads (a tuple, or a comma-separated string); the producer writes
            to the first one unless given another.
        group_id: Consumer group; required by :class:`DocumentConsumer`.
        dead_letter_topic: Where :class:`DeadLetterProducer` writes; must not be one of ``topics``.
        security: librdkafka security properties, passed through to every client:
            ``security.protocol``, ``sasl.*``, ``ssl.*``, ``enable.ssl.certificate.verification``.
            Passwords, secrets and private keys are shown as ``***`` in ``repr``.
        consumer_properties: Extra librdkafka consumer properties (``session.timeout.ms``,
            ``auto.offset.reset`` ...). ``enable.auto.commit`` cannot be set: commits are manual only.
        producer_properties: Extra librdkafka producer properties (``linger.ms``, ``compression.type``
            ...). ``acks`` and ``enable.idempotence`` cannot be set: they are always all / true.
        max_message_bytes: Largest document value accepted; larger ones are refused by the producer
            and dead-lettered (``too_large``) by the consumer. The topic's ``max.message.bytes`` must
            allow it plus key and headers.
        client_id: ``client.id`` the brokers see.
        unavailable_timeout_s: How long a stream (``tierflow stream``) keeps retrying, with backoff, while
            the brokers are unreachable before it stops with a clear error (exit status 2). The default,
            None, keeps waiting however long the outage lasts, logging a warning with its length every
            :data:`OUTAGE_REMINDER_S`: a broker restart or failover is routine, and a restarted stream
            would only wait the same way. Set it where a supervisor should see the outage as a failed
            process (and restart or alert). Either way nothing is lost or acknowledged early: the index
            commit holds the positions, and offsets are committed after it once the brokers are back.

    Raises:
        ConfigError: A missing bootstrap address, a bad topic name, an unknown security property, a
            property that would weaken the delivery guarantees, or a non-positive size.

    Example:
        >>> KafkaConfig("localhost:9092", topics="docs", group_id="g", security={"sasl.password": "x"})
        KafkaConfig(bootstrap_servers='localhost:9092', topics=('docs',), group_id='g', ...)
    """

    bootstrap_servers: str
    topics: tuple[str, ...] = ()
    group_id: str = ""
    dead_letter_topic: str | None = None
    security: dict[str, Any] = field(default_factory=dict)
    consumer_properties: dict[str, Any] = field(default_factory=dict)
    producer_properties: dict[str, Any] = field(default_factory=dict)
    max_message_bytes: int = DEFAULT_MAX_BYTES
    client_id: str = "tierflow"
    unavailable_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.bootstrap_servers, str) or not self.bootstrap_servers.strip():
            raise ConfigError("kafka.bootstrap_servers is empty: set it to host:port[,host:port...]")
        topics = _topics(self.topics)
        for topic in topics:
            _check_topic(topic, "kafka.topics entry")
        object.__setattr__(self, "topics", topics)
        if self.dead_letter_topic == "":
            object.__setattr__(self, "dead_letter_topic", None)
        if self.dead_letter_topic is not None:
            _check_topic(self.dead_letter_topic, "kafka.dead_letter_topic")
            if self.dead_letter_topic in topics:
                raise ConfigError(
                    f"kafka.dead_letter_topic {self.dead_letter_topic!r} is also a source topic: its "
                    "records would be read back and rejected again; use a separate topic"
                )
        for name in ("security", "consumer_properties", "producer_properties"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ConfigError(f"kafka.{name} must be a table of librdkafka properties")
            object.__setattr__(self, name, dict(value))
        unknown = sorted(key for key in self.security if not key.startswith(SECURITY_PREFIXES))
        if unknown:
            raise ConfigError(
                f"kafka.security has non-security properties {unknown}; it takes "
                f"{', '.join(p + ('*' if p.endswith('.') else '') for p in SECURITY_PREFIXES)}; put "
                "other settings in consumer_properties / producer_properties"
            )
        for name, owned in (
            ("consumer_properties", _CONSUMER_OWNED),
            ("producer_properties", _PRODUCER_OWNED),
        ):
            properties: dict[str, Any] = getattr(self, name)
            fixed = sorted(key for key in properties if key in owned)
            if fixed:
                raise ConfigError(
                    f"kafka.{name} sets {fixed}: tierflow sets these itself (bootstrap_servers, group_id, "
                    "manual commits only, acks=all, enable.idempotence=true); remove them"
                )
            secure = sorted(key for key in properties if key.startswith(SECURITY_PREFIXES))
            if secure:
                raise ConfigError(f"kafka.{name} sets {secure}: put security properties in kafka.security")
        if not isinstance(self.max_message_bytes, int) or self.max_message_bytes <= 0:
            raise ConfigError(
                f"kafka.max_message_bytes must be a positive integer, got {self.max_message_bytes!r}"
            )
        budget = self.unavailable_timeout_s
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int | float) or not budget >= 0
        ):
            raise ConfigError(
                f"kafka.unavailable_timeout_s must be a number of seconds >= 0 (or unset to wait for "
                f"the brokers however long), got {budget!r}"
            )

    def __repr__(self) -> str:
        return (
            f"KafkaConfig(bootstrap_servers={self.bootstrap_servers!r}, topics={self.topics!r}, "
            f"group_id={self.group_id!r}, dead_letter_topic={self.dead_letter_topic!r}, "
            f"security={redact(self.security)!r}, consumer_properties={redact(self.consumer_properties)!r}, "
            f"producer_properties={redact(self.producer_properties)!r}, "
            f"max_message_bytes={self.max_message_bytes!r}, client_id={self.client_id!r}, "
            f"unavailable_timeout_s={self.unavailable_timeout_s!r})"
        )

    __str__ = __repr__

    def _common(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap_servers, "client.id": self.client_id, **self.security}

    def consumer_settings(self) -> dict[str, Any]:
        """The librdkafka consumer properties (secrets included: never log them; see :func:`redact`)."""
        if not self.group_id:
            raise ConfigError("kafka.group_id is empty: a consumer needs a consumer group")
        return {
            **self._common(),
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            **self.consumer_properties,
            "group.id": self.group_id,
            "enable.auto.commit": False,
        }

    def producer_settings(self) -> dict[str, Any]:
        """The librdkafka producer properties (secrets included: never log them; see :func:`redact`)."""
        return {
            **self._common(),
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            "message.max.bytes": max(1_000_000, self.max_message_bytes + _HEADROOM_BYTES),
            **self.producer_properties,
            "acks": "all",
            "enable.idempotence": True,
        }

    def admin_settings(self) -> dict[str, Any]:
        """The librdkafka properties for an ``AdminClient``."""
        return self._common()


class Outage:
    """When a client lost its brokers, logged once at the start, at most every :data:`OUTAGE_REMINDER_S`
    while it lasts, and once at the end (with its length).

    Args:
        what: The client, for the log lines (``"consumer group-1"``).
        clock: Seconds, monotonic (tests pass a fake one).

    ``logger`` is this module's logger; the owner of a client may point it at its own (the stream does,
    so that its log tells the outage with everything else it does).
    """

    def __init__(self, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.clock = clock
        self.logger = log
        self.since: float | None = None
        self.last_error = ""
        self.suppressed = 0
        self._reminded = 0.0
        self.outages = 0

    @property
    def down(self) -> bool:
        return self.since is not None

    def seconds(self) -> float:
        """How long the brokers have been unreachable (0 when they are not)."""
        return 0.0 if self.since is None else self.clock() - self.since

    def lost(self, err: KafkaError | str) -> None:
        """The brokers could not be reached: start the outage, or remind of it now and then."""
        text = err if isinstance(err, str) else f"{err.str()} ({err.name()})"
        self.last_error = text
        now = self.clock()
        if self.since is None:
            self.since = self._reminded = now
            self.outages += 1
            self.logger.warning(
                "kafka %s: brokers unreachable: %s; librdkafka keeps reconnecting with backoff",
                self.what,
                text,
            )
        elif now - self._reminded >= OUTAGE_REMINDER_S:
            self._reminded = now
            self.logger.warning(
                "kafka %s: brokers still unreachable after %.0f s (%d similar errors since): %s",
                self.what,
                now - self.since,
                self.suppressed,
                text,
            )
            self.suppressed = 0
        else:
            self.suppressed += 1
            self.logger.debug("kafka %s: %s", self.what, text)

    def recovered(self) -> None:
        """The brokers answered: end the outage (logged with its length)."""
        if self.since is None:
            return
        self.logger.warning(
            "kafka %s: brokers reachable again after %.1f s", self.what, self.clock() - self.since
        )
        self.since = None
        self.suppressed = 0


def _error_cb(
    what: str, fatal: list[KafkaError], outage: Outage | None = None
) -> Callable[[KafkaError], None]:
    def report(err: KafkaError) -> None:
        if err.fatal():
            fatal.append(err)
            log.error("kafka %s: fatal error: %s", what, err.str())
        elif (
            outage is not None
            and err.code() in _OUTAGE_CODES
            and (
                outage.down
                or err.code() == KafkaError._ALL_BROKERS_DOWN
                or any(text in err.str() for text in _CONNECT_FAILED)
            )
        ):
            outage.lost(err)
        else:
            log.warning("kafka %s: %s (%s)", what, err.str(), err.name())

    return report


class _QuietReconnects(logging.Filter):
    """Drops librdkafka's repeats of one connection failure (a line per reconnect attempt while a broker is
    down): a line passes when its text, numbers aside, was not logged in the last
    :data:`OUTAGE_REMINDER_S`. The clients' own :class:`Outage` lines say when an outage starts and ends."""

    _numbers = re.compile(r"\d+")

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        text = self._numbers.sub("#", record.getMessage())
        now = time.monotonic()
        last = self._seen.get(text)
        if last is not None and now - last < OUTAGE_REMINDER_S:
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[text] = now
        return True


librdkafka_log.addFilter(_QuietReconnects())


# --- producers ------------------------------------------------------------------------------------


_Send = tuple[str, bytes | None, bytes | None, list[tuple[str, str | bytes | None]], str]


class _Producer:
    """Shared delivery bookkeeping: produce asynchronously, raise every failure at :meth:`flush`, keep the
    failed records so that :meth:`retry_failed` can queue them again."""

    _what = "producer"

    def __init__(
        self,
        config: KafkaConfig,
        producer: Any = None,
        on_delivery: Callable[[str, KafkaError | None], None] | None = None,
    ) -> None:
        self.config = config
        self._fatal: list[KafkaError] = []
        self._failures: list[tuple[str, KafkaError]] = []
        self._failed: list[_Send] = []
        self._on_delivery = on_delivery
        self.outage = Outage(self._what)
        self.delivered = 0
        self._producer = (
            producer
            if producer is not None
            else Producer(
                config.producer_settings(),
                logger=librdkafka_log,
                error_cb=_error_cb(self._what, self._fatal, self.outage),
            )
        )

    def _delivered(self, send: _Send, err: KafkaError | None, msg: Message) -> None:
        label = send[-1]
        if err is not None:
            self._failures.append((label, err))
            self._failed.append(send)
        else:
            self.delivered += 1
            self.outage.recovered()
        if self._on_delivery is not None:
            self._on_delivery(label, err)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, str | bytes | None]],
        label: str,
        block_s: float = 30.0,
    ) -> None:
        self._raise_fatal()
        deadline = time.monotonic() + block_s
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=headers,
                    on_delivery=partial(self._delivered, (topic, key, value, headers, label)),
                )
                break
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                if time.monotonic() >= deadline:
                    raise KafkaUnavailable(
                        f"the producer's local queue stayed full for {block_s:.0f}s (brokers slow or down); "
                        f"{label!r} was not sent",
                        KafkaError._QUEUE_FULL,
                        "_QUEUE_FULL",
                        (label,),
                    ) from None
                self._producer.poll(0.1)
            except KafkaException as err:
                raise kafka_error(err, f"producing {label!r} to {topic}") from None
        self._producer.poll(0)

    def _raise_fatal(self) -> None:
        if self._fatal:
            raise kafka_error(self._fatal[0], f"the {self._what} (it must be recreated)")

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery reports (``on_delivery``) without waiting for every record, as :meth:`flush` does."""
        self._producer.poll(timeout_s)

    def pending(self) -> int:
        """Records sent and not yet acknowledged or failed (still in the local queue or in flight)."""
        return len(self._producer)

    def retry_failed(self) -> int:
        """Queue again the records whose delivery failed (reported by the last :meth:`flush`); returns how
        many. A record that timed out may have reached the broker after all, so a retry may write it twice
        (idempotence covers retries within one delivery, not a new send). Call it after :meth:`flush`
        raised: failures not yet reported by a flush are still reported by the next one."""
        failed, self._failed = self._failed, []
        for topic, key, value, headers, label in failed:
            self._produce(topic, key, value, headers, label)
        return len(failed)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every record sent so far is acknowledged by the brokers.

        Records still unacknowledged when ``timeout_s`` passes stay queued: librdkafka keeps delivering
        them (for up to ``message.timeout.ms`` after they were sent) and a later flush confirms them.

        Raises:
            KafkaRejected: Some record failed for good (too large, not authorised, unknown topic...).
            KafkaUnavailable: Some record failed transiently (timed out, brokers down), or records are
                still unacknowledged after ``timeout_s`` (they may still be delivered later).
            Both carry the failed labels (document ids) in ``failed``; :meth:`retry_failed` queues those
            records again.
        """
        remaining = self._producer.flush(timeout_s)
        failures, self._failures = self._failures, []
        self._raise_fatal()
        if failures:
            errors = [kafka_error(err, f"delivering {label!r}") for label, err in failures]
            shown = "; ".join(str(error) for error in errors[:5])
            more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
            first = next((e for e in errors if isinstance(e, Terminal)), errors[0])
            cls = KafkaRejected if isinstance(first, Terminal) else KafkaUnavailable
            raise cls(
                f"{len(errors)} record(s) were not delivered: {shown}{more}",
                first.code,
                first.name,
                [label for label, _ in failures],
            )
        if remaining:
            down = (
                f"; brokers unreachable for {self.outage.seconds():.0f}s ({self.outage.last_error})"
                if self.outage.down
                else "; brokers slow or down"
            )
            raise KafkaUnavailable(
                f"{remaining} record(s) were still unacknowledged after {timeout_s}s{down}; they stay "
                "queued and are delivered when the brokers answer (flush again to confirm)",
                KafkaError._TIMED_OUT,
                "_TIMED_OUT",
            )

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush (raising any delivery failure)."""
        self.flush(timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            try:
                self._producer.flush(5.0)
            except Exception:  # the original exception matters more
                log.exception("kafka %s: flush after an error failed", self._what)


class DocumentProducer(_Producer):
    """The Python API for teams that publish documents (see :mod:`connectors.kafka_documents`).

    Args:
        config: Brokers and security; ``topics[0]`` is the default topic.
        topic: The topic to write to, instead of ``config.topics[0]``.
        producer: An existing ``confluent_kafka.Producer`` (tests); built from ``config`` otherwise.
        on_delivery: Called with ``(doc_id, None)`` for each record the brokers acknowledged, and with
            ``(doc_id, KafkaError)`` for each that failed (from :meth:`flush` or :meth:`send`).

    Raises:
        ConfigError: No topic given and none configured.

    Example:
        >>> with DocumentProducer(config) as producer:
        ...     producer.send("doc-1", "Body text", title="Title", version=3)
        ...     producer.delete("doc-2")
        ... # leaving the block flushes: every record is acknowledged or an error is raised
    """

    _what = "document producer"

    def __init__(
        self,
        config: KafkaConfig,
        topic: str | None = None,
        *,
        producer: Any = None,
        on_delivery: Callable[[str, KafkaError | None], None] | None = None,
    ) -> None:
        if topic is None:
            if not config.topics:
                raise ConfigError("DocumentProducer needs a topic: pass topic= or set kafka.topics")
            topic = config.topics[0]
        _check_topic(topic, "topic")
        self.topic = topic
        super().__init__(config, producer, on_delivery)

    def send(
        self,
        doc_id: str,
        text: str,
        title: str = "",
        metadata: Mapping[str, Any] | None = None,
        version: int | None = None,
        event_time: float | None = None,
    ) -> None:
        """Queue an upsert of one document; :meth:`flush` confirms it.

        Raises:
            BadRecord: The document breaks the contract (``missing_id``, ``wrong_type``, ``not_utf8``,
                ``missing_text``) or is over ``max_message_bytes`` (``too_large``); nothing is sent.
            KafkaClientError: The producer cannot queue it (local queue full for long, fatal error).
        """
        self._send(doc_id, text, title, metadata, version, event_time, "upsert")

    def delete(self, doc_id: str, version: int | None = None, event_time: float | None = None) -> None:
        """Queue a delete: a tombstone (null value), or ``{"op": "delete", ...}`` when a version or event
        time is given (a tombstone cannot carry them); :meth:`flush` confirms it."""
        self._send(doc_id, "", "", None, version, event_time, "delete")

    def _send(
        self,
        doc_id: str,
        text: str,
        title: str,
        metadata: Mapping[str, Any] | None,
        version: int | None,
        event_time: float | None,
        op: str,
    ) -> None:
        key, value = encode_document(doc_id, text, title, metadata, version, event_time, op)
        if value is not None and len(value) > self.config.max_message_bytes:
            raise BadRecord(
                "too_large",
                f"document {doc_id!r} encodes to {len(value)} bytes, over max_message_bytes="
                f"{self.config.max_message_bytes}; consumers would dead-letter it, so it was not sent",
            )
        headers: list[tuple[str, str | bytes | None]] = []
        if value is not None:
            headers.append((CONTENT_TYPE_HEADER, CONTENT_TYPE.encode()))
        self._produce(self.topic, key, value, headers, doc_id)


def dead_letter_headers(dead: DeadLetter) -> list[tuple[str, bytes]]:
    """The headers a dead-letter record carries: reason, detail, stage, source (JSON), doc id, time."""
    headers = [
        (f"{DLQ_HEADER_PREFIX}reason", dead.reason.encode()),
        (f"{DLQ_HEADER_PREFIX}detail", dead.detail.encode("utf-8", "backslashreplace")),
        (f"{DLQ_HEADER_PREFIX}stage", dead.stage.encode()),
        (f"{DLQ_HEADER_PREFIX}source", json.dumps(dead.source.to_dict(), ensure_ascii=True).encode()),
        (f"{DLQ_HEADER_PREFIX}rejected_at", repr(float(dead.rejected_at)).encode()),
        (f"{DLQ_HEADER_PREFIX}raw_type", b"text" if isinstance(dead.raw, str) else b"bytes"),
    ]
    if dead.doc_id is not None:
        headers.append((f"{DLQ_HEADER_PREFIX}doc_id", dead.doc_id.encode("utf-8", "backslashreplace")))
    return headers


def read_dead_letter(
    value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None
) -> DeadLetter:
    """The :class:`DeadLetter` a :class:`DeadLetterProducer` record holds (for replay tools and reports).

    Raises:
        BadRecord: ``not_a_dead_letter`` when the record lacks the ``tierflow.reason`` header.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or [])
    found = {
        name[len(DLQ_HEADER_PREFIX) :]: (raw or b"").decode("utf-8", "replace")
        for name, raw in pairs
        if name.startswith(DLQ_HEADER_PREFIX)
    }
    if "reason" not in found:
        raise BadRecord("not_a_dead_letter", "the record has no tierflow.reason header")
    try:
        source = SourcePosition(**json.loads(found.get("source", "{}")))
    except (TypeError, ValueError):
        source = SourcePosition("unknown", found.get("source", ""))
    raw: bytes | str = value or b""
    if found.get("raw_type") == "text":
        raw = (value or b"").decode("utf-8", "surrogatepass")
    try:
        rejected_at = float(found.get("rejected_at", "0"))
    except ValueError:
        rejected_at = 0.0
    return DeadLetter(
        found["reason"],
        found.get("detail", ""),
        found.get("stage", ""),
        source,
        raw,
        found.get("doc_id"),
        rejected_at,
    )


class DeadLetterProducer(_Producer):
    """Writes :class:`DeadLetter` records to the dead-letter topic, for replay and inspection.

    Each record's value is the original bytes exactly as received (``raw``); its key the given key, or
    the document id when there is one; its headers (:func:`dead_letter_headers`) ``tierflow.reason``,
    ``tierflow.detail``, ``tierflow.stage``, ``tierflow.source`` (JSON: system, uri, position),
    ``tierflow.rejected_at``, ``tierflow.raw_type`` and ``tierflow.doc_id``. :func:`read_dead_letter`
    reads one back. Flush before committing the source offsets of the records it holds, so a rejected
    record is never acknowledged before its dead letter is durable.

    Args:
        config: Brokers and security; ``dead_letter_topic`` is the default topic.
        topic: The topic to write to instead.
        producer: An existing ``confluent_kafka.Producer`` (tests).

    Raises:
        ConfigError: No topic given and no ``dead_letter_topic`` configured.
    """

    _what = "dead-letter producer"

    def __init__(self, config: KafkaConfig, topic: str | None = None, *, producer: Any = None) -> None:
        topic = topic or config.dead_letter_topic
        if not topic:
            raise ConfigError("DeadLetterProducer needs a topic: pass topic= or set kafka.dead_letter_topic")
        _check_topic(topic, "dead-letter topic")
        self.topic = topic
        super().__init__(config, producer)

    def send(self, dead: DeadLetter, key: bytes | None = None) -> None:
        """Queue one dead letter; :meth:`flush` confirms it.

        Args:
            dead: The rejected record.
            key: The record key to write (the original Kafka key, to replay exactly); default: the
                document id as UTF-8, or no key.
        """
        raw = dead.raw.encode("utf-8", "surrogatepass") if isinstance(dead.raw, str) else bytes(dead.raw)
        if key is None and dead.doc_id is not None:
            key = dead.doc_id.encode("utf-8", "surrogatepass")
        label = f"{dead.reason} at {dead.source.key} {dead.source.position}".strip()
        headers: list[tuple[str, str | bytes | None]] = [*dead_letter_headers(dead)]
        self._produce(self.topic, key, raw, headers, label)


# --- consumer -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaRecord:
    """One consumed Kafka record, detached from the client (picklable, so it can cross Beam workers).

    Args:
        topic: Its topic.
        partition: Its partition.
        offset: Its offset.
        key: Key bytes, or None.
        value: Value bytes, or None (a tombstone).
        timestamp_ms: The Kafka timestamp in ms, or None when the record has none.
        headers: ``(name, value)`` pairs in record order.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    @property
    def topic_partition(self) -> TopicPartitionKey:
        return self.topic, self.partition

    def decode(self, max_bytes: int = DEFAULT_MAX_BYTES) -> DocumentEvent | DeadLetter:
        """The record as a document event or a dead letter (see :func:`.kafka_documents.decode_message`)."""
        return decode_message(
            self.topic,
            self.partition,
            self.offset,
            self.key,
            self.value,
            self.timestamp_ms,
            max_bytes,
            headers=self.headers,
        )

    @classmethod
    def from_message(cls, message: Message) -> KafkaRecord:
        """Copy a consumed ``confluent_kafka.Message`` (one without an error)."""
        kind, timestamp = message.timestamp()
        raw = message.headers() or []
        pairs = raw.items() if isinstance(raw, dict) else raw
        return cls(
            message.topic() or "",
            message.partition() or 0,
            message.offset() or 0,
            _as_bytes(message.key()),
            _as_bytes(message.value()),
            None if kind == TIMESTAMP_NOT_AVAILABLE or timestamp < 0 else timestamp,
            tuple((name, _as_bytes(value)) for name, value in pairs),
        )


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode("utf-8") if isinstance(value, str) else value


@dataclass
class _CommitResult:
    """The answer to one asynchronous commit (``on_commit``)."""

    offsets: frozenset[tuple[str, int, int]]
    done: bool = False
    error: KafkaError | None = None
    partitions: list[TopicPartition] = field(default_factory=list)


def next_offsets_of(records: Iterable[KafkaRecord]) -> dict[TopicPartitionKey, int]:
    """The offsets to commit once ``records`` are done: per partition, the highest offset plus one."""
    offsets: dict[TopicPartitionKey, int] = {}
    for record in records:
        tp = record.topic_partition
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


def _check_offsets(offsets: Mapping[TopicPartitionKey, int], what: str) -> list[TopicPartition]:
    partitions = []
    for (topic, partition), offset in offsets.items():
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ConfigError(
                f"{what}: offset for {topic}/{partition} is {offset!r}; expected an integer >= 0"
            )
        partitions.append(TopicPartition(topic, partition, offset))
    return partitions


class DocumentConsumer:
    """A consumer-group member that hands out records in batches and commits only when told to.

    Offsets are always *next* offsets, as in Kafka: committing ``{("docs", 0): 42}`` says records
    0-41 of partition 0 are done. Records are returned in offset order per partition.

    Args:
        config: Brokers, topics, group and security (``group_id`` is required).
        consumer: An existing ``confluent_kafka.Consumer`` (tests); built from ``config`` otherwise.

    Raises:
        ConfigError: No ``group_id``.

    Example:
        >>> with DocumentConsumer(config) as consumer:
        ...     consumer.subscribe(start_offsets={("docs", 0): 42})
        ...     records = consumer.poll_batch(500, 1.0)
        ...     ...
        ...     consumer.commit(next_offsets_of(records))
    """

    def __init__(self, config: KafkaConfig, *, consumer: Any = None) -> None:
        self.config = config
        self._fatal: list[KafkaError] = []
        settings = config.consumer_settings()
        self.outage = Outage(f"consumer {config.group_id}")
        # Commit results arrive through on_commit (served by poll), so that a commit can be bounded in
        # time: a synchronous commit in flight when the coordinator dies waits for the whole outage.
        self._commits: deque[_CommitResult] = deque()
        self._consumer = (
            consumer
            if consumer is not None
            else Consumer(
                {**settings, "on_commit": self._on_commit},
                logger=librdkafka_log,
                error_cb=_error_cb("consumer", self._fatal, self.outage),
            )
        )
        self._async_commits = consumer is None
        self._buffer: list[KafkaRecord] = []
        self._pending: dict[TopicPartitionKey, int] = {}
        self._assigned: set[TopicPartitionKey] = set()
        self._returned: dict[TopicPartitionKey, int] = {}
        self._got_assignment = False
        self._awaiting = False  # subscribed, and an assignment is due (first join, or after a revoke)
        self._subscribed = False
        self._closed = False
        self._last_error: KafkaError | None = None

    # -- group membership --------------------------------------------------------------------------

    def subscribe(
        self,
        topics: Sequence[str] | None = None,
        *,
        start_offsets: Mapping[TopicPartitionKey, int] | None = None,
        timeout_s: float = 30.0,
    ) -> set[TopicPartitionKey]:
        """Join the group for ``topics`` (default: ``config.topics``) and wait for the first assignment.

        Waiting matters: a consumer closed while its group is still forming can leave the group
        without assignments. Records that arrive while waiting are kept for :meth:`poll_batch`.

        Args:
            topics: Topics to read.
            start_offsets: Next offsets to start from (an index manifest's positions); they replace the
                group's committed offsets for those partitions when this consumer is first assigned them.
                Partitions without one start at the committed offset, or at the earliest record for a
                new group.
            timeout_s: How long to wait for the assignment.

        Returns:
            The partitions assigned (may be empty when the group has more members than partitions).

        Raises:
            KafkaUnavailable: No assignment within ``timeout_s``.
            KafkaClientError: The subscription itself failed.
        """
        chosen = _topics(topics) if topics is not None else self.config.topics
        if not chosen:
            raise ConfigError("nothing to subscribe to: pass topics= or set kafka.topics")
        for topic in chosen:
            _check_topic(topic, "topic")
        if start_offsets:
            _check_offsets(start_offsets, "start_offsets")
            self._pending.update(start_offsets)
        self._got_assignment = False
        self._last_error = None
        try:
            self._consumer.subscribe(
                list(chosen), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            )
        except KafkaException as err:
            raise kafka_error(err, f"subscribing to {list(chosen)}") from None
        self._subscribed = self._awaiting = True
        if not self._wait_for_assignment(timeout_s):
            self._awaiting = False  # given up: close() need not wait again
            doing = (
                f"joining group {self.config.group_id!r} for topics {list(chosen)} "
                f"(no assignment in {timeout_s}s)"
            )
            if self._last_error is not None:
                raise kafka_error(self._last_error, doing)
            raise KafkaUnavailable(f"{doing}: are the brokers up?", KafkaError._TIMED_OUT, "_TIMED_OUT")
        return set(self._assigned)

    def _wait_for_assignment(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self._got_assignment and time.monotonic() < deadline:
            message = self._consumer.poll(min(0.1, max(deadline - time.monotonic(), 0.0)))
            if message is not None:
                self._buffer += self._take([message], raise_errors=False)
            self._raise_fatal()
        return self._got_assignment

    def assign(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        """Read exactly these partitions from these next offsets, without joining the group (no
        rebalancing; commits still go to ``group_id``). Replaces any earlier assignment."""
        partitions = _check_offsets(offsets, "assign")
        try:
            self._consumer.assign(partitions)
        except KafkaException as err:
            raise kafka_error(err, f"assigning {sorted(offsets)}") from None
        self._buffer.clear()
        self._returned.clear()
        self._assigned = set(offsets)
        self._got_assignment = True

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            start = self._pending.pop((tp.topic, tp.partition), None)
            if start is not None:
                tp.offset = start
        consumer.assign(partitions)
        self._assigned = {(tp.topic, tp.partition) for tp in partitions}
        self._got_assignment = True
        self._awaiting = False
        self.outage.recovered()
        log.info("kafka consumer %s: assigned %s", self.config.group_id, sorted(self._assigned))

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._buffer = [record for record in self._buffer if record.topic_partition not in revoked]
        for tp in revoked:
            self._returned.pop(tp, None)
        self._assigned -= revoked
        self._awaiting = self._subscribed and not self._closed
        consumer.unassign()
        log.info("kafka consumer %s: revoked %s", self.config.group_id, sorted(revoked))

    def assignment(self) -> set[TopicPartitionKey]:
        """The partitions this consumer holds now."""
        return set(self._assigned)

    def resume_at(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        """Where to start these partitions when the group next assigns them to this consumer (after a
        rebalance, e.g. the one a broker restart causes): next offsets whose records are already safe (in
        the index), which may be ahead of the group's committed offsets when a commit failed. Without it
        a re-assigned partition restarts at the committed offset, and re-reads records (harmlessly, as
        replays, but at a cost)."""
        _check_offsets(offsets, "resume_at")
        self._pending.update(offsets)

    # -- broker outages ----------------------------------------------------------------------------

    def unavailable_for(self) -> float:
        """Seconds since the brokers became unreachable (0 while they are reachable, as far as known)."""
        return self.outage.seconds()

    def reachable(self, timeout_s: float = 1.0) -> bool:
        """Ask the brokers for metadata (waiting up to ``timeout_s``): True, and the outage ends, when one
        answers."""
        try:
            metadata = self._consumer.list_topics(timeout=timeout_s)
        except KafkaException as err:
            self.outage.lost(f"metadata request failed: {err.args[0].str() if err.args else err}")
            return False
        if not metadata.brokers:
            return False
        self.outage.recovered()
        return True

    # -- reading -----------------------------------------------------------------------------------

    def poll_batch(self, max_records: int = 500, timeout_s: float = 1.0) -> list[KafkaRecord]:
        """Up to ``max_records`` records: waits up to ``timeout_s`` for the first, then takes what is
        already fetched. An empty list means nothing arrived in time.

        Raises:
            KafkaClientError: The consumer hit an error and returned no records with it (an error that
                comes with records is logged, and librdkafka keeps retrying on its own).
        """
        if max_records <= 0:
            raise ValueError("max_records must be positive")
        self._raise_fatal()
        out = self._buffer[:max_records]
        del self._buffer[:max_records]
        if len(out) < max_records:
            out += self._take(self._consumer.consume(max_records - len(out), 0), raise_errors=not out)
        deadline = time.monotonic() + timeout_s
        while not out:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            message = self._consumer.poll(left)
            if message is None:
                break
            out += self._take([message], raise_errors=True)
            if out:
                self.outage.recovered()
            if out and len(out) < max_records:
                out += self._take(self._consumer.consume(max_records - len(out), 0), raise_errors=False)
        for record in out:
            self._returned[record.topic_partition] = record.offset + 1
        return out

    def _take(self, messages: Sequence[Message], raise_errors: bool) -> list[KafkaRecord]:
        records: list[KafkaRecord] = []
        errors: list[KafkaError] = []
        for message in messages:
            err = message.error()
            if err is None:
                records.append(KafkaRecord.from_message(message))
            elif err.code() != KafkaError._PARTITION_EOF:
                errors.append(err)
        if errors:
            self._last_error = errors[-1]
        for err in errors:
            log.warning("kafka consumer %s: %s (%s)", self.config.group_id, err.str(), err.name())
        if errors and (raise_errors and not records or errors[0].fatal()):
            raise kafka_error(errors[0], "consuming")
        if self._got_assignment:
            records = [record for record in records if record.topic_partition in self._assigned]
        return records

    def decode(self, record: KafkaRecord) -> DocumentEvent | DeadLetter:
        """The record as an event or a dead letter, with this config's ``max_message_bytes``."""
        return record.decode(self.config.max_message_bytes)

    # -- positions and commits ---------------------------------------------------------------------

    def positions(self) -> dict[TopicPartitionKey, int]:
        """Next offset to be returned, per assigned partition (omitted before the partition's start is
        known, i.e. before its first record or seek)."""
        result: dict[TopicPartitionKey, int] = {}
        assigned = sorted(self._assigned)
        if assigned:
            try:
                current = self._consumer.position([TopicPartition(t, p) for t, p in assigned])
            except KafkaException as err:
                raise kafka_error(err, "reading positions") from None
            for tp in current:
                if tp.offset >= 0 and tp.error is None:
                    result[(tp.topic, tp.partition)] = tp.offset
        result.update({tp: off for tp, off in self._returned.items() if tp in self._assigned})
        for record in reversed(self._buffer):
            result[record.topic_partition] = record.offset
        return result

    def lag(self) -> dict[TopicPartitionKey, int]:
        """Records between this consumer's position and the end of each assigned partition, from the
        high watermarks of its latest fetches (no extra request; partitions not fetched yet are left out).

        Apache Kafka reports the offset after the partition's last record. Tansu, the test broker, reports
        the end of the newest batch, so its lag can read a batch high.
        """
        result: dict[TopicPartitionKey, int] = {}
        for (topic, partition), position in self.positions().items():
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            if high is not None and high >= 0:
                result[(topic, partition)] = max(0, high - position)
        return result

    def seek(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        """Make the next records of these partitions start at these offsets (e.g. the positions an index
        manifest recorded). Partitions not assigned now start there when they are assigned."""
        for tp in _check_offsets(offsets, "seek"):
            key = (tp.topic, tp.partition)
            self._buffer = [record for record in self._buffer if record.topic_partition != key]
            if key not in self._assigned:
                self._pending[key] = tp.offset
                continue
            try:
                self._consumer.seek(tp)
            except KafkaException as err:
                raise kafka_error(err, f"seeking {tp.topic}/{tp.partition} to {tp.offset}") from None
            self._returned[key] = tp.offset

    def commit(self, offsets: Mapping[TopicPartitionKey, int], timeout_s: float = 30.0) -> None:
        """Commit next offsets: returns only once the group coordinator stored them.

        Waits at most ``timeout_s`` for the coordinator's answer (records that arrive meanwhile are kept
        for :meth:`poll_batch`). A commit that was in flight when the coordinator died would otherwise
        wait for the whole outage; one that times out may still be stored later, which is harmless: the
        offsets are ones the caller had finished with.

        Raises:
            KafkaUnavailable: The coordinator was unreachable, did not answer in ``timeout_s``, or the
                group rebalanced (the records will be re-delivered to whoever owns the partitions now;
                nothing is lost).
            KafkaRejected: The commit was refused for good (authorisation, bad offsets).
        """
        partitions = _check_offsets(offsets, "commit")
        if not partitions:
            return
        doing = f"committing offsets {dict(offsets)}"
        if not self._async_commits:
            try:
                result = self._consumer.commit(offsets=partitions, asynchronous=False)
            except KafkaException as err:
                raise kafka_error(err, doing) from None
            self._check_commit(None, result or [])
            return
        pending = _CommitResult(frozenset((tp.topic, tp.partition, tp.offset) for tp in partitions))
        self._commits.append(pending)
        try:
            self._consumer.commit(offsets=partitions, asynchronous=True)
        except KafkaException as err:
            self._commits.remove(pending)
            raise kafka_error(err, doing) from None
        deadline = time.monotonic() + timeout_s
        while not pending.done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KafkaUnavailable(
                    f"{doing}: no answer from the group coordinator in {timeout_s:g}s (brokers down?); "
                    "the offsets are committed with a later commit",
                    KafkaError._TIMED_OUT,
                    "_TIMED_OUT",
                )
            message = self._consumer.poll(min(0.1, left))
            if message is not None:
                self._buffer += self._take([message], raise_errors=False)
            self._raise_fatal()
        self._check_commit(pending.error, pending.partitions)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if not self._commits:
            return  # one librdkafka made itself
        # Answers come in order; match by offsets all the same, so that a commit that never answers
        # (given up on) cannot shift the answers of later ones.
        answered = frozenset((tp.topic, tp.partition, tp.offset) for tp in partitions or ())
        pending = next((c for c in self._commits if c.offsets == answered), self._commits[0])
        self._commits.remove(pending)
        pending.error, pending.partitions, pending.done = err, list(partitions or ()), True

    def _check_commit(self, err: KafkaError | None, partitions: Sequence[TopicPartition]) -> None:
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            raise kafka_error(
                err, f"committing offsets {[(tp.topic, tp.partition, tp.offset) for tp in partitions]}"
            )
        for tp in partitions:
            if tp.error is not None:
                raise kafka_error(tp.error, f"committing offset {tp.offset} of {tp.topic}/{tp.partition}")
        self.outage.recovered()

    def committed(
        self, partitions: Iterable[TopicPartitionKey] | None = None, timeout_s: float = 10.0
    ) -> dict[TopicPartitionKey, int]:
        """The group's committed next offsets (default: of the assigned partitions); partitions without
        a commit are omitted."""
        wanted = sorted(self._assigned if partitions is None else set(partitions))
        if not wanted:
            return {}
        try:
            result = self._consumer.committed([TopicPartition(t, p) for t, p in wanted], timeout=timeout_s)
        except KafkaException as err:
            raise kafka_error(err, "reading committed offsets") from None
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in result
            if tp.offset != OFFSET_INVALID and tp.offset >= 0
        }

    def _raise_fatal(self) -> None:
        if self._fatal:
            raise kafka_error(self._fatal[0], "the consumer (it must be recreated)")

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self, timeout_s: float = 10.0) -> None:
        """Leave the group (commits nothing), waiting at most about ``2 × timeout_s``.

        During a rebalance it first waits, up to ``timeout_s``, for the new assignment, since leaving a
        group that is still forming can strand it (not while the brokers are unreachable: there is no
        group to strand then). librdkafka's own close has no bound: with the coordinator unreachable it
        waits for requests in flight to time out (``socket.timeout.ms``, a minute by default), or longer
        (confluent-kafka-python#1667). It runs in a daemon thread; past ``timeout_s`` it is left behind
        with a warning, as a crashed consumer would be: the group expires the member after
        ``session.timeout.ms``, and nothing is lost, since this client commits nothing at close.
        """
        if self._closed:
            return
        try:
            if self._awaiting and not self._fatal and not self.outage.down:
                self._got_assignment = False
                self._wait_for_assignment(timeout_s)
        finally:
            self._closed = True
            self._buffer.clear()
            self._close_within(timeout_s)

    def _close_within(self, timeout_s: float) -> None:
        failure: list[KafkaException] = []

        def close() -> None:
            try:
                self._consumer.close()
            except KafkaException as err:
                failure.append(err)

        closer = threading.Thread(target=close, name=f"kafka-close-{self.config.group_id}", daemon=True)
        closer.start()
        closer.join(timeout_s)
        group = self.config.group_id
        if closer.is_alive():
            log.warning(
                "kafka consumer %s: close did not finish within %gs%s; leaving it behind (the group "
                "expires this member after session.timeout.ms; nothing was owed to it)",
                group,
                timeout_s,
                f" (brokers unreachable for {self.outage.seconds():.0f}s)" if self.outage.down else "",
            )
        elif failure:
            log.warning("kafka consumer %s: close failed: %s", group, failure[0])

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass
class ProduceReport:
    """What :func:`produce_jsonl` did: documents sent, and every line it refused with the reason."""

    sent: int = 0
    deleted: int = 0
    refused: list[str] = field(default_factory=list)


def produce_jsonl(producer: DocumentProducer, lines: Iterable[bytes]) -> ProduceReport:
    """Send documents from JSON lines (``{"doc_id", "op", "text", "title", "metadata", "version",
    "event_time"}``; ``_id`` is accepted for ``doc_id``), flushing at the end.

    A line that breaks the contract is refused with its line number and reason; the rest are sent.
    """
    report = ProduceReport()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            if not isinstance(doc, dict):
                raise BadRecord("not_an_object", "a document line must be a JSON object")
            doc_id = doc.pop("doc_id", doc.pop("_id", None))
            op = doc.pop("op", "upsert")
            if op == "delete":
                producer.delete(doc_id, doc.get("version"), doc.get("event_time"))
                report.deleted += 1
            else:
                text = doc.get("text")
                if not isinstance(text, str):
                    reason = "missing_text" if text is None else "wrong_type"
                    raise BadRecord(reason, f"an upsert needs a string 'text', got {type(text).__name__}")
                producer.send(
                    doc_id,
                    text,
                    doc.get("title", ""),
                    doc.get("metadata"),
                    doc.get("version"),
                    doc.get("event_time"),
                )
                report.sent += 1
        except json.JSONDecodeError as err:
            report.refused.append(f"line {number}: malformed_json: {err}")
        except BadRecord as err:
            report.refused.append(f"line {number}: {err}")
    producer.flush()
    return report


class KafkaEventSink:
    """The webhook receiver's sink when a document topic is configured: each accepted delivery is
    produced to the topic (acks=all, idempotent) and flushed before the receiver answers 2xx.

    Replay protection then lasts for the receiver's lifetime (accepted ids within the tolerance window
    are kept in memory): the receiver cannot read its deliveries back from Kafka on start. A replay
    after a restart only re-sends an event the index applies idempotently.

    Args:
        producer: A :class:`DocumentProducer` for the document topic.
        decode: Turns a receiver record into its :class:`DocumentEvent` (``connectors.webhooks.decode_record``).
    """

    def __init__(self, producer: DocumentProducer, decode: Callable[[bytes], DocumentEvent]) -> None:
        self.producer = producer
        self.decode = decode
        self.appended = 0

    def append(self, record: bytes) -> int:
        event = self.decode(record)
        if event.op == "delete":
            self.producer.delete(event.doc_id, event.version, event.event_time)
        else:
            self.producer.send(
                event.doc_id, event.text, event.title, event.metadata, event.version, event.event_time
            )
        self.producer.flush()
        self.appended += 1
        return self.appended - 1

    def read(self, from_offset: int, max_records: int = 100, wait_s: float = 0.0) -> list[tuple[int, bytes]]:
        return []

    @property
    def start_offset(self) -> int:
        return 0

    def close(self) -> None:
        self.producer.close()
