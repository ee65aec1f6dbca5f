"""What the worst inputs found cost the process that takes them, beside an ordinary one.

    python -m bench.hostile [--repeat 5]

Runs a real `telemetry api` (with a token) and a real `telemetry bridge` against a private Redis
and mosquitto, sends each input `--repeat` times, and prints per input the server's CPU time
(from /proc, per request or message), its ratio to the ordinary input's, how far the process's
peak memory rose, and the answer. The bound to keep: about 200 ms of CPU and 50 MiB per input.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import redis
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import print_table, redis_for_bench, start_telemetry
from ingest.keys import StreamKeys
from ingest.redis.writer import StreamWriter
from telemetry.localserver import LocalMosquitto, free_port, port_open

TOKEN = "bench-t0ken"
TICKS_PER_S = 100


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def http(port: int, method: str, path: str, body: bytes | None = None,
         token: str | None = TOKEN) -> str:  # fmt: skip
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            answer.read()
            return str(answer.status)
    except urllib.error.HTTPError as refused:
        refused.read()
        return str(refused.code)


def announced_only(port: int, path: str, length: int) -> str:
    """A write announcing `length` bytes of body and sending none, without a token."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                     f"\r\nContent-Length: {length}\r\n\r\n".encode())  # fmt: skip
        return sock.recv(1024).split(b" ")[1].decode()


def measure(pid: int, send: Callable[[], str], repeat: int) -> tuple[float, float, str]:
    """CPU ms per input, the peak memory's rise in MiB, and the last answer."""
    peak, cpu = peak_mib(pid), cpu_s(pid)
    answer = ""
    for _ in range(repeat):
        answer = send()
    time.sleep(0.2)
    return (cpu_s(pid) - cpu) * 1000 / repeat, peak_mib(pid) - peak, answer


def api_rows(url: str, repeat: int) -> list[list[object]]:
    client = redis.Redis.from_url(url)
    writer = StreamWriter(client, "app:event", 1_000_000)
    writer.write([{"sensor_id": f"s{i:04d}", "temp": "20"} for i in range(1000)])
    aggregating = start_telemetry(["aggregate", "--drain"], url)
    aggregating.wait(120)
    port = free_port()
    api = start_telemetry(["api"], url, TELEMETRY_API_PORT=str(port), API_TOKEN=TOKEN)
    try:
        while not port_open(port):
            time.sleep(0.05)
        http(port, "GET", "/healthz")
        inputs: list[tuple[str, Callable[[], str]]] = [
            ("ordinary: 1 h of 1 min buckets", lambda: http(
                port, "GET", "/sensors/s0001/aggregates?metric=temp&tier=1m&from=1h")),
            ("10 s buckets from 1970", lambda: http(
                port, "GET", "/sensors/s0001/aggregates?metric=temp&tier=10s&from=1970-01-01")),
            ("rolling 3650 d on the 10 s tier", lambda: http(
                port, "GET", "/sensors/s0001/rolling?metric=temp&tier=10s&last=3650d")),
            ("1 MiB of [0,0,...] posted", lambda: http(
                port, "POST", "/readings", b"[" + b",".join([b"0"] * 524_000) + b"]")),
            ("5,000 bad readings posted", lambda: http(
                port, "POST", "/readings",
                json.dumps([{"sensor_id": "s1", "temp": "x"}] * 5000).encode())),
            ("60 MB announced, no token", lambda: announced_only(
                port, "/dead-letters/replay", 60_000_000)),
            ("top 10 by p99, 1,000 tied sensors", lambda: http(
                port, "GET", "/fleet/top?metric=temp&by=p99&last=15m")),
        ]  # fmt: skip
        return table(api.pid, inputs, repeat)
    finally:
        api.terminate()
        api.wait(30)


def bridge_rows(url: str, repeat: int) -> list[list[object]]:
    broker = LocalMosquitto()
    broker.start()
    bridge = start_telemetry(["bridge"], url, MQTT_URL=broker.url)
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-device")
    device.connect("127.0.0.1", broker.port)
    device.loop_start()
    client = redis.Redis.from_url(url)
    keys = StreamKeys("app:event")
    try:
        time.sleep(2)

        def published(payload: bytes) -> Callable[[], str]:
            def send() -> str:
                written, dead = client.xlen(keys.stream), client.xlen(keys.dead)
                device.publish("sensors/b1/telemetry", payload, qos=1).wait_for_publish(60)
                deadline = time.monotonic() + 60
                while (client.xlen(keys.stream), client.xlen(keys.dead)) == (written, dead):
                    if time.monotonic() > deadline:
                        return "lost"
                    time.sleep(0.005)
                return "dead letter" if client.xlen(keys.dead) > dead else "written"

            return send

        inputs = [
            ("ordinary: 100 readings", published(json.dumps([{"temp": 1.5}] * 100).encode())),
            ("5,000 bad items", published(json.dumps([0] * 5000).encode())),
            ("32,767 items (64 KiB)", published(("[" + ",".join("0" * 32_767) + "]").encode())),
            ("8 MiB payload", published(b"x" * (8 << 20))),
        ]
        return table(bridge.pid, inputs, repeat)
    finally:
        device.loop_stop()
        bridge.terminate()
        bridge.wait(30)
        broker.close()


def table(pid: int, inputs: list[tuple[str, Callable[[], str]]], repeat: int
          ) -> list[list[object]]:  # fmt: skip
    rows: list[list[object]] = []
    reference = 0.0
    for name, send in inputs:
        cpu_ms, grew, answer = measure(pid, send, repeat)
        reference = reference or max(cpu_ms, 1000 / TICKS_PER_S / repeat)
        rows.append([name, f"{cpu_ms:.1f}", f"{cpu_ms / reference:.1f}", f"{grew:.1f}", answer])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    headers = ["input", "CPU ms each", "x ordinary", "peak MiB rise", "answer"]
    with redis_for_bench() as url:
        print("telemetry api (token set):")
        print_table(headers, api_rows(url, args.repeat))
    with redis_for_bench() as url:
        print("\ntelemetry bridge:")
        print_table(headers, bridge_rows(url, args.repeat))


if __name__ == "__main__":
    main()
