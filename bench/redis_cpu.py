"""Redis CPU per reading: the aggregates group against the floor of any consumer group.

    python -m bench.redis_cpu [--sensors 500] [--seconds 1800] [--rounds 2]

A fleet of S sensors reads three metrics once a second for T seconds (timestamps up to now),
written to the stream in time order, so that each batch of S readings touches each sensor
once. Measured from Redis's own main-thread CPU time (INFO cpu), per reading:

- floor: XADD of every reading, then one consumer reading them with XREADGROUP COUNT S and
  acknowledging each batch with XACK: what any consumer group costs Redis;
- aggregates: the same XADDs, then `telemetry aggregate --drain` (batches of S): every tier,
  the fleet buckets, the roll-up, and the packing of the chunks closed by the end.

Rounds alternate the two on a flushed Redis; the table gives each round and the median ratio.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import cast

import redis

from analytics.worker import aggregator_runner
from bench.common import print_table, redis_for_bench
from ingest.redis.connection import connect
from ingest.redis.writer import StreamWriter
from ingest.settings import Settings

STREAM = "app:event"
StreamReply = list[tuple[str, list[tuple[str, dict[str, str]]]]]


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def write_fleet(client: redis.Redis, sensors: int, seconds: int) -> int:
    writer = StreamWriter(client, STREAM, 10**8, batch_size=5000)
    now = time.time_ns() // 1_000_000
    for s in range(seconds):
        ts = str(now - (seconds - s) * 1000)
        for k in range(sensors):
            writer.add(
                {"sensor_id": f"s-{k:05d}", "ts": ts, "seq": str(s),
                 "temp": f"{20 + k % 7}.{s % 10}", "humidity": f"0.{40 + s % 20}",
                 "battery_v": f"3.{900 - s % 50}"}
            )  # fmt: skip
    writer.flush()
    return sensors * seconds


def floor_consumer(client: redis.Redis, batch: int) -> None:
    client.xgroup_create(STREAM, "floor", "0")
    while True:
        reply = cast(StreamReply, client.xreadgroup("floor", "c1", {STREAM: ">"}, count=batch))
        if not reply:
            return
        client.xack(STREAM, "floor", *[entry_id for entry_id, _ in reply[0][1]])


def one_round(url: str, sensors: int, seconds: int) -> tuple[float, float, float, float]:
    """CPU seconds of: the floor's writes, its reads and acks, the aggregates' writes, drain."""
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    before = redis_cpu_s(client)
    readings = write_fleet(client, sensors, seconds)
    written = redis_cpu_s(client)
    floor_consumer(client, sensors)
    floor = redis_cpu_s(client)
    client.flushall()
    again = redis_cpu_s(client)
    write_fleet(client, sensors, seconds)
    rewritten = redis_cpu_s(client)
    settings = Settings(redis_url=url, read_batch=sensors, reads_per_batch=1)
    aggregator_runner(connect(settings), settings, "bench").run(threading.Event(), drain=True)
    drained = redis_cpu_s(client)
    assert int(client.xinfo_groups(STREAM)[0]["lag"] or 0) == 0
    return tuple(  # type: ignore[return-value]
        1e6 * cpu / readings
        for cpu in (written - before, floor - written, rewritten - again, drained - rewritten)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sensors", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=1800)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows, ratios = [], []
    with redis_for_bench() as url:
        for round_ in range(1, args.rounds + 1):
            add, read_ack, add_again, aggregate = one_round(url, args.sensors, args.seconds)
            floor, full = add + read_ack, add_again + aggregate
            ratios.append(full / floor)
            rows += [
                (round_, "floor: XADD + XREADGROUP + XACK", f"{add:.2f} + {read_ack:.2f}",
                 f"{floor:.2f}", "1.00"),
                (round_, "aggregates: XADD + drain (all tiers, roll-up, packing)",
                 f"{add_again:.2f} + {aggregate:.2f}", f"{full:.2f}", f"{full / floor:.2f}"),
            ]  # fmt: skip
    print(f"{args.sensors} sensors x {args.seconds} s, 3 metrics a reading; Redis main thread")
    print_table(["round", "path", "µs per reading (parts)", "µs per reading", "x floor"], rows)
    print(f"median ratio: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
