"""A fleet's readings made at once, with past timestamps and the values as both numbers and the
texts written: for tests and benchmarks that compare what the system computed with numpy."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import redis

from ingest.redis.writer import StreamWriter

METRICS = ("temp", "humidity")


@dataclass
class Made:
    sensor: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    seq: npt.NDArray[np.int64]
    values: dict[str, npt.NDArray[np.float64]]
    texts: dict[str, list[str]]

    def sensor_id(self, index: int) -> str:
        return f"dev-{index:04d}"

    def take(self, rows: npt.NDArray[np.bool_]) -> Made:
        """The readings where `rows` is True."""
        where = np.flatnonzero(rows).tolist()
        return Made(
            self.sensor[rows], self.ts[rows], self.seq[rows],
            {m: v[rows] for m, v in self.values.items()},
            {m: [t[i] for i in where] for m, t in self.texts.items()},
        )  # fmt: skip


def make_readings(
    sensors: int, per_sensor: int, burst: int, seed: int, *, now_ms: int | None = None
) -> Made:
    """Each sensor reads once a second up to now (or `now_ms`) and uploads in bursts, as
    buffered devices do."""
    rng = np.random.default_rng(seed)
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    order = [
        (k, j)
        for start in range(0, per_sensor, burst)
        for k in range(sensors)
        for j in range(start, min(start + burst, per_sensor))
    ]
    sensor = np.array([k for k, _ in order], dtype=np.int64)
    seq = np.array([j for _, j in order], dtype=np.int64)
    ts = now - (per_sensor - seq) * 1000 - sensor % 997
    texts = {
        "temp": [f"{v:.3f}" for v in 20 + 3 * rng.standard_normal(len(order))],
        "humidity": [f"{v:.4f}" for v in rng.uniform(0.05, 0.95, len(order))],
    }
    values = {m: np.array([float(t) for t in texts[m]]) for m in METRICS}
    return Made(sensor, ts, seq, values, texts)


def write(
    client: redis.Redis, made: Made, stream: str = "app:event", *, with_seq: bool = True
) -> None:
    """The readings as stream entries; `with_seq=False` leaves `seq` out, so that nothing
    but the group's own bookkeeping can tell a reading counted twice."""
    StreamWriter(client, stream, 10**8, batch_size=2000).write(entries_of(made, with_seq=with_seq))


def entries_of(made: Made, *, with_seq: bool = True) -> list[dict[str, str]]:
    """The readings as the stream entries `write` writes (for a writer of one's own)."""
    names = [made.sensor_id(k) for k in range(int(made.sensor.max(initial=-1)) + 1)]
    columns = zip(
        made.sensor.tolist(), made.ts.tolist(), made.seq.tolist(),
        made.texts["temp"], made.texts["humidity"], strict=True,
    )  # fmt: skip
    entries = [
        {"sensor_id": names[k], "ts": str(ts), "seq": str(seq), "temp": t, "humidity": h}
        for k, ts, seq, t, h in columns
    ]
    if not with_seq:
        for entry in entries:
            del entry["seq"]
    return entries
