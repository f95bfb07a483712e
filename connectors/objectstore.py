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
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from tierflow.errors import ConfigError, TierflowError
from tierflow.s3 import (
    MISSING_S3_CODES,
    S3_SCHEME,
    ObjectUnreadable,
    is_s3_uri,
    s3_client,
    s3_code,
    s3_status,
    split_s3_uri,
    translate_s3_error,
    traversal,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class ObjectInfo(NamedTuple):
    """One listed object: its uri (absolute path or ``s3://bucket/key``), size in bytes, mtime in ns, and
    its S3 ETag (empty for local files), which changes with every overwrite even within one second."""

    uri: str
    size: int
    mtime_ns: int
    etag: str = ""


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
    """Local files. Reads under ``root`` refuse paths that resolve outside it (symlinks, ``..``, another
    absolute path).

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
            how = "symlink resolves" if os.path.islink(uri) else "path resolves"
            return f"{how} to {real!r}, outside the source root {self._root!r}; refused"
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

    A uri with a ``.`` or ``..`` segment is refused before any request (:func:`tierflow.s3.traversal`):
    a prefix with :class:`ConfigError`, an object (a listed key) as unreadable.

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
            self._client = s3_client(self._endpoint_url, self._region)
        return self._client

    def _translate(self, err: Exception, uri: str, *, listing: bool) -> TierflowError:
        return translate_s3_error(err, uri, listing=listing, endpoint_url=self._endpoint_url)

    def refusal(self, uri: str) -> str | None:
        return traversal(uri)

    def stat(self, uri: str) -> ObjectInfo | None:
        from botocore.exceptions import BotoCoreError, ClientError

        reason = traversal(uri)
        if reason:
            raise ConfigError(reason)
        bucket, key = split_s3_uri(uri)
        if not key or key.endswith("/"):
            return None
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if s3_code(err) in MISSING_S3_CODES or s3_status(err) == 404:
                return None
            raise self._translate(err, uri, listing=True) from err
        except BotoCoreError as err:
            raise self._translate(err, uri, listing=True) from err
        return ObjectInfo(
            uri, int(head["ContentLength"]), _ns(head["LastModified"]), str(head.get("ETag", "")).strip('"')
        )

    def list(self, prefix: str, glob: str = "*") -> list[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        reason = traversal(prefix)
        if reason:
            raise ConfigError(reason)
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
                        ObjectInfo(
                            f"{S3_SCHEME}{bucket}/{name}",
                            int(obj["Size"]),
                            _ns(obj["LastModified"]),
                            str(obj.get("ETag", "")).strip('"'),
                        )
                    )
        except (ClientError, BotoCoreError) as err:
            raise self._translate(err, prefix, listing=True) from err
        return sorted(found)

    def read(self, uri: str, start: int, end: int) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        reason = traversal(uri)
        if reason:
            raise ObjectUnreadable(uri, reason)
        if end <= start:
            return b""
        bucket, key = split_s3_uri(uri)
        try:
            response = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")
            return bytes(response["Body"].read())
        except ClientError as err:
            if s3_code(err) == "InvalidRange":  # start is at or past the end of the object
                return b""
            raise self._translate(err, uri, listing=False) from err
        except BotoCoreError as err:
            raise self._translate(err, uri, listing=False) from err

    def join(self, prefix: str, name: str) -> str:
        return f"{prefix.rstrip('/')}/{name}"


def _ns(timestamp: Any) -> int:
    """A botocore ``LastModified`` datetime as integer nanoseconds since the epoch."""
    return int(timestamp.timestamp()) * 1_000_000_000 + timestamp.microsecond * 1000


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
