"""What Grafana reads: `/series` (epoch-ms times, the chart's interval, rows per bucket and
sensor) against numpy over the raw readings; every Infinity query of the provisioned dashboard,
with Grafana's variables filled in as Grafana fills them, answered with the columns the panel
reads; the provisioning files agreeing with the dashboard and with compose."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from ingest.devices import DeviceRegistry
from ingest.redis.connection import connect
from ingest.settings import Settings
from simulator.dataset import Made
from telemetry.web.app import create_app
from tests.conftest import ROOT
from tests.test_query import loaded

__all__ = ["loaded"]

DEPLOY = ROOT / "deploy"
DASHBOARD: dict[str, Any] = json.loads((DEPLOY / "grafana/dashboards/telemetry.json").read_text())
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())


def targets(datasource_type: str) -> list[dict[str, Any]]:
    return [target for panel in DASHBOARD["panels"] for target in panel["targets"]
            if target["datasource"]["type"] == datasource_type]  # fmt: skip


def grafana_url(url: str, start: int, end: int, variables: dict[str, str]) -> str:
    """The URL as Grafana sends it: its global variables, then the dashboard's."""
    filled = url.replace("${__from}", str(start)).replace("${__to}", str(end))
    filled = filled.replace("${__interval_ms}", "60000")
    filled = filled.replace("${__range_s}", str((end - start) // 1000))
    return re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], filled)


def selected(row: dict[str, Any], selector: str) -> Any:
    for part in selector.split("."):
        row = row[part]
    return row


def test_series_are_each_sensors_buckets_in_epoch_ms(loaded: tuple[Settings, Made]) -> None:
    settings, made = loaded
    api = TestClient(create_app(settings))
    to = (int(made.ts.max()) // 60_000) * 60_000
    start = to - 20 * 60_000
    window = {"metric": "temp", "from": str(start), "to": str(to)}
    answer = api.get("/series", params={**window, "interval_ms": "60000",
                                        "sensor": "dev-000[0-2]"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Tier"] == "1m"
    points = answer.json()
    assert {p["sensor"] for p in points} == {made.sensor_id(i) for i in range(3)}
    assert len(points) == 3 * 20
    assert [p["time"] for p in points] == sorted(p["time"] for p in points)
    for point in points:
        index = int(point["sensor"][-4:])
        mask = (
            (made.sensor == index) & (made.ts >= point["time"]) & (made.ts < point["time"] + 60_000)
        )
        assert point["value"] == pytest.approx(float(np.mean(made.values["temp"][mask])), rel=1e-9)
    # A coarser interval, a coarser tier; a percentile; bad questions refused with a reason.
    coarse = api.get("/series", params={**window, "interval_ms": "600000", "stat": "p95"})
    assert coarse.headers["X-Tier"] == "1h" and all(p["value"] > 0 for p in coarse.json())
    for params in ({"from": "yesterday"}, {"stat": "median"}, {"limit": "101"},
                   {"from": str(to), "to": str(start)}, {"interval_ms": "-1"}):  # fmt: skip
        refused = api.get("/series", params={"metric": "temp", **params})
        assert refused.status_code == 422, params


def test_every_infinity_query_of_the_dashboard_answers_with_its_columns(
    loaded: tuple[Settings, Made],
) -> None:
    settings, made = loaded
    registry = DeviceRegistry(settings)
    registry.label([made.sensor_id(i) for i in range(5)], {"site": "north"}, [])
    api = TestClient(create_app(settings))
    end = int(made.ts.max()) + 1
    start = end - 30 * 60_000
    variables = {v["name"]: v["current"]["value"] for v in DASHBOARD["templating"]["list"]}
    # An open alert for the alerts table.
    connect(settings).hset(f"{settings.alerts_stream}:open", "dev-0000|hot", json.dumps({
        "sensor_id": "dev-0000", "rule": "hot", "kind": "threshold", "severity": "critical",
        "metric": "temp", "state": "raised", "ts": str(end), "value": "45", "limit": "40",
        "message": "temp > 40 (got 45)"}))  # fmt: skip
    infinity = targets("yesoreyeram-infinity-datasource")
    assert len(infinity) == 5
    for target in infinity:
        url = grafana_url(target["url"], start, end, variables)
        answer = api.get(url)
        assert answer.status_code == 200, f"{url}: {answer.text}"
        rows = answer.json()
        assert isinstance(rows, list) and rows, url
        for column in target["columns"]:
            value = selected(rows[0], column["selector"])
            if column["type"] == "timestamp_epoch":
                assert isinstance(value, int) and value > 1_600_000_000_000, column
            elif column["type"] == "number":
                assert isinstance(value, int | float), column


def test_provisioning_agrees_with_the_dashboard_and_compose(tmp_path: Path) -> None:
    datasources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/telemetry.yaml").read_text()
    )["datasources"]
    uids = {source["uid"]: source["type"] for source in datasources}
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            assert uids[target["datasource"]["uid"]] == target["datasource"]["type"]
    services = COMPOSE["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert not source.startswith("./") or (ROOT / source).exists() or "secrets" in source
    # Prometheus scrapes each service that serves metrics, by its compose name.
    jobs = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())["scrape_configs"]
    serving = {
        name
        for name, service in services.items()
        if "TELEMETRY_METRICS_PORT" in service.get("environment", {}) or name == "api"
    }
    assert {job["job_name"] for job in jobs} == serving
    plugins = services["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    assert "yesoreyeram-infinity-datasource" in plugins
    promtool = shutil.which("promtool")
    if promtool is not None:
        checked = subprocess.run(
            [promtool, "check", "config", "--syntax-only",
             str(DEPLOY / "prometheus/prometheus.yml")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
