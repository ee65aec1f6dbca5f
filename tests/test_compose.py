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
    assert set(PROJECT_SERVICES) == {"bridge", "aggregator", "alerts", "api", "simulator"}
    # Workers and the API have a health check; the simulator runs only in the demo profile.
    for name in ("bridge", "aggregator", "alerts", "api"):
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


@pytest.mark.parametrize("name", sorted(PROJECT_SERVICES))
def test_each_service_command_starts_with_its_settings(
    name: str, redis_url: str, tmp_path: Path
) -> None:
    service = PROJECT_SERVICES[name]
    broker = LocalMosquitto(workdir=tmp_path / "mosquitto")
    broker.start()
    environment = {name: compose_value(value) for name, value in service["environment"].items()}
    # The same settings, pointed at this test's servers instead of the compose network's.
    environment["REDIS_URL"] = redis_url
    if "MQTT_URL" in environment:
        environment["MQTT_URL"] = broker.url
    for port_setting in ("TELEMETRY_API_PORT", "TELEMETRY_METRICS_PORT"):
        if port_setting in environment:
            environment[port_setting] = str(free_port())
    environment["TELEMETRY_API_HOST"] = "127.0.0.1"
    # Files the image holds under /app are the repository's.
    for variable, value in environment.items():
        if value.startswith("/app/"):
            assert (ROOT / value.removeprefix("/app/")).is_file(), value
            environment[variable] = str(ROOT / value.removeprefix("/app/"))
    base = child_env(Settings(redis_url=redis_url))
    process = subprocess.Popen(
        [sys.executable, "-m", *service["command"]],
        env={**base, **environment},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        # Its health check, run as compose runs it: in the service's environment.
        check = service.get("healthcheck", {}).get("test", [])
        if check[1:] == ["telemetry", "healthcheck"]:
            checked = subprocess.run(
                [sys.executable, "-m", "telemetry", "healthcheck"],
                env={**base, **environment}, capture_output=True, text=True,
            )  # fmt: skip
            assert checked.returncode == 0, checked.stdout + checked.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        broker.close()
