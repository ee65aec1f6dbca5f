"""What it is like to use: freshness under load, query latency over HTTP.

    python -m bench.serving [--freshness-seconds S] [--freshness-rates 2500,5000,10000]

- Freshness: a simulator fleet writes N readings/s (N sensors at 1 Hz, each reading three
  metrics) while one aggregator keeps up; a probe sensor's reading is timed from its XADD until
  GET /sensors/probe over HTTP shows it, and the aggregator's backlog is read at the end. The
  reference is the same HTTP round trip for a reading already there.
- Query latency: 24 h of 1-minute buckets (1,440 points) for one sensor and metric, all but the
  newest hours packed; the fleet's top 10 by mean and by p99 over the last 15 minutes among
  10,000 sensors (fleet buckets), and by mean over 15 minutes ending 3 hours ago (packed
  chunks), through the HTTP API.

What the buckets cost in memory is `bench.memory`'s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import redis

from analytics.worker import aggregator_runner
from bench.common import print_table, redis_for_bench, start_telemetry
from ingest.redis.connection import connect
from ingest.redis.writer import StreamWriter
from ingest.settings import Settings
from telemetry.localserver import free_port, port_open

THREE_HOURS_MS = 3 * 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Api:
    """GET requests to the HTTP API over one kept-alive connection, as a dashboard makes them."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def fetch(self, path: str) -> bytes:
        """The whole body of a 200 answer."""
        self.connection.request("GET", path)
        answer = self.connection.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"GET {path}: {answer.status} {body[:200]!r}")
        return body

    def get(self, path: str) -> object:
        return json.loads(self.fetch(path))


def timed_ms(call: Callable[[], object], times: int) -> list[float]:
    out = []
    for _ in range(times):
        begin = time.perf_counter()
        call()
        out.append((time.perf_counter() - begin) * 1000)
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def aggregate_all(settings: Settings) -> None:
    aggregator_runner(connect(settings), settings, "bench").run(threading.Event(), drain=True)


@dataclass
class Freshness:
    # Probe readings from XADD to visible over HTTP, and the same GET after each (ms).
    delays: list[float]
    reference: list[float]
    # Entries the aggregator had not settled when the probing ended.
    behind: int


def freshness(url: str, api: Api, readings_per_s: int, seconds: int) -> Freshness:
    """Probes while a fleet of `readings_per_s` sensors reads at 1 Hz."""
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    fleet = start_telemetry(["simulate", "--fleet", str(readings_per_s), "--rate", "1"], url)
    worker = start_telemetry(["aggregate"], url)
    try:
        time.sleep(5)
        return probe(client, api, seconds)
    finally:
        fleet.terminate()
        worker.terminate()
        fleet.wait()
        worker.wait()


def probe(client: redis.Redis, api: Api, seconds: int) -> Freshness:
    """For `seconds`: a probe reading is written, then fetched over HTTP until it shows, then
    fetched once more as the reference; and how far the aggregates group is behind at the
    end."""
    delays: list[float] = []
    reference: list[float] = []
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        ts = now_ms()
        client.xadd("app:event", {"sensor_id": "probe", "ts": ts, "seq": seq, "v": 1.0})
        sent = time.perf_counter()
        while True:
            seen = api.get("/sensors/probe") if seq or client.zscore(
                "app:event:sensors", "probe") else {}  # fmt: skip
            if isinstance(seen, dict) and seen.get("last_seen_ms") == ts:
                break
            time.sleep(0.001)
        delays.append((time.perf_counter() - sent) * 1000)
        reference += timed_ms(lambda: api.get("/sensors/probe"), 1)
        seq += 1
        time.sleep(0.05)
    group = next(g for g in client.xinfo_groups("app:event") if g["name"] == "aggregates")
    return Freshness(delays, reference, int(group["lag"] + group["pending"]))


def freshness_rows(
    url: str, api_port: int, rates: list[int], seconds: int
) -> list[tuple[str, str, str, str]]:
    rows = []
    references: list[float] = []
    for rate in rates:
        # A new connection per rate: the API closes one left idle while the fleet starts.
        found = freshness(url, Api(api_port), rate, seconds)
        references += found.reference
        rows.append(
            (
                f"freshness at {rate:,} readings/s: XADD to visible over HTTP (ms)",
                f"{percentile(found.delays, 50):.1f}",
                f"{percentile(found.delays, 99):.1f}",
                f"{len(found.delays)} probes; {found.behind:,} entries behind at the end",
            )
        )
    rows.append(
        (
            "reference: the same GET under the same load, nothing to wait for (ms)",
            f"{percentile(references, 50):.1f}",
            f"{percentile(references, 99):.1f}",
            f"{len(references)}",
        )
    )
    return rows


def query_latency(url: str, api: Api) -> list[tuple[str, str, str, str]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    writer = StreamWriter(client, "app:event", 10**8, batch_size=5000)
    now = now_ms()
    # One sensor over 24 h (a reading every 10 s); 10,000 sensors over the last 15 minutes.
    for i in range(8640):
        writer.add({"sensor_id": "day", "ts": str(now - i * 10_000), "temp": f"{20 + i % 7}"})
    rng = np.random.default_rng(1)
    for k in range(10_000):
        for ago in (0, THREE_HOURS_MS):
            for j in range(10):
                writer.add({"sensor_id": f"dev-{k:05d}", "ts": str(now - ago - j * 90_000),
                            "temp": f"{rng.normal(20, 3):.2f}"})  # fmt: skip
    writer.flush()
    aggregate_all(Settings(redis_url=url, read_batch=5000))
    day_path = "/sensors/day/aggregates?metric=temp&tier=1m&from=24h"
    day = timed_ms(lambda: api.fetch(day_path), 200)
    day_parsed = timed_ms(lambda: api.get(day_path), 200)
    day_answer = api.get(day_path)
    points = len(day_answer) if isinstance(day_answer, list) else 0
    top = timed_ms(lambda: api.get("/fleet/top?metric=temp&by=mean&last=15m&n=10"), 100)
    top99 = timed_ms(lambda: api.get("/fleet/top?metric=temp&by=p99&last=15m&n=10"), 50)
    old = timed_ms(lambda: api.get("/fleet/top?metric=temp&by=mean&last=15m&n=10&until=3h"), 20)
    return [
        (f"24 h of 1-minute buckets ({points} points), ms", f"{percentile(day, 50):.1f}",
         f"{percentile(day, 99):.1f}", "200 requests"),
        ("the same, and the client's json.loads, ms", f"{percentile(day_parsed, 50):.1f}",
         f"{percentile(day_parsed, 99):.1f}", "200 requests"),
        ("fleet top 10 by mean of 10,000 sensors, last 15m, ms", f"{percentile(top, 50):.0f}",
         f"{percentile(top, 99):.0f}", "100 requests"),
        ("fleet top 10 by p99 of 10,000 sensors, last 15m, ms", f"{percentile(top99, 50):.0f}",
         f"{percentile(top99, 99):.0f}", "50 requests"),
        ("fleet top 10 by mean, 15m ending 3 h ago (packed), ms", f"{percentile(old, 50):.0f}",
         f"{percentile(old, 99):.0f}", "20 requests"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--freshness-seconds", type=int, default=30)
    parser.add_argument(
        "--freshness-rates",
        type=lambda text: [int(rate) for rate in text.split(",")],
        default=[2500, 5000, 10000],
        help="readings/s to measure freshness at, comma-separated (default 2500,5000,10000)",
    )
    args = parser.parse_args()
    with redis_for_bench() as url:
        port = free_port()
        api = start_telemetry(["api"], url, TELEMETRY_API_PORT=str(port))
        while not port_open(port):
            time.sleep(0.05)
        try:
            latency = query_latency(url, Api(port))
            fresh = freshness_rows(url, port, args.freshness_rates, args.freshness_seconds)
        finally:
            api.terminate()
            api.wait()
    print_table(["measure", "p50", "p99", "runs"], fresh + latency)


if __name__ == "__main__":
    main()
