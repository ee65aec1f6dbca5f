"""`telemetry shards`: where each shard lives, and `--place` to spread the shards over a Redis
Cluster's masters (a slot goes where its hash puts it, so three shards may share a master)."""

from __future__ import annotations

import time

from redis.crc import key_slot

from ingest.redis.cluster import ClusterNode, SlotMap, cluster_map, parse_cluster_nodes
from ingest.runtime import CommandLineError
from ingest.settings import Settings
from ingest.shards import Shard, shards

# How long masters may take to agree on a slot's new owner (gossip, about a second here).
AGREE_S = 10.0


def show_shards(settings: Settings, place: bool) -> str:
    every = shards(settings)
    if not settings.redis_cluster:
        if place:
            raise CommandLineError("--place moves shards between the masters of a Redis Cluster")
        return "\n".join(f"{s.index}\t{s.stream}\tthe one Redis" for s in every)
    slot_map = cluster_map(settings.redis_url)
    lines = _placed(slot_map, every) if place else []
    masters = _masters(slot_map.nodes())
    for shard in every:
        slot = key_slot(shard.stream.encode())
        owner = _owner(masters, slot)
        keys = slot_map.client(owner.address).cluster("countkeysinslot", slot)
        host, port = owner.address
        lines.append(f"{shard.index}\t{shard.stream}\tslot {slot}\t{host}:{port}\t{keys} keys")
    return "\n".join(lines)


def _placed(slot_map: SlotMap, every: list[Shard]) -> list[str]:
    """Move each empty shard's slot so that shard i is on master i mod the masters; a shard
    holding keys stays (moving its data is `redis-cli --cluster reshard`'s job)."""
    masters = _masters(slot_map.nodes())
    done = []
    for shard in every:
        slot = key_slot(shard.stream.encode())
        owner, target = _owner(masters, slot), masters[shard.index % len(masters)]
        if owner.node_id == target.node_id:
            continue
        held = int(slot_map.client(owner.address).cluster("countkeysinslot", slot))
        if held:
            done.append(f"shard {shard.index} stays: slot {slot} holds {held} keys (move it "
                        "with redis-cli --cluster reshard)")  # fmt: skip
            continue
        for master in masters:
            slot_map.client(master.address).cluster("setslot", slot, "node", target.node_id)
        _wait_agreed(slot_map, slot, target)
        host, port = target.address
        done.append(f"shard {shard.index}: slot {slot} moved to {host}:{port}")
    slot_map.forget()
    return done


def _masters(nodes: list[ClusterNode]) -> list[ClusterNode]:
    return sorted((n for n in nodes if n.serving), key=lambda n: n.address)


def _owner(masters: list[ClusterNode], slot: int) -> ClusterNode:
    for master in masters:
        if any(first <= slot <= last for first, last in master.slots):
            return master
    raise CommandLineError(f"no master serves slot {slot}: is the cluster healthy?")


def _wait_agreed(slot_map: SlotMap, slot: int, target: ClusterNode) -> None:
    """Return once every master sees `target` serving the slot."""
    deadline = time.monotonic() + AGREE_S
    while time.monotonic() < deadline:
        if all(_owner(_masters(view), slot).node_id == target.node_id
               for view in _views(slot_map)):  # fmt: skip
            return
        time.sleep(0.1)
    raise CommandLineError(f"the masters did not agree on slot {slot}'s new owner in time")


def _views(slot_map: SlotMap) -> list[list[ClusterNode]]:
    """Each master's own view of the cluster."""
    views = []
    for master in _masters(slot_map.nodes()):
        client = slot_map.client(master.address)
        reply = client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
        views.append(parse_cluster_nodes(str(reply), master.address[0]))
    return views
