"""compose.yaml cannot run here (no Docker engine), so check what can be checked: every service
that runs the project runs a real `telemetry` subcommand that starts with those settings, and
every variable it sets is one the settings object reads."""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingest.settings import Settings
from telemetry.localserver import AOF_REWRITE_SETTINGS, LocalMosquitto, free_port
from tests.conftest import ROOT, child_env

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
PROJECT_SERVICES = {
    name: service
    for name, service in COMPOSE["services"].items()
    if service.get("command", [""])[0] == "telemetry"
}
DURABILITY = "${TELEMETRY_DURABILITY:-everysec}"
SETTINGS_VARIABLES = {spec.metadata["env"] for spec in dataclasses.fields(Settings)}


def test_every_project_service_is_there_and_scalable() -> None:
    assert set(PROJECT_SERVICES) == {
        "bridge",
        "aggregator",
        "alerts",
        "archiver",
        "api",
        "simulator",
    }
    # Workers and the API have a health check; the simulator runs only in the demo profile.
    for name in ("bridge", "aggregator", "alerts", "archiver", "api"):
        assert PROJECT_SERVICES[name]["healthcheck"]["test"] == ["CMD", "telemetry", "healthcheck"]
    assert PROJECT_SERVICES["simulator"]["profiles"] == ["demo"]
    redis_command = COMPOSE["services"]["redis"]["command"]
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "noeviction"
    assert COMPOSE["services"]["redis"]["command"][:3] == ["redis-server", "--appendonly", "yes"]
    for service in PROJECT_SERVICES.values():
        assert service["environment"]["TELEMETRY_DURABILITY"] == DURABILITY
    for service in COMPOSE["services"].values():
        assert service["restart"] == "unless-stopped"
    # Scaling needs no fixed name or host port on the workers.
    for worker in ("aggregator", "alerts"):
        assert "container_name" not in PROJECT_SERVICES[worker]
        assert "ports" not in PROJECT_SERVICES[worker]


def test_redis_keeps_writes_as_the_services_durability_says() -> None:
    """The same fsync policy and append-only rewrite thresholds as `telemetry up` uses."""
    command = COMPOSE["services"]["redis"]["command"]
    assert command[command.index("--appendfsync") + 1] == DURABILITY
    assert tuple(command[5:9]) == AOF_REWRITE_SETTINGS
    assert compose_value(DURABILITY) == Settings().durability


def compose_value(value: str) -> str:
    """A value as compose gives it when the variables it names are not set, and a made-up one
    for a variable compose requires."""
    value = re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "required-value", value)
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


@pytest.mark.parametrize("name", sorted(PROJECT_SERVICES))
def test_each_variable_a_service_sets_is_a_setting(name: str) -> None:
    assert set(PROJECT_SERVICES[name]["environment"]) <= SETTINGS_VARIABLES


def service_environment(service: dict[str, Any], redis_url: str, broker_url: str) -> dict[str, str]:
    """The service's settings, pointed at this test's servers instead of the compose network's."""
    environment = {name: compose_value(value) for name, value in service["environment"].items()}
    environment["REDIS_URL"] = redis_url
    if "MQTT_URL" in environment:
        environment["MQTT_URL"] = broker_url
    for port_setting in ("TELEMETRY_API_PORT", "TELEMETRY_METRICS_PORT"):
        if port_setting in environment:
            environment[port_setting] = str(free_port())
    environment["TELEMETRY_API_HOST"] = "127.0.0.1"
    # Files the image holds under /app are the repository's.
    for variable, value in environment.items():
        if value.startswith("/app/"):
            assert (ROOT / value.removeprefix("/app/")).is_file(), value
            environment[variable] = str(ROOT / value.removeprefix("/app/"))
    return environment


def health_command(service: dict[str, Any]) -> list[str]:
    return list(service.get("healthcheck", {}).get("test", [])[1:])


def health_check(environment: dict[str, str]) -> subprocess.Popen[str]:
    """`telemetry healthcheck`, started in a service's environment."""
    command = [sys.executable, "-m", "telemetry", "healthcheck"]
    return subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finished(check: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    output, _ = check.communicate(timeout=60)
    return subprocess.CompletedProcess(check.args, check.returncode, output)


def test_every_service_command_starts_with_its_settings(redis_url: str, tmp_path: Path) -> None:
    """All of them at once, as compose starts them; each passes its health check, as compose
    runs it (in the service's environment), and stops cleanly."""
    broker = LocalMosquitto(workdir=tmp_path / "mosquitto")
    broker.start()
    base = child_env(Settings(redis_url=redis_url))
    running: dict[str, tuple[subprocess.Popen[str], dict[str, str]]] = {}
    try:
        for name, service in sorted(PROJECT_SERVICES.items()):
            environment = {**base, **service_environment(service, redis_url, broker.url)}
            if "TELEMETRY_ARCHIVE_DIR" in environment:
                environment["TELEMETRY_ARCHIVE_DIR"] = str(tmp_path / "archive")
            process = subprocess.Popen(
                [sys.executable, "-m", *service["command"]],
                env=environment, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            running[name] = process, environment
        time.sleep(3)
        for name, (process, _) in running.items():
            assert process.poll() is None, (name, process.stderr.read() if process.stderr else "")
        checked = {
            name: health_check(environment)
            for name, (_, environment) in running.items()
            if health_command(PROJECT_SERVICES[name]) == ["telemetry", "healthcheck"]
        }
        # Compose retries a failing check; a service slow to start gets the same grace.
        deadline = time.monotonic() + 30
        for name, first in checked.items():
            result = finished(first)
            while result.returncode != 0 and time.monotonic() < deadline:
                time.sleep(1)
                result = finished(health_check(running[name][1]))
            assert result.returncode == 0, (name, result.stdout)
        for process, _ in running.values():
            process.send_signal(signal.SIGTERM)
        assert {name: process.wait(30) for name, (process, _) in running.items()} == dict.fromkeys(
            running, 0
        )
    finally:
        for process, _ in running.values():
            if process.poll() is None:
                process.kill()
        broker.close()
