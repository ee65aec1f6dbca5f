"""Hostile devices and requests against the device registry, labels and Sparkplug bookkeeping:
the cost stays bounded, or the input is refused with the limit named (real Redis)."""

from __future__ import annotations

import json

import pytest
import redis
from fastapi.testclient import TestClient

from ingest.devices import DeviceNote, DeviceRegistry
from ingest.keys import StreamKeys
from ingest.labels import MAX_LABELS, MAX_SELECTOR_TERMS
from ingest.settings import Settings
from producers.payload import document_readings
from producers.profiles.sparkplug import host
from producers.profiles.sparkplug.host import SparkplugHost
from producers.routes import MAX_ROUTES, parse_routes
from telemetry.web.app import create_app


def test_the_registry_keeps_at_most_max_sensors_and_max_labels_each(
    settings: Settings, client: redis.Redis
) -> None:
    small = settings.replace(max_sensors=10)
    registry = DeviceRegistry(small)
    labels = {f"l{j}": "v" * 128 for j in range(300)}
    units = {f"m{j}": "u" for j in range(1000)}
    many = {f"s{i}": DeviceNote(labels=dict(labels), units=dict(units)) for i in range(50)}
    assert registry.note(many) == 40
    keys = StreamKeys(settings.stream)
    assert client.hlen(keys.devices) == 10
    for device in registry.devices():
        assert len(device.labels) == MAX_LABELS and len(device.units) == 256
    # What one sensor can cost the registry, whatever it sends.
    assert max(len(v) for v in client.hvals(keys.devices)) < 16_000
    # Known sensors are still updated when the registry is full; a label removed makes room.
    [kept, *_] = registry.devices()
    old = sorted(kept.labels)[0]
    assert registry.label([kept.sensor_id], {"site": "x"}, [old]) == 0
    found = registry.get(kept.sensor_id)
    assert found is not None and found.labels["site"] == "x" and old not in found.labels


def test_a_reading_of_thousands_of_strings_gives_a_bounded_note() -> None:
    item: dict[str, object] = {"temp": 1.0}
    item.update((f"name{i}", "x" * 200 if i % 2 else f"value {i}") for i in range(20_000))
    parsed = document_readings(item, "s1")
    # Only the first 256 fields are looked at; long strings are dropped, not kept as labels.
    assert len(parsed.notes["s1"].labels) <= 128
    assert parsed.notes["s1"].dropped <= 129
    assert len(json.dumps(parsed.notes["s1"].labels)) < 6_000


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/sensors/s1/labels", {f"l{i}": "v" for i in range(MAX_LABELS + 1)}, "at most 32"),
        ("/sensors/s1/labels", {"site": "v" * 10_000}, "1-128 printable"),
        ("/sensors/s1/labels", {"bad name": "v"}, "label name"),
        ("/sensors/s1/labels", {"site": "line\nbreak"}, "printable"),
    ],
)
def test_labels_over_http_are_checked_before_anything_is_written(
    settings: Settings, client: redis.Redis, path: str, body: dict[str, str], reason: str
) -> None:
    api = TestClient(create_app(settings))
    response = api.put(path, json=body)
    assert response.status_code == 422 and reason in response.text
    assert client.exists(StreamKeys(settings.stream).devices) == 0


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (",".join(f"a{i}=x" for i in range(MAX_SELECTOR_TERMS + 1)), "at most 16 terms"),
        ("site=" + "x" * 1_000, "over 128"),
        ("x" * 3_000, "at most 2000"),
        ("site", "expected label=value"),
    ],
)
def test_selectors_are_bounded(settings: Settings, where: str, reason: str) -> None:
    api = TestClient(create_app(settings))
    for path in ("/sensors", "/fleet/groups", "/fleet/top"):
        response = api.get(path, params={"where": where, "metric": "temp"})
        assert response.status_code == 422 and reason in response.text, path


def test_a_routes_file_with_too_many_routes_is_refused() -> None:
    with pytest.raises(Exception, match=f"over the {MAX_ROUTES} limit"):
        parse_routes("[[route]]\n" * (MAX_ROUTES + 1))


def test_made_up_edge_nodes_cost_a_bounded_table_and_one_rebirth_request_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(host, "MAX_NODES", 10)
    spb = SparkplugHost(clock=lambda: 0.0)
    asked = 0
    for i in range(50):
        for _ in range(3):
            parsed = spb.parse(f"spBv1.0/g/NDATA/node-{i}", b"\x18\x01", "lenient")
            assert len(parsed.refused) == 1
            asked += len(parsed.replies)
    assert len(spb.nodes) == 10 and asked == 10
