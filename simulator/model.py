"""A bank of simulated sensors, computed together with numpy.

Each sensor has its own character (base temperature, daily amplitude, humidity level, battery
capacity) drawn from the seed. Metric values depend only on the seed, the sensor's position in
the bank and its reading number, never on the wall clock: the daily cycle runs on the sensor's own
clock (reading number / rate) from a starting hour the seed picks. So one sensor run twice with
the same seed gives the same values; only `ts` (the time the reading was taken) differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from simulator.faults import FaultConfig

Fields = dict[str, str]
FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]

DAY_S = 86_400.0
BATTERY_EMPTY_V = 3.3
BATTERY_TAU_S = 30 * DAY_S
NOISE_MEMORY = 0.9


class SensorBank:
    def __init__(
        self, sensor_ids: Sequence[str], rate_hz: float, seed: int, faults: FaultConfig
    ) -> None:
        n = len(sensor_ids)
        self.sensor_ids = list(sensor_ids)
        self.rate_hz = rate_hz
        self.faults = faults
        character, noise, chance = np.random.SeedSequence(seed).spawn(3)
        self._noise_rng = np.random.default_rng(noise)
        # Faults draw from their own generator, so switching one on leaves the clean values as
        # they were and a faulty run can be compared with a clean one.
        self._chance_rng = np.random.default_rng(chance)
        rng = np.random.default_rng(character)
        self.base_c = rng.uniform(17.0, 24.0, n)
        self.amplitude_c = rng.uniform(2.0, 6.0, n)
        self.start_hour = rng.uniform(0.0, 24.0, n)
        self.humidity_base = rng.uniform(0.35, 0.6, n)
        self.battery_full_v = rng.uniform(3.95, 4.2, n)
        self._noise_c = np.zeros(n)
        self.slots = np.zeros(n, dtype=np.int64)
        self.taken = np.zeros(n, dtype=np.int64)
        self._stuck_until = np.full(n, -1.0)
        self._stuck_at = np.zeros(n)
        self._silent_until = np.full(n, -1.0)
        self._late_until = np.full(n, -1.0)
        self._held: dict[int, list[Fields]] = {}

    def __len__(self) -> int:
        return len(self.sensor_ids)

    def step(self, idx: IndexArray, ts_ms: int) -> list[Fields]:
        """One schedule slot for each sensor in `idx` (no sensor twice): the entries to send now,
        in order."""
        t_s = self.slots[idx] / self.rate_hz
        self.slots[idx] += 1
        active = ~self._starts(
            idx, t_s, self._silent_until, self.faults.dropout_prob, self.faults.dropout_s
        )
        idx, t_s = idx[active], t_s[active]
        if idx.size == 0:
            return []
        seq = self.taken[idx].copy()
        self.taken[idx] += 1
        temp = self._temperature(idx, t_s)
        humidity = np.clip(
            self.humidity_base[idx]
            - 0.025 * (temp - self.base_c[idx])
            + self._noise_rng.normal(0.0, 0.01, idx.size),
            0.02,
            0.99,
        )
        battery = (
            BATTERY_EMPTY_V
            + (self.battery_full_v[idx] - BATTERY_EMPTY_V) * np.exp(-t_s / BATTERY_TAU_S)
            + self._noise_rng.normal(0.0, 0.003, idx.size)
        )
        temp = self._apply_faults(idx, t_s, temp)
        return self._entries(idx, t_s, seq, temp, humidity, battery, ts_ms)

    def release_held(self) -> list[Fields]:
        """Everything still held back by a late-delivery fault (sent at shutdown)."""
        out = [fields for held in self._held.values() for fields in held]
        self._held.clear()
        return out

    def _temperature(self, idx: IndexArray, t_s: FloatArray) -> FloatArray:
        self._noise_c[idx] = NOISE_MEMORY * self._noise_c[idx] + self._noise_rng.normal(
            0.0, 0.12, idx.size
        )
        hour = (self.start_hour[idx] + t_s / 3600.0) % 24.0
        # Warmest mid-afternoon (15:00), coldest before dawn.
        cycle = np.sin(2 * np.pi * (hour - 9.0) / 24.0)
        return self.base_c[idx] + self.amplitude_c[idx] * cycle + self._noise_c[idx]

    def _starts(
        self, idx: IndexArray, t_s: FloatArray, until: FloatArray, prob: float, duration_s: float
    ) -> npt.NDArray[np.bool_]:
        """Which sensors are in an episode (stuck, silent, holding back) now, starting new ones."""
        ongoing = until[idx] > t_s
        if prob > 0:
            start = (self._chance_rng.random(idx.size) < prob) & ~ongoing
            until[idx[start]] = t_s[start] + duration_s
            ongoing |= start
        return ongoing

    def _apply_faults(self, idx: IndexArray, t_s: FloatArray, temp: FloatArray) -> FloatArray:
        f = self.faults
        temp = temp + f.drift_per_hour * t_s / 3600.0
        was_stuck = self._stuck_until[idx] > t_s
        stuck = self._starts(idx, t_s, self._stuck_until, f.stuck_prob, f.stuck_s)
        newly = stuck & ~was_stuck
        self._stuck_at[idx[newly]] = temp[newly] if f.stuck_value is None else f.stuck_value
        temp = np.where(stuck, self._stuck_at[idx], temp)
        if f.spike_prob > 0:
            spike = self._chance_rng.random(idx.size) < f.spike_prob
            sign = np.where(self._chance_rng.random(idx.size) < 0.5, -1.0, 1.0)
            temp = temp + spike * sign * f.spike_size
        return temp

    def _entries(
        self,
        idx: IndexArray,
        t_s: FloatArray,
        seq: npt.NDArray[np.int64],
        temp: FloatArray,
        humidity: FloatArray,
        battery: FloatArray,
        ts_ms: int,
    ) -> list[Fields]:
        f = self.faults
        holding = self._starts(idx, t_s, self._late_until, f.late_prob, f.late_s)
        duplicate = (
            self._chance_rng.random(idx.size) < f.duplicate_prob
            if f.duplicate_prob > 0
            else np.zeros(idx.size, dtype=bool)
        )
        ts = str(ts_ms)
        out: list[Fields] = []
        ids = self.sensor_ids
        for j, i in enumerate(idx.tolist()):
            fields = {
                "sensor_id": ids[i],
                "ts": ts,
                "seq": str(seq[j]),
                "temp": f"{temp[j]:.2f}",
                "humidity": f"{humidity[j]:.3f}",
                "battery_v": f"{battery[j]:.3f}",
            }
            if holding[j]:
                self._held.setdefault(i, []).append(fields)
                continue
            held = self._held.pop(i, None)
            if held:
                out.extend(held)
            out.append(fields)
            if duplicate[j]:
                out.append(dict(fields))
        return out
