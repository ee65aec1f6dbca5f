"""One error tree for the ingest package; redis-py's errors are translated into it at the edge
(`ingest.redis.errors`)."""

from __future__ import annotations


class IngestError(Exception):
    """Base of every error the ingest package raises."""


class SettingsError(IngestError):
    """A setting from the environment or a flag has a value that cannot be used."""


class InvalidEntry(IngestError):
    """A stream entry breaks the contract; `reason` says how, for the dead-letter stream."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RedisUnavailable(IngestError):
    """Redis could not be reached or did not answer in time."""


class StreamFull(RedisUnavailable):
    """A group's backlog has reached its share of MAXLEN: writes wait (as while Redis is away)
    rather than have trimming drop entries the group has not read."""


class RedisCommandFailed(IngestError):
    """Redis answered with an error."""
