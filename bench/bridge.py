"""Bridge throughput at QoS 1 against a bare paho subscriber that receives and acknowledges, and
two bridges on a shared subscription against one.

    python -m bench.bridge [--messages N] [--rounds R]

For each consumer, the broker first queues N QoS 1 messages (100 devices, JSON with seq) for
its persistent session; the consumer then connects, and the time from its first message to
its last (for the bridge: to the last entry in Redis) is measured. Both drain the same kind of
backlog from the same broker, so the publisher's speed does not enter the comparison.
For the shared subscription (MQTT 5), the broker splits the backlog between the sessions of
the group's members; one bridge alone in its group drains the same N.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import redis
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.common import print_table, redis_for_bench, start_telemetry
from ingest.redis.connection import read_range
from telemetry.localserver import LocalMosquitto


@dataclass(frozen=True)
class Setup:
    """How consumers subscribe: the MQTT version, and the shared subscription group if any."""

    version: int
    share: str | None = None
    # What the consumers subscribe to, and the bridge's routes file (None: its default topics).
    topic_filter: str = "sensors/+/+"
    routes: str | None = None

    @property
    def topic(self) -> str:
        return f"$share/{self.share}/{self.topic_filter}" if self.share else self.topic_filter

    def client(self, client_id: str) -> mqtt.Client:
        if self.version == 5:
            return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                               protocol=MQTTProtocolVersion.MQTTv5)  # fmt: skip
        return mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )  # fmt: skip

    def connect(self, client: mqtt.Client, broker: LocalMosquitto) -> None:
        """Connect to the persistent session (created on first use)."""
        if self.version == 5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 3600
            client.connect("127.0.0.1", broker.port, clean_start=False, properties=properties)
        else:
            client.connect("127.0.0.1", broker.port)

    def end_session(self, broker: LocalMosquitto, client_id: str) -> None:
        """Remove a consumer's session once measured: a session left behind keeps taking a copy
        of every later backlog, which the broker then holds (and saves) for nobody."""
        v5 = self.version == 5
        protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=None if v5 else True, protocol=protocol)  # fmt: skip
        if v5:
            client.connect("127.0.0.1", broker.port, clean_start=True)
        else:
            client.connect("127.0.0.1", broker.port)
        client.loop(1)
        client.disconnect()

    def bridge_args(self) -> list[str]:
        share = ["--share", self.share] if self.share else []
        routes = ["--routes", self.routes] if self.routes else []
        return ["--mqtt-version", str(self.version), *share, *routes]


def json_reading(i: int) -> tuple[str, bytes]:
    """Message i of a backlog: a JSON reading with seq from one of 100 devices."""
    return f"sensors/dev-{i % 100:03d}/telemetry", json.dumps(
        {"temp": 21.5, "seq": i // 100}
    ).encode()


def queue_backlog(
    broker: LocalMosquitto,
    setup: Setup,
    client_ids: list[str],
    messages: int,
    message: Callable[[int], tuple[str, bytes]] = json_reading,
) -> None:
    """Register the consumers' sessions, then publish the backlog they will find."""
    for client_id in client_ids:
        client = setup.client(client_id)
        setup.connect(client, broker)
        client.subscribe(setup.topic, qos=1)
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
    for chunk in range(0, messages, 20_000):
        infos = [
            publisher.publish(*message(i), qos=1)
            for i in range(chunk, min(chunk + 20_000, messages))
        ]
        for info in infos:
            info.wait_for_publish(60)
    publisher.loop_stop()
    publisher.disconnect()


def bare_subscriber(broker: LocalMosquitto, setup: Setup, client_id: str, messages: int) -> float:
    """paho receiving the session's backlog and acknowledging (automatically), nothing else."""
    done = threading.Event()
    received = 0
    first = 0.0

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        nonlocal received, first
        if not received:
            first = time.perf_counter()
        received += 1
        if received == messages:
            done.set()

    client = setup.client(client_id)
    client.on_message = on_message
    setup.connect(client, broker)
    client.loop_start()
    done.wait(300)
    elapsed = time.perf_counter() - first
    client.loop_stop()
    client.disconnect()
    setup.end_session(broker, client_id)
    return messages / elapsed


def bridges(
    broker: LocalMosquitto,
    url: str,
    setup: Setup,
    client_ids: list[str],
    messages: int,
    **env: str,
) -> float:
    """Bridges draining their sessions' backlog: messages/s from the first entry to the last."""
    client = redis.Redis.from_url(url)
    client.flushall()
    processes = [
        start_telemetry(
            ["bridge", "--client-id", client_id, *setup.bridge_args()],
            url,
            MQTT_URL=broker.url,
            **env,
        )
        for client_id in client_ids
    ]
    while client.xlen("app:event") == 0:
        time.sleep(0.001)
    start = time.perf_counter()
    while client.xlen("app:event") < messages:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    for process in processes:
        process.terminate()
        process.wait()
    for client_id in client_ids:
        setup.end_session(broker, client_id)
    return messages / elapsed


def latency(broker: LocalMosquitto, url: str, rate: int, seconds: int) -> tuple[float, float]:
    """Publish at `rate` messages/s with the publish time in `ts`; the delay of each reading is
    its entry ID's time (when Redis stored it) minus `ts`. One machine, one clock."""
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    process = start_telemetry(["bridge", "--client-id", "latency"], url, MQTT_URL=broker.url)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="latency-publisher")
    publisher.max_inflight_messages_set(1000)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    time.sleep(3)  # the bridge connects and subscribes
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        due = int((time.monotonic() - start) * rate)
        while sent < due:
            body = json.dumps({"temp": 1.0, "seq": sent, "ts": time.time_ns() // 1_000_000})
            publisher.publish(f"sensors/dev-{sent % 100:03d}/telemetry", body, qos=1)
            sent += 1
        time.sleep(0.001)
    deadline = time.monotonic() + 30
    while client.xlen("app:event") < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    publisher.loop_stop()
    publisher.disconnect()
    process.terminate()
    process.wait()
    delays = [
        int(entry_id.split("-")[0]) - int(fields["ts"])
        for entry_id, fields in read_range(client, "app:event")
    ]
    return statistics.median(delays), float(sorted(delays)[int(len(delays) * 0.99)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-rate", type=int, default=5000)
    parser.add_argument("--latency-seconds", type=int, default=20)
    args = parser.parse_args()
    n = args.messages
    rates: dict[str, list[float]] = {}
    broker = LocalMosquitto()
    broker.start()
    try:
        with redis_for_bench() as url:
            for r in range(args.rounds):
                for version in (3, 5):
                    setup = Setup(version)
                    bare, bridge = f"bare-{version}-{r}", f"bridge-{version}-{r}"
                    queue_backlog(broker, setup, [bare], n)
                    rates.setdefault(f"bare {version}", []).append(
                        bare_subscriber(broker, setup, bare, n)
                    )
                    queue_backlog(broker, setup, [bridge], n)
                    rates.setdefault(f"bridge {version}", []).append(
                        bridges(broker, url, setup, [bridge], n)
                    )
                # A group per run: a session stays a member of its group after it goes.
                for count in (1, 2):
                    setup = Setup(5, share=f"group-{count}-{r}")
                    ids = [f"shared-{count}-{r}-{i}" for i in range(count)]
                    queue_backlog(broker, setup, ids, n)
                    rates.setdefault(f"shared {count}", []).append(
                        bridges(broker, url, setup, ids, n)
                    )
            p50, p99 = latency(broker, url, args.latency_rate, args.latency_seconds)
    finally:
        broker.close()
    median = {name: statistics.median(values) for name, values in rates.items()}

    def row(label: str, name: str, reference: str) -> tuple[str, str, str]:
        return label, f"{median[name]:,.0f}", f"{median[name] / median[reference]:.2f}"

    print(f"{n:,} queued QoS 1 messages per run; median of {args.rounds}")
    print_table(
        ["consumer", "messages/s", "ratio"],
        [
            row("bare paho subscriber, receive + ack, MQTT 3.1.1 (reference)", "bare 3", "bare 3"),
            row("telemetry bridge, parse + XADD + ack, MQTT 3.1.1", "bridge 3", "bare 3"),
            row("bare paho subscriber, receive + ack, MQTT 5 (reference)", "bare 5", "bare 5"),
            row("telemetry bridge, parse + XADD + ack, MQTT 5", "bridge 5", "bare 5"),
            row("one bridge alone in a shared subscription (reference)", "shared 1", "shared 1"),
            row("two bridges sharing the subscription", "shared 2", "shared 1"),
        ],
    )
    print(f"\npublish to stream at {args.latency_rate:,} messages/s for {args.latency_seconds} s")
    print_table(["latency", "ms"], [("p50", f"{p50:.0f}"), ("p99", f"{p99:.0f}")])


if __name__ == "__main__":
    main()
