"""`telemetry up`: the whole pipeline on one machine, stopped with Ctrl-C.

Starts a private redis-server when REDIS_URL is not set and a private mosquitto when MQTT_URL
is not set (without one on PATH, it runs without the bridge and says so), then each service as
a child process running its own `telemetry` subcommand, restarts a child that dies, logs a
status line now and then, and stops everything in order on SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources

from ingest.backoff import Backoff
from ingest.errors import IngestError
from ingest.runtime import stop_on_signals
from ingest.settings import Settings, settings_env
from ingest.status import stream_status
from telemetry.localserver import LocalMosquitto, LocalRedis, LocalServerError

log = logging.getLogger("telemetry.up")

STATUS_EVERY_S = 10.0
STOP_GRACE_S = 15.0


@dataclass
class Service:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=1.0, cap_s=30.0))
    restart_at: float = 0.0


# Occasional faults so the sample rules have something to say: at 200 sensors and 1 Hz, a spike
# every ~10 s, a sensor stuck hot about once a minute, one falling silent every ~2 minutes.
SIMULATED_FAULTS = ["--spike", "0.0005", "--stuck", "0.0001", "--stuck-value", "45",
                    "--dropout", "0.00005", "--dropout-for", "30"]  # fmt: skip


def sample_rules() -> str:
    return str(resources.files("analytics.alerts").joinpath("sample_rules.toml"))


def services(fleet: int, rate: float, with_bridge: bool, rules: str) -> list[Service]:
    """What runs: each entry is a `telemetry` subcommand. With a broker, a tenth of the fleet
    publishes over MQTT, as real devices do, and the bridge writes their readings."""
    over_mqtt = max(1, fleet // 10) if with_bridge and fleet > 1 else 0
    running = [
        Service("aggregator", ["aggregate"]),
        Service("alerts", ["alert-worker", "--rules", rules]),
        Service("api", ["api"]),
        Service("simulator", ["simulate", "--fleet", str(fleet - over_mqtt),
                              "--rate", str(rate), *SIMULATED_FAULTS]),
    ]  # fmt: skip
    if over_mqtt:
        running += [
            Service("bridge", ["bridge", "--client-id", "telemetry-up-bridge"]),
            Service("devices", ["simulate", "--fleet", str(over_mqtt), "--prefix", "mqtt-",
                                "--rate", str(rate), "--via-mqtt", *SIMULATED_FAULTS]),
        ]  # fmt: skip
    return running


def run_up(settings: Settings, env: Mapping[str, str], fleet: int, rate: float) -> int:
    stop = stop_on_signals()
    redis_server = None
    if "REDIS_URL" not in env:
        redis_server = LocalRedis(appendonly=True)
        redis_server.start()
        settings = settings.replace(redis_url=redis_server.url)
        log.info(
            "started private redis-server at %s (data in %s)",
            redis_server.url,
            redis_server.workdir,
        )
    broker = None
    if settings.mqtt_url is None:
        broker = LocalMosquitto()
        try:
            broker.start()
            settings = settings.replace(mqtt_url=broker.url)
            log.info("started private mosquitto at %s (data in %s)", broker.url, broker.workdir)
        except LocalServerError as exc:
            log.warning("no MQTT bridge: %s", exc)
            broker = None
    child_env = {**env, **settings_env(settings)}
    rules = settings.rules or sample_rules()
    log.info("alert rules from %s", rules)
    running = services(fleet, rate, settings.mqtt_url is not None, rules)
    try:
        for service in running:
            _start(service, child_env)
        log.info("dashboard: http://%s:%d/dashboard", settings.api_host, settings.api_port)
        _supervise(running, child_env, settings, stop)
    finally:
        _stop_all(running)
        if broker is not None:
            broker.stop()
            log.info("stopped private mosquitto")
        if redis_server is not None:
            redis_server.stop()
            log.info("stopped private redis-server (data kept in %s)", redis_server.workdir)
    return 0


def _start(service: Service, env: Mapping[str, str]) -> None:
    service.process = subprocess.Popen(
        [sys.executable, "-m", "telemetry", *service.argv],
        env=dict(env),
        # Its own session: a Ctrl-C reaches only `up`, which then stops each child once.
        start_new_session=True,
    )
    log.info(
        "started %s (pid %d): telemetry %s",
        service.name,
        service.process.pid,
        " ".join(service.argv),
    )


def _supervise(
    running: list[Service], env: Mapping[str, str], settings: Settings, stop: threading.Event
) -> None:
    next_status = time.monotonic() + STATUS_EVERY_S
    while not stop.wait(0.5):
        now = time.monotonic()
        for service in running:
            if service.process is not None and service.process.poll() is not None:
                delay = service.backoff.next_delay()
                log.error(
                    "%s exited with status %d; restarting in %.1fs",
                    service.name,
                    service.process.returncode,
                    delay,
                )
                service.process = None
                service.restart_at = now + delay
            elif service.process is None and now >= service.restart_at:
                _start(service, env)
        if now >= next_status:
            _log_status(settings)
            next_status = now + STATUS_EVERY_S


def _log_status(settings: Settings) -> None:
    try:
        status = stream_status(
            settings.redis_url, settings.stream, settings.maxlen, settings.trim_warn_ratio
        )
    except IngestError as exc:
        log.warning("status unavailable: %s", exc)
        return
    groups = ", ".join(f"{g.name} lag {g.lag} pending {g.pending}" for g in status.groups)
    log.info(
        "%s: %d entries (MAXLEN ~%d), %d dead letters; groups: %s",
        status.stream,
        status.length,
        status.maxlen,
        status.dead_letters,
        groups or "none",
    )


def _stop_all(running: list[Service]) -> None:
    for service in running:
        if service.process is not None and service.process.poll() is None:
            service.process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for service in running:
        if service.process is None:
            continue
        try:
            service.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", service.name, STOP_GRACE_S)
            service.process.kill()
            service.process.wait()
        log.info("stopped %s (status %d)", service.name, service.process.returncode)
