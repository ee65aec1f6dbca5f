"""The device registry: what is known about each sensor besides its readings.

Labels (from topic levels, string fields, profiles and people), the units of its metrics, whether
a device that says so (Sparkplug B) is online, and how many fields of its readings were dropped
and why. One JSON document per sensor in the hash `{stream}:devices` of the sensor's shard, so
nothing of it is repeated in stream entries. Inputs send a note only when it says something new
(`NoteFilter`); notes merge in Redis (merge_devices.lua), so several bridges and a person
labelling by hand never undo each other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from ingest.keys import StreamKeys
from ingest.labels import MAX_LABELS, MAX_UNITS, Selector
from ingest.redis.connection import as_text, connect
from ingest.redis.errors import redis_errors
from ingest.redis.scripts import LuaScript
from ingest.settings import Settings
from ingest.shards import shard_of, shards

MERGE_DEVICES = LuaScript("ingest", "merge_devices.lua")
# Notes sent in one script call.
NOTES_PER_CALL = 500
# Sensors a NoteFilter remembers; past it, it starts afresh (and sends each note once more).
REMEMBERED_SENSORS = 200_000
_SCAN_COUNT = 1000


@dataclass
class DeviceNote:
    """What one unit of input says about a sensor. Empty label or unit values remove them."""

    labels: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    online: bool | None = None
    profile: str | None = None
    dropped: int = 0
    dropped_reason: str = ""

    def update(self, newer: DeviceNote) -> None:
        self.labels.update(newer.labels)
        self.units.update(newer.units)
        if newer.online is not None:
            self.online = newer.online
        if newer.profile is not None:
            self.profile = newer.profile
        if newer.dropped:
            self.dropped += newer.dropped
            self.dropped_reason = newer.dropped_reason

    def as_json(self) -> str:
        note: dict[str, Any] = {}
        if self.labels:
            note["labels"] = self.labels
        if self.units:
            note["units"] = self.units
        if self.online is not None:
            note["online"] = self.online
        if self.profile is not None:
            note["profile"] = self.profile
        if self.dropped:
            note["dropped"] = self.dropped
            note["dropped_reason"] = self.dropped_reason[:200]
        return json.dumps(note, separators=(",", ":"))


def merge_notes(into: dict[str, DeviceNote], notes: Mapping[str, DeviceNote]) -> None:
    """Add notes to `into`, the later over the earlier; the notes themselves are not changed."""
    for sensor_id, note in notes.items():
        held = into.get(sensor_id)
        if held is None:
            held = into[sensor_id] = DeviceNote()
        held.update(note)


@dataclass(frozen=True)
class Device:
    sensor_id: str
    labels: dict[str, str]
    units: dict[str, str]
    online: bool | None
    profile: str | None
    dropped: int
    dropped_reason: str
    first_ms: int
    updated_ms: int

    @classmethod
    def from_json(cls, sensor_id: str, text: str) -> Device:
        doc = json.loads(text)
        return cls(
            sensor_id=sensor_id,
            labels=_text_map(doc.get("labels")),
            units=_text_map(doc.get("units")),
            online=doc.get("online"),
            profile=doc.get("profile"),
            dropped=int(doc.get("dropped", 0)),
            dropped_reason=str(doc.get("dropped_reason", "")),
            first_ms=int(doc.get("first_ms", 0)),
            updated_ms=int(doc.get("updated_ms", 0)),
        )


def _text_map(found: Any) -> dict[str, str]:
    # cjson writes an empty object as {} but an emptied one may come back as [].
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


class NoteFilter:
    """Keeps an input from sending what the registry already has: a note is cut down to what
    differs from the last one sent for its sensor (counts of dropped fields always go)."""

    def __init__(self) -> None:
        self._sent: dict[str, DeviceNote] = {}

    def news(self, notes: Mapping[str, DeviceNote]) -> dict[str, DeviceNote]:
        if len(self._sent) > REMEMBERED_SENSORS:
            self._sent.clear()
        news: dict[str, DeviceNote] = {}
        for sensor_id, note in notes.items():
            sent = self._sent.setdefault(sensor_id, DeviceNote())
            new = DeviceNote(
                labels={k: v for k, v in note.labels.items() if sent.labels.get(k) != v},
                units={k: v for k, v in note.units.items() if sent.units.get(k) != v},
                online=note.online if note.online != sent.online else None,
                profile=note.profile if note.profile != sent.profile else None,
                dropped=note.dropped,
                dropped_reason=note.dropped_reason,
            )
            if new.labels or new.units or new.online is not None or new.profile is not None \
                    or new.dropped:  # fmt: skip
                news[sensor_id] = new
        return news

    def sent(self, notes: Mapping[str, DeviceNote]) -> None:
        """Remember notes Redis has taken."""
        for sensor_id, note in notes.items():
            held = self._sent.setdefault(sensor_id, DeviceNote())
            held.update(DeviceNote(note.labels, note.units, note.online, note.profile))

    def forget(self) -> None:
        """Send everything again (after Redis lost data, or when unsure what it took)."""
        self._sent.clear()


class DeviceRegistry:
    """The registry across every shard; each sensor's document on its own shard."""

    def __init__(self, settings: Settings, clients: Sequence[redis.Redis] | None = None) -> None:
        every = shards(settings)
        self.keys = [StreamKeys(shard.stream) for shard in every]
        self.clients = list(clients) if clients else [connect(s.settings) for s in every]
        self.max_sensors = settings.max_sensors

    def _shard(self, sensor_id: str) -> int:
        return shard_of(sensor_id, len(self.keys))

    def note(self, notes: Mapping[str, DeviceNote]) -> int:
        """Merge notes into the registry; how many were refused (registry full)."""
        by_shard: dict[int, list[str | int]] = {}
        for sensor_id, note in notes.items():
            by_shard.setdefault(self._shard(sensor_id), []).extend((sensor_id, note.as_json()))
        refused = 0
        now = time.time_ns() // 1_000_000
        for shard, pairs in by_shard.items():
            head: list[str | int] = [self.max_sensors, now, MAX_LABELS, MAX_UNITS]
            for start in range(0, len(pairs), 2 * NOTES_PER_CALL):
                chunk = pairs[start : start + 2 * NOTES_PER_CALL]
                with redis_errors():
                    keys = [self.keys[shard].devices, self.keys[shard].meta]
                    refused += int(MERGE_DEVICES(self.clients[shard], keys, head + chunk))
        return refused

    def get(self, sensor_id: str) -> Device | None:
        shard = self._shard(sensor_id)
        with redis_errors():
            found = self.clients[shard].hget(self.keys[shard].devices, sensor_id)
        return None if found is None else Device.from_json(sensor_id, as_text(found))

    def devices(self, selector: Selector | None = None) -> list[Device]:
        """Every device in the registry (or those the selector matches), sorted by sensor id."""
        found: list[Device] = []
        for client, keys in zip(self.clients, self.keys, strict=True):
            with redis_errors():
                for sensor, text in client.hscan_iter(keys.devices, count=_SCAN_COUNT):
                    device = Device.from_json(as_text(sensor), as_text(text))
                    if selector is None or selector.matches(device.labels):
                        found.append(device)
        found.sort(key=lambda d: d.sensor_id)
        return found

    def labels_of(self) -> dict[str, dict[str, str]]:
        """Every sensor's labels."""
        return {device.sensor_id: device.labels for device in self.devices()}

    def label(self, sensor_ids: Iterable[str], setting: Mapping[str, str],
              removing: Iterable[str]) -> int:  # fmt: skip
        """Set and remove labels of sensors; how many notes the full registry refused."""
        change = dict(setting) | {name: "" for name in removing}
        return self.note({sensor_id: DeviceNote(labels=dict(change)) for sensor_id in sensor_ids})

    def forget(self, sensor_ids: Iterable[str]) -> int:
        """Remove sensors from the registry; how many it held."""
        removed = 0
        for sensor_id in sensor_ids:
            shard = self._shard(sensor_id)
            with redis_errors():
                removed += self.clients[shard].hdel(self.keys[shard].devices, sensor_id)
        return removed
