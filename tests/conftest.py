"""Real servers for the tests: private redis-server processes on free ports in temp dirs.

REDIS_URL points the tests that need no fault injection at an external server instead (its
database is flushed). Where redis-server is missing but a Docker engine runs, testcontainers
starts Redis in a container.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis

from ingest.redis.connection import connect
from ingest.settings import Settings, settings_env
from telemetry.localserver import LocalMosquitto, LocalRedis
from tests.containers import ContainerRedis, docker_available

ROOT = Path(__file__).resolve().parent.parent


class RedisProcess(Protocol):
    @property
    def url(self) -> str: ...
    def kill(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def restart(self) -> None: ...
    def close(self) -> None: ...


def start_redis(workdir: Path) -> RedisProcess:
    if shutil.which("redis-server") is None and docker_available():
        return ContainerRedis()
    server = LocalRedis(workdir=workdir)
    server.start()
    return server


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if "REDIS_URL" in os.environ:
        yield os.environ["REDIS_URL"]
        return
    server = start_redis(tmp_path_factory.mktemp("redis-shared"))
    yield server.url
    server.close()


@pytest.fixture
def redis_url(shared_redis: str) -> str:
    """A Redis shared by the tests, emptied before each one."""
    redis.Redis.from_url(shared_redis).flushall()
    return shared_redis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis owned by this test alone, which it may kill, pause and restart."""
    server = start_redis(tmp_path / "redis")
    yield server
    server.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalMosquitto]:
    """A mosquitto owned by this test, with persistence on."""
    server = LocalMosquitto(workdir=tmp_path / "mosquitto")
    server.start()
    yield server
    server.close()


def make_settings(url: str, **changes: Any) -> Settings:
    """Settings for tests: short timeouts so faults are noticed in seconds; the API answers to
    the host name FastAPI's TestClient sends."""
    base = Settings(
        redis_url=url, block_ms=200, claim_idle_ms=300, max_deliveries=3,
        api_hosts="testserver,localhost,127.0.0.1",
    )  # fmt: skip
    return base.replace(**changes)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
def client(settings: Settings) -> redis.Redis:
    return connect(settings)


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a `telemetry` child process that loads `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "TELEMETRY_"))}
    env.update(settings_env(settings))
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env
