"""The API's write and live sides: `POST /readings` against the ingest writer, and the CPU the
API process spends feeding websocket clients.

    python -m bench.api [--readings N] [--rounds R] [--seconds S]

Ingest: the same readings, 1000 per request over one keep-alive connection (and over two, as
concurrent clients do), against `StreamWriter.write` of 1000 at a time from this process; each
appends to the same stream. The API runs under uvicorn with httptools and uvloop.
Fan-out: a writer adds 5000 entries/s; 0, 100 and 200 clients follow the stream with
`max_frequency=5`; the API process's CPU time (user + system, from /proc) over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import redis
import websockets

from bench.common import print_table, redis_for_bench, start_telemetry
from ingest.redis.writer import StreamWriter
from telemetry.localserver import free_port, port_open

STREAM = "app:event"
BATCH = 1000


def readings(n: int) -> list[dict[str, object]]:
    return [{"sensor_id": f"dev-{i % 1000:04d}", "ts": 1_767_225_600_000 + i, "seq": i // 1000,
             "temp": 21.53, "humidity": 0.412, "battery_v": 3.702} for i in range(n)]  # fmt: skip


def as_fields(reading: dict[str, object]) -> dict[str, str]:
    return {k: str(v) for k, v in reading.items()}


def start_api(url: str) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    process = start_telemetry(["api"], url, TELEMETRY_API_PORT=str(port))
    deadline = time.monotonic() + 30
    while not port_open(port):
        if time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.1)
    return f"127.0.0.1:{port}", process


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ingest(url: str, address: str, n: int, rounds: int) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    posted = readings(n)
    bodies = [json.dumps(posted[i : i + BATCH]).encode() for i in range(0, n, BATCH)]
    fields = [as_fields(r) for r in posted]
    writer = StreamWriter(client, STREAM, 10**8, batch_size=BATCH)
    one, two = "POST /readings, 1 connection", "POST /readings, 2 connections"
    rates: dict[str, list[float]] = {"writer": [], one: [], two: []}
    for _ in range(rounds):
        client.delete(STREAM)
        start = time.perf_counter()
        for i in range(0, n, BATCH):
            writer.write(fields[i : i + BATCH])
        rates["writer"].append(n / (time.perf_counter() - start))
        for name, connections in ((one, 1), (two, 2)):
            client.delete(STREAM)
            start = time.perf_counter()
            with ThreadPoolExecutor(connections) as pool:
                list(pool.map(post_all, [address] * connections,
                              [bodies[c::connections] for c in range(connections)]))  # fmt: skip
            rates[name].append(n / (time.perf_counter() - start))
            assert client.xlen(STREAM) == n
    base = statistics.median(rates["writer"])
    print(f"{n:,} readings (3 metrics each), {BATCH} per request or write call; "
          f"median of {rounds} rounds")  # fmt: skip
    print_table(["path", "readings/s", "ratio"], [
        (name, f"{statistics.median(r):,.0f}", f"{statistics.median(r) / base:.2f}")
        for name, r in rates.items()
    ])  # fmt: skip


def post_all(address: str, bodies: list[bytes]) -> None:
    """One keep-alive connection posting one body after another."""
    with httpx2.Client(base_url=f"http://{address}") as http:
        for body in bodies:
            response = http.post("/readings", content=body,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
            response.raise_for_status()


def write_steadily(url: str, rate: int, stop: threading.Event) -> None:
    writer = StreamWriter(redis.Redis.from_url(url), STREAM, 10**6, batch_size=500)
    started, sent = time.monotonic(), 0
    while not stop.is_set():
        due = int((time.monotonic() - started) * rate)
        if due > sent:
            writer.write(
                [{"sensor_id": f"dev-{n % 1000}", "temp": "21.5"} for n in range(sent, due)]
            )
            sent = due
        time.sleep(0.005)


async def follow(address: str, clients: int, seconds: float) -> int:
    async def one() -> int:
        got = 0
        uri = f"ws://{address}/stream/{STREAM}?max_frequency=5"
        async with websockets.connect(uri) as ws:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    await asyncio.wait_for(ws.recv(), left)
                    got += 1
                except TimeoutError:
                    break
        return got

    return sum(await asyncio.gather(*(one() for _ in range(clients))))


def fanout(url: str, address: str, pid: int, seconds: float) -> None:
    stop = threading.Event()
    writer = threading.Thread(target=write_steadily, args=(url, 5000, stop), daemon=True)
    writer.start()
    rows = []
    try:
        for clients in (0, 100, 200):
            before = cpu_seconds(pid)
            if clients:
                messages = asyncio.run(follow(address, clients, seconds))
            else:
                time.sleep(seconds)
                messages = 0
            used = cpu_seconds(pid) - before
            rows.append((clients, f"{messages / seconds:,.0f}", f"{100 * used / seconds:.1f}"))
    finally:
        stop.set()
        writer.join()
    print(
        f"\nwebsocket fan-out: 5000 entries/s written, clients at max_frequency=5, {seconds:.0f} s"
    )
    print_table(["clients", "messages/s sent", "API process CPU %"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    with redis_for_bench() as url:
        address, api = start_api(url)
        try:
            ingest(url, address, args.readings, args.rounds)
            fanout(url, address, api.pid, args.seconds)
        finally:
            api.terminate()
            api.wait(30)


if __name__ == "__main__":
    main()
