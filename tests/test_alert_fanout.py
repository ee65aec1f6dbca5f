"""Alert changes reach MQTT subscribers and webhooks; a dead webhook holds up nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import redis
from paho.mqtt.enums import CallbackAPIVersion

from analytics.alerts.evaluator import GROUP
from analytics.alerts.fanout import GROUP as FANOUT_GROUP
from ingest.settings import Settings
from telemetry.localserver import LocalMosquitto, free_port
from tests.alerting import changes
from tests.conftest import child_env
from tests.test_alerts import THRESHOLD_RULES


class Webhook:
    """A real HTTP server that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def groups_of(client: redis.Redis, stream: str) -> set[str]:
    try:
        return {g["name"] for g in client.xinfo_groups(stream)}
    except redis.ResponseError:  # no such stream yet
        return set()


def subscribe(broker: LocalMosquitto) -> tuple[mqtt.Client, list[tuple[str, dict[str, Any]]]]:
    got: list[tuple[str, dict[str, Any]]] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, m: got.append((m.topic, json.loads(m.payload)))
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_connect = lambda c, *_a: c.subscribe("alerts/#", qos=1)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert subscribed.wait(10)
    return client, got


def test_changes_reach_mqtt_and_a_live_webhook_while_another_webhook_is_dead(
    client: redis.Redis, settings: Settings, broker: LocalMosquitto, webhook: Webhook,
    tmp_path: Path,
) -> None:  # fmt: skip
    rules = tmp_path / "alerts.toml"
    rules.write_text(THRESHOLD_RULES.replace('for = "30s"', ""))
    dead_hook = f"http://127.0.0.1:{free_port()}/nobody-listens"
    subscriber, published = subscribe(broker)
    hooks = f"{dead_hook},{webhook.url}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "telemetry", "alert-worker", "--rules", str(rules)],
        env=child_env(settings, MQTT_URL=broker.url, TELEMETRY_ALERT_WEBHOOKS=hooks),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The fan-out group starts at the end of the alerts stream: wait until it exists.
        deadline = time.monotonic() + 15
        while FANOUT_GROUP not in groups_of(client, settings.alerts_stream):
            assert time.monotonic() < deadline, "the fan-out group was never created"
            time.sleep(0.05)
        for sensor in ("a", "b", "c"):
            for temp in ("45", "30"):
                client.xadd(settings.stream, {"sensor_id": sensor, "temp": temp})
        deadline = time.monotonic() + 15
        while (len(published) < 6 or len(webhook.received) < 6) and time.monotonic() < deadline:
            time.sleep(0.1)
        recorded = changes(client, settings.alerts_stream)
        assert len(recorded) == 6
        assert sorted((t, m["state"]) for t, m in published) == sorted(
            (f"alerts/{s}", state) for s in "abc" for state in ("raised", "resolved")
        )
        assert sorted(json.dumps(m, sort_keys=True) for m in webhook.received) == sorted(
            json.dumps(m, sort_keys=True) for _, m in published
        )
        assert client.xpending(settings.stream, GROUP)["pending"] == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        subscriber.loop_stop()
