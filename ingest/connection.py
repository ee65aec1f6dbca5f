"""Redis clients configured the way every part of the system needs them."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ingest.settings import Settings


def connect(settings: Settings, *, socket_timeout_s: float | None = None) -> redis.Redis:
    """A client that decodes replies to str and never re-sends a command on its own.

    redis-py's default Retry re-sends a command after a timeout, which can apply a write twice;
    callers here retry deliberately instead, where a retry is safe. Bytes that are not UTF-8
    survive decoding as surrogate escapes, so a garbage entry can still be dead-lettered intact.
    """
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        encoding_errors="surrogateescape",
        socket_timeout=socket_timeout_s or settings.socket_timeout_s,
        socket_connect_timeout=5.0,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
