"""Simulated devices that publish over MQTT, as real ones do, instead of writing to the stream.

Each reading goes to `sensors/{sensor_id}/telemetry` as a JSON object at QoS 1; the bridge
turns it back into a stream entry. paho keeps unacknowledged messages and re-sends them after a
reconnect. A broker that cannot be reached at start, or that has not acknowledged every reading
when the simulator stops, is an error: readings are never reported as sent when they were not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ingest.errors import IngestError
from ingest.mqttclient import MqttBroker, start_publisher

Fields = dict[str, str]
TOPIC = "sensors/{sensor_id}/telemetry"
QUEUE_LIMIT = 100_000
# How long a stopping simulator waits for the broker to acknowledge what it published.
ACK_WAIT_S = 30.0


class BrokerUnavailable(IngestError):
    """The broker could not be reached, or did not acknowledge what was published."""


def payload(fields: Fields) -> bytes:
    """A reading as a device sends it: numbers as JSON numbers, no sensor id (the topic has it)."""
    body: dict[str, int | float] = {}
    for name, value in fields.items():
        if name == "sensor_id":
            continue
        body[name] = int(value) if name in ("ts", "seq") else float(value)
    return json.dumps(body).encode()


def check_connects(broker: MqttBroker) -> None:
    """Connect once, in the foreground, so that a wrong address, certificate or password is one
    clear error at start; later losses of the connection are retried in the background."""
    answer: list[str] = []
    probe = mqtt.Client(CallbackAPIVersion.VERSION2)
    broker.configure(probe)
    probe.on_connect = lambda _c, _u, _f, reason, _p: answer.append(str(reason))
    try:
        probe.connect(broker.host, broker.port, keepalive=10)
        deadline = time.monotonic() + ACK_WAIT_S
        while not answer and time.monotonic() < deadline:
            probe.loop(0.1)
    except (OSError, ValueError) as exc:
        raise BrokerUnavailable(f"cannot connect to {broker.name}: {exc}") from None
    finally:
        probe.disconnect()
    if answer != ["Success"]:
        refused = answer[0] if answer else "no answer"
        raise BrokerUnavailable(f"{broker.name} refused the connection: {refused}")


class MqttSink:
    """Takes the place of the stream writer for a simulator fleet."""

    def __init__(self, broker: MqttBroker) -> None:
        self.broker = broker
        check_connects(broker)
        self.client = start_publisher(broker, "simulator", QUEUE_LIMIT)
        self.client.on_publish = self._on_publish
        self.published = 0
        self.acknowledged = 0

    def _on_publish(self, _c: mqtt.Client, _u: Any, _mid: int, _r: Any, _p: Any) -> None:
        self.acknowledged += 1

    @property
    def buffered(self) -> int:
        return 0

    def add_many(self, entries: Sequence[Fields]) -> None:
        for fields in entries:
            topic = TOPIC.format(sensor_id=fields["sensor_id"])
            self.client.publish(topic, payload(fields), qos=1)
        self.published += len(entries)

    def flush(self) -> list[str]:
        return []

    def close(self) -> None:
        """Stop once the broker has acknowledged every reading, or fail saying how many not."""
        deadline = time.monotonic() + ACK_WAIT_S
        while self.acknowledged < self.published and time.monotonic() < deadline:
            time.sleep(0.05)
        self.close_now()
        if self.acknowledged < self.published:
            raise BrokerUnavailable(
                f"{self.published - self.acknowledged} of {self.published} readings were not "
                f"acknowledged by {self.broker.name} in {ACK_WAIT_S:.0f}s"
            )

    def close_now(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
