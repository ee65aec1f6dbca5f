"""Clients pinned to the Redis Cluster node that serves one hash slot.

Everything a shard does touches keys of one slot (ingest/shards.py), so a shard's work needs a
connection to one node, not a client that routes each command: its scripts, transactions and
the fast paths' raw connections work exactly as on a single Redis. A connection looks up the
slot's master each time it connects; a node that fails or answers MOVED (a failover, a
resharding) makes the map stale, the connection drops as if the server went away, and the
callers' usual retry reconnects to whichever node serves the slot now.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.asyncio.connection import Connection as AsyncConnection
from redis.asyncio.connection import ConnectionPool as AsyncConnectionPool
from redis.connection import Connection, parse_url
from redis.crc import key_slot

from ingest.errors import SettingsError

# A stale map is read again from the cluster at most this often: a failover takes a second or
# more, and a burst of reconnecting workers should not ask the cluster once each.
REFRESH_INTERVAL_S = 0.25
# Replies that mean the slot is served elsewhere now, or about to be.
MOVED_ERRORS = (redis.exceptions.AskError, redis.exceptions.TryAgainError,
                redis.exceptions.ClusterDownError, redis.ReadOnlyError)  # fmt: skip


@dataclass(frozen=True)
class ClusterNode:
    node_id: str
    address: tuple[str, int]
    # A master not marked failed: it serves `slots`, ranges of first and last slot.
    serving: bool
    slots: tuple[tuple[int, int], ...]


def parse_cluster_nodes(text: str, asked: str) -> list[ClusterNode]:
    """The nodes a CLUSTER NODES reply from `asked` names; nodes still joining (no address yet)
    are left out, and slots being migrated stay with the node serving them."""
    nodes = []
    for line in text.splitlines():
        node_id, address, flags, _, _, _, _, _, *specs = line.split()
        host, _, port = address.partition("@")[0].rpartition(":")
        if not port or int(port) == 0:
            continue
        marks = flags.split(",")
        serving = "master" in marks and "fail" not in marks
        slots = []
        for spec in specs if serving else ():
            if not spec.startswith("["):
                first, _, last = spec.partition("-")
                slots.append((int(first), int(last or first)))
        nodes.append(ClusterNode(node_id, (host or asked, int(port)), serving, tuple(slots)))
    return nodes


class SlotMap:
    """Which master serves each slot, as the cluster's nodes said when last asked."""

    def __init__(self, seeds: list[tuple[str, int]], auth: dict[str, Any]) -> None:
        # Every node known: the seeds, then each node the cluster named.
        self._nodes = list(seeds)
        # The credentials every connection to the cluster's nodes uses.
        self.auth = auth
        self._starts: list[int] = []
        self._owners: list[tuple[int, tuple[str, int]]] = []
        self._stale = True
        self._read_at = -REFRESH_INTERVAL_S
        self._lock = threading.Lock()

    def owner(self, slot: int) -> tuple[str, int]:
        with self._lock:
            if self._stale and time.monotonic() - self._read_at >= REFRESH_INTERVAL_S:
                self._read()
            at = bisect.bisect_right(self._starts, slot) - 1
            if at < 0 or self._owners[at][0] < slot:
                # Between a master's failure and its replica's promotion: ask again later.
                self._stale = True
                raise redis.ConnectionError(f"no node of the cluster serves slot {slot} now")
            return self._owners[at][1]

    def forget(self) -> None:
        """Ask the cluster again before the next connection."""
        self._stale = True

    def client(self, address: tuple[str, int]) -> redis.Redis:
        """A client of one node, with the cluster's credentials, answering in text."""
        host, port = address
        return redis.Redis(host=host, port=port, socket_timeout=2.0, socket_connect_timeout=1.0,
                           decode_responses=True, **self.auth)  # fmt: skip

    def nodes(self) -> list[ClusterNode]:
        """The cluster's nodes, asked now."""
        with self._lock:
            return self._read()

    def _read(self) -> list[ClusterNode]:
        self._read_at = time.monotonic()
        failures = []
        for address in list(self._nodes):
            host, port = address
            client = self.client(address)
            try:
                reply = client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
            except redis.ResponseError as exc:
                raise SettingsError(
                    f"{host}:{port} is not a Redis Cluster node ({exc}); set "
                    "TELEMETRY_REDIS_CLUSTER=no for a single Redis"
                ) from None
            except redis.RedisError as exc:
                failures.append(f"{host}:{port}: {exc}")
                continue
            finally:
                client.close()
            nodes = parse_cluster_nodes(str(reply), host)
            self._learn(nodes)
            return nodes
        raise redis.ConnectionError("no node of the cluster answers: " + "; ".join(failures))

    def _learn(self, nodes: list[ClusterNode]) -> None:
        """Take the masters' slots and every node's address."""
        self._nodes += [n.address for n in nodes if n.address not in self._nodes]
        ranges = sorted((first, last, n.address) for n in nodes for first, last in n.slots)
        self._starts = [start for start, _, _ in ranges]
        self._owners = [(end, owner) for _, end, owner in ranges]
        self._stale = False


class SlotConnection(Connection):
    """A connection to whichever master serves `slot` when it connects."""

    def __init__(self, *, slot_map: SlotMap, slot: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._slot_map, self._slot = slot_map, slot

    def connect(self) -> None:
        if self._sock is None:
            self.host, self.port = self._slot_map.owner(self._slot)
        try:
            super().connect()  # type: ignore[no-untyped-call]
        except (redis.ConnectionError, redis.TimeoutError):
            self._slot_map.forget()
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except MOVED_ERRORS as exc:
            self._slot_map.forget()
            self.disconnect()  # type: ignore[no-untyped-call]
            raise redis.ConnectionError(f"slot {self._slot} is moving: {exc}") from exc
        except (redis.ConnectionError, redis.TimeoutError):
            self._slot_map.forget()
            raise


class AsyncSlotConnection(AsyncConnection):
    """`SlotConnection` for asyncio clients (the API's live tails)."""

    def __init__(self, *, slot_map: SlotMap, slot: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._slot_map, self._slot = slot_map, slot

    async def connect(self) -> None:
        if not self.is_connected:
            # Asks the cluster at most every REFRESH_INTERVAL_S, and only after a failure.
            self.host, self.port = self._slot_map.owner(self._slot)
        try:
            await super().connect()  # type: ignore[no-untyped-call]
        except (redis.ConnectionError, redis.TimeoutError):
            self._slot_map.forget()
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except MOVED_ERRORS as exc:
            self._slot_map.forget()
            await self.disconnect()
            raise redis.ConnectionError(f"slot {self._slot} is moving: {exc}") from exc
        except (redis.ConnectionError, redis.TimeoutError):
            self._slot_map.forget()
            raise


_maps: dict[str, SlotMap] = {}
_maps_lock = threading.Lock()


def slot_pool(urls: str, key: str, **options: Any) -> redis.ConnectionPool:
    """A pool of connections to the master serving `key`'s slot, on the cluster whose nodes
    `urls` names (one URL, or several separated by commas: any that answers will do)."""
    slot_map = cluster_map(urls)
    return redis.ConnectionPool(
        connection_class=SlotConnection, slot_map=slot_map, slot=key_slot(key.encode()),
        **slot_map.auth, **options,
    )  # fmt: skip


def async_slot_pool(urls: str, key: str, **options: Any) -> AsyncConnectionPool:
    """`slot_pool` for asyncio clients."""
    slot_map = cluster_map(urls)
    return AsyncConnectionPool(
        connection_class=AsyncSlotConnection, slot_map=slot_map, slot=key_slot(key.encode()),
        **slot_map.auth, **options,
    )  # fmt: skip


def cluster_map(urls: str) -> SlotMap:
    """The slot map of the cluster `urls` names, one per process, shared by all its clients."""
    with _maps_lock:
        slot_map = _maps.get(urls)
        if slot_map is None:
            slot_map = _maps[urls] = _new_map(urls)
        return slot_map


def _new_map(urls: str) -> SlotMap:
    seeds, auth = [], {}
    for url in urls.split(","):
        parsed = parse_url(url.strip())  # type: ignore[no-untyped-call]
        if parsed.get("connection_class") not in (None, Connection):
            raise SettingsError("a Redis Cluster is reached with redis:// URLs here, not rediss://")
        seeds.append((str(parsed.get("host", "localhost")), int(parsed.get("port", 6379))))
        auth = {k: parsed[k] for k in ("username", "password") if parsed.get(k) is not None}
    return SlotMap(seeds, auth)
