"""Redis in a container through testcontainers, for machines with Docker but no redis-server.

It offers what the tests use of LocalRedis: url, kill, pause, resume, restart, close.
"""

from __future__ import annotations

from typing import Any

import docker
from testcontainers.community.redis import RedisContainer


class ContainerRedis:
    def __init__(self) -> None:
        self._container: Any = RedisContainer("redis:7.0")
        self._container.start()

    @property
    def url(self) -> str:
        host = self._container.get_container_host_ip()
        port = self._container.get_exposed_port(6379)
        return f"redis://{host}:{port}/0"

    def _docker(self) -> Any:
        return self._container.get_wrapped_container()

    def kill(self) -> None:
        self._docker().kill()

    def pause(self) -> None:
        self._docker().pause()

    def resume(self) -> None:
        self._docker().unpause()

    def start(self) -> None:
        self._docker().start()

    def stop(self) -> None:
        self._docker().stop()

    def restart(self) -> None:
        self._docker().restart()

    def close(self) -> None:
        self._container.stop()


def docker_available() -> bool:
    try:
        docker.from_env().ping()
    except Exception:
        return False
    return True
