"""The coarse tiers, rolled up from the finest tier (lua/rollup.lua).

A batch merges a reading into the finest tier only; a coarse bucket gets each fine bucket it
holds once, a few seconds after that fine bucket ends, instead of one merge per reading (a
1-minute bucket of a 1 Hz sensor: six merges instead of sixty). A mark in Redis says how far
the roll-up has come, so each fine bucket is rolled up once whichever worker takes the step,
and a late reading for a fine bucket already rolled up is merged into the coarse tiers by its
batch (lua/apply_batch.lua).

Every aggregator worker rolls up in a thread of its own; a drain rolls up all it aggregated
before it returns. Queries of a coarse tier add the fine buckets not rolled up yet (see
`stored`), so no answer waits for the roll-up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import redis

from analytics.stored import read_mark
from analytics.tiers import Tier
from ingest.errors import IngestError, redis_errors
from ingest.keys import StreamKeys
from ingest.scripts import LuaScript

log = logging.getLogger(__name__)

ROLLUP = LuaScript("analytics", "rollup.lua", library="merge.lua")
# Sensors per script call: about 20 µs each with three metrics and two coarse tiers, so that a
# step holds Redis for about 2 ms.
SENSORS_PER_STEP = 100
# Empty fine buckets one step may pass over.
SKIP_BUCKETS = 60
# A fine bucket is rolled up this long after it ends: readings still on their way then are
# merged into the coarse tiers by their own batch, which costs more.
GRACE_MS = 2_000
EVERY_S = 1.0
# Rest after each step, as a multiple of the step's time.
REST_PER_STEP_TIME = 1.0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Rollup:
    def __init__(
        self,
        client: redis.Redis,
        keys: StreamKeys,
        tiers: Sequence[Tier],
        sensors_per_step: int = SENSORS_PER_STEP,
    ) -> None:
        self.client = client
        self.keys = keys
        self.finest, self.coarse = tiers[0], tuple(tiers[1:])
        self.sensors_per_step = sensors_per_step

    def mark(self) -> tuple[int, int] | None:
        return read_mark(self.client, self.keys)

    def catch_up(self, until_ms: int) -> int:
        """Roll up every fine bucket that ends by `until_ms`; returns the steps taken."""
        steps = 0
        while self.step(until_ms):
            steps += 1
        return steps

    def step(self, until_ms: int) -> bool:
        """One step of the roll-up, unless the fine bucket at the mark ends after `until_ms`
        (or nothing was aggregated yet); True when a step was taken."""
        mark = self.mark()
        if not self.coarse or mark is None or mark[0] + self.finest.bucket_ms > until_ms:
            return False
        with redis_errors():
            metrics = sorted(map(_text, self.client.smembers(self.keys.metric_names)))
            keys, argv = self._arguments(mark, metrics, until_ms)
            ROLLUP(self.client, keys, argv)
        return True

    def _arguments(
        self, mark: tuple[int, int], metrics: list[str], until_ms: int
    ) -> tuple[list[str], list[int | str]]:
        bucket, sensor = mark
        fine = self.finest
        keys = [self.keys.rollup_mark, self.keys.sensor_names, self.keys.metric_names]
        expiry: list[int | str] = []
        for metric in metrics:
            keys += [
                self.keys.aggregate_chunk(fine.name, metric, fine.chunk_of(bucket)),
                self.keys.fleet_bucket(fine.name, metric, bucket),
            ]
            for tier in self.coarse:
                coarse_bucket = tier.bucket_of(bucket)
                chunk = tier.chunk_of(coarse_bucket)
                keys += [
                    self.keys.aggregate_chunk(tier.name, metric, chunk),
                    self.keys.fleet_bucket(tier.name, metric, coarse_bucket),
                ]
                expiry += [
                    tier.chunk_expires_at_ms(chunk),
                    tier.bucket_expires_at_ms(coarse_bucket),
                ]
        # Following buckets that have ended by `until_ms`, which the step may pass over.
        skippable = [
            bucket + k * fine.bucket_ms
            for k in range(1, SKIP_BUCKETS + 1)
            if bucket + (k + 1) * fine.bucket_ms <= until_ms
        ]
        for later in skippable:
            keys += [self.keys.fleet_bucket(fine.name, metric, later) for metric in metrics]
        argv: list[int | str] = [
            bucket, sensor, self.sensors_per_step, fine.bucket_ms, len(metrics), *metrics,
            len(self.coarse), *[tier.bucket_ms for tier in self.coarse], *expiry, len(skippable),
        ]  # fmt: skip
        return keys, argv

    def run(self, stop: threading.Event) -> None:
        """Roll up each fine bucket GRACE_MS after it ends, until `stop` is set."""
        while not stop.wait(EVERY_S):
            try:
                self._paced_catch_up(stop, time.time_ns() // 1_000_000 - GRACE_MS)
            except IngestError as exc:
                log.warning("roll-up paused: %s", exc)

    def _paced_catch_up(self, stop: threading.Event, until_ms: int) -> None:
        """catch_up, resting between steps: steps back to back would hold up the batches
        waiting for Redis meanwhile."""
        while not stop.is_set():
            began = time.perf_counter()
            if not self.step(until_ms):
                return
            stop.wait((time.perf_counter() - began) * REST_PER_STEP_TIME)
