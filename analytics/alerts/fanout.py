"""Alert changes out to the world: MQTT (`alerts/{sensor_id}`, QoS 1), webhooks (JSON POST) and
the `[[notify]]` targets of the rules file (apprise: Slack, Teams, e-mail, ...).

The consumer group `alert-fanout` on the alerts stream hands each change to one worker, which
queues it for every target that wants it and acknowledges. Each target sends from its own thread
and queue, retrying with capped, jittered backoff (but never a request the service refused with a
4xx status), so a dead webhook delays nothing but itself. The alerts
stream stays the record: a change a target could not take after its retries (or that was still
queued when the worker died) is counted and logged, and can be read back with `telemetry alerts`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from prometheus_client import Counter, Histogram

from analytics.alerts.labelview import LabelView
from analytics.alerts.notifications import ALERT_STATES, Notification
from analytics.alerts.silences import SilenceView
from ingest.backoff import Backoff
from ingest.contract.entries import Entries
from ingest.errors import InvalidEntry
from ingest.groups import Batch
from ingest.mqttclient import MqttBroker, start_publisher

log = logging.getLogger(__name__)

GROUP = "alert-fanout"
QUEUE_LIMIT = 10_000
ATTEMPTS = 8
SEND_TIMEOUT_S = 5.0
SENT = Counter(
    "telemetry_alert_fanout_total", "alert changes handed to a target", ["target", "outcome"]
)
SEND_SECONDS = Histogram(
    "telemetry_alert_send_seconds", "time one attempt to send an alert change took", ["target"]
)
# Most apprise services end a failure's message with the HTTP status: `... error=400.`
_HTTP_STATUS = re.compile(r"error=([1-5][0-9][0-9])\b")


def decode_change(entry_id: str, fields: Mapping[str, str]) -> dict[str, str]:
    if "sensor_id" not in fields or "state" not in fields:
        raise InvalidEntry("an alert change needs sensor_id and state")
    return {"id": entry_id, **fields}


def is_alert_change(change: Mapping[str, str]) -> bool:
    """An alert raised, resolved or acknowledged (not a silence added or ended): what machines
    (MQTT, webhooks) are sent."""
    return change.get("state", "") in ALERT_STATES


class Target(Protocol):
    name: str
    # Whether maintenance silences hold its changes back (targets that reach people).
    silenceable: bool

    def wants(self, change: Mapping[str, str]) -> bool: ...
    def offer(self, change: Mapping[str, str]) -> None: ...
    def close(self) -> None: ...


class MqttTarget:
    """Publishes to `alerts/{sensor_id}` at QoS 1; paho queues and re-sends across reconnects."""

    silenceable = False

    def __init__(self, broker: MqttBroker) -> None:
        self.name = broker.name
        self.client = start_publisher(broker, "alerts", QUEUE_LIMIT)
        for outcome in ("queued", "dropped"):
            SENT.labels(self.name, outcome)

    def wants(self, change: Mapping[str, str]) -> bool:
        return is_alert_change(change)

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


@dataclass(frozen=True)
class Failure:
    """Why a target did not take a change; a permanent failure is not tried again."""

    reason: str
    permanent: bool = False


def http_failure(status: int, reason: str) -> Failure:
    """A 4xx answer is the request's fault (a revoked webhook, a bad token): sending the same
    again cannot help, except after a timeout (408) or a rate limit (429)."""
    return Failure(f"{reason} (HTTP {status})", 400 <= status < 500 and status not in (408, 429))


class QueuedTarget:
    """A target that sends each change from its own thread and queue, retrying with capped,
    jittered backoff; subclasses say how one attempt goes."""

    silenceable = False

    def __init__(self, name: str) -> None:
        self.name = name
        for outcome in ("delivered", "failed", "refused", "dropped", "silenced"):
            SENT.labels(name, outcome)
        self._queue: deque[Mapping[str, str]] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._send_forever, name=self.name, daemon=True)
        self._thread.start()

    def wants(self, change: Mapping[str, str]) -> bool:
        return is_alert_change(change)

    def attempt(self, change: Mapping[str, str]) -> Failure | None:
        raise NotImplementedError

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
        self._thread.join(timeout=SEND_TIMEOUT_S)

    def _send_forever(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                change = self._queue[0]
            outcome = self._deliver(change)
            with self._ready:
                # Unless a full queue dropped it meanwhile.
                if self._queue and self._queue[0] is change:
                    self._queue.popleft()
            SENT.labels(self.name, outcome).inc()

    def _deliver(self, change: Mapping[str, str]) -> str:
        backoff = Backoff(base_s=0.5, cap_s=30.0)
        failure = Failure("not tried")
        for _ in range(ATTEMPTS):
            started = time.monotonic()
            failure_or_none = self.attempt(change)
            SEND_SECONDS.labels(self.name).observe(time.monotonic() - started)
            if failure_or_none is None:
                return "delivered"
            failure = failure_or_none
            if failure.permanent:
                log.warning("%s refused change %s for good: %s", self.name, change.get("id"),
                            failure.reason)  # fmt: skip
                return "refused"
            with self._ready:
                if self._ready.wait_for(lambda: self._closed, backoff.next_delay()):
                    break
        log.warning("%s did not take change %s: %s", self.name, change.get("id"), failure.reason)
        return "failed"


class WebhookTarget(QueuedTarget):
    """POSTs each change as JSON."""

    def __init__(self, url: str, number: int) -> None:
        # The URL is the secret of services such as Slack's: metrics and logs name the target
        # by its place in TELEMETRY_ALERT_WEBHOOKS and its host only.
        super().__init__(f"webhook {number} ({urlsplit(url).hostname})")
        self.url = url

    def attempt(self, change: Mapping[str, str]) -> Failure | None:
        request = urllib.request.Request(
            self.url, data=json.dumps(change).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S):
                return None
        except urllib.error.HTTPError as exc:
            return http_failure(exc.code, str(exc.reason))
        except (urllib.error.URLError, OSError) as exc:
            return Failure(str(exc))


class NotifyTarget(QueuedTarget):
    """A `[[notify]]` target: the changes it wants, rendered by its templates and sent by
    apprise in the service's own format (Slack blocks, Teams cards, e-mail, ...)."""

    silenceable = True

    def __init__(self, route: Notification) -> None:
        super().__init__(f"notify {route.name}")
        self.route = route
        import apprise  # noqa: PLC0415 (loaded only where targets are configured)

        self.service = apprise.Apprise()
        self.service.add(route.url)

    def wants(self, change: Mapping[str, str]) -> bool:
        return self.route.wants(change)

    def attempt(self, change: Mapping[str, str]) -> Failure | None:
        title, body, kind = self.route.message(change)
        result = self.service.notify(body=body, title=title, notify_type=kind,
                                     timeout=SEND_TIMEOUT_S * 2)  # fmt: skip
        if result:
            return None
        messages = [entry.message for entry in result.logs()]
        statuses = [int(code) for text in messages for code in _HTTP_STATUS.findall(text)]
        reason = "; ".join(messages) or "apprise gave no reason"
        return http_failure(statuses[-1], reason) if statuses else Failure(reason)


class AlertFanout:
    """Handler of the `alert-fanout` group on one shard: every change to every target that wants
    it, without waiting; an alert change a maintenance silence covers reaches no person."""

    acknowledges = False

    def __init__(self, targets: Sequence[Target], silences: SilenceView, labels: LabelView) -> None:
        self.targets = list(targets)
        self.silences = silences
        self.labels = labels

    def __call__(self, batch: Batch[Entries[dict[str, Any]]]) -> None:
        self.labels.refresh_if_due()
        for entry in batch.entries:
            change = entry.value
            silenced = change["state"] in ("raised", "resolved") and self.silences.covering(
                change, self.labels.of(change["sensor_id"])
            )
            for target in self.targets:
                if not target.wants(change):
                    continue
                if silenced and target.silenceable:
                    SENT.labels(target.name, "silenced").inc()
                else:
                    target.offer(change)


def targets_from(
    broker: MqttBroker | None, webhook_urls: Sequence[str], notifications: Sequence[Notification]
) -> list[Target]:
    targets: list[Target] = [MqttTarget(broker)] if broker else []
    targets += [WebhookTarget(url, n) for n, url in enumerate(webhook_urls, 1)]
    return targets + [NotifyTarget(route) for route in notifications]
