"""One error tree for the ingest package; Redis errors are translated here, at the edge."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis


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


class RedisCommandFailed(IngestError):
    """Redis answered with an error."""


@contextmanager
def redis_errors() -> Iterator[None]:
    """Translate redis-py's exceptions into this package's tree."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(str(exc) or type(exc).__name__) from exc
    except redis.ResponseError as exc:
        raise RedisCommandFailed(str(exc)) from exc
