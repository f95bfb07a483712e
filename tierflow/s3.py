"""S3 for every component that talks to it: one boto3 client per endpoint, vendor errors in the project's terms.

The file connector reads sources through it; the cold tier checks its bucket and resolves the credentials
that LanceDB's object store is given. botocore errors are translated at this boundary into
:class:`~tierflow.errors.ConfigError` for what configuration must fix (a missing bucket, no credentials,
an unreachable endpoint), :class:`ObjectUnreadable` for one object that cannot be read, and
:class:`ObjectStoreUnavailable` for what a retry may fix. Each keeps the uri it was about.

TLS: boto3 verifies an ``https://`` endpoint (and AWS itself) against botocore's CA bundle, or the one
``AWS_CA_BUNDLE`` names (a private CA for MinIO and the like); LanceDB's object store, which the cold
tier writes through, verifies against the system's certificate store. ``allow_http`` is passed to it
only for an ``http://`` endpoint.

Retries: :class:`RetryPolicy` says how often one S3 request is tried, with backoff, and how long it may
take; the same policy is handed to boto3 (``retries``, ``connect_timeout``, ``read_timeout``) and to
LanceDB's object store (``client_max_retries``, ``client_retry_timeout``, ``connect_timeout``,
``timeout``). Both retry only what a retry may fix: 5xx, throttling (503 SlowDown, 429), timeouts and
dropped connections; a 403 or a missing bucket fails at once. LanceDB raises plain ``RuntimeError`` /
``ValueError`` / ``OSError`` whose text carries the S3 status; :func:`translate_object_store_error` reads
them into the same three classes as botocore's.

Locations: a ``.`` or ``..`` segment in an ``s3://`` uri is refused (:func:`traversal`): S3 keys are not
paths, but HTTP clients, proxies and S3-compatible servers may resolve such a segment to another key,
prefix or bucket.
"""

from __future__ import annotations

import math
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from tierflow.errors import ConfigError, Terminal, TierflowError, Transient

S3_SCHEME = "s3://"

# S3 error codes that a retry may fix; every 5xx counts as well.
_TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
    }
)
_CREDENTIAL_S3_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
)
MISSING_S3_CODES = frozenset({"NoSuchKey", "NotFound", "404"})


class ObjectStoreError(TierflowError):
    """An object store call failed; ``uri`` names the object or prefix it was about.

    Args:
        uri: The object or prefix.
        message: What went wrong.
    """

    def __init__(self, uri: str, message: str) -> None:
        super().__init__(uri, message)
        self.uri = uri
        self.message = message

    def __str__(self) -> str:
        return f"{self.uri}: {self.message}"


class ObjectUnreadable(ObjectStoreError, Terminal):
    """This one object cannot be read (gone, a directory, refused, permission denied); retrying won't help."""


class ObjectStoreUnavailable(ObjectStoreError, Transient):
    """The store failed in a way a retry may fix (a 5xx, throttling, a dropped connection)."""


def is_s3_uri(path: str) -> bool:
    return path.startswith(S3_SCHEME)


def traversal(uri: str) -> str | None:
    """Why the ``s3://`` uri is refused as a location (a ``.`` or ``..`` segment), or None when it is not."""
    segments = uri[len(S3_SCHEME) :].split("/")
    bad = next((part for part in segments if part in (".", "..")), None)
    if bad is None:
        return None
    return (
        f"{uri!r} has a {bad!r} segment; refused: S3 keys are not paths, and an HTTP client, proxy or "
        "S3-compatible server may resolve it to another key or bucket"
    )


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``.

    Raises:
        ConfigError: The uri names no bucket.
    """
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ConfigError(f"{uri!r} names no bucket: write it as s3://bucket/prefix")
    return bucket, key


RETRY_MODES = ("standard", "adaptive", "legacy")


@dataclass(frozen=True)
class RetryPolicy:
    """How one S3 request is retried and timed, for boto3 and for LanceDB's object store alike.

    Args:
        max_attempts: Tries of one request in all (the first one included), with exponential backoff
            and jitter between them; boto3's ``retries.max_attempts``, LanceDB's ``client_max_retries``
            (``max_attempts - 1`` retries).
        mode: boto3's retry mode: ``standard`` or ``adaptive`` (which also slows the client down when
            it is throttled). LanceDB's object store always backs off exponentially.
        timeout_s: Seconds one request may take to answer: boto3's ``read_timeout`` (per socket read),
            LanceDB's ``timeout`` (the whole request, body included). A request that takes longer is
            retried.
        connect_timeout_s: Seconds to open a connection.
        retry_timeout_s: LanceDB's ``client_retry_timeout``: no retry starts once this long has passed
            since a request's first try (boto3 is bounded by ``max_attempts`` alone).
    """

    max_attempts: int = 3
    mode: str = "standard"
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    retry_timeout_s: float = 60.0

    def validate(self, where: str) -> None:
        """Raise a :class:`ConfigError` naming ``where`` (``cold.``) for an unusable value."""
        if self.max_attempts < 1:
            raise ConfigError(f"{where}max_attempts must be >= 1, got {self.max_attempts}")
        if self.mode not in RETRY_MODES:
            raise ConfigError(f"{where}retry_mode must be one of {RETRY_MODES}, got {self.mode!r}")
        for name in ("timeout_s", "connect_timeout_s", "retry_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{where}{name} must be > 0, got {getattr(self, name)}")

    def botocore_config(self) -> Any:
        from botocore.config import Config

        return Config(
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.timeout_s,
            retries={"max_attempts": self.max_attempts, "mode": self.mode},
        )

    def object_store_options(self) -> dict[str, str]:
        """The policy as LanceDB ``storage_options``."""
        return {
            "client_max_retries": str(self.max_attempts - 1),
            "client_retry_timeout": str(max(1, math.ceil(self.retry_timeout_s))),
            "connect_timeout": f"{max(1, round(self.connect_timeout_s * 1000))}ms",
            "timeout": f"{max(1, round(self.timeout_s * 1000))}ms",
        }


# One client per endpoint, region and credential source, shared by the threads of a worker process:
# botocore clients are thread-safe, making them is not, and a new session costs ~0.1 s.
_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()
# What the environment gives a client, besides the arguments: credentials and the CA bundle.
_CLIENT_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_CA_BUNDLE",
)


@dataclass(frozen=True)
class Credentials:
    """Credentials given in configuration instead of the AWS chain: a named profile, or keys (for MinIO and
    other S3 APIs). Empty fields mean "use the usual AWS variables, profile or instance role"."""

    profile: str = ""
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)

    def session_kwargs(self) -> dict[str, str]:
        if self.access_key_id or self.secret_access_key:
            if not (self.access_key_id and self.secret_access_key):
                raise ConfigError("give both access_key_id and secret_access_key, or neither")
            keys = {"aws_access_key_id": self.access_key_id, "aws_secret_access_key": self.secret_access_key}
            return {**keys, **({"aws_session_token": self.session_token} if self.session_token else {})}
        return {"profile_name": self.profile} if self.profile else {}


def _session(region: str | None, credentials: Credentials | None) -> Any:
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        return boto3.session.Session(
            region_name=region or None, **(credentials or Credentials()).session_kwargs()
        )
    except ProfileNotFound as err:
        raise ConfigError(f"AWS profile not found: {err}") from None


def s3_client(
    endpoint_url: str | None,
    region: str | None,
    credentials: Credentials | None = None,
    retry: RetryPolicy | None = None,
) -> Any:
    """The shared boto3 client for this endpoint, region, credentials and :class:`RetryPolicy`
    (default: 3 tries, 5 s to connect, 60 s per read)."""
    retry = retry or RetryPolicy()
    key = (endpoint_url, region, credentials, retry, *(os.environ.get(name) for name in _CLIENT_ENV))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _session(region, credentials).client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=retry.botocore_config()
            )
            _CLIENTS[key] = client
    return client


def s3_code(err: Any) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def s3_status(err: Any) -> int:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def translate_s3_error(
    err: Exception, uri: str, *, listing: bool, endpoint_url: str | None = None
) -> TierflowError:
    """A botocore error as the project's own, keeping the uri.

    Args:
        err: The botocore exception.
        uri: The object or prefix the call was about.
        listing: True while resolving the source (configuration time): an unreachable endpoint or a
            denied listing is then a configuration error; while reading an object it is transient or
            that object's own problem.
        endpoint_url: The endpoint in use, named in messages.

    Returns:
        A :class:`ConfigError`, :class:`ObjectUnreadable` or :class:`ObjectStoreUnavailable`.
    """
    from botocore import exceptions as boto

    endpoint = endpoint_url or "the default AWS endpoint"
    if isinstance(
        err, boto.NoCredentialsError | boto.PartialCredentialsError | boto.CredentialRetrievalError
    ):
        return ConfigError(
            f"no usable AWS credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            f"or AWS_PROFILE, or run with an instance/role profile ({err})"
        )
    if isinstance(err, boto.ParamValidationError):
        return ConfigError(f"invalid S3 location {uri!r}: {err}")
    if isinstance(err, boto.EndpointConnectionError | boto.ConnectTimeoutError):
        if listing:
            return ConfigError(
                f"cannot reach the S3 endpoint {endpoint} for {uri}: check s3_endpoint_url / "
                f"AWS_ENDPOINT_URL and the network ({err})"
            )
        return ObjectStoreUnavailable(uri, f"cannot reach the S3 endpoint {endpoint}: {err}")
    if isinstance(err, boto.ClientError):
        code, status = s3_code(err), s3_status(err)
        bucket = split_s3_uri(uri)[0]
        if code == "NoSuchBucket":
            return ConfigError(
                f"bucket {bucket!r} does not exist at {endpoint} (path {uri}): create it or fix path"
            )
        if code in _CREDENTIAL_S3_CODES:
            return ConfigError(
                f"the AWS credentials were rejected for {uri} ({code}): check the access key and secret"
            )
        if status >= 500 or code in _TRANSIENT_S3_CODES:
            return ObjectStoreUnavailable(uri, f"S3 error {code or status}: {err}")
        if listing:
            hint = "check the credentials and the bucket policy" if status == 403 else "check path"
            return ConfigError(f"cannot list {uri} at {endpoint} ({code or status}): {hint}")
        return ObjectUnreadable(uri, f"S3 error {code or status}: {err}")
    return ObjectStoreUnavailable(uri, f"S3 request failed: {err}")


def check_prefix(
    uri: str,
    endpoint_url: str | None,
    region: str | None,
    credentials: Credentials | None = None,
    retry: RetryPolicy | None = None,
) -> None:
    """Fail with a :class:`ConfigError` unless the bucket of ``uri`` exists, is reachable and the credentials
    may list ``uri``: the check a job makes before it moves anything. A store that keeps failing with
    5xx/throttling after ``retry``'s tries raises :class:`ObjectStoreUnavailable`.
    """
    bucket, key = split_s3_uri(uri)
    client = s3_client(endpoint_url, region, credentials, retry)
    try:
        client.head_bucket(Bucket=bucket)
        client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    except Exception as err:  # botocore raises many unrelated classes; translate them all
        if hasattr(err, "response") and (s3_status(err) == 404 or s3_code(err) in ("404", "NoSuchBucket")):
            raise ConfigError(
                f"bucket {bucket!r} does not exist at {endpoint_url or 'the default AWS endpoint'} "
                f"(path {uri}): create it or fix the path"
            ) from None
        translated = translate_s3_error(err, uri, listing=True, endpoint_url=endpoint_url)
        if isinstance(translated, ConfigError):
            raise translated from None
        raise translated from err


def resolved_credentials(
    endpoint_url: str | None, region: str | None, credentials: Credentials | None = None
) -> dict[str, str]:
    """The credentials and region boto3 resolves (environment, profile, instance role), as the settings
    an object-store client outside boto3 (LanceDB's) takes: ``aws_access_key_id`` ... ``aws_endpoint``.

    Raises:
        ConfigError: No credentials can be found.
    """
    session = _session(region, credentials)
    found = session.get_credentials()
    if found is None:
        raise ConfigError(
            "no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
            "or run with an instance/role profile (or set them in the configuration)"
        )
    frozen = found.get_frozen_credentials()
    options = {"aws_access_key_id": frozen.access_key, "aws_secret_access_key": frozen.secret_key}
    if frozen.token:
        options["aws_session_token"] = frozen.token
    options["aws_region"] = session.region_name or "us-east-1"
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["aws_endpoint"] = endpoint
        if endpoint.startswith("http://"):
            options["allow_http"] = "true"
    return options


# What LanceDB's (Rust object_store's) error text says. Its exceptions are plain RuntimeError/ValueError/
# OSError; the S3 status and code are only in the message ("... non-2xx status code: 503 Service
# Unavailable: <Error><Code>SlowDown</Code>...", "status: 403", "HTTP error: error sending request").
_STATUS = re.compile(r"\bstatus(?: code)?:? (\d{3})\b(?: ([A-Z][A-Za-z ]*[a-z]))?", re.I)
_S3_CODE = re.compile(r"<Code>([^<]+)</Code>")
_DENIED_TEXT = re.compile(r"AccessDenied|lacked the necessary privileges", re.I)
_MISSING_TEXT = re.compile(r"NoSuchKey|Object at location .* not found", re.I)
_STORE_ERROR = re.compile(
    r"S3 error|store: \"S3\"|Error performing|error sending request|HTTP error|RetryError|"
    r"LanceError\(IO\)|object store|timed out|connection",
    re.I,
)


def _reason(text: str) -> str:
    """A short cause from a long object-store error: the status and S3 code, or the network failure."""
    status, code = _STATUS.search(text), _S3_CODE.search(text)
    if status:
        line = " ".join(part for part in (status.group(1), (status.group(2) or "").strip()) if part)
        return line + (f" {code.group(1)}" if code else "")
    for pattern, reason in (
        (r"connection ?refused", "connection refused"),
        (
            r"error sending request|connection closed|reset by peer|broken pipe|connection error",
            "no answer: connection refused, dropped or timed out",
        ),
        (r"timed out", "timed out"),
    ):
        if re.search(pattern, text, re.I):
            return reason
    return "request failed"


def translate_object_store_error(
    err: BaseException, uri: str, endpoint_url: str | None = None
) -> TierflowError | None:
    """An error LanceDB raised while talking to S3, as the project's own; None when it is not one.

    Returns:
        :class:`ConfigError` for what retrying cannot fix (403 / AccessDenied, a missing bucket, rejected
        keys); :class:`ObjectStoreUnavailable` for the rest (5xx, throttling, timeouts, refused or dropped
        connections, and an object missing from the version read: the latest version may not need it).
    """
    text = str(err)
    endpoint = endpoint_url or "the default AWS endpoint"
    found = _STATUS.search(text)
    status = int(found.group(1)) if found else 0
    code = found_code.group(1) if (found_code := _S3_CODE.search(text)) else ""
    if code == "NoSuchBucket":
        bucket = split_s3_uri(uri)[0] if is_s3_uri(uri) else uri
        return ConfigError(
            f"bucket {bucket!r} does not exist at {endpoint} (path {uri}): create it or fix path"
        )
    if code in _CREDENTIAL_S3_CODES:
        return ConfigError(
            f"the AWS credentials were rejected for {uri} ({code}): check the access key and secret"
        )
    if status == 403 or code == "AccessDenied" or _DENIED_TEXT.search(text):
        return ConfigError(
            f"access to {uri} at {endpoint} was denied ({_reason(text)}): check the credentials and the "
            "bucket policy (not retried: retrying cannot fix it)"
        )
    if not (found or _STORE_ERROR.search(text)):
        return None
    if status == 404 or code in MISSING_S3_CODES or _MISSING_TEXT.search(text):
        return ObjectStoreUnavailable(uri, f"an object is missing ({_reason(text)}): {text[:400]}")
    return ObjectStoreUnavailable(uri, f"S3 at {endpoint} failed ({_reason(text)}): {text[:400]}")
