"""The Redis clients of one API process, each made once and configured alike
(`ingest.redis.connection`): text and binary replies, asyncio for the live tails, and walrus for
status on the binary client's pool."""

from __future__ import annotations

from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
import walrus

from ingest.redis.connection import connect, connect_async
from ingest.settings import Settings


@dataclass(frozen=True)
class ApiClients:
    text: redis.Redis
    binary: redis.Redis
    live: aioredis.Redis
    status: walrus.Database

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiClients:
        binary = connect(settings, decode=False)
        return cls(
            text=connect(settings),
            binary=binary,
            live=connect_async(settings),
            status=walrus.Database(connection_pool=binary.connection_pool),
        )
