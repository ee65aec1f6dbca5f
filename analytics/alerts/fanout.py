"""Alert changes out to the world: MQTT (`alerts/{sensor_id}`, QoS 1) and webhooks (JSON POST).

The consumer group `alert-fanout` on the alerts stream hands each change to one worker, which
queues it for every target and acknowledges. Each target sends from its own thread and queue,
retrying with capped, jittered backoff, so a dead webhook delays nothing but itself. The alerts
stream stays the record: a change a target could not take after its retries (or that was still
queued when the worker died) is counted and logged, and can be read back with `telemetry alerts`.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from prometheus_client import Counter

from ingest.backoff import Backoff
from ingest.contract.entries import Entries
from ingest.errors import InvalidEntry
from ingest.groups import Batch
from ingest.mqttclient import MqttBroker, start_publisher

log = logging.getLogger(__name__)

GROUP = "alert-fanout"
QUEUE_LIMIT = 10_000
ATTEMPTS = 8
WEBHOOK_TIMEOUT_S = 5.0
SENT = Counter(
    "telemetry_alert_fanout_total", "alert changes handed to a target", ["target", "outcome"]
)


def decode_change(entry_id: str, fields: Mapping[str, str]) -> dict[str, str]:
    if "sensor_id" not in fields or "state" not in fields:
        raise InvalidEntry("an alert change needs sensor_id and state")
    return {"id": entry_id, **fields}


class Target(Protocol):
    name: str

    def offer(self, change: Mapping[str, str]) -> None: ...
    def close(self) -> None: ...


class MqttTarget:
    """Publishes to `alerts/{sensor_id}` at QoS 1; paho queues and re-sends across reconnects."""

    def __init__(self, broker: MqttBroker) -> None:
        self.name = broker.name
        self.client = start_publisher(broker, "alerts", QUEUE_LIMIT)

    def offer(self, change: Mapping[str, str]) -> None:
        info = self.client.publish(f"alerts/{change['sensor_id']}", json.dumps(change), qos=1)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            SENT.labels(self.name, "dropped").inc()
            log.warning("MQTT queue full; dropped alert change %s", change.get("id"))
        else:
            SENT.labels(self.name, "queued").inc()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class WebhookTarget:
    """POSTs each change as JSON from its own thread, retrying with backoff."""

    def __init__(self, url: str, number: int) -> None:
        # The URL is the secret of services such as Slack's: metrics and logs name the target
        # by its place in TELEMETRY_ALERT_WEBHOOKS and its host only.
        self.name = f"webhook {number} ({urlsplit(url).hostname})"
        self.url = url
        self._queue: deque[Mapping[str, str]] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._send_forever, name=self.name, daemon=True)
        self._thread.start()

    def offer(self, change: Mapping[str, str]) -> None:
        with self._ready:
            if len(self._queue) >= QUEUE_LIMIT:
                self._queue.popleft()
                SENT.labels(self.name, "dropped").inc()
            self._queue.append(change)
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout=WEBHOOK_TIMEOUT_S)

    def _send_forever(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                change = self._queue[0]
            outcome = "delivered" if self._deliver(change) else "failed"
            with self._ready:
                # Unless a full queue dropped it meanwhile.
                if self._queue and self._queue[0] is change:
                    self._queue.popleft()
            SENT.labels(self.name, outcome).inc()

    def _deliver(self, change: Mapping[str, str]) -> bool:
        body = json.dumps(change).encode()
        backoff = Backoff(base_s=0.5, cap_s=30.0)
        error = ""
        for _ in range(ATTEMPTS):
            request = urllib.request.Request(
                self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S):
                    return True
            except (urllib.error.URLError, OSError) as exc:
                error = str(exc)
            with self._ready:
                if self._ready.wait_for(lambda: self._closed, backoff.next_delay()):
                    break
        log.warning("%s did not take change %s: %s", self.name, change.get("id"), error)
        return False


class AlertFanout:
    """Handler of the `alert-fanout` group: every change to every target, without waiting."""

    acknowledges = False

    def __init__(self, targets: Sequence[Target]) -> None:
        self.targets = list(targets)

    def __call__(self, batch: Batch[Entries[dict[str, Any]]]) -> None:
        for entry in batch.entries:
            for target in self.targets:
                target.offer(entry.value)

    def close(self) -> None:
        for target in self.targets:
            target.close()


def targets_from(broker: MqttBroker | None, webhook_urls: Sequence[str]) -> list[Target]:
    targets: list[Target] = [MqttTarget(broker)] if broker else []
    return targets + [WebhookTarget(url, n) for n, url in enumerate(webhook_urls, 1)]
