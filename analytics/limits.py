"""What the aggregates group takes in: every metric name and sensor id it sees costs keys and
memory for as long as the longest tier keeps them, so the group caps them. A reading over a limit
is dead-lettered with the limit named (and can be replayed once the limit is raised).

- metrics per reading (`TELEMETRY_MAX_METRICS_PER_READING`);
- distinct metric names in the store (`TELEMETRY_MAX_METRIC_NAMES`): a reading with a name the
  store does not know yet is kept out once that many are known;
- sensors in the store (`TELEMETRY_MAX_SENSORS`), likewise for a new sensor id.

Several aggregators each admit new names against what Redis held when they last looked, so
together they may pass a limit by what one batch brings at most.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import redis

from ingest.contract.columns import ReadingColumns
from ingest.contract.entries import Inadmissible
from ingest.keys import StreamKeys
from ingest.redis.connection import as_text
from ingest.redis.errors import redis_errors


@dataclass(frozen=True)
class Limits:
    metrics_per_reading: int
    metric_names: int
    sensors: int


class ReadingLimits:
    """The aggregates group's admission (see `ingest.groups.GroupRunner`)."""

    def __init__(self, client: redis.Redis, keys: StreamKeys, limits: Limits) -> None:
        self.client = client
        self.keys = keys
        self.limits = limits
        # Names and sensors known to be in the store, as far as this process has seen.
        self._names: set[str] = set()
        self._sensors: set[str] = set()
        self._sensor_count = 0

    def __call__(self, readings: ReadingColumns) -> tuple[ReadingColumns, list[Inadmissible]]:
        reasons: dict[int, str] = {}
        per_reading = np.bincount(readings.value_row, minlength=len(readings))
        for row in np.flatnonzero(per_reading > self.limits.metrics_per_reading).tolist():
            reasons[row] = (
                f"{per_reading[row]} metrics, over the limit of {self.limits.metrics_per_reading}"
                " per reading (TELEMETRY_MAX_METRICS_PER_READING)"
            )
        self._refuse_new_names(readings, reasons)
        self._refuse_new_sensors(readings, reasons)
        if not reasons:
            return readings, []
        kept_out = [
            Inadmissible(row, reason, _fields(readings, row))
            for row, reason in sorted(reasons.items())
        ]
        admitted = np.setdiff1d(np.arange(len(readings)), list(reasons))
        return readings.take(admitted), kept_out

    def _refuse_new_names(self, readings: ReadingColumns, reasons: dict[int, str]) -> None:
        # Names of readings kept out already do not count.
        alive = (
            ~np.isin(readings.value_row, list(reasons))
            if reasons
            else np.ones(len(readings.value_row), bool)
        )
        used = np.unique(readings.value_metric[alive]).tolist()
        names = readings.metric_names
        if all(names[code] in self._names for code in used):
            return
        with redis_errors():
            stored = self.client.smembers(self.keys.metric_names)
        self._names = {as_text(name) for name in stored}
        refused: set[int] = set()
        for code in used:
            name = names[code]
            if name in self._names:
                continue
            if len(self._names) < self.limits.metric_names:
                self._names.add(name)
            else:
                refused.add(code)
        if refused:
            rows = readings.value_row[alive & np.isin(readings.value_metric, list(refused))]
            for row in np.unique(rows).tolist():
                reasons.setdefault(
                    row,
                    f"a new metric name, over the limit of {self.limits.metric_names} "
                    "(TELEMETRY_MAX_METRIC_NAMES)",
                )

    def _refuse_new_sensors(self, readings: ReadingColumns, reasons: dict[int, str]) -> None:
        alive = np.ones(len(readings), bool)
        alive[list(reasons)] = False
        present = np.unique(readings.sensor[alive]).tolist()
        unseen = [code for code in present if readings.sensors[code] not in self._sensors]
        if not unseen:
            return
        ids = [readings.sensors[code] for code in unseen]
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(self.keys.sensor_index, ids)
            pipe.hlen(self.keys.sensor_index)
            numbers, count = pipe.execute()
        self._sensor_count = max(self._sensor_count, int(count))
        refused = []
        for code, sensor_id, number in zip(unseen, ids, numbers, strict=True):
            if number is None and self._sensor_count >= self.limits.sensors:
                refused.append(code)
                continue
            if number is None:
                self._sensor_count += 1
            if len(self._sensors) < self.limits.sensors:
                self._sensors.add(sensor_id)
        for row in np.flatnonzero(alive & np.isin(readings.sensor, refused)).tolist():
            reasons.setdefault(
                row,
                f"a new sensor, over the limit of {self.limits.sensors} (TELEMETRY_MAX_SENSORS)",
            )


def _fields(readings: ReadingColumns, row: int) -> dict[str, str]:
    reading = readings.reading(row)
    fields = {"sensor_id": reading.sensor_id, "ts": str(reading.ts_ms)}
    if reading.seq is not None:
        fields["seq"] = str(reading.seq)
    fields.update((name, repr(value)) for name, value in reading.metrics.items())
    return fields
