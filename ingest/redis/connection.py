"""Redis clients configured the way every part of the system needs them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from ingest.redis.cluster import async_slot_pool, slot_pool
from ingest.redis.internals import check_client_library
from ingest.settings import Settings


def connect(
    settings: Settings, *, socket_timeout_s: float | None = None, decode: bool = True
) -> redis.Redis:
    """A client that decodes replies to str and never re-sends a command on its own; on a
    Redis Cluster, one that talks to the master serving `settings.stream`'s slot.

    redis-py's default Retry re-sends a command after a timeout, which can apply a write twice;
    callers here retry deliberately instead, where a retry is safe. Bytes that are not UTF-8
    survive decoding as surrogate escapes, so a garbage entry can still be dead-lettered intact.
    With `decode=False` replies stay bytes, for packed binary values.
    """
    check_client_library()
    options = {**_options(settings, socket_timeout_s, decode), "retry": Retry(NoBackoff(), 0)}
    if settings.redis_cluster:
        pool = slot_pool(settings.redis_url, settings.stream, **options)
        return redis.Redis(connection_pool=pool)
    return redis.Redis.from_url(settings.redis_url, **options)


def binary_twin(client: redis.Redis) -> redis.Redis:
    """A client to the same server with the same options whose replies stay bytes."""
    kwargs = {**client.connection_pool.connection_kwargs, "decode_responses": False}
    pool = redis.ConnectionPool(connection_class=client.connection_pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=pool)


def connect_async(settings: Settings) -> aioredis.Redis:
    """An asyncio client configured as `connect` configures its clients."""
    check_client_library()
    options = {**_options(settings, None, True), "retry": AsyncRetry(NoBackoff(), 0)}
    if settings.redis_cluster:
        pool = async_slot_pool(settings.redis_url, settings.stream, **options)
        return aioredis.Redis(connection_pool=pool)
    return aioredis.Redis.from_url(settings.redis_url, **options)


def _options(settings: Settings, socket_timeout_s: float | None, decode: bool) -> dict[str, Any]:
    return {
        "decode_responses": decode,
        "encoding_errors": "surrogateescape",
        "socket_timeout": socket_timeout_s or settings.socket_timeout_s,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 0,
    }


StreamEntries = list[tuple[str, dict[str, str]]]


def read_range(
    client: redis.Redis, stream: str, start: str = "-", end: str = "+", count: int | None = None
) -> StreamEntries:
    """XRANGE with the types a decoding client returns (redis-py declares every reply type)."""
    return cast(StreamEntries, client.xrange(stream, min=start, max=end, count=count))


def read_range_newest_first(
    client: redis.Redis, stream: str, end: str = "+", start: str = "-", count: int | None = None
) -> StreamEntries:
    """XREVRANGE, typed like `read_range`."""
    return cast(StreamEntries, client.xrevrange(stream, max=end, min=start, count=count))


def as_text(value: bytes | str) -> str:
    """A value from a client that answers in bytes or in text, as text."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def fields_arg(fields: Mapping[str, str]) -> dict[Any, Any]:
    """Fields for redis-py's xadd, as bytes: text read with surrogate escapes (bytes that were
    not UTF-8) goes back to Redis exactly as it came."""
    return {_raw(name): _raw(value) for name, value in fields.items()}


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")
