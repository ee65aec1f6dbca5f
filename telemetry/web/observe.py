"""How long the API takes to answer: a histogram per route (its template, such as
`/sensors/{sensor_id}/stats`, so the label's values stay few), method and status class."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestTimer:
    """ASGI middleware observing every HTTP request (websockets are long-lived: not timed)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.seconds = Histogram(
            "telemetry_http_request_seconds", "HTTP requests the API answered, by how long",
            ["method", "route", "status"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting)
        finally:
            self.seconds.labels(scope["method"], _route(scope), f"{status // 100}xx").observe(
                time.perf_counter() - started
            )


def _route(scope: Scope) -> str:
    """The template of the route the router matched (it leaves it in the scope), or `other`:
    unknown paths are not labels."""
    return str(getattr(scope.get("route"), "path", "other"))
