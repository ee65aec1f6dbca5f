"""The HTTP API (FastAPI): aggregates and sensors as JSON, with OpenAPI docs at /docs.

telemetry api      # or: uvicorn --factory telemetry.web.app:app_from_environment
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pathlib
import re
import time
from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
import redis
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware
from swagger_ui_bundle import swagger_ui_path

from analytics import fleet, query
from analytics.alerts.listing import AlertChange, alert_sources, list_alerts
from analytics.errors import QueryError
from analytics.fleet import RANKINGS, Ranked
from analytics.health import SystemCollector, SystemStatus
from analytics.query import SensorInfo, Stats, Store, Stores, Window
from analytics.tiers import parse_tiers
from analytics.times import parse_time_ms
from ingest.contract.reading import METRIC_NAME, SENSOR_ID
from ingest.devices import DeviceRegistry
from ingest.durability import DurabilityError
from ingest.durations import parse_duration_ms
from ingest.errors import RedisUnavailable, SettingsError, StreamFull
from ingest.keys import StreamKeys
from ingest.metrics import WRITER, Exported
from ingest.redis.errors import redis_errors
from ingest.runtime import LOG_FORMAT
from ingest.settings import Settings
from ingest.shards import shards
from ingest.status import ShardedStatus, StreamStatus, status_report
from telemetry.web.alerting import alerting_router
from telemetry.web.auth import Access, AccessGuard, Grant
from telemetry.web.charts import charts_router
from telemetry.web.clients import ApiClients
from telemetry.web.deadletters import dead_letters_router
from telemetry.web.devices import Where, among, devices_router
from telemetry.web.live import live_router
from telemetry.web.observe import RequestTimer
from telemetry.web.params import parameter
from telemetry.web.readings import readings_router

log = logging.getLogger(__name__)
STATIC = pathlib.Path(__file__).parent / "static"
LATEST_WITHIN_MS = 600_000
# What a 429 asks a writer to wait while a group catches up.
RETRY_AFTER_S = 1
# query.Stats as msgspec encodes it fastest.
StatsRecord = msgspec.defstruct("StatsRecord", query.STATS_FIELDS)
SensorId = Annotated[str, Path(pattern=f"^{SENSOR_ID.pattern}$", description="a sensor id")]
Metric = Annotated[str, Query(pattern=f"^{METRIC_NAME.pattern}$", description="metric name")]


class OutageLog:
    """Logs one line when Redis goes away and one when it is back, not one per request."""

    def __init__(self) -> None:
        self._since: float | None = None

    def down(self, exc: Exception) -> None:
        if self._since is None:
            self._since = time.monotonic()
            log.warning("redis unavailable (%s); answering 503 until it is back", exc)

    def up(self) -> None:
        if self._since is not None:
            log.info("redis is back after %.1fs", time.monotonic() - self._since)
            self._since = None


class LatestValue(BaseModel):
    value: float
    ts_ms: int


LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")


def allowed_hosts(settings: Settings) -> list[str]:
    """The host names the API answers to: TELEMETRY_API_HOSTS, or the loopback names and the
    address it listens on."""
    if settings.api_hosts:
        return [host.strip() for host in settings.api_hosts.split(",") if host.strip()]
    return [*LOOPBACK, settings.api_host]


def create_app(settings: Settings) -> FastAPI:
    every = shards(settings)
    shard_clients = [ApiClients.from_settings(shard.settings) for shard in every]
    clients = shard_clients[0]
    tiers = parse_tiers(settings.tiers)
    # Aggregates are packed binary; everything else is read as text.
    stores = Stores(tuple(Store(c.binary, StreamKeys(shard.stream), tiers)
                          for c, shard in zip(shard_clients, every, strict=True)))  # fmt: skip
    shard_alerts = alert_sources(settings, [c.text for c in shard_clients])
    app = FastAPI(
        title="telemetry",
        description="Rolling aggregates per sensor and metric from the `aggregates` group, and "
        "alerts from the `alerts` group.",
        max_body_size=settings.api_max_body,
        docs_url=None,
        redoc_url=None,
        # The token goes in a header (AccessGuard checks it); this documents it for clients.
        dependencies=[
            Depends(
                HTTPBearer(
                    auto_error=False, description="API_TOKEN, API_WRITE_TOKEN or API_READ_TOKEN"
                )
            )
        ],
    )
    access = Access(settings)
    collectors = CollectorRegistry()
    app.add_middleware(AccessGuard, access=access)
    # A name no one configured is refused: a page that rebinds its own DNS name to this
    # address reaches the API under that name.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(settings))
    app.add_middleware(RequestTimer, registry=collectors)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Where and why, never the input itself: it may be megabytes, or a secret.
        problems = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:200]}
            for e in exc.errors()[:20]
        ]
        return JSONResponse({"detail": problems}, status_code=422)

    def known_sensor(sensor_id: str) -> SensorInfo:
        info = query.sensor_info(stores.of(sensor_id), sensor_id)
        if info is None:
            raise HTTPException(404, f"unknown sensor {sensor_id!r}")
        return info

    @app.exception_handler(QueryError)
    async def unanswerable(_request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    outage = OutageLog()

    @app.exception_handler(RedisUnavailable)
    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def redis_down(_request: Request, exc: Exception) -> JSONResponse:
        # Where Redis is stays in the log, not in answers to whoever asks.
        outage.down(exc)
        return JSONResponse({"detail": "redis unavailable"}, status_code=503)

    @app.exception_handler(StreamFull)
    async def stream_full(_request: Request, exc: StreamFull) -> JSONResponse:
        # The client sends again later; meanwhile nothing it posted is written.
        return JSONResponse(
            {"detail": str(exc)}, status_code=429, headers={"Retry-After": str(RETRY_AFTER_S)}
        )

    @app.exception_handler(DurabilityError)
    async def not_durable(_request: Request, exc: DurabilityError) -> JSONResponse:
        log.error("%s", exc)
        return JSONResponse(
            {"detail": "redis does not keep writes as TELEMETRY_DURABILITY requires"},
            status_code=503,
        )

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="telemetry API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon-32x32.png",
        )

    @app.post("/ws-ticket", responses={401: {"description": "missing or wrong API token"}})
    def ws_ticket(request: Request) -> dict[str, str]:
        """A single-use ticket, valid 30 s, that opens one websocket with this token's scope
        (`?ticket=`): a browser cannot send a token header on a websocket."""
        # AccessGuard let the request in and recorded what its token grants.
        grant: Grant = request.state.grant
        try:
            return {"ticket": access.ticket(grant)}
        except OverflowError as exc:
            raise HTTPException(429, str(exc)) from None

    app.include_router(readings_router(settings, clients.text))
    app.include_router(dead_letters_router(settings))
    registry = DeviceRegistry(settings)
    app.include_router(devices_router(settings, stores, registry))
    app.include_router(alerting_router(settings, shard_alerts))
    app.include_router(charts_router(stores, registry))
    app.include_router(live_router(settings, [c.live for c in shard_clients], access))
    system_status = SystemStatus(settings, [c.status for c in shard_clients])
    collectors.register(SystemCollector(shard_alerts, system_status))
    # POST /readings writes: the API's own writer and its Redis outages.
    collectors.register(Exported(WRITER))

    @app.get("/groups", response_model=StreamStatus | ShardedStatus)
    def groups() -> dict[str, Any]:
        """The stream, its consumer groups, their lag, pending entries and ledgers: what
        `telemetry status` shows."""
        return status_report(system_status())

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(collectors), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", responses={503: {"description": "Redis is unavailable"}})
    def healthz() -> dict[str, str]:
        """200 while the API reaches Redis, 503 while it does not."""
        with redis_errors():
            for store in stores.every:
                store.client.ping()
        outage.up()
        return {"status": "ok"}

    @app.get("/sensors")
    def sensors(
        response: Response,
        q: Annotated[str, Query(description="only ids containing this", max_length=128)] = "",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
        where: Where = None,
    ) -> list[SensorInfo]:
        """Sensors seen (all, or one page, or those whose labels match `where`), sorted by id,
        with their metrics, the time of their newest reading, labels and units; the
        X-Total-Count header says how many match."""
        total, page = query.sensor_page(stores, q, offset, limit, among(stores, registry, where))
        response.headers["X-Total-Count"] = str(total)
        return page

    @app.get("/fleet/latest")
    def latest(
        sensor: Annotated[list[str], Query(max_length=200)],
    ) -> dict[str, dict[str, LatestValue]]:
        """Each sensor's newest value of each metric within the last 10 minutes (for up to
        200 sensors at a time)."""
        answer: dict[str, dict[str, LatestValue]] = {}
        for sensor_id in dict.fromkeys(sensor):
            store = stores.of(sensor_id)
            info = query.sensor_info(store, sensor_id)
            if info is None:
                continue
            answer[sensor_id] = {}
            for metric in info.metrics:
                window = query.rolling(store, sensor_id, metric, LATEST_WITHIN_MS)
                if window.stats is not None:
                    answer[sensor_id][metric] = LatestValue(
                        value=window.stats.last, ts_ms=window.stats.last_ts_ms
                    )
        return answer

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> RedirectResponse:
        return RedirectResponse("/static/favicon.svg", status_code=301)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "dashboard.html")

    @app.get("/sensors/{sensor_id}", responses={404: {"description": "unknown sensor"}})
    def sensor(sensor_id: SensorId) -> SensorInfo:
        return known_sensor(sensor_id)

    @app.get(
        "/sensors/{sensor_id}/aggregates",
        response_model=list[Stats],
        responses={404: {"description": "unknown sensor"}},
    )
    def aggregates(
        sensor_id: SensorId,
        metric: Metric,
        tier: str = "1m",
        from_: Annotated[str, Query(alias="from", description="ISO 8601, now, or 1h ago")] = "1h",
        to: Annotated[str, Query(description="ISO 8601, now, or a time ago")] = "now",
    ) -> Response:
        """Every bucket of a tier between two times, oldest first."""
        known_sensor(sensor_id)
        now = query.now_ms()
        start = parameter("from", lambda: parse_time_ms(from_, now))
        end = parameter("to", lambda: parse_time_ms(to, now))
        if start >= end:
            raise HTTPException(422, "from must be before to")
        columns = query.bucket_columns(stores.of(sensor_id), sensor_id, metric, tier, start, end)
        # Up to thousands of plain records: serialised directly rather than validated one by
        # one against the response model, which would take most of the request's time.
        records = list(map(StatsRecord, *columns))
        return Response(msgspec.json.encode(records), media_type="application/json")

    @app.get("/sensors/{sensor_id}/rolling", responses={404: {"description": "unknown sensor"}})
    def rolling(
        sensor_id: SensorId,
        metric: Metric,
        last: Annotated[str, Query(description="window length: 30s, 5m, 1h, 7d")] = "5m",
        tier: str | None = None,
    ) -> Window:
        """The last N minutes merged; the answer says which span its buckets cover."""
        known_sensor(sensor_id)
        span = parameter("last", lambda: parse_duration_ms(last))
        return query.rolling(stores.of(sensor_id), sensor_id, metric, span, tier_name=tier)

    @app.get("/alerts")
    def alerts(
        open: bool = False,
        sensor: Annotated[str, Query(description="sensor id glob", max_length=200)] = "*",
        since: Annotated[str | None, Query(description="ISO 8601 or a time ago (1h)")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[AlertChange]:
        """Open alerts, or alert changes newest first (since a time when given)."""
        since_ms = (
            None
            if since is None
            else parameter("since", lambda: parse_time_ms(since, query.now_ms()))
        )
        return list_alerts(shard_alerts, open_only=open, sensor_glob=sensor,
                           since_ms=since_ms, limit=limit)  # fmt: skip

    @app.get("/fleet/top")
    def fleet_top(
        metric: Metric,
        by: Annotated[str, Query(pattern="^(" + "|".join(RANKINGS) + ")$")] = "mean",
        last: str = "15m",
        n: Annotated[int, Query(ge=1, le=1000)] = 10,
        until: Annotated[str, Query(description="ISO 8601, now, or a time ago")] = "now",
        where: Where = None,
    ) -> list[Ranked]:
        """The n sensors ranking highest by a statistic over the window `last` before
        `until`, among those whose labels match `where` when given."""
        span = parameter("last", lambda: parse_duration_ms(last))
        end = parameter("until", lambda: parse_time_ms(until, query.now_ms()))
        return fleet.fleet_top(stores, metric, by, span, n, at_ms=end,
                               among=among(stores, registry, where))  # fmt: skip

    return app


def app_from_environment() -> FastAPI:
    return create_app(Settings.load(os.environ))


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process dies of the signal;
    every service here exits 0 once it has stopped cleanly."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def serve(settings: Settings, *, insecure: bool = False) -> None:
    """Serve the API until SIGTERM or SIGINT, then exit 0. An API that others can reach (not
    on loopback) and has no token is refused unless `insecure`."""
    if Access(settings).open and settings.api_host not in LOOPBACK and not insecure:
        raise SettingsError(
            f"the API would listen on {settings.api_host} with no token: set API_TOKEN (and "
            "API_READ_TOKEN, API_WRITE_TOKEN) or pass --insecure to serve it open"
        )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        log_config=_uvicorn_logging(),
    )
    logging.getLogger("uvicorn.access").addFilter(_scrub_secret_parameters)
    _Server(config).run()


def _uvicorn_logging() -> dict[str, Any]:
    """uvicorn's own logging, its lines stamped with the time as every other service's are."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["default"]["fmt"] = LOG_FORMAT
    config["formatters"]["access"]["fmt"] = (
        '%(asctime)s %(levelname)s %(name)s: %(client_addr)s "%(request_line)s" %(status_code)s'
    )
    for formatter in config["formatters"].values():
        formatter["use_colors"] = False
    return config


SECRET_PARAMETER = re.compile(r"([?&](?:token|ticket)=)[^&\s]*")


def _scrub_secret_parameters(record: logging.LogRecord) -> bool:
    """Access log lines keep no token or ticket a client put in a URL (the API takes neither
    token from a URL; an old client may still send one)."""
    if isinstance(record.args, tuple):
        record.args = tuple(
            SECRET_PARAMETER.sub(r"\1[redacted]", arg) if isinstance(arg, str) else arg
            for arg in record.args
        )
    return True
