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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import redis
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.common import print_table, redis_for_bench, start_telemetry
from telemetry.localserver import LocalMosquitto

DEVICES = 100


@dataclass(frozen=True)
class Profile:
    name: str
    route: str
    subscription: str
    # Message i of the backlog: topic and payload.
    message: Callable[[int], tuple[str, bytes]]
    # Stream entries the backlog makes (the Sparkplug birth makes one more).
    extra_entries: int = 0


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


def _zigbee(i: int) -> tuple[str, bytes]:
    return f"zigbee2mqtt/dev-{i % DEVICES:03d}", _json({
        "temperature": 21.32 + i % 7, "humidity": 45.1, "pressure": 1012.3, "battery": 91,
        "voltage": 2995, "linkquality": 102, "occupancy": i % 2 == 0,
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


def _plain(i: int) -> tuple[str, bytes]:
    return f"sensors/dev-{i % DEVICES:03d}/telemetry", _json({"temp": 21.5, "seq": i // DEVICES})


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _metric(name: str | None, alias: int, value: float) -> bytes:
    body = b"" if name is None else b"\x0a" + _varint(len(name)) + name.encode()
    body += b"\x10" + _varint(alias) + b"\x20" + _varint(10) + b"\x69" + struct.pack("<d", value)
    return b"\x12" + _varint(len(body)) + body


def _sparkplug(i: int) -> tuple[str, bytes]:
    if i == 0:
        metrics = _metric("Inputs/Temperature", 1, 20.0) + _metric("Inputs/Pressure", 2, 1.0)
        return "spBv1.0/plant/NBIRTH/edge-1", b"\x08" + _varint(1_700_000_000_000) + \
            b"\x18" + _varint(0) + metrics  # fmt: skip
    metrics = _metric(None, 1, 20.0 + i % 7) + _metric(None, 2, 1.0)
    return "spBv1.0/plant/NDATA/edge-1", b"\x08" + _varint(1_700_000_000_000 + i) + b"\x18" + \
        _varint(i % 256) + metrics  # fmt: skip


PROFILES = [
    Profile("json", "[[route]]\n", "sensors/+/telemetry", _plain),
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


def _client(client_id: str) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                       protocol=MQTTProtocolVersion.MQTTv311)  # fmt: skip


def queue_backlog(broker: LocalMosquitto, profile: Profile, client_id: str, n: int) -> None:
    """Register the consumer's session, then publish the backlog it will find."""
    client = _client(client_id)
    client.connect("127.0.0.1", broker.port)
    client.subscribe(profile.subscription, qos=1)
    client.loop(1)
    client.disconnect()
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    publisher.max_inflight_messages_set(1000)
    publisher.max_queued_messages_set(0)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    while not publisher.is_connected():
        time.sleep(0.01)
    # Message ids are 16 bits: wait for each chunk before a new one could reuse them.
    for chunk in range(0, n, 20_000):
        infos = [publisher.publish(*profile.message(i), qos=1)
                 for i in range(chunk, min(chunk + 20_000, n))]  # fmt: skip
        for info in infos:
            info.wait_for_publish(60)
    publisher.loop_stop()
    publisher.disconnect()


def bare_subscriber(broker: LocalMosquitto, client_id: str, n: int) -> float:
    """paho receiving the session's backlog and acknowledging (automatically), nothing else."""
    done = threading.Event()
    received = 0
    first = 0.0

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        nonlocal received, first
        if not received:
            first = time.perf_counter()
        received += 1
        if received == n:
            done.set()

    client = _client(client_id)
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    done.wait(300)
    elapsed = time.perf_counter() - first
    client.loop_stop()
    client.disconnect()
    return n / elapsed


def bridge(broker: LocalMosquitto, url: str, routes: Path, client_id: str, entries: int,
           messages: int) -> float:  # fmt: skip
    """The bridge draining its session's backlog: messages/s from the first entry to the last."""
    client = redis.Redis.from_url(url)
    client.flushall()
    process = start_telemetry(
        ["bridge", "--client-id", client_id, "--mqtt-version", "3", "--routes", str(routes)],
        url, MQTT_URL=broker.url,
    )  # fmt: skip
    while client.xlen("app:event") == 0:
        time.sleep(0.001)
    start = time.perf_counter()
    while client.xlen("app:event") < entries:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    process.terminate()
    process.wait()
    return messages / elapsed


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
                    paho_id, bridge_id = f"bare-{number}-{r}", f"bridge-{number}-{r}"
                    queue_backlog(broker, profile, paho_id, n)
                    rates.setdefault((profile.name, "bare"), []).append(
                        bare_subscriber(broker, paho_id, n))  # fmt: skip
                    queue_backlog(broker, profile, bridge_id, n)
                    rates.setdefault((profile.name, "bridge"), []).append(
                        bridge(broker, url, routes, bridge_id, n, n))  # fmt: skip
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
