"""`telemetry up`: the whole pipeline on one machine, stopped with Ctrl-C.

Starts a private redis-server when REDIS_URL is not set and a private mosquitto when MQTT_URL
is not set (without one on PATH, it runs without the bridge and says so), then each service as
a child process running its own `telemetry` subcommand. It restarts a child or a private server
that dies (a server on the same port, from the same data folder), logs a status line now and
then, and stops everything that runs in order on SIGINT/SIGTERM. The private servers keep their
data, and the archiver its files, in one folder (DATA_HOME) that the next run uses again.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import walrus

from ingest.backoff import Backoff
from ingest.errors import IngestError
from ingest.runtime import stop_on_signals
from ingest.settings import Settings, settings_env
from ingest.shards import shards
from ingest.status import status_database, stream_status
from telemetry.localserver import (
    LocalMosquitto,
    LocalRedis,
    LocalServer,
    LocalServerError,
    private_file,
)

log = logging.getLogger("telemetry.up")

STATUS_EVERY_S = 10.0
STOP_GRACE_S = 15.0


# A private Redis replays its append-only file before it serves; a large one takes a while.
SERVER_START_TIMEOUT_S = 300.0


@dataclass
class PrivateServer:
    """A redis-server or mosquitto `up` started and keeps running."""

    server: LocalServer
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.5, cap_s=10.0))
    # When it is down: when to start it again.
    restart_at: float | None = None
    restarts: int = 0

    @property
    def name(self) -> str:
        return self.server.binary

    def watch(self, now: float) -> None:
        """Notice a server that died, and start it again once its back-off has passed."""
        process = self.server.process
        if self.restart_at is None:
            if process is not None and process.poll() is not None:
                delay = self.backoff.next_delay()
                log.error(
                    "private %s (pid %d) exited with status %d; restarting it in %.1fs on port"
                    " %d, from its data in %s",
                    self.name, process.pid, process.returncode, delay, self.server.port,
                    self.server.workdir,
                )  # fmt: skip
                self.server.process = None
                self.restart_at = now + delay
            return
        if now < self.restart_at:
            return
        try:
            self.server.start(SERVER_START_TIMEOUT_S)
        except LocalServerError as exc:
            # One that started but never served must not hold the port for the next try.
            self.server.kill()
            delay = self.backoff.next_delay()
            log.error("private %s did not restart (%s); trying again in %.1fs", self.name, exc,
                      delay)  # fmt: skip
            self.restart_at = time.monotonic() + delay
            return
        self.restarts += 1
        self.restart_at = None
        self.backoff.reset()
        assert self.server.process is not None
        log.info("restarted private %s (pid %d) on port %d", self.name,
                 self.server.process.pid, self.server.port)  # fmt: skip

    def summary(self) -> str:
        state = "down" if self.restart_at is not None else "up"
        return f"{self.name} {state}, restarted {self.restarts}x"

    def stop(self) -> None:
        process = self.server.process
        if process is None or process.poll() is not None:
            log.info("private %s was not running", self.name)
            self.server.process = None
            return
        self.server.stop()
        log.info("stopped private %s (pid %d; data kept in %s)", self.name, process.pid,
                 self.server.workdir)  # fmt: skip


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
        Service("archiver", ["archive"]),
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


def data_home(env: Mapping[str, str]) -> Path:
    """Where `up` keeps its private servers' data and the archive between runs."""
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "telemetry" / "up"


def run_up(settings: Settings, env: Mapping[str, str], fleet: int, rate: float) -> int:
    stop = stop_on_signals()
    servers: list[PrivateServer] = []
    home = data_home(env)
    if "TELEMETRY_ARCHIVE_DIR" not in env:
        settings = settings.replace(archive_dir=str(home / "archive"))
    if "REDIS_URL" not in env:
        # Private, but not open to every local user: a password of its own each time.
        redis_server = LocalRedis(appendonly=True, appendfsync=settings.durability,
                                  password=secrets.token_urlsafe(24),
                                  workdir=home / "redis")  # fmt: skip
        redis_server.start(SERVER_START_TIMEOUT_S)
        servers.append(PrivateServer(redis_server))
        settings = settings.replace(redis_url=redis_server.url)
        log.info(
            "started private redis-server at %s (pid %d, appendfsync %s; data in %s)",
            redis_server.address,
            redis_server.process.pid if redis_server.process else -1,
            settings.durability,
            redis_server.workdir,
        )
    if settings.mqtt_url is None:
        broker = LocalMosquitto(credentials=("telemetry", secrets.token_urlsafe(24)),
                                workdir=home / "mosquitto")  # fmt: skip
        try:
            broker.start()
            servers.append(PrivateServer(broker))
            settings = settings.replace(mqtt_url=broker.url)
            log.info(
                "started private mosquitto at %s (pid %d; data in %s)",
                broker.address,
                broker.process.pid if broker.process else -1,
                broker.workdir,
            )
        except LocalServerError as exc:
            log.warning("no MQTT bridge: %s", exc)
    child_env = {**env, **settings_env(settings)}
    if servers:
        connection = _connection_file(servers[0].server.workdir, settings)
        log.info("the private servers' URLs, with their passwords, are in %s (to use them from "
                 "another shell: set -a; . %s; set +a)", connection, connection)  # fmt: skip
    rules = settings.rules or sample_rules()
    log.info("alert rules from %s", rules)
    running = services(fleet, rate, settings.mqtt_url is not None, rules)
    try:
        for service in running:
            _start(service, child_env)
        log.info("dashboard: http://%s:%d/dashboard", settings.api_host, settings.api_port)
        _supervise(running, servers, child_env, settings, stop)
    finally:
        _stop_all(running)
        for private in reversed(servers):
            private.stop()
    return 0


def _connection_file(folder: Path, settings: Settings) -> Path:
    lines = [f"REDIS_URL={settings.redis_url}"]
    if settings.mqtt_url:
        lines.append(f"MQTT_URL={settings.mqtt_url}")
    return private_file(folder / "telemetry.env", "\n".join(lines) + "\n")


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
    running: list[Service],
    servers: list[PrivateServer],
    env: Mapping[str, str],
    settings: Settings,
    stop: threading.Event,
) -> None:
    next_status = time.monotonic() + STATUS_EVERY_S
    status_dbs = [(shard, status_database(shard.settings)) for shard in shards(settings)]
    while not stop.wait(0.5):
        now = time.monotonic()
        for private in servers:
            private.watch(now)
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
            if servers:
                log.info("private servers: %s", "; ".join(p.summary() for p in servers))
            for shard, db in status_dbs:
                _log_status(shard.settings, db)
            next_status = now + STATUS_EVERY_S


def _log_status(settings: Settings, db: walrus.Database) -> None:
    try:
        status = stream_status(db, settings.stream, settings.maxlen, settings.trim_warn_ratio)
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
