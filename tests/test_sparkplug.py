"""Sparkplug B end to end: an edge node built with a third-party library (pysparkplug) publishes
through a real mosquitto to the real bridge: births, data by alias, a rebirth after the bridge
restarts, deaths."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.devices import DeviceRegistry
from ingest.keys import StreamKeys
from ingest.redis.connection import connect
from producers.profiles.sparkplug.host import SparkplugHost
from producers.profiles.sparkplug.wire import decode_payload, encode_varint
from producers.routes import parse_routes
from telemetry.localserver import LocalMosquitto
from tests.conftest import ROOT, make_settings
from tests.helpers import entries
from tests.test_device_profiles import running_bridge, wait_for_length

EDGE_VENV = ROOT / ".venv-sparkplug"
EDGE_LIBRARY = "pysparkplug==0.6.1"
NODE, DEVICE = "plant1:edge-7", "plant1:edge-7:pump1"
BASE_MS = 1_700_000_000_000
ROUTES = "[[route]]\nprofile = 'sparkplug'\n"


@pytest.fixture(scope="session")
def edge_python() -> Path:
    """An interpreter with pysparkplug, in a virtualenv of its own: it needs paho-mqtt 1.x."""
    python = EDGE_VENV / "bin" / "python"
    if not python.exists() or subprocess.run([python, "-c", "import pysparkplug"]).returncode:
        subprocess.run([sys.executable, "-m", "venv", "--clear", EDGE_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", EDGE_LIBRARY], check=True)
    return python


class EdgeNode:
    def __init__(self, python: Path, broker: LocalMosquitto, bd_seq: int) -> None:
        self.process = subprocess.Popen(
            [python, str(ROOT / "tests" / "sparkplug_edge.py"), str(broker.port), str(bd_seq)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def expect(self, word: str) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line == word, f"edge node said {line!r}, expected {word!r}"

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        if command != "die":
            self.expect("done")


@pytest.fixture
def edge(edge_python: Path, broker: LocalMosquitto) -> Iterator[EdgeNode]:
    node = EdgeNode(edge_python, broker, bd_seq=0)
    yield node
    node.process.kill()
    node.process.wait(10)


def test_births_data_by_alias_a_rebirth_after_a_restart_and_deaths(
    redis_url: str, broker: LocalMosquitto, edge: EdgeNode
) -> None:
    settings = make_settings(redis_url, stream="spb:event")
    routes = parse_routes(ROUTES)
    client = connect(settings)
    registry = DeviceRegistry(settings)
    with running_bridge(settings, broker, routes, "spb-host"):
        edge.expect("born")  # published at connect; the bridge's session was already there
        edge.send("ndata 20")
        edge.send("ddata 10")
        wait_for_length(settings, settings.stream, 2 + 20 + 10)
    stored = [fields for _, fields in entries(client, settings.stream)]
    by_sensor = {NODE: [f for f in stored if f["sensor_id"] == NODE],
                 DEVICE: [f for f in stored if f["sensor_id"] == DEVICE]}  # fmt: skip
    assert by_sensor[NODE][0] == {
        "sensor_id": NODE, "Inputs_Temperature": "20.0", "Inputs_Pressure": "-5.0",
        "Running": "1.0", "online": "1.0", "ts": str(BASE_MS),
    }  # fmt: skip
    assert by_sensor[NODE][1:] == [
        {"sensor_id": NODE, "Inputs_Temperature": repr(20.0 + i / 2),
         "Inputs_Pressure": repr(float(-i)), "ts": str(BASE_MS + (i + 1) * 1000)}
        for i in range(20)
    ]  # fmt: skip
    assert by_sensor[DEVICE] == [
        {"sensor_id": DEVICE, "Flow": "1.5", "Level": "-300.0", "online": "1.0",
         "ts": str(BASE_MS)},
        *({"sensor_id": DEVICE, "Flow": repr(2.0 + i), "ts": str(BASE_MS + (i + 1) * 1000)}
          for i in range(10)),
    ]  # fmt: skip
    node = registry.get(NODE)
    assert node is not None and node.online is True and node.profile == "sparkplug"
    assert node.labels == {"sparkplug_group": "plant1", "edge_node": "edge-7", "Line": "line-A"}

    # Data sent while the bridge is down waits in its session; the restarted bridge knows no
    # aliases, refuses it with the reason, asks for a rebirth, and takes what follows.
    edge.send("ndata 5")
    with running_bridge(settings, broker, routes, "spb-host") as bridge:
        edge.expect("born")
        assert bridge.router.sparkplug.counts.rebirths_asked == 1
        edge.send("ndata 5")
        wait_for_length(settings, settings.stream, 32 + 2 + 5)
        keys = StreamKeys(settings.stream)
        reasons = [f["reason"] for _, f in entries(client, keys.dead)]
        assert len(reasons) == 5 and "rebirth requested" in reasons[0]
        edge.send("ddeath")
        wait_for_length(settings, settings.stream, 39 + 1)
        assert registry.get(DEVICE).online is False  # type: ignore[union-attr]
        edge.send("die")  # the broker publishes the node's NDEATH will
        wait_for_length(settings, settings.stream, 40 + 1)
        last = entries(client, settings.stream)[-1][1]
        assert last == {"sensor_id": NODE, "online": "0.0"}
        assert registry.get(NODE).online is False  # type: ignore[union-attr]
        assert bridge.router.sparkplug.counts.deaths == 2


def test_a_stale_death_from_an_earlier_session_is_ignored() -> None:
    host = SparkplugHost(clock=lambda: 0.0)
    birth = _payload(seq=0, metrics=[("bdSeq", 4, 7)])
    assert host.parse("spBv1.0/g/NBIRTH/n", birth, "lenient").readings
    stale = _payload(seq=None, metrics=[("bdSeq", 4, 6)])
    assert host.parse("spBv1.0/g/NDEATH/n", stale, "lenient").readings == []
    current = _payload(seq=None, metrics=[("bdSeq", 4, 7)])
    [death] = host.parse("spBv1.0/g/NDEATH/n", current, "lenient").readings
    assert death == {"sensor_id": "g:n", "online": "0.0"}


def test_hostile_payloads_cost_a_refusal_each() -> None:
    host = SparkplugHost(clock=lambda: 0.0)
    for garbage in (b"\xff" * 40, b"\x12\xff\xff\xff\xff\x0f", b"\x0a\x05ab", bytes(range(256))):
        parsed = host.parse("spBv1.0/g/NBIRTH/n", garbage, "lenient")
        assert len(parsed.refused) <= 1
    # Data from nodes never born: one rebirth request per node, then refusals until the birth.
    for i in range(3):
        parsed = host.parse(f"spBv1.0/g/NDATA/n{i % 2}", _payload(seq=1, metrics=[]), "lenient")
        assert len(parsed.refused) == 1
    assert host.counts.rebirths_asked == 2
    assert decode_payload(_payload(seq=3, metrics=[("x", 3, 2**32 - 1)])).metrics[0].name == "x"


def _payload(seq: int | None, metrics: list[tuple[str, int, int]]) -> bytes:
    """A payload with integer metrics (name, datatype, raw value), in protobuf's wire format."""
    body = b"\x08" + encode_varint(int(time.time() * 1000))
    if seq is not None:
        body += b"\x18" + encode_varint(seq)
    for name, datatype, value in metrics:
        raw = name.encode()
        metric = b"\x0a" + encode_varint(len(raw)) + raw + b"\x20" + encode_varint(datatype)
        metric += b"\x58" + encode_varint(value)
        body += b"\x12" + encode_varint(len(metric)) + metric
    return body
