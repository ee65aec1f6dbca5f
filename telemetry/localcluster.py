"""A private Redis Cluster: redis-server nodes on free ports joined by `redis-cli --cluster
create`, for `telemetry` tests and benchmarks that need several masters (and replicas to fail
over to)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from ingest.redis.cluster import parse_cluster_nodes
from telemetry.localserver import LocalRedis, LocalServerError, free_cluster_port


class LocalCluster:
    """`masters` masters, each with `replicas` replicas, as `redis-cli --cluster create`
    makes them (equal slot ranges)."""

    def __init__(self, masters: int = 3, replicas: int = 0, workdir: Path | None = None) -> None:
        self._owned_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.nodes = [
            LocalRedis(free_cluster_port(), self.workdir / f"node{i}", cluster=True)
            for i in range(masters * (1 + replicas))
        ]
        self.replicas = replicas

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated, as TELEMETRY_REDIS_CLUSTER takes them: a client
        starting while one is down finds the cluster through another."""
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout_s: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise LocalServerError("redis-cli not found on PATH: install redis-tools")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
             "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout_s,
        )  # fmt: skip
        self.wait_ok(timeout_s)
        self._wait_replicas_synced(timeout_s)

    def _wait_replicas_synced(self, timeout_s: float) -> None:
        """A replica that never synced with its master would not take over from it."""
        deadline = time.monotonic() + timeout_s
        for i in range(len(self.nodes)):
            while True:
                replication = self.client(i).info("replication")
                if replication["role"] == "master" or replication["master_link_status"] == "up":
                    break
                if time.monotonic() > deadline:
                    raise LocalServerError("the cluster's replicas did not sync in time")
                time.sleep(0.05)

    def client(self, node: int) -> redis.Redis:
        return redis.Redis(port=self.nodes[node].port, socket_timeout=2, decode_responses=True)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Return once every live node sees every slot served and the same masters."""
        deadline = time.monotonic() + timeout_s
        while True:
            views = []
            for i, node in enumerate(self.nodes):
                if node.process is None:
                    continue
                with contextlib.suppress(redis.RedisError):
                    info = self.client(i).cluster("info")
                    views.append(info.get("cluster_state") == "ok" and self._served(i))
            if views and all(views) and all(v == views[0] for v in views):
                return
            if time.monotonic() > deadline:
                raise LocalServerError("the Redis Cluster did not become ready in time")
            time.sleep(0.1)

    def _served(self, node: int) -> list[tuple[int, int, int]]:
        """The slot ranges node `node` sees served, with the port of the master serving each."""
        reply = self.client(node).execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
        nodes = parse_cluster_nodes(str(reply), "127.0.0.1")
        return sorted((first, last, n.address[1]) for n in nodes for first, last in n.slots)

    def master_of(self, slot: int) -> int:
        """The node number that serves a slot now."""
        for start, end, port in self._served(self._live_node()):
            if start <= slot <= end:
                return next(i for i, n in enumerate(self.nodes) if n.port == port)
        raise LocalServerError(f"no node serves slot {slot}")

    def master_nodes(self) -> list[int]:
        """The numbers of the live nodes that are masters now."""
        return [
            i
            for i, server in enumerate(self.nodes)
            if server.process is not None and self.client(i).info("replication")["role"] == "master"
        ]

    def _live_node(self) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.process is not None)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self._owned_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.close()
