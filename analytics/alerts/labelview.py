"""The labels of one shard's sensors, as rules that select by label see them: read from the device
registry (`ingest.devices`) at start and again every REFRESH_S."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import redis

from ingest.devices import Device
from ingest.keys import StreamKeys
from ingest.redis.connection import as_text
from ingest.redis.errors import redis_errors

REFRESH_S = 5.0
_NONE: Mapping[str, str] = {}


class LabelView:
    def __init__(self, client: redis.Redis, keys: StreamKeys,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.client = client
        self.keys = keys
        self._clock = clock
        self._labels: dict[str, Mapping[str, str]] = {}
        self._read_at: float | None = None

    def of(self, sensor_id: str) -> Mapping[str, str]:
        return self._labels.get(sensor_id, _NONE)

    def refresh_if_due(self) -> bool:
        """Read the registry again if it is time; True when some sensor's labels changed (and
        what depends on them must be worked out again)."""
        now = self._clock()
        if self._read_at is not None and now - self._read_at < REFRESH_S:
            return False
        self._read_at = now
        labels: dict[str, Mapping[str, str]] = {}
        with redis_errors():
            for sensor, document in self.client.hscan_iter(self.keys.devices, count=1000):
                device = Device.from_json(as_text(sensor), as_text(document))
                if device.labels:
                    labels[device.sensor_id] = device.labels
        changed = labels != self._labels
        self._labels = labels
        return changed
