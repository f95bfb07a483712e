"""The project's exception hierarchy: one root, with Transient/Terminal mixins for retry decisions."""

from __future__ import annotations

import errno


class TierflowError(Exception):
    """Root of every error tierflow raises on purpose.

    Retry decisions are taken from the class (``isinstance(err, Transient)``), never from the message.
    Subclasses keep their constructor arguments in ``args`` so they pickle across Beam workers.
    """


class Transient:
    """Mixin: the operation may succeed if retried (a broker restart, an S3 5xx, a lock held)."""


class Terminal:
    """Mixin: retrying cannot help (bad input, bad configuration, a corrupt file)."""


class ConfigError(TierflowError, Terminal):
    """Configuration is missing, unknown or invalid; the message says where it was looked for."""


class BadRecord(TierflowError, Terminal):
    """One input record cannot be turned into a document. ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class IndexCorrupt(TierflowError, Terminal):
    """A hot-tier file failed its checksum or could not be read; it is refused, not served."""


class DiskFull(TierflowError, OSError, Terminal):
    """The device holding the index is full (``ENOSPC``/``EDQUOT``). Terminal: retrying will not help
    until someone frees space. Nothing partial was published; the last committed generation still serves.

    Also an ``OSError`` (``errno`` ``ENOSPC``), so code that tolerates a failed write (an access log, an
    audit line) still does; its one argument is the message, so it pickles and crosses Beam workers.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


class IndexConflict(TierflowError, Transient):
    """Another writer committed, or holds the commit lock; the commit can be retried."""


class IncompatibleIndex(TierflowError, Terminal):
    """Vectors of another model, dimension or normalisation would be mixed into an index."""


class VersionError(TierflowError, Terminal):
    """An index-version operation cannot be done as asked: no such version, one that is live already, a
    candidate with no committed state, a name in use."""


class SourceUnavailable(TierflowError, Transient):
    """A stream's source (Kafka brokers, a Postgres server) stayed unreachable for longer than the stream
    was configured to wait; nothing was acknowledged that the index does not hold, so a rerun resumes."""
