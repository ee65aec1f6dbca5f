"""The MQTT bridge against a real mosquitto and a real redis-server."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import cast

import paho.mqtt.client as mqtt
import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from ingest.keys import StreamKeys
from ingest.redis.connection import connect
from ingest.settings import Settings
from producers.payload import DEFAULT_TOPICS, TopicTemplate, parse_message
from producers.pipeline import DROPPED_FIELDS
from telemetry.localserver import LocalMosquitto, LocalRedis
from tests.conftest import child_env, make_settings
from tests.helpers import entries


def bridge_process(
    settings: Settings, broker: LocalMosquitto, client_id: str = "bridge-1", *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "telemetry", "bridge", "--client-id", client_id, *extra],
        env=child_env(settings, MQTT_URL=broker.url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_subscribed(process: subprocess.Popen[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        if "subscribed to" in line:
            # Keep draining stderr so the bridge never blocks on a full pipe.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return
    raise AssertionError("bridge never subscribed")


class Devices:
    """Simulated devices publishing JSON readings with seq at QoS 1."""

    def __init__(self, broker: LocalMosquitto, clients: int = 4) -> None:
        self.clients = []
        for i in range(clients):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"devices-{i}")
            client.max_inflight_messages_set(500)
            client.max_queued_messages_set(0)
            client.connect("127.0.0.1", broker.port)
            client.loop_start()
            self.clients.append(client)

    def publish(self, devices: int, per_device: int) -> int:
        infos = []
        for seq in range(per_device):
            for d in range(devices):
                client = self.clients[d % len(self.clients)]
                body = json.dumps({"temp": 20 + (seq % 10) / 10, "seq": seq})
                infos.append(client.publish(f"sensors/dev-{d:03d}/telemetry", body, qos=1))
        for info in infos:
            info.wait_for_publish(30)
        return len(infos)

    def close(self) -> None:
        for client in self.clients:
            client.loop_stop()
            client.disconnect()


def wait_for(client: redis.Redis, stream: str, count: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        length = int(client.xlen(stream))
        if length >= count:
            time.sleep(0.5)
            return int(client.xlen(stream))
        time.sleep(0.1)
    return int(client.xlen(stream))


def seqs_by_device(client: redis.Redis, stream: str) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for _, fields in entries(client, stream):
        found.setdefault(fields["sensor_id"], []).append(int(fields["seq"]))
    return found


def publish_through_bridges(
    redis_url: str,
    broker: LocalMosquitto,
    bridge_args: list[list[str]],
    devices: int,
    per_device: int,
) -> None:
    """Devices publish while the bridges run; every reading arrives exactly once."""
    settings = make_settings(redis_url)
    bridges = [bridge_process(settings, broker, *args) for args in bridge_args]
    for bridge in bridges:
        wait_subscribed(bridge)
    publishers = Devices(broker)
    try:
        sent = publishers.publish(devices=devices, per_device=per_device)
        client = connect(settings)
        assert wait_for(client, settings.stream, sent, 120) == devices * per_device
    finally:
        publishers.close()
        for bridge in bridges:
            bridge.terminate()
    assert [bridge.wait(30) for bridge in bridges] == [0] * len(bridges)
    for seqs in seqs_by_device(client, settings.stream).values():
        assert sorted(seqs) == list(range(per_device))


def test_a_hundred_thousand_qos1_messages_arrive_exactly(
    redis_url: str, broker: LocalMosquitto
) -> None:
    publish_through_bridges(redis_url, broker, [["bridge-1"]], devices=100, per_device=1000)


@pytest.mark.parametrize("version", ["5", "3"])
def test_a_killed_bridge_loses_nothing_the_broker_held(
    redis_url: str, broker: LocalMosquitto, version: str
) -> None:
    settings = make_settings(redis_url)
    client = connect(settings)
    bridge = bridge_process(settings, broker, "bridge-1", "--mqtt-version", version)
    wait_subscribed(bridge)
    devices = Devices(broker)
    publishing = threading.Thread(target=devices.publish, args=(100, 500))
    publishing.start()
    try:
        while client.xlen(settings.stream) < 15_000:
            time.sleep(0.05)
        bridge.send_signal(signal.SIGKILL)
        bridge.wait()
        time.sleep(random.uniform(0.2, 1.0))
        bridge = bridge_process(settings, broker, "bridge-1", "--mqtt-version", version)
        publishing.join()
        arrived = wait_for(client, settings.stream, 50_000, 120)
    finally:
        devices.close()
        bridge.terminate()
        bridge.wait(30)
    per_device = seqs_by_device(client, settings.stream)
    duplicates = sum(len(seqs) - len(set(seqs)) for seqs in per_device.values())
    missing = {device: 500 - len(set(seqs)) for device, seqs in per_device.items()
               if set(seqs) != set(range(500))}  # fmt: skip
    assert len(per_device) == 100 and not missing, (arrived, missing)
    # At most the messages in flight at the kill: one batch the bridge wrote but had not
    # acknowledged yet (the broker allows 1000 unacknowledged messages per client).
    assert duplicates <= 1000


def test_the_last_messages_of_a_burst_are_acknowledged_without_waiting_for_more(
    redis_url: str, broker: LocalMosquitto
) -> None:
    """Acknowledgements ride on the next message when traffic flows; when none comes, they
    still go out, so a bridge killed after a quiet second leaves nothing to redeliver."""
    settings = make_settings(redis_url)
    client = connect(settings)
    bridge = bridge_process(settings, broker)
    wait_subscribed(bridge)
    devices = Devices(broker)
    try:
        sent = devices.publish(devices=10, per_device=200)
        assert wait_for(client, settings.stream, sent, 60) == sent
        time.sleep(1)
        bridge.send_signal(signal.SIGKILL)
        bridge.wait()
        bridge = bridge_process(settings, broker)
        wait_subscribed(bridge)
        time.sleep(2)
        assert client.xlen(settings.stream) == sent
    finally:
        devices.close()
        bridge.terminate()
        bridge.wait(30)


def test_the_broker_restarting_loses_nothing_acknowledged(
    redis_url: str, broker: LocalMosquitto
) -> None:
    settings = make_settings(redis_url)
    client = connect(settings)
    bridge = bridge_process(settings, broker)
    wait_subscribed(bridge)
    devices = Devices(broker, clients=1)
    devices.publish(devices=10, per_device=100)
    devices.close()
    wait_for(client, settings.stream, 1000, 30)
    broker.restart()
    devices = Devices(broker, clients=1)
    try:
        # Only after the bridge reconnected and resubscribed does a message published now reach it.
        deadline = time.monotonic() + 60
        probe = 0
        while time.monotonic() < deadline and client.xlen(settings.stream) < 1001:
            body = json.dumps({"temp": 1, "seq": probe})
            devices.clients[0].publish("sensors/late/telemetry", body, qos=1)
            probe += 1
            time.sleep(0.5)
        devices.publish(devices=10, per_device=100)
        final = wait_for(client, settings.stream, 2001, 60)
    finally:
        devices.close()
        bridge.terminate()
        bridge.wait(30)
    per_device = seqs_by_device(client, settings.stream)
    per_device.pop("late", None)
    assert final >= 2001
    assert all(Counter(seqs) == Counter({s: 2 for s in range(100)}) for seqs in per_device.values())


def test_redis_stopped_for_ten_seconds_loses_nothing(
    tmp_path: Path, broker: LocalMosquitto
) -> None:
    server = LocalRedis(workdir=tmp_path / "redis", appendonly=True)
    server.start()
    settings = make_settings(server.url)
    bridge = bridge_process(settings, broker)
    wait_subscribed(bridge)
    devices = Devices(broker)
    publishing = threading.Thread(target=devices.publish, args=(50, 400))
    try:
        publishing.start()
        time.sleep(0.5)
        server.stop()
        time.sleep(10)
        server.start()
        publishing.join()
        client = connect(settings)
        wait_for(client, settings.stream, 20_000, 60)
        per_device = seqs_by_device(client, settings.stream)
    finally:
        devices.close()
        bridge.terminate()
        bridge.wait(30)
        server.close()
    assert len(per_device) == 50
    assert all(set(seqs) == set(range(400)) for seqs in per_device.values())


def test_two_bridges_on_a_shared_subscription_write_each_message_once(
    redis_url: str, broker: LocalMosquitto
) -> None:
    shared = [["bridge-1", "--share", "ingest"], ["bridge-2", "--share", "ingest"]]
    publish_through_bridges(redis_url, broker, shared, devices=20, per_device=500)


TEMPLATES = [TopicTemplate(t) for t in DEFAULT_TOPICS]
# Anything a client may publish to: MQTT forbids wildcards and control characters in a
# published topic, and mosquitto disconnects a client that sends one with a noncharacter.
level = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Cn"), blacklist_characters="/+#"),
    max_size=12,
) | st.sampled_from(["dev-1", "s1", "{x}", "*", "temp", "telemetry", "sensör", "a b", ""])
subscribed = st.builds(
    lambda a, b: f"sensors/{a}/{b}",
    level | st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True),
    level | st.sampled_from(["telemetry", "temp", "humidity"]),
)
# Mostly topics the bridge receives; some it never sees (the broker keeps them from it).
topics = st.integers(0, 9).flatmap(lambda n: level if n == 0 else subscribed)
payloads = (
    st.binary(max_size=80)
    | st.recursive(
        st.none()
        | st.booleans()
        | st.floats()
        | st.integers(-(10**30), 10**30)
        | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    ).map(lambda doc: json.dumps(doc).encode())
    | st.sampled_from([b"21.5", b"NaN", b"1e999", b'{"temp": 1}', b'[{"temp": 1, "seq": 3}]'])
)


class Refusals:
    """Dead letters of refused messages, not the samples of fields dropped from readings that
    were written; each call reads only the letters that came since the last."""

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self.client, self.stream = client, stream
        self.start, self.count = "-", 0

    def __call__(self) -> int:
        letters = cast(
            list[tuple[str, dict[str, str]]], self.client.xrange(self.stream, self.start)
        )
        if letters:
            self.start = f"({letters[-1][0]}"
        self.count += sum(not fields["reason"].startswith(DROPPED_FIELDS) for _, fields in letters)
        return self.count


def test_fuzzed_messages_never_stop_the_bridge_and_are_all_accounted_for(
    redis_url: str, broker: LocalMosquitto
) -> None:
    settings_ = make_settings(redis_url)
    client = connect(settings_)
    keys = StreamKeys(settings_.stream)
    bridge = bridge_process(settings_, broker, "fuzz", "--max-payload", "1024")
    wait_subscribed(bridge)
    before = set(client.keys("*"))
    publisher = Devices(broker, clients=1).clients[0]
    expected = {"valid": 0, "invalid": 0, "messages": 0, "examples": 0}
    refusals = Refusals(client, keys.dead)

    @settings(
        max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), phases=[
            Phase.explicit, Phase.reuse, Phase.generate,
        ],
    )  # fmt: skip
    @given(st.lists(st.tuples(topics, payloads), min_size=80, max_size=150))
    def publish_and_check(messages: list[tuple[str, bytes]]) -> None:
        infos = []
        expected["examples"] += 1
        for topic, payload in messages:
            if topic.startswith("$") or not any(t.match(topic) for t in TEMPLATES):
                continue  # not a topic the bridge subscribes to
            parsed = parse_message(topic, payload, TEMPLATES, 1024)
            expected["valid"] += len(parsed.readings)
            # One dead letter per message with anything refused.
            expected["invalid"] += bool(parsed.refused)
            infos.append(publisher.publish(topic, payload, qos=1))
            expected["messages"] += 1
        for info in infos:
            info.wait_for_publish(30)

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            client.xlen(keys.stream) < expected["valid"] or refusals() < expected["invalid"]
        ):
            time.sleep(0.02)
        assert bridge.poll() is None, "the bridge died"
        assert (client.xlen(keys.stream), refusals()) == (expected["valid"], expected["invalid"])

    try:
        publish_and_check()
    finally:
        publisher.disconnect()
        bridge.terminate()
    assert bridge.wait(30) == 0
    assert expected["messages"] >= 4_000, expected
    assert expected["valid"] >= 40, expected
    assert set(client.keys("*")) - before <= {keys.stream, keys.dead, keys.meta, keys.devices}
