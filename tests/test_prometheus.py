"""Debian's real Prometheus scrapes the workers, the bridge and the API; `promtool check metrics`
passes every endpoint; each process exports what it does and nothing else, with its series at
zero before anything happens."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ingest.settings import Settings
from telemetry.localserver import LocalMosquitto, free_port, port_open
from tests.conftest import child_env
from tests.test_alerts import THRESHOLD_RULES
from tests.test_grafana import DASHBOARD

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="no prometheus/promtool on PATH (apt-get install prometheus)",
)


def wait_until(what: str, done: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = done()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


@pytest.fixture
def processes(
    settings: Settings, broker: LocalMosquitto, tmp_path: Path
) -> Iterator[dict[str, int]]:
    rules = tmp_path / "alerts.toml"
    rules.write_text(THRESHOLD_RULES.replace('for = "30s"', ""))
    ports = {name: free_port() for name in ("aggregate", "alert-worker", "bridge", "api")}
    commands = {
        "aggregate": ["aggregate"],
        "alert-worker": ["alert-worker", "--rules", str(rules)],
        "bridge": ["bridge"],
        "api": ["api"],
    }
    running = []
    for name, command in commands.items():
        env = child_env(settings, TELEMETRY_METRICS_PORT=str(ports[name]),
                        TELEMETRY_API_PORT=str(ports["api"]), MQTT_URL=broker.url,
                        TELEMETRY_LOG_LEVEL="WARNING")  # fmt: skip
        running.append(subprocess.Popen([sys.executable, "-m", "telemetry", *command], env=env))
    try:
        for name, port in ports.items():
            wait_until(f"{name} metrics", lambda port=port: port_open(port))
        yield ports
    finally:
        for process in running:
            process.terminate()
        for process in running:
            assert process.wait(30) == 0


def metrics_url(name: str, port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


def test_prometheus_scrapes_every_process_and_promtool_passes_them(
    processes: dict[str, int], client: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None and PROMTOOL is not None
    # Before any reading: the series are there, at zero.
    before = {name: fetch(metrics_url(name, port)) for name, port in processes.items()}
    assert 'telemetry_alerts_open{severity="critical"} 0.0' in before["api"]
    assert "telemetry_group_entries_total" in before["aggregate"]
    assert 'telemetry_bridge_messages_total{outcome="written"} 0.0' in before["bridge"]
    assert 'telemetry_alert_worker_changes_total{rule="hot",state="raised"} 0.0' in (
        before["alert-worker"])  # fmt: skip
    # Each exports what it does: no bridge gauges on a worker, no groups on the bridge.
    assert "telemetry_bridge_" not in before["aggregate"] + before["alert-worker"] + before["api"]
    assert "telemetry_group_entries" not in before["bridge"]
    assert "telemetry_alert_" not in before["aggregate"] + before["bridge"]

    for i in range(20):
        client.xadd(settings.stream, {"sensor_id": f"s{i % 4}", "temp": "20" if i < 16 else "45"})
    fetch(f"http://127.0.0.1:{processes['api']}/sensors")

    def histograms_filled() -> bool:
        worker = fetch(metrics_url("alert-worker", processes["alert-worker"]))
        return "telemetry_alert_latency_seconds_count 4.0" in worker

    wait_until("alert latencies", histograms_filled)
    aggregate = fetch(metrics_url("aggregate", processes["aggregate"]))
    assert "telemetry_group_entry_age_seconds_bucket" in aggregate
    api = fetch(metrics_url("api", processes["api"]))
    assert 'telemetry_http_request_seconds_count{method="GET",route="/sensors",status="2xx"}' in api

    for name, port in processes.items():
        exported = fetch(metrics_url(name, port))
        checked = subprocess.run([PROMTOOL, "check", "metrics"], input=exported,
                                 capture_output=True, text=True)  # fmt: skip
        assert checked.returncode == 0, f"{name}: {checked.stdout} {checked.stderr}"

    prometheus_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for name, port in processes.items()
        ],
    }))  # fmt: skip
    config_checked = subprocess.run([PROMTOOL, "check", "config", str(config)],
                                    capture_output=True, text=True)  # fmt: skip
    assert config_checked.returncode == 0, config_checked.stdout
    server = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    api_base = f"http://127.0.0.1:{prometheus_port}/api/v1"

    def query(expression: str) -> list[dict[str, Any]]:
        text = fetch(f"{api_base}/query?query={urllib.parse.quote(expression)}")
        result: list[dict[str, Any]] = json.loads(text)["data"]["result"]
        return result

    try:
        wait_until("prometheus", lambda: port_open(prometheus_port))

        def all_up() -> bool:
            targets = json.loads(fetch(f"{api_base}/targets"))["data"]["activeTargets"]
            return len(targets) == 4 and all(t["health"] == "up" for t in targets)

        wait_until("every target up", all_up)
        open_alerts = wait_until("open alerts scraped", lambda: query("telemetry_alerts_open"))
        assert {r["metric"]["severity"]: float(r["value"][1]) for r in open_alerts} == {
            "critical": 4.0, "info": 0.0, "warning": 0.0}  # fmt: skip
        processed = wait_until("entries processed", lambda: query(
            'sum by (group) (telemetry_group_entries_total{outcome="processed"})'))  # fmt: skip
        assert {r["metric"]["group"]: float(r["value"][1]) for r in processed} == {
            "aggregates": 20.0, "alerts": 20.0, "alert-fanout": 4.0}  # fmt: skip
        # Every Prometheus panel of the provisioned Grafana dashboard is a query Prometheus
        # takes (a bad one answers 400), over series these processes export.
        exported_names = set(re.findall(r"^(telemetry_\w+?)(?:_bucket|_total)?[{ ]",
                                        "".join(fetch(metrics_url(name, port)) for name, port
                                                in processes.items()), re.MULTILINE))  # fmt: skip
        for panel in DASHBOARD["panels"]:
            for target in panel["targets"]:
                if target["datasource"]["type"] == "prometheus":
                    query(target["expr"])
                    named = re.findall(r"telemetry_\w+", target["expr"])
                    assert {re.sub(r"_(bucket|total)$", "", n) for n in named} <= exported_names, (
                        target["expr"])  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)
