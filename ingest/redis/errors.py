"""redis-py's exceptions translated into this package's tree, at the edge."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from ingest.errors import RedisCommandFailed, RedisUnavailable, SettingsError


@contextmanager
def redis_errors() -> Iterator[None]:
    """Translate redis-py's exceptions into this package's tree."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(str(exc) or type(exc).__name__) from exc
    except redis.exceptions.AskError as exc:
        raise not_clustered(exc) from None
    except redis.ResponseError as exc:
        raise RedisCommandFailed(str(exc)) from exc


def not_clustered(exc: Exception) -> SettingsError:
    """What a Redis Cluster node's MOVED (or ASK) to a client not in cluster mode means."""
    return SettingsError(
        f"Redis answered {str(exc)[:60]!r}: it is a Redis Cluster node; set "
        "TELEMETRY_REDIS_CLUSTER=yes"
    )
