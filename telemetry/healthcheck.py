"""`telemetry healthcheck`: exit 0 while this container's service answers on its own port (the
metrics port of a worker or the bridge, /healthz of the API), 1 otherwise; a container's health
check runs it. A service with neither port (the simulator) has nothing to answer: healthy."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Mapping

from ingest.settings import Settings

TIMEOUT_S = 3.0


def health_url(settings: Settings, env: Mapping[str, str]) -> str | None:
    if settings.metrics_port is not None:
        return f"http://127.0.0.1:{settings.metrics_port}/metrics"
    if "TELEMETRY_API_PORT" in env:
        return f"http://127.0.0.1:{settings.api_port}/healthz"
    return None


def healthcheck(settings: Settings) -> tuple[str, int]:
    url = health_url(settings, os.environ)
    if url is None:
        return "no port to check: healthy while running", 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:
            return f"{url}: {answer.status}", 0
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}", 1
