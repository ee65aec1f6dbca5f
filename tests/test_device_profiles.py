"""Device profiles: recorded payloads of each firmware, decoded alone and through a real mosquitto
and the real bridge into Redis, field by field."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ingest.devices import DeviceRegistry
from ingest.keys import StreamKeys
from ingest.mqttclient import MqttBroker
from ingest.redis.connection import connect
from ingest.settings import Settings
from ingest.status import format_status, stream_status
from producers.bridge import Bridge, BridgeCounts, BridgeOptions
from producers.payload import STRICT
from producers.routes import Route, Router, default_routes, parse_routes
from telemetry.localserver import LocalMosquitto
from tests.conftest import child_env, make_settings
from tests.device_payloads import EVERY, ROUTES, Recorded
from tests.helpers import entries


def test_each_recorded_payload_decodes_field_by_field() -> None:
    router = Router(parse_routes(ROUTES), 65_536)
    for recorded in EVERY:
        parsed = router.parse(recorded.topic, recorded.payload)
        assert parsed.refused == [], recorded.topic
        assert parsed.readings == recorded.readings, recorded.topic
        for fields in parsed.readings:
            note = parsed.notes[fields["sensor_id"]]
            assert note.profile == recorded.profile
            assert note.labels == recorded.labels.get(fields["sensor_id"], {})
            assert note.units == recorded.units.get(fields["sensor_id"], {})


def test_strict_routes_refuse_what_lenient_ones_take() -> None:
    strict = Router(parse_routes(ROUTES, decoding=STRICT), 65_536)
    zigbee = EVERY[1]  # occupancy and battery_low are booleans
    assert "must be a number" in strict.parse(zigbee.topic, zigbee.payload).refused[0].reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[route]]\nprofile = 'homie'", "unknown profile 'homie'"),
        ("[[route]]\ntopic = 'a/+/{sensor_id}'", "has a wildcard"),
        ("[[route]]\nprofile = 'sparkplug'\ntopic = 'x/{sensor_id}'", "takes spBv1.0/#"),
        ("[[route]]\nscale = { t = 'x' }", "scale must be a table of numbers"),
        ("[[route]]\nrename = { a = 'ts' }", "rename target 'ts'"),
        ("[[route]]\nlabels = { 'bad name' = 'x' }", "label name 'bad name'"),
        ("[[route]]\ncolour = 'red'", "unknown key 'colour'"),
        ("decoding = 'loose'\n[[route]]", "decoding must be one of"),
        ("routes = 1", "unknown top-level key 'routes'"),
        ("", "no [[route]] tables"),
        ("[[route]\n", "not valid TOML"),
    ],
)
def test_a_bad_routes_file_says_what_to_fix(text: str, message: str) -> None:
    with pytest.raises(Exception, match="routes") as caught:
        parse_routes(text, "routes.toml")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_bridge_refuses_a_bad_routes_file_in_one_line(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text("[[route]]\nprofile = 'homie'\n")
    done = subprocess.run(
        [sys.executable, "-m", "telemetry", "bridge", "--routes", str(routes)],
        env=child_env(Settings(), MQTT_URL="mqtt://127.0.0.1:1"), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "route 1: unknown profile 'homie'" in line


@contextmanager
def running_bridge(settings: Settings, broker: LocalMosquitto, routes: list[Route],
                   client_id: str = "profiles") -> Iterator[Bridge]:  # fmt: skip
    """The bridge in a thread of this process, subscribed when this yields."""
    broker_settings = settings.replace(mqtt_url=broker.url)
    found = MqttBroker.from_settings(broker_settings)
    assert found is not None
    options = BridgeOptions(found, routes, client_id)
    bridge = Bridge(broker_settings, options)
    stop = threading.Event()
    counts: list[BridgeCounts] = []
    thread = threading.Thread(target=lambda: counts.append(bridge.run(stop)), daemon=True)
    thread.start()
    assert bridge._connected.wait(30), "the bridge never connected"
    time.sleep(0.3)  # the SUBACK
    try:
        yield bridge
    finally:
        stop.set()
        thread.join(30)
        assert counts, "the bridge did not stop"


def publisher(broker: LocalMosquitto) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="firmware")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def wait_for_length(settings: Settings, key: str, count: int, timeout_s: float = 30) -> None:
    client = connect(settings)
    deadline = time.monotonic() + timeout_s
    while client.xlen(key) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.xlen(key) == count


def test_recorded_payloads_through_mosquitto_and_the_bridge(
    redis_url: str, broker: LocalMosquitto
) -> None:
    settings = make_settings(redis_url, stream="profiles:event")
    device = publisher(broker)
    expected: list[Recorded] = [r for r in EVERY if r.readings]
    with running_bridge(settings, broker, parse_routes(ROUTES)) as bridge:
        for recorded in EVERY:
            device.publish(recorded.topic, recorded.payload, qos=1).wait_for_publish(10)
        wait_for_length(settings, settings.stream, sum(len(r.readings) for r in expected))
    device.disconnect()
    assert bridge.counts.dead_lettered == 0 and bridge.counts.dropped_fields == 0
    stored = [fields for _, fields in entries(connect(settings), settings.stream)]
    assert stored == [fields for r in expected for fields in r.readings]
    registry = DeviceRegistry(settings)
    for recorded in expected:
        for fields in recorded.readings:
            device_info = registry.get(fields["sensor_id"])
            assert device_info is not None and device_info.profile == recorded.profile
            assert device_info.labels == recorded.labels.get(fields["sensor_id"], {})
            assert device_info.units == recorded.units.get(fields["sensor_id"], {})


def test_one_odd_field_costs_the_field_counted_and_sampled_not_the_reading(
    redis_url: str, broker: LocalMosquitto
) -> None:
    settings = make_settings(redis_url, stream="odd:event")
    keys = StreamKeys(settings.stream)
    device = publisher(broker)
    routes = default_routes(["sensors/{site}/{sensor_id}/telemetry"])
    with running_bridge(settings, broker, routes) as bridge:
        for i in range(50):
            body = f'{{"temp": {i}, "history": [1, 2], "note": null, "location": "gh-3"}}'
            device.publish("sensors/north/s1/telemetry", body, qos=1).wait_for_publish(10)
        wait_for_length(settings, settings.stream, 50)
    device.disconnect()
    client = connect(settings)
    assert [f["temp"] for _, f in entries(client, settings.stream)] == [f"{i}.0" for i in range(50)]
    assert bridge.counts.dropped_fields == 100
    [(_, sample)] = entries(client, keys.dead)
    assert sample["reason"].startswith("fields dropped from readings that were written")
    assert "history: a list is not a metric" in sample["reason"]
    info = DeviceRegistry(settings).get("s1")
    assert info is not None
    assert info.labels == {"site": "north", "location": "gh-3"}
    assert info.dropped == 100 and "null is not a value" in info.dropped_reason
    status = stream_status(settings, settings.stream, settings.maxlen, settings.trim_warn_ratio)
    assert (status.devices, status.dropped_fields) == (1, 100)
    assert "fields dropped from written readings: 100" in format_status(status)
    # The registry was written once for the labels, then only for the counts.
    assert info.first_ms <= info.updated_ms


def test_devices_are_listed_labelled_and_forgotten_from_the_command_line(
    settings: Settings,
) -> None:
    def telemetry(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "telemetry", "devices", *args],
                              env=child_env(settings), capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    labelled = telemetry("label", "s1", "s2", "site=gh-3", "room=north")
    assert labelled.returncode == 0 and labelled.stdout == "labelled 2 sensors\n"
    assert telemetry("label", "s2", "room=").returncode == 0
    listed = telemetry("list", "--where", "site=gh-*,room=north", "--format", "json")
    assert [(d["sensor_id"], d["labels"]) for d in json.loads(listed.stdout)] == [
        ("s1", {"site": "gh-3", "room": "north"})
    ]
    bad = telemetry("label", "s1", "bad name=x")
    assert bad.returncode == 2 and "label name 'bad name'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert telemetry("forget", "s1").stdout == "removed 1 devices from the registry\n"
    assert [d["sensor_id"] for d in json.loads(telemetry("list", "--format", "json").stdout)] == [
        "s2"
    ]
