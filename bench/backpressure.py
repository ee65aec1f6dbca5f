"""Posting faster than the aggregator can aggregate: with backpressure nothing is trimmed unread.

    python -m bench.backpressure [--readings 2000000] [--maxlen 100000]

A client posts readings to `POST /readings` as fast as the API takes them (5,000 a request,
from two threads), sending again after Retry-After whenever it is told to, while one slow
aggregator (batches of 200, nothing read ahead) works through them; MAXLEN is far below what
is posted. Printed: how long the posting took,
how many requests were refused, what the aggregates group counted, and what trimming took from
it, beside the same run under TELEMETRY_BACKLOG_POLICY=trim.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time

import redis

from bench.common import print_table, redis_for_bench, start_telemetry
from telemetry.localserver import free_port, port_open

PER_REQUEST = 5000
CLIENTS = 2


def post_all(port: int, first: int, last: int, refused: list[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    at = first
    while at < last:
        body = json.dumps(
            [{"sensor_id": f"s{i % 1000}", "seq": i // 1000, "temp": i % 97}
             for i in range(at, min(at + PER_REQUEST, last))]
        )  # fmt: skip
        connection.request("POST", "/readings", body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        if answer.status == 429:
            refused.append(1)
            time.sleep(float(answer.getheader("Retry-After") or 1))
            continue
        if answer.status != 202:
            raise SystemExit(f"POST /readings answered {answer.status}")
        at += PER_REQUEST


def run(url: str, readings: int, maxlen: int, policy: str) -> tuple[str, ...]:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    client.xgroup_create("app:event", "aggregates", "0", mkstream=True)
    port = free_port()
    env = {"TELEMETRY_MAXLEN": str(maxlen), "TELEMETRY_BACKLOG_POLICY": policy}
    api = start_telemetry(["api"], url, TELEMETRY_API_PORT=str(port), **env)
    # A slow aggregator: small batches, nothing read ahead.
    aggregator = start_telemetry(
        ["aggregate"], url, TELEMETRY_READ_BATCH="200", TELEMETRY_READS_PER_BATCH="1", **env
    )
    refused: list[int] = []
    try:
        while not port_open(port):
            time.sleep(0.05)
        began = time.monotonic()
        share = readings // CLIENTS
        posting = [
            threading.Thread(target=post_all, args=(port, k * share, (k + 1) * share, refused))
            for k in range(CLIENTS)
        ]
        for thread in posting:
            thread.start()
        for thread in posting:
            thread.join()
        posted_s = time.monotonic() - began
        ledger = "app:event:ledger:aggregates"
        while True:
            group = client.xinfo_groups("app:event")[0]
            if not group["lag"] and not group["pending"]:
                break
            time.sleep(0.2)
        done_s = time.monotonic() - began
    finally:
        for process in (api, aggregator):
            process.terminate()
            process.wait()
    aggregated = int(client.hget(ledger, "settled:aggregated") or 0)
    trimmed = int(client.hget("app:event:lost", "aggregates") or 0)
    return (
        policy, f"{CLIENTS * share:,}", f"{posted_s:.1f}", f"{len(refused):,}",
        f"{done_s:.1f}", f"{aggregated:,}", f"{trimmed:,}",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=2_000_000)
    parser.add_argument("--maxlen", type=int, default=100_000)
    args = parser.parse_args()
    with redis_for_bench() as url:
        rows = [run(url, args.readings, args.maxlen, p) for p in ("backpressure", "trim")]
    print(f"MAXLEN {args.maxlen:,}; {CLIENTS} clients posting {PER_REQUEST:,} readings a request")
    print_table(
        ["policy", "posted", "posting s", "429s", "all settled s", "aggregated",
         "trimmed unread"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
