"""A Sparkplug B host application's bookkeeping, as the bridge needs it (pure: no I/O).

Topics are `spBv1.0/<group>/<type>/<edge node>[/<device>]`. A node's NBIRTH carries every metric
with its name, alias and value, and `bdSeq`; DBIRTH does the same for a device of the node;
NDATA/DDATA carry changed metrics, usually by alias alone; every message of a node after its
birth carries `seq`, one more than the last (mod 256); NDEATH (the node's MQTT will, with the
birth's `bdSeq`) and DDEATH say a node or device went offline.

What it makes of them:
- each node is the sensor `<group>:<node>`, each device `<group>:<node>:<device>` (characters
  the stream contract does not allow become `_`), labelled `sparkplug_group`, `edge_node`
  (and `device`);
- numeric and boolean metrics are readings, grouped by their timestamps; string metrics are
  labels; metric names become metric names by the lenient rule (`Inputs/Temp 1` ->
  `Inputs_Temp_1`); `bdSeq` and the `Node Control/` and `Device Control/` metrics are left out;
- a birth writes `online` = 1 and a death `online` = 0 for the node and each of its devices, and
  notes them online or offline in the device registry;
- data from a node whose birth it has not seen (the bridge restarted), with an alias it does not
  know, or out of `seq` order, makes it ask the node for a rebirth (NCMD `Node Control/Rebirth`),
  at most once per REBIRTH_EVERY_S; data it cannot name is refused with the reason;
- a death whose `bdSeq` is not the birth's is a stale will from an earlier session, and ignored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from producers.payload import Parsed, Refusal, document_readings
from producers.profiles.base import sensor_id_of
from producers.profiles.sparkplug.wire import Metric, WireError, decode_payload, encode_varint

NAMESPACE = "spBv1.0"
REBIRTH_EVERY_S = 5.0
SEQ_MODULO = 256
_CONTROL_PREFIXES = ("Node Control/", "Device Control/")
_BD_SEQ = "bdSeq"
# Edge nodes the host keeps state for; past it, a node not yet known is refused.
MAX_NODES = 100_000
PROFILE = "sparkplug"


@dataclass
class EdgeNode:
    bd_seq: int | None
    next_seq: int
    # False until its NBIRTH arrives (a node heard first through its data).
    born: bool = True
    # Device ("" for the node itself) -> alias -> metric name.
    aliases: dict[str, dict[int, str]] = field(default_factory=dict)
    # Device -> metric name -> datatype, as its birth gave them.
    datatypes: dict[str, dict[str, int]] = field(default_factory=dict)
    rebirth_asked_at: float = -REBIRTH_EVERY_S


@dataclass
class SparkplugCounts:
    births: int = 0
    deaths: int = 0
    rebirths_asked: int = 0
    seq_gaps: int = 0


class SparkplugHost:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.nodes: dict[tuple[str, str], EdgeNode] = {}
        self.counts = SparkplugCounts()
        self._clock = clock

    def parse(self, topic: str, payload: bytes, decoding: str) -> Parsed:
        levels = topic.split("/")
        if len(levels) not in (4, 5) or levels[0] != NAMESPACE:
            # spBv1.0/STATE/<host> and anything else that is not a node's or device's message.
            return Parsed()
        _, group, kind, node_id = levels[:4]
        device = levels[4] if len(levels) == 5 else ""
        if kind in ("NCMD", "DCMD"):
            return Parsed()
        try:
            message = decode_payload(payload)
        except WireError as exc:
            return Parsed.unreadable(f"not a Sparkplug B payload: {exc}")
        key = (group, node_id)
        parsed = Parsed()
        node = self.nodes.get(key)
        if kind == "NBIRTH":
            if node is None and len(self.nodes) >= MAX_NODES:
                return Parsed.unreadable(f"over the {MAX_NODES} edge nodes the bridge tracks")
            self.counts.births += 1
            node = self.nodes[key] = EdgeNode(_bd_seq(message.metrics), 0)
            self._seq(node, message.seq, key, parsed)
            self._born(node, "", message.metrics)
            self._readings(parsed, group, node_id, "", message.metrics, message.timestamp,
                           decoding, online=True)  # fmt: skip
        elif kind == "NDEATH":
            if node is not None and _bd_seq(message.metrics) in (None, node.bd_seq):
                self.counts.deaths += 1
                for each in node.aliases:
                    self._offline(parsed, group, node_id, each, decoding)
                del self.nodes[key]
        elif node is None:
            if len(self.nodes) >= MAX_NODES:
                return Parsed.unreadable(f"over the {MAX_NODES} edge nodes the bridge tracks")
            node = self.nodes[key] = EdgeNode(None, 0, born=False)
            self._ask_rebirth(parsed, key, node)
            parsed.refused.append(_refusal(f"no birth seen from edge node {group}/{node_id}; "
                                           "rebirth requested"))  # fmt: skip
        elif not node.born:
            # Waiting for the rebirth asked for: nothing can be named yet.
            self._ask_rebirth(parsed, key, node)
            parsed.refused.append(_refusal(f"edge node {group}/{node_id} has not been reborn "
                                           "yet; rebirth requested"))  # fmt: skip
        else:
            self._seq(node, message.seq, key, parsed)
            if kind == "DBIRTH":
                self._born(node, device, message.metrics)
                self._readings(parsed, group, node_id, device, message.metrics,
                               message.timestamp, decoding, online=True)  # fmt: skip
            elif kind == "DDEATH":
                self.counts.deaths += 1
                self._offline(parsed, group, node_id, device, decoding)
                node.aliases.pop(device, None)
                node.datatypes.pop(device, None)
            elif kind in ("NDATA", "DDATA"):
                named = self._named(parsed, key, node, device if kind == "DDATA" else "",
                                    message.metrics)  # fmt: skip
                self._readings(parsed, group, node_id, device, named, message.timestamp,
                               decoding, online=None)  # fmt: skip
        return parsed

    @staticmethod
    def _born(node: EdgeNode, device: str, metrics: Iterable[Metric]) -> None:
        node.aliases[device] = {m.alias: m.name for m in metrics
                                if m.alias is not None and m.name is not None}  # fmt: skip
        node.datatypes[device] = {m.name: m.datatype for m in metrics if m.name is not None}
        for metric in metrics:
            metric.resolve(0)

    def _seq(self, node: EdgeNode, seq: int | None, key: tuple[str, str], parsed: Parsed) -> None:
        if seq is None:
            return
        if seq != node.next_seq and node.born:
            self.counts.seq_gaps += 1
            self._ask_rebirth(parsed, key, node)
        node.next_seq = (seq + 1) % SEQ_MODULO

    def _named(self, parsed: Parsed, key: tuple[str, str], node: EdgeNode, device: str,
               metrics: Iterable[Metric]) -> list[Metric]:  # fmt: skip
        known = node.aliases.get(device)
        datatypes = node.datatypes.get(device, {})
        named = []
        for metric in metrics:
            if metric.name is None and metric.alias is not None:
                name = None if known is None else known.get(metric.alias)
                if name is None:
                    self._ask_rebirth(parsed, key, node)
                    reason = f"unknown alias {metric.alias} from {'/'.join(key)}"
                    parsed.refused.append(_refusal(f"{reason}; rebirth requested"))
                    continue
                metric.name = name
            if metric.name is not None:
                metric.resolve(datatypes.get(metric.name, 0))
            named.append(metric)
        return named

    def _readings(self, parsed: Parsed, group: str, node_id: str, device: str,
                  metrics: Iterable[Metric], payload_ts: int | None, decoding: str,
                  online: bool | None) -> None:  # fmt: skip
        sensor_id = _sensor_id(group, node_id, device)
        by_time: dict[int | None, dict[str, Any]] = {}
        for metric in metrics:
            name = metric.name
            if name is None or name == _BD_SEQ or name.startswith(_CONTROL_PREFIXES):
                continue
            if metric.is_null or metric.value is None:
                continue
            ts = metric.timestamp if metric.timestamp is not None else payload_ts
            by_time.setdefault(ts, {})[name] = metric.value
        if online is not None:
            by_time.setdefault(payload_ts, {})["online"] = 1.0 if online else 0.0
        for ts, values in by_time.items():
            if ts is not None:
                values["ts"] = ts
            found = document_readings(values, sensor_id, decoding=decoding)
            _merge(parsed, found)
        note = parsed.note(sensor_id)
        note.profile = PROFILE
        note.labels.update(_labels(group, node_id, device))
        if online is not None:
            note.online = online

    def _offline(self, parsed: Parsed, group: str, node_id: str, device: str,
                 decoding: str) -> None:  # fmt: skip
        self._readings(parsed, group, node_id, device, (), None, decoding, online=False)

    def _ask_rebirth(self, parsed: Parsed, key: tuple[str, str], node: EdgeNode) -> None:
        now = self._clock()
        if now - node.rebirth_asked_at < REBIRTH_EVERY_S:
            return
        node.rebirth_asked_at = now
        self.counts.rebirths_asked += 1
        group, node_id = key
        topic = f"{NAMESPACE}/{group}/NCMD/{node_id}"
        parsed.replies.append((topic, rebirth_request(int(time.time() * 1000))))


def _merge(into: Parsed, found: Parsed) -> None:
    into.readings += found.readings
    into.refused += found.refused
    into.dropped += found.dropped
    for sensor_id, note in found.notes.items():
        into.note(sensor_id).update(note)


def _refusal(reason: str) -> Refusal:
    return Refusal(0, reason)


def _sensor_id(group: str, node_id: str, device: str) -> str:
    parts = [group, node_id] + ([device] if device else [])
    return sensor_id_of(":".join(parts))


def _labels(group: str, node_id: str, device: str) -> dict[str, str]:
    labels = {"sparkplug_group": group[:128], "edge_node": node_id[:128]}
    if device:
        labels["device"] = device[:128]
    return labels


def _bd_seq(metrics: Iterable[Metric]) -> int | None:
    for metric in metrics:
        if metric.name == _BD_SEQ:
            if metric.integer is not None:
                return metric.integer
            if isinstance(metric.value, float):
                return int(metric.value)
    return None


def rebirth_request(timestamp_ms: int) -> bytes:
    """The NCMD payload asking an edge node to publish its births again."""
    name = b"Node Control/Rebirth"
    varint = encode_varint
    metric = (b"\x0a" + varint(len(name)) + name    # name
              + b"\x18" + varint(timestamp_ms)      # timestamp
              + b"\x20" + varint(11)                # datatype Boolean
              + b"\x70" + varint(1))  # fmt: skip    # boolean_value true
    return b"\x08" + varint(timestamp_ms) + b"\x12" + varint(len(metric)) + metric
