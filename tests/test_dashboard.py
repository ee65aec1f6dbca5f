"""The dashboard in a real headless Chromium (Debian's, driven by Playwright), fed by the whole
pipeline: simulator, aggregator, alert worker and API as `telemetry` processes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from ingest.devices import DeviceNote, DeviceRegistry
from ingest.settings import Settings
from telemetry.localserver import free_port, port_open
from tests.conftest import ROOT, child_env
from tests.test_alerts import THRESHOLD_RULES

# The API wants a token, as one others can reach must: the dashboard asks for it, sends it as
# a header and opens its websockets with tickets.
TOKEN = "dashboard-reader"
# Acknowledging and silencing take the admin token: the page asks for it when they need it.
ADMIN_TOKEN = "dashboard-admin"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)"
)


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[str]:
    rules = tmp_path / "alerts.toml"
    rules.write_text(THRESHOLD_RULES.replace('for = "30s"', ""))
    port = free_port()
    env = child_env(settings, TELEMETRY_API_PORT=str(port), TELEMETRY_LOG_LEVEL="WARNING",
                    API_READ_TOKEN=TOKEN, API_TOKEN=ADMIN_TOKEN)  # fmt: skip
    commands = [
        ["api"],
        ["aggregate"],
        ["alert-worker", "--rules", str(rules)],
        ["simulate", "--fleet", "5", "--rate", "5", "--seed", "1", "--stuck", "0.01",
         "--stuck-value", "45"],
    ]  # fmt: skip
    processes = [
        subprocess.Popen([sys.executable, "-m", "telemetry", *c], env=env) for c in commands
    ]
    try:
        deadline = time.monotonic() + 30
        while not port_open(port):
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


def live_points(page: Page) -> int:
    text = page.locator("#live-count").inner_text()
    match = re.search(r"(\d+) live points", text)
    return int(match.group(1)) if match else 0


def test_the_dashboard_shows_sensors_a_growing_live_chart_and_raised_alerts(
    pipeline: str, settings: Settings
) -> None:
    assert CHROMIUM is not None
    # What a routes file and a person would have said about the fleet: units and labels.
    registry = DeviceRegistry(settings)
    registry.note({f"dev-{i}": DeviceNote(labels={"site": "north" if i < 3 else "south"},
                                          units={"temp": "°C"}) for i in range(5)})  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(pipeline)
        expect(page).to_have_title("telemetry")
        expect(page.locator("#token-form")).to_be_visible(timeout=10_000)
        page.locator("#token-input").fill(TOKEN)
        page.locator("#token-form button").click()
        expect(page.locator("#sensor-rows tr")).to_have_count(5, timeout=15_000)
        expect(page.locator("#detail-title")).to_have_text("dev-0", timeout=10_000)
        expect(page.locator("#live-count")).to_contain_text("live points", timeout=10_000)
        deadline = time.monotonic() + 15
        while live_points(page) < 3:
            assert time.monotonic() < deadline, "the live chart gained no points"
            page.wait_for_timeout(200)
        before = live_points(page)
        page.wait_for_timeout(2000)
        assert live_points(page) > before
        expect(page.locator("#alert-feed li", has_text="hot").first).to_be_visible(timeout=30_000)
        expect(page.locator("#health")).to_contain_text("aggregates")
        # Acknowledge an open alert (the reader's token cannot: the page asks for the admin's),
        # silence it for an hour, end the silence.
        opened = page.locator("#open-alerts li", has_text="hot").first
        opened.get_by_role("button", name="ack").click()
        expect(page.locator("#token-form")).to_be_visible(timeout=5_000)
        page.locator("#token-input").fill(ADMIN_TOKEN)
        page.locator("#token-form button").click()
        opened = page.locator("#open-alerts li", has_text="hot").first
        opened.get_by_role("button", name="ack").click()
        expect(page.locator("#open-alerts")).to_contain_text("acknowledged by dashboard",
                                                             timeout=10_000)  # fmt: skip
        page.locator("#open-alerts li", has_text="hot").first.get_by_role(
            "button", name="silence 1 h").click()  # fmt: skip
        silenced = page.locator("#open-alerts li", has_text="silenced:")
        expect(silenced).to_have_count(1, timeout=10_000)
        silenced.get_by_role("button", name="end").click()
        expect(silenced).to_have_count(0, timeout=10_000)
        # The fleet's own metrics, with units, and the fleet by label.
        expect(page.locator("#sensor-head")).to_contain_text("temp (°C)")
        page.locator("#group-label").select_option("site")
        page.locator("#group-metric").select_option("temp")
        expect(page.locator("#group-rows tr")).to_have_count(2, timeout=10_000)
        expect(page.locator("#group-rows tr").first).to_contain_text("north")
        page.locator("#search").fill("dev-3")
        expect(page.locator("#sensor-rows tr")).to_have_count(1, timeout=5_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        browser.close()
    assert errors == []
