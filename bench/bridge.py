"""Bridge throughput at QoS 1 against a bare paho subscriber that receives and acknowledges.

    python -m bench.bridge [--messages N] [--rounds R]

For each consumer, the broker first queues N QoS 1 messages (100 devices, JSON with seq) for
its persistent session; the consumer then connects, and the time from its first message to
its last (for the bridge: to the last entry in Redis) is measured. Both drain the same kind of
backlog from the same broker, so the publisher's speed does not enter the comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import paho.mqtt.client as mqtt
import redis
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.common import print_table, redis_for_bench, start_telemetry
from ingest.connection import read_range
from telemetry.localserver import LocalMosquitto


def session(broker: LocalMosquitto, client_id: str, **kwargs: object) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
        protocol=MQTTProtocolVersion.MQTTv311, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
    client.connect("127.0.0.1", broker.port)
    return client


def queue_backlog(broker: LocalMosquitto, client_id: str, messages: int) -> None:
    """Register the consumer's session, then publish the backlog it will find."""
    consumer = session(broker, client_id)
    consumer.subscribe("sensors/+/+", qos=1)
    consumer.loop(1)
    consumer.disconnect()
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
            publisher.publish(
                f"sensors/dev-{i % 100:03d}/telemetry",
                json.dumps({"temp": 21.5, "seq": i // 100}),
                qos=1,
            )
            for i in range(chunk, min(chunk + 20_000, messages))
        ]
        for info in infos:
            info.wait_for_publish(60)
    publisher.loop_stop()
    publisher.disconnect()


def bare_subscriber(broker: LocalMosquitto, client_id: str, messages: int) -> float:
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

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
        protocol=MQTTProtocolVersion.MQTTv311,
    )  # fmt: skip
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    done.wait(300)
    elapsed = time.perf_counter() - first
    client.loop_stop()
    client.disconnect()
    return messages / elapsed


def bridge(broker: LocalMosquitto, url: str, client_id: str, messages: int) -> float:
    client = redis.Redis.from_url(url)
    client.flushall()
    process = start_telemetry(
        ["bridge", "--client-id", client_id, "--mqtt-version", "3"], url, MQTT_URL=broker.url
    )
    while client.xlen("app:event") == 0:
        time.sleep(0.001)
    start = time.perf_counter()
    while client.xlen("app:event") < messages:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    process.terminate()
    process.wait()
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
    rates: dict[str, list[float]] = {"bare": [], "bridge": []}
    broker = LocalMosquitto()
    broker.start()
    try:
        with redis_for_bench() as url:
            for round_no in range(args.rounds):
                for name in ("bare", "bridge"):
                    client_id = f"{name}-{round_no}"
                    queue_backlog(broker, client_id, args.messages)
                    if name == "bare":
                        rates[name].append(bare_subscriber(broker, client_id, args.messages))
                    else:
                        rates[name].append(bridge(broker, url, client_id, args.messages))
            p50, p99 = latency(broker, url, args.latency_rate, args.latency_seconds)
    finally:
        broker.close()
    bare, bridged = statistics.median(rates["bare"]), statistics.median(rates["bridge"])
    print(f"{args.messages:,} queued QoS 1 messages per run, MQTT 3.1.1; median of {args.rounds}")
    print_table(
        ["consumer", "messages/s", "ratio to bare paho"],
        [
            ("bare paho subscriber, receive + ack (reference)", f"{bare:,.0f}", "1.00"),
            ("telemetry bridge, parse + XADD + ack", f"{bridged:,.0f}", f"{bridged / bare:.2f}"),
        ],
    )
    print(f"\npublish to stream at {args.latency_rate:,} messages/s for {args.latency_seconds} s")
    print_table(["latency", "ms"], [("p50", f"{p50:.0f}"), ("p99", f"{p99:.0f}")])


if __name__ == "__main__":
    main()
