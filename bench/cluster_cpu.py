"""Redis CPU per reading, per node: one Redis against a three-master Redis Cluster.

    python -m bench.cluster_cpu [--sensors 300] [--seconds 600] [--rounds 2] [--read-batch 0]

The same fleet (S sensors, three metrics, once a second for T seconds, written in time order)
goes through the writer and `telemetry aggregate --drain` twice in each round: on one Redis with
one stream, the reference, and on a local Redis Cluster of three masters with three shards, one
on each master. Either way a batch holds about one reading of each sensor of its stream. Each
node's main-thread CPU time (INFO cpu) over the run, writes and aggregation together, is divided
by every reading of the fleet: a node carrying a third of the work shows a third of the
reference's figure, and the nodes' sum says what sharding costs in all. This machine has two
cores, so it is CPU per reading, not readings per second, that shows the work spread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import redis
from redis.crc import key_slot

from analytics.worker import run_aggregator
from bench.common import print_table
from ingest.redis.shardedwriter import open_writer
from ingest.settings import Settings
from ingest.shards import shard_of, shards
from telemetry.localcluster import LocalCluster
from telemetry.localserver import LocalRedis
from telemetry.shardscmd import show_shards

SHARDS = 3


def redis_cpu_s(port: int) -> float:
    info = redis.Redis(port=port).info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def fleet(sensors: int, seconds: int) -> list[dict[str, str]]:
    now = time.time_ns() // 1_000_000
    return [
        {"sensor_id": f"s-{k:05d}", "ts": str(now - (seconds - s) * 1000), "seq": str(s),
         "temp": f"{20 + k % 7}.{s % 10}", "humidity": f"0.{40 + s % 20}",
         "battery_v": f"3.{900 - s % 50}"}
        for s in range(seconds) for k in range(sensors)
    ]  # fmt: skip


def run(
    settings: Settings, entries: list[dict[str, str]], ports: list[int], read_batch: int
) -> list[float]:
    """Write and aggregate the fleet; each node's CPU in µs per reading of the whole fleet."""
    before = [redis_cpu_s(port) for port in ports]
    open_writer(settings, batch_size=5000).write(entries)
    if read_batch == 0:
        # Each batch takes about one reading of each sensor of its shard.
        read_batch = len({e["sensor_id"] for e in entries}) // len(shards(settings))
        settings = settings.replace(reads_per_batch=1)
    run_aggregator(settings.replace(read_batch=read_batch), "bench", drain=True)
    return [1e6 * (redis_cpu_s(p) - b) / len(entries) for p, b in zip(ports, before, strict=True)]


def on_one_redis(entries: list[dict[str, str]], read_batch: int) -> list[float]:
    with LocalRedis() as server:
        assert isinstance(server, LocalRedis)
        return run(Settings(redis_url=server.url), entries, [server.port], read_batch)


def on_a_cluster(entries: list[dict[str, str]], read_batch: int) -> list[float]:
    """Each shard's master's CPU, in shard order."""
    with LocalCluster(SHARDS) as cluster:
        settings = Settings(redis_url=cluster.url, redis_cluster=True, shard_count=SHARDS)
        show_shards(settings, place=True)
        homes = [cluster.master_of(key_slot(s.stream.encode())) for s in shards(settings)]
        return run(settings, entries, [cluster.nodes[node].port for node in homes], read_batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sensors", type=int, default=300)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--read-batch", type=int, default=0,
        help="TELEMETRY_READ_BATCH of the drain (default 0: one reading of each sensor of the"
        " shard a batch, the costliest shape; 2000 is the setting's default)",
    )  # fmt: skip
    args = parser.parse_args()
    entries = fleet(args.sensors, args.seconds)
    ids = {entry["sensor_id"] for entry in entries}
    sensors = [sum(shard_of(s, SHARDS) == i for s in ids) for i in range(SHARDS)]
    rows, node_shares, sums = [], [], []
    for round_ in range(1, args.rounds + 1):
        [single] = on_one_redis(entries, args.read_batch)
        nodes = on_a_cluster(entries, args.read_batch)
        rows.append((round_, "one Redis, one stream", "the only node", args.sensors,
                     f"{single:.2f}", "1.00"))  # fmt: skip
        rows += [
            (round_, f"cluster, {SHARDS} shards", f"master {i} (shard {i})", sensors[i],
             f"{cpu:.2f}", f"{cpu / single:.2f}")
            for i, cpu in enumerate(nodes)
        ]  # fmt: skip
        rows.append((round_, f"cluster, {SHARDS} shards", "sum of the masters", args.sensors,
                     f"{sum(nodes):.2f}", f"{sum(nodes) / single:.2f}"))  # fmt: skip
        node_shares.append(max(nodes) / single)
        sums.append(sum(nodes) / single)
    shape = f"batches of {args.read_batch}" if args.read_batch else "a reading a sensor a batch"
    print(f"{args.sensors} sensors x {args.seconds} s, 3 metrics a reading, {shape}; writes and"
          " the aggregates group, Redis main thread, µs per reading of the fleet")  # fmt: skip
    print_table(["round", "deployment", "node", "sensors", "µs per reading", "x one Redis"], rows)
    print(f"median busiest master: {statistics.median(node_shares):.2f} of one Redis; "
          f"median sum: {statistics.median(sums):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
