"""Object stores for the file connector: one small interface over local directories and S3 prefixes.

A store lists the objects under a root, stats one object and reads byte ranges of it. The file
connector only talks to this interface, so local files and S3 objects take the same code path.
Vendor errors (botocore) are translated here, at the client boundary, into the project's own:
:class:`~tierflow.errors.ConfigError` for what configuration must fix (a missing bucket, no
credentials, an unreachable endpoint), :class:`ObjectUnreadable` for one object that cannot be read,
:class:`ObjectStoreUnavailable` for what a retry may fix. Each keeps the uri it was about.

Example:
    >>> store = open_store("/data/docs")
    >>> for info in store.list("/data/docs", "*.md"):
    ...     head = store.read(info.uri, 0, 100)
"""

from __future__ import annotations

import abc
import fnmatch
import io
import os
import threading
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from tierflow.errors import ConfigError, Terminal, TierflowError, Transient

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

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
_MISSING_S3_CODES = frozenset({"NoSuchKey", "NotFound", "404"})


class ObjectInfo(NamedTuple):
    """One listed object: its uri (absolute path or ``s3://bucket/key``), size in bytes, mtime in ns."""

    uri: str
    size: int
    mtime_ns: int


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


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``.

    Raises:
        ConfigError: The uri names no bucket.
    """
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ConfigError(f"{uri!r} names no bucket: write it as s3://bucket/prefix")
    return bucket, key


def _matches(relative: str, glob: str) -> bool:
    """Whether a path relative to the root matches ``glob``; hidden names (``.git``, ``.DS_Store``) never do.

    ``*`` crosses ``/`` (fnmatch), so ``*.md`` matches Markdown files at any depth.
    """
    parts = relative.split("/")
    return not any(part.startswith(".") for part in parts) and fnmatch.fnmatchcase(relative, glob)


class ObjectStore(abc.ABC):
    """The few operations the file connector needs from a file system or an object store.

    Example:
        >>> store = open_store("s3://bucket/prefix", endpoint_url="http://127.0.0.1:5000")
        >>> infos = store.list("s3://bucket/prefix", "*.jsonl")
    """

    #: The ``SourcePosition.system`` of events read from this store.
    system: str

    @abc.abstractmethod
    def stat(self, uri: str) -> ObjectInfo | None:
        """The object at exactly ``uri``, or None when there is none (nothing, or a directory/prefix)."""

    @abc.abstractmethod
    def list(self, prefix: str, glob: str = "*") -> list[ObjectInfo]:
        """Every object under the directory/prefix ``prefix`` whose relative path matches ``glob``, by uri.

        Raises:
            ConfigError: The directory or bucket does not exist, or cannot be reached or listed.
        """

    @abc.abstractmethod
    def read(self, uri: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object; fewer (or none) where the object ends sooner.

        Raises:
            ObjectUnreadable: The object cannot be read.
            ObjectStoreUnavailable: A transient failure; retry later.
        """

    @abc.abstractmethod
    def join(self, prefix: str, name: str) -> str:
        """The uri of ``name`` inside the directory/prefix ``prefix``."""

    def refusal(self, uri: str) -> str | None:
        """Why :meth:`read` will refuse ``uri`` whatever its content, or None. Lets planners keep it whole."""
        return None

    def open(self, uri: str) -> BinaryIO:
        """A seekable binary file over the object, reading ranges on demand (for Parquet footers)."""
        info = self.stat(uri)
        if info is None:
            raise ObjectUnreadable(uri, "object not found")
        return io.BufferedReader(_RangeFile(self, uri, info.size), buffer_size=1 << 20)


class _RangeFile(io.RawIOBase):
    """A read-only, seekable raw file whose reads are :meth:`ObjectStore.read` range requests."""

    def __init__(self, store: ObjectStore, uri: str, size: int) -> None:
        super().__init__()
        self._store, self._uri, self._size, self._pos = store, uri, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._size - self._pos)
        if want <= 0:
            return 0
        data = self._store.read(self._uri, self._pos, self._pos + want)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


class LocalStore(ObjectStore):
    """Local files. Reads under ``root`` refuse symlinks that resolve outside it.

    Symlinked directories are not descended into; symlinked files are listed (with their target's
    size and mtime) and read only while they stay inside ``root``.

    Args:
        root: The directory (or file) the source covers; None to allow any path.
    """

    system = "file"

    def __init__(self, root: str | None = None) -> None:
        self._root = root

    def stat(self, uri: str) -> ObjectInfo | None:
        try:
            st = os.stat(uri)
        except OSError:
            return None
        if not os.path.isfile(uri):
            return None
        return ObjectInfo(uri, st.st_size, st.st_mtime_ns)

    def list(self, prefix: str, glob: str = "*") -> list[ObjectInfo]:
        if not os.path.isdir(prefix):
            raise ConfigError(
                f"path {prefix!r} does not exist (or is neither a file nor a directory): "
                "fix FileSourceConfig.path or create it"
            )
        found: list[ObjectInfo] = []
        for directory, dirnames, filenames in os.walk(prefix, followlinks=False):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                uri = os.path.join(directory, name)
                if not _matches(PurePath(os.path.relpath(uri, prefix)).as_posix(), glob):
                    continue
                try:
                    st = os.stat(uri)
                except OSError:  # a dangling symlink: listed, so reading it reports why it failed
                    st = os.lstat(uri)
                found.append(ObjectInfo(uri, st.st_size, st.st_mtime_ns))
        return sorted(found)

    def join(self, prefix: str, name: str) -> str:
        return os.path.join(prefix, name)

    def refusal(self, uri: str) -> str | None:
        if os.path.exists(uri) and not os.path.isfile(uri):  # a FIFO or device would block or never end
            return "not a regular file; refused"
        if self._root is None or uri == self._root:
            return None
        real, root = os.path.realpath(uri), os.path.realpath(self._root)
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            return f"symlink resolves to {real!r}, outside the source root {self._root!r}; refused"
        return None

    def read(self, uri: str, start: int, end: int) -> bytes:
        reason = self.refusal(uri)
        if reason:
            raise ObjectUnreadable(uri, reason)
        if end <= start:
            return b""
        try:
            with open(uri, "rb") as file:
                file.seek(start)
                return file.read(end - start)
        except OSError as err:
            raise ObjectUnreadable(uri, err.strerror or str(err)) from err

    def open(self, uri: str) -> BinaryIO:
        reason = self.refusal(uri)
        if reason:
            raise ObjectUnreadable(uri, reason)
        try:
            return open(uri, "rb")
        except OSError as err:
            raise ObjectUnreadable(uri, err.strerror or str(err)) from err


class S3Store(ObjectStore):
    """S3 (or any S3 API) through boto3: paginated listing, ``Range`` GETs.

    The client is made on first use and shared within the process, so a store is cheap to build on a
    worker.

    Args:
        endpoint_url: For S3-compatible services (MinIO, moto); None for AWS.
        region: None to take it from the AWS environment/config.
    """

    system = "s3"

    def __init__(self, endpoint_url: str | None = None, region: str | None = None) -> None:
        self._endpoint_url = endpoint_url
        self._region = region
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _s3_client(self._endpoint_url, self._region)
        return self._client

    def _translate(self, err: Exception, uri: str, *, listing: bool) -> TierflowError:
        return translate_s3_error(err, uri, listing=listing, endpoint_url=self._endpoint_url)

    def stat(self, uri: str) -> ObjectInfo | None:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3_uri(uri)
        if not key or key.endswith("/"):
            return None
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if _s3_code(err) in _MISSING_S3_CODES or _s3_status(err) == 404:
                return None
            raise self._translate(err, uri, listing=True) from err
        except BotoCoreError as err:
            raise self._translate(err, uri, listing=True) from err
        return ObjectInfo(uri, int(head["ContentLength"]), _ns(head["LastModified"]))

    def list(self, prefix: str, glob: str = "*") -> list[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3_uri(prefix)
        if key and not key.endswith("/"):
            key += "/"
        found: list[ObjectInfo] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                for obj in page.get("Contents", ()):
                    name = obj["Key"]
                    if name.endswith("/") or not _matches(name[len(key) :], glob):
                        continue
                    found.append(
                        ObjectInfo(f"{S3_SCHEME}{bucket}/{name}", int(obj["Size"]), _ns(obj["LastModified"]))
                    )
        except (ClientError, BotoCoreError) as err:
            raise self._translate(err, prefix, listing=True) from err
        return sorted(found)

    def read(self, uri: str, start: int, end: int) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        if end <= start:
            return b""
        bucket, key = split_s3_uri(uri)
        try:
            response = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")
            return bytes(response["Body"].read())
        except ClientError as err:
            if _s3_code(err) == "InvalidRange":  # start is at or past the end of the object
                return b""
            raise self._translate(err, uri, listing=False) from err
        except BotoCoreError as err:
            raise self._translate(err, uri, listing=False) from err

    def join(self, prefix: str, name: str) -> str:
        return f"{prefix.rstrip('/')}/{name}"


# One client per endpoint, region and credential source, shared by the threads of a worker process:
# botocore clients are thread-safe, making them is not, and a new session costs ~0.1 s.
_CLIENTS: dict[tuple[str | None, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()
_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


def _s3_client(endpoint_url: str | None, region: str | None) -> Any:
    key = (endpoint_url, region, *(os.environ.get(name) for name in _CREDENTIAL_ENV))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.session.Session().client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                config=Config(
                    connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}
                ),
            )
            _CLIENTS[key] = client
    return client


def _ns(timestamp: Any) -> int:
    """A botocore ``LastModified`` datetime as integer nanoseconds since the epoch."""
    return int(timestamp.timestamp()) * 1_000_000_000 + timestamp.microsecond * 1000


def _s3_code(err: Any) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _s3_status(err: Any) -> int:
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
        code, status = _s3_code(err), _s3_status(err)
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


def open_store(
    path: str, *, endpoint_url: str | None = None, region: str | None = None, root: str | None = None
) -> ObjectStore:
    """The store that serves ``path``: :class:`S3Store` for ``s3://`` uris, else :class:`LocalStore`.

    Args:
        path: A local path or an ``s3://`` uri.
        endpoint_url: S3 endpoint (ignored for local paths).
        region: S3 region (ignored for local paths).
        root: For local paths, the root that symlinks must not leave.
    """
    if is_s3_uri(path):
        return S3Store(endpoint_url, region)
    return LocalStore(root)
