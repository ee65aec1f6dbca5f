"""redis-py's exceptions translated into this package's tree, at the edge."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from ingest.errors import RedisCommandFailed, RedisUnavailable


@contextmanager
def redis_errors() -> Iterator[None]:
    """Translate redis-py's exceptions into this package's tree."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(str(exc) or type(exc).__name__) from exc
    except redis.ResponseError as exc:
        raise RedisCommandFailed(str(exc)) from exc
