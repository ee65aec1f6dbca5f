"""Runs a bank of sensors at a steady aggregate rate and writes their readings to the stream.

Sensor i of n fires at offsets i/n of each period, so a fleet of 10,000 at 1 Hz sends a steady
10,000 readings/s rather than 10,000 at the top of every second. The schedule is absolute (slots
due since the start), so a slow tick is made up by the next one instead of drifting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ingest.backoff import Backoff, why_writes_wait, write_waiting
from ingest.errors import RedisUnavailable
from simulator.model import SensorBank

log = logging.getLogger(__name__)

TICK_S = 0.01
# When the schedule is further behind than this, the missed slots are skipped, not burst out.
MAX_CATCH_UP_S = 1.0


@dataclass
class FleetReport:
    slots: int = 0
    sent: int = 0
    skipped_slots: int = 0
    elapsed_s: float = 0.0


def clock_ms() -> int:
    return time.time_ns() // 1_000_000


class ReadingSink(Protocol):
    """Where a fleet's readings go: the stream writer, or an MQTT publisher."""

    @property
    def buffered(self) -> int: ...
    def add_many(self, entries: Sequence[dict[str, str]]) -> None: ...
    def flush(self) -> list[str]: ...
    def close(self) -> None: ...


class FleetRunner:
    def __init__(
        self,
        bank: SensorBank,
        writer: ReadingSink,
        *,
        count_per_sensor: int | None = None,
        progress_every_s: float = 5.0,
    ) -> None:
        self.bank = bank
        self.writer = writer
        self.count_per_sensor = count_per_sensor
        self.progress_every_s = progress_every_s
        self.report = FleetReport()
        self._slot_rate = bank.rate_hz * len(bank)

    def run(self, stop: threading.Event) -> FleetReport:
        n = len(self.bank)
        total_slots = None if self.count_per_sensor is None else self.count_per_sensor * n
        start = time.monotonic()
        schedule_origin = start
        next_progress = start + self.progress_every_s
        window_start, window_slots_from, window_sent = start, 0, 0
        backoff = Backoff()
        log.info(
            "simulating %d sensor(s) at %g Hz each (%g readings/s)%s",
            n,
            self.bank.rate_hz,
            self._slot_rate,
            ""
            if total_slots is None
            else f", {self.count_per_sensor} readings each: about "
            f"{_duration(total_slots / n / self.bank.rate_hz)} (--rate sets the pace)",
        )
        while not stop.is_set() and (total_slots is None or self.report.slots < total_slots):
            now = time.monotonic()
            due = int((now - schedule_origin) * self._slot_rate) + 1
            behind = due - self.report.slots
            if behind > max(self._slot_rate * MAX_CATCH_UP_S, 1):
                skip = behind - 1
                self.report.skipped_slots += skip
                schedule_origin += skip / self._slot_rate
                log.warning("could not keep up: skipped %d readings' slots", skip)
                behind = 1
            if total_slots is not None:
                behind = min(behind, total_slots - self.report.slots)
            if behind > 0:
                entries = self._step(behind)
                if not self._write(entries, stop, backoff):
                    break
                self.report.sent += len(entries)
                window_sent += len(entries)
            if now >= next_progress:
                seconds = now - window_start
                achieved = (self.report.slots - window_slots_from) / seconds
                log.info(
                    "sent %d readings; %.0f readings/s over the last %.0fs "
                    "(schedule %.0f/s, target %g/s)",
                    self.report.sent,
                    window_sent / seconds,
                    seconds,
                    achieved,
                    self._slot_rate,
                )
                if achieved < 0.98 * self._slot_rate:
                    log.warning(
                        "falling behind: %.1f%% of the target rate",
                        100 * achieved / self._slot_rate,
                    )
                window_start, window_slots_from, window_sent = now, self.report.slots, 0
                next_progress = now + self.progress_every_s
            # Sleep to the next slot, but at least a tick: a big fleet is stepped in batches.
            wake = max(schedule_origin + self.report.slots / self._slot_rate, now + TICK_S)
            stop.wait(max(0.0, wake - time.monotonic()))
        held = self.bank.release_held()
        if held:
            self._write(held, stop=threading.Event(), backoff=backoff)
            self.report.sent += len(held)
        self._flush_until_done(backoff)
        self.report.elapsed_s = time.monotonic() - start
        log.info(
            "simulator done: %d readings sent in %.1fs", self.report.sent, self.report.elapsed_s
        )
        return self.report

    def _step(self, slots: int) -> list[dict[str, str]]:
        """The next `slots` slots in schedule order, stepped at most one round at a time so that
        a sensor due twice (a fast sensor in a slow tick) takes two readings, in order."""
        n = len(self.bank)
        entries: list[dict[str, str]] = []
        now_ms = clock_ms()
        while slots > 0:
            chunk = min(slots, n)
            first = self.report.slots
            idx = np.arange(first, first + chunk, dtype=np.intp) % n
            entries += self.bank.step(idx, now_ms)
            self.report.slots += chunk
            slots -= chunk
        return entries

    def _write(
        self, entries: list[dict[str, str]], stop: threading.Event, backoff: Backoff
    ) -> bool:
        # A tick's readings go out as the tick ends, as devices send what they read; the
        # writer still splits a large tick into batches.
        waits = write_waiting(self.writer, entries, stop, backoff, self._waiting)
        if waits:
            log.info("buffered readings written")
        return waits is not None

    def _waiting(self, failure: RedisUnavailable, waits: int) -> None:
        if waits == 1:
            log.warning("%s; %d readings buffered", why_writes_wait(failure), self.writer.buffered)

    def _flush_until_done(self, backoff: Backoff, attempts: int = 20) -> None:
        for _ in range(attempts):
            try:
                self.writer.close()
                return
            except RedisUnavailable as exc:
                log.warning("redis unavailable at shutdown (%s); retrying", exc)
                time.sleep(backoff.next_delay())
        log.error("gave up: %d readings could not be written", self.writer.buffered)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
