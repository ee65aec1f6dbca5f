"""Simulated devices that publish over MQTT, as real ones do, instead of writing to the stream.

Each reading goes to `sensors/{sensor_id}/telemetry` as a JSON object at QoS 1; the bridge
turns it back into a stream entry. paho keeps unacknowledged messages and re-sends them after a
reconnect.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ingest.mqttclient import start_publisher

Fields = dict[str, str]
TOPIC = "sensors/{sensor_id}/telemetry"
QUEUE_LIMIT = 100_000


def payload(fields: Fields) -> bytes:
    """A reading as a device sends it: numbers as JSON numbers, no sensor id (the topic has it)."""
    body: dict[str, int | float] = {}
    for name, value in fields.items():
        if name == "sensor_id":
            continue
        body[name] = int(value) if name in ("ts", "seq") else float(value)
    return json.dumps(body).encode()


class MqttSink:
    """Takes the place of the stream writer for a simulator fleet."""

    def __init__(self, url: str) -> None:
        self.client = start_publisher(url, "simulator", QUEUE_LIMIT)
        self.published = 0

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
        self.client.loop_stop()
        self.client.disconnect()
