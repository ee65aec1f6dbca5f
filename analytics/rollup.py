"""The coarse tiers, rolled up from the finest tier (lua/rollup.lua).

A batch merges a reading into the finest tier only; a coarse bucket gets each fine bucket it
holds once, a few seconds after that fine bucket ends, instead of one merge per reading (a
1-minute bucket of a 1 Hz sensor: six merges instead of sixty). When it is behind, a pass
takes several fine buckets and merges a sensor's records among themselves before they reach
the stored coarse record (a drain's backfill would otherwise cost more than merging each
batch into every tier). A mark in Redis (`stored.Mark`) says how far the roll-up has come, so
each fine bucket is rolled up once whichever worker takes the step, and a late reading for a
fine bucket already rolled up is merged into the coarse tiers by its batch
(lua/apply_batch.lua).

Every aggregator worker rolls up in a thread of its own, behind the newest reading aggregated
while a backlog waits; a drain rolls up all it aggregated before it returns. Queries of a
coarse tier add the fine buckets not rolled up yet (see `stored`), so no answer waits for the
roll-up.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence

import redis

from analytics.stored import Mark, RecordFormat, read_mark
from analytics.summary import SUMMARY
from analytics.tiers import Tier
from ingest.keys import StreamKeys
from ingest.redis.connection import as_text
from ingest.redis.errors import redis_errors
from ingest.redis.scripts import LuaScript

ROLLUP = LuaScript("analytics", "rollup.lua", library="merge.lua", prelude=SUMMARY.lua_source())
# Sensors per script call: about 20 µs each with three metrics and two coarse tiers, so that a
# step holds Redis for about 2 ms.
SENSORS_PER_STEP = 100
# Empty fine buckets one step may pass over.
SKIP_BUCKETS = 60
# Fine buckets one pass takes at most, when the roll-up is behind (after a drain or an outage).
BUCKETS_PER_PASS = 36
# A fine bucket is rolled up this long after it ends: readings still on their way then are
# merged into the coarse tiers by their own batch, which costs more.
GRACE_MS = 2_000
# Rest after each step, as a multiple of the step's time.
REST_PER_STEP_TIME = 1.0


class Rollup:
    def __init__(
        self,
        client: redis.Redis,
        keys: StreamKeys,
        tiers: Sequence[Tier],
        sensors_per_step: int = SENSORS_PER_STEP,
        *,
        record_format: RecordFormat | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        # Nothing is rolled up while the records stored are of another format.
        self.record_format = record_format or RecordFormat()
        self.finest, self.coarse = tiers[0], tuple(tiers[1:])
        self.sensors_per_step = sensors_per_step

    def mark(self) -> Mark | None:
        return read_mark(self.client, self.keys)

    def catch_up(self, until_ms: int) -> int:
        """Roll up every fine bucket that ends by `until_ms`; returns the steps taken."""
        return steps_until_done(lambda: self.step(until_ms))

    def step(self, until_ms: int) -> bool:
        """One step of the roll-up: of the pass under way, or of a new one over the fine
        buckets that end by `until_ms`; False when there is none (or nothing was aggregated
        yet)."""
        mark = self.mark()
        if not self.coarse or mark is None:
            return False
        fine = self.finest
        pass_end = mark.until
        if mark.sensor == 0:
            pass_end = min(
                mark.bucket + BUCKETS_PER_PASS * fine.bucket_ms,
                fine.chunk_of(mark.bucket) + fine.chunk_ms,
                until_ms - until_ms % fine.bucket_ms,
            )
        if pass_end <= mark.bucket:
            return False
        buckets = (pass_end - mark.bucket) // fine.bucket_ms
        # Fewer sensors a step when it takes many buckets, so that a step stays short.
        sensors = max(1, min(self.sensors_per_step, 4 * self.sensors_per_step // buckets))
        with redis_errors():
            metrics = sorted(map(as_text, self.client.smembers(self.keys.metric_names)))
            keys, argv = self._arguments(mark, pass_end, sensors, metrics, until_ms)
            ROLLUP(self.client, keys, argv)
        return True

    def _arguments(
        self, mark: Mark, pass_end: int, sensors: int, metrics: list[str], until_ms: int
    ) -> tuple[list[str], list[int | str]]:
        fine = self.finest
        keys = [self.keys.rollup_mark, self.keys.sensor_names, self.keys.metric_names]
        fine_buckets = range(mark.bucket, pass_end, fine.bucket_ms)
        coarse_buckets = [
            range(tier.bucket_of(mark.bucket), pass_end, tier.bucket_ms) for tier in self.coarse
        ]
        expiry: list[int | str] = []
        for metric in metrics:
            keys.append(self.keys.aggregate_chunk(fine.name, metric, fine.chunk_of(mark.bucket)))
            keys += [self.keys.fleet_bucket(fine.name, metric, b) for b in fine_buckets]
            for tier, starts in zip(self.coarse, coarse_buckets, strict=True):
                for start in starts:
                    chunk = tier.chunk_of(start)
                    keys += [
                        self.keys.aggregate_chunk(tier.name, metric, chunk),
                        self.keys.fleet_bucket(tier.name, metric, start),
                    ]
                    expiry += [tier.chunk_expires_at_ms(chunk), tier.bucket_expires_at_ms(start)]
        # Buckets from the pass's end on that have ended by `until_ms`: the step may pass over
        # those no metric has data in.
        skippable = [
            pass_end + k * fine.bucket_ms
            for k in range(SKIP_BUCKETS)
            if pass_end + (k + 1) * fine.bucket_ms <= until_ms
        ]
        for later in skippable:
            keys += [self.keys.fleet_bucket(fine.name, metric, later) for metric in metrics]
        touched = [
            (tier.bucket_ms, len(starts))
            for tier, starts in zip(self.coarse, coarse_buckets, strict=True)
        ]
        argv: list[int | str] = [
            mark.bucket, mark.sensor, pass_end, sensors, fine.bucket_ms, len(metrics), *metrics,
            len(self.coarse), *[n for pair in touched for n in pair], *expiry, len(skippable),
        ]  # fmt: skip
        return keys, argv

    def ready_until_ms(self, group: str) -> int:
        """Where the fine buckets ready to roll up end: GRACE_MS ago or, while `group` has
        entries unread, GRACE_MS before the newest reading aggregated.

        A backlog (a backfill, the catch-up after an outage) likely holds readings for the
        buckets after that one, and each reading for a bucket already rolled up is merged
        into every coarse tier by its batch, which costs more than the roll-up's merge."""
        now_ms = time.time_ns() // 1_000_000
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.xinfo_groups(self.keys.stream)
            pipe.zrevrange(self.keys.sensors, 0, 0, withscores=True)
            # No stream yet is no backlog.
            groups, newest = pipe.execute(raise_on_error=False)
        # Lag is None when Redis cannot tell it (entries deleted with XDEL): go by the clock.
        behind = isinstance(groups, list) and any(g["name"] == group and g["lag"] for g in groups)
        if behind and newest:
            now_ms = min(now_ms, int(newest[0][1]))
        return now_ms - GRACE_MS

    def paced_catch_up(self, stop: threading.Event, until_ms: int) -> None:
        """catch_up, resting between steps (see `paced`)."""
        paced(stop, lambda: self.step(until_ms))


def steps_until_done(step: Callable[[], bool]) -> int:
    """Take steps until one returns False; how many did something."""
    steps = 0
    while step():
        steps += 1
    return steps


def paced(stop: threading.Event, step: Callable[[], bool], budget_s: float = math.inf) -> None:
    """Take steps until one returns False, `stop` is set or `budget_s` has passed, resting
    after each as long as it took: steps back to back would hold up the batches waiting for
    Redis meanwhile."""
    deadline = time.monotonic() + budget_s
    while not stop.is_set() and time.monotonic() < deadline:
        began = time.perf_counter()
        if not step():
            return
        stop.wait((time.perf_counter() - began) * REST_PER_STEP_TIME)
