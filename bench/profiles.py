"""The bridge with each device profile against a bare paho subscriber on the same messages.

    python -m bench.profiles [--messages N] [--rounds R]

For each profile the broker queues N QoS 1 messages of that firmware's shape (100 devices) for
a persistent session (MQTT 3.1.1); the consumer then connects, and the time from its first
message to its last (for the bridge, routed by a routes file naming the profile: to the last
entry in Redis) is measured, as in bench.bridge. The Sparkplug B backlog is one node's NBIRTH
and then alias-only NDATA, built here in protobuf's wire format.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.bridge import Setup, bare_subscriber, bridges, json_reading, queue_backlog
from bench.common import print_table, redis_for_bench
from producers.profiles.sparkplug.wire import encode_varint
from telemetry.localserver import LocalMosquitto

DEVICES = 100


@dataclass(frozen=True)
class Profile:
    name: str
    route: str
    subscription: str
    # Message i of the backlog: topic and payload.
    message: Callable[[int], tuple[str, bytes]]


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


def _zigbee(i: int) -> tuple[str, bytes]:
    return f"zigbee2mqtt/dev-{i % DEVICES:03d}", _json({
        "temperature": 21.32 + i % 7, "humidity": 45.1, "pressure": 1012.3, "battery": 91,
        "voltage": 2995, "linkquality": 102, "occupancy": i % 2 == 0,
    })  # fmt: skip


def _wide_json(i: int) -> tuple[str, bytes]:
    """The Zigbee payload's seven fields as plain JSON numbers: what the fields cost alone."""
    return f"sensors/dev-{i % DEVICES:03d}/telemetry", _json({
        "temperature": 21.32 + i % 7, "humidity": 45.1, "pressure": 1012.3, "battery": 91,
        "voltage": 2995, "linkquality": 102, "occupancy": float(i % 2 == 0),
    })  # fmt: skip


def _tasmota(i: int) -> tuple[str, bytes]:
    return f"tele/dev-{i % DEVICES:03d}/SENSOR", _json({
        "Time": "2021-01-01T12:00:00", "TempUnit": "C",
        "AM2301": {"Temperature": 21.3 + i % 7, "Humidity": 45.0, "DewPoint": 8.9},
    })  # fmt: skip


def _shelly(i: int) -> tuple[str, bytes]:
    device = f"shellyplusht-{i % DEVICES:03d}"
    return f"{device}/events/rpc", _json({
        "src": device, "dst": f"{device}/events", "method": "NotifyStatus",
        "params": {"ts": 1631266595.43 + i, "temperature:0": {"id": 0, "tC": 21.3, "tF": 70.3}},
    })  # fmt: skip


def _mapped(i: int) -> tuple[str, bytes]:
    return f"site/gh-{i % 4}/sensors/dev-{i % DEVICES:03d}", _json(
        {"env": {"t": 215 + i % 7, "rh": 0.41}, "rssi": -70, "seq": i // DEVICES}
    )


def _metric(name: str | None, alias: int, value: float) -> bytes:
    """A Double metric, by alias (and name, for a birth)."""
    body = b"" if name is None else b"\x0a" + encode_varint(len(name)) + name.encode()
    body += b"\x10" + encode_varint(alias) + b"\x20" + encode_varint(10)
    body += b"\x69" + struct.pack("<d", value)
    return b"\x12" + encode_varint(len(body)) + body


def _sparkplug(i: int) -> tuple[str, bytes]:
    """An NBIRTH first, then NDATA by alias, `seq` counting from the birth's 0."""
    header = b"\x08" + encode_varint(1_700_000_000_000 + i) + b"\x18" + encode_varint(i % 256)
    if i == 0:
        metrics = _metric("Inputs/Temperature", 1, 20.0) + _metric("Inputs/Pressure", 2, 1.0)
        return "spBv1.0/plant/NBIRTH/edge-1", header + metrics
    metrics = _metric(None, 1, 20.0 + i % 7) + _metric(None, 2, 1.0)
    return "spBv1.0/plant/NDATA/edge-1", header + metrics


PROFILES = [
    Profile("json", "[[route]]\n", "sensors/+/telemetry", json_reading),
    Profile("json, the zigbee2mqtt fields as numbers", "[[route]]\n", "sensors/+/telemetry",
            _wide_json),
    Profile(
        "json, label level + rename + scale + units",
        "[[route]]\ntopic = 'site/{site}/sensors/{sensor_id}'\nrename = { 'env.t' = 'temp' }\n"
        "scale = { temp = 0.1 }\nunits = { temp = '°C' }\nignore = ['rssi']\n",
        "site/+/sensors/+", _mapped,
    ),
    Profile("zigbee2mqtt", "[[route]]\nprofile = 'zigbee2mqtt'\n", "zigbee2mqtt/+", _zigbee),
    Profile("tasmota", "[[route]]\nprofile = 'tasmota'\n", "tele/+/SENSOR", _tasmota),
    Profile("shelly-gen2", "[[route]]\nprofile = 'shelly-gen2'\n", "+/events/rpc", _shelly),
    Profile("sparkplug", "[[route]]\nprofile = 'sparkplug'\n", "spBv1.0/#", _sparkplug),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.messages
    rates: dict[tuple[str, str], list[float]] = {}
    broker = LocalMosquitto()
    broker.start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-profiles-"))
    try:
        with redis_for_bench() as url:
            for r in range(args.rounds):
                for number, profile in enumerate(PROFILES):
                    routes = workdir / f"routes-{number}.toml"
                    routes.write_text(profile.route)
                    setup = Setup(3, topic_filter=profile.subscription, routes=str(routes))
                    paho_id, bridge_id = f"bare-{number}-{r}", f"bridge-{number}-{r}"
                    queue_backlog(broker, setup, [paho_id], n, profile.message)
                    rates.setdefault((profile.name, "bare"), []).append(
                        bare_subscriber(broker, setup, paho_id, n))  # fmt: skip
                    queue_backlog(broker, setup, [bridge_id], n, profile.message)
                    rates.setdefault((profile.name, "bridge"), []).append(
                        bridges(broker, url, setup, [bridge_id], n))  # fmt: skip
                    print(f"round {r + 1}/{args.rounds}: {profile.name} done", flush=True)
    finally:
        broker.close()
    median = {key: statistics.median(values) for key, values in rates.items()}
    print(f"{n:,} queued QoS 1 messages per run (MQTT 3.1.1); median of {args.rounds}")
    rows = []
    for profile in PROFILES:
        paho, bridged = median[(profile.name, "bare")], median[(profile.name, "bridge")]
        rows.append((profile.name, f"{paho:,.0f}", f"{bridged:,.0f}", f"{bridged / paho:.2f}"))
    print_table(["profile", "bare paho messages/s (reference)", "bridge messages/s", "ratio"],
                rows)  # fmt: skip


if __name__ == "__main__":
    main()
