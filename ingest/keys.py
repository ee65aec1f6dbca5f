"""Every Redis key the system uses is named here and nowhere else.

All keys belonging to one stream share the stream's name as prefix, so a stream named with a
hash tag (`app:event:{0}`) keeps its dead letters, counters and metadata in the same cluster slot.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_STREAM = "app:event"
# Ledger fields with this prefix count entries a group's handler settled, each in exactly one
# way (aggregated, duplicate, too old, ...); `telemetry status` balances them against the stream.
SETTLED = "settled:"


@dataclass(frozen=True)
class StreamKeys:
    stream: str

    @property
    def dead(self) -> str:
        """Dead-letter stream: entries no group could process, with the reason."""
        return f"{self.stream}:dead"

    @property
    def archived(self) -> str:
        """The ID of the newest entry the archive group has committed to Parquet files."""
        return f"{self.stream}:archived"

    @property
    def archiver(self) -> str:
        """Lease held by the one archiver of this stream."""
        return f"{self.stream}:archiver"

    @property
    def lost(self) -> str:
        """Hash group -> entries trimmed away before that group processed them."""
        return f"{self.stream}:lost"

    @property
    def meta(self) -> str:
        """Hash of facts writers publish about the stream (its MAXLEN)."""
        return f"{self.stream}:meta"

    @property
    def dead_counts(self) -> str:
        """Hash group -> entries that group dead-lettered."""
        return f"{self.stream}:deadcount"

    def ledger(self, group: str) -> str:
        """Hash of a group's counts: `settled:*` outcomes, and facts such as sequence gaps."""
        return f"{self.stream}:ledger:{group}"

    def handovers(self, group: str) -> str:
        """Counter of a group's hand-overs: how many times its consumers took entries delivered
        to another, or re-read their own after a restart. A handler that writes atomically with
        its acknowledgement can tell from it, without checking each entry, that a batch it read
        is still all its own (see `groups.Batch.handovers`)."""
        return f"{self.stream}:handovers:{group}"

    @property
    def sensors(self) -> str:
        """Sorted set sensor_id -> last event time seen (ms)."""
        return f"{self.stream}:sensors"

    def sensor_metrics(self, sensor_id: str) -> str:
        """Set of the metric names a sensor has sent."""
        return f"{self.stream}:metrics:{sensor_id}"

    @property
    def devices(self) -> str:
        """Hash sensor_id -> JSON of what the inputs and people said about the device: labels,
        units, online, fields dropped (see `ingest.devices`)."""
        return f"{self.stream}:devices"

    @property
    def seq_high(self) -> str:
        """Hash sensor_id -> highest `seq` seen."""
        return f"{self.stream}:seqhigh"

    def seq_window(self, sensor_id: str) -> str:
        """Bitmap of the `seq` values seen recently, as a ring indexed by seq modulo its size."""
        return f"{self.stream}:seqwin:{sensor_id}"

    @property
    def sensor_index(self) -> str:
        """Hash sensor_id -> its number, 0, 1, 2... in the order the aggregates group met them;
        the number is a sensor's place in every fleet bucket."""
        return f"{self.stream}:sensorindex"

    @property
    def sensor_names(self) -> str:
        """List of sensor ids, each at its number in `sensor_index`."""
        return f"{self.stream}:sensornames"

    @property
    def metric_names(self) -> str:
        """Set of every metric name the aggregates group has met."""
        return f"{self.stream}:metricnames"

    @property
    def rollup_mark(self) -> str:
        """Hash with `bucket` and `sensor`: how far the finest tier has been rolled up into the
        coarse tiers (analytics/lua/rollup.lua says what the mark means)."""
        return f"{self.stream}:rollup"

    def fleet_bucket(self, tier: str, metric: str, bucket_ms: int) -> str:
        """String holding one bucket of one metric for the whole fleet: each sensor's packed
        statistics (as in `aggregate_chunk`, without the histogram) at its number times their
        size; zeros where a sensor has no readings. A fleet question reads a few of these
        instead of a field per sensor and bucket. Dropped once the bucket's chunk is packed."""
        return f"{self.stream}:fleet:{tier}:{metric}:{bucket_ms}"

    def aggregate_chunk(self, tier: str, metric: str, chunk_ms: int) -> str:
        """Hash of one tier's buckets of one metric over one chunk of time, for every sensor:
        field `{sensor_id}|{bucket_ms}` -> the bucket's packed statistics and histogram. One
        hash per chunk lets a batch update thousands of buckets with a few commands. Once the
        chunk is packed, it holds only records written after (late readings)."""
        return f"{self.stream}:agg:{tier}:{metric}:{chunk_ms}"

    def aggregate_chunk_parts(self, key: str) -> tuple[str, str, int] | None:
        """The tier, metric and chunk start of an `aggregate_chunk` key; None for another."""
        prefix = f"{self.stream}:agg:"
        tier, _, rest = key.removeprefix(prefix).partition(":")
        metric, _, chunk = rest.rpartition(":")
        if not key.startswith(prefix) or not metric or not chunk.isdigit():
            return None
        return tier, metric, int(chunk)

    def packed_chunk(self, tier: str, metric: str, chunk_ms: int) -> str:
        """Hash sensor_id -> that sensor's buckets of a closed chunk (as in `aggregate_chunk`),
        packed together (analytics/packed.py)."""
        return f"{self.stream}:packed:{tier}:{metric}:{chunk_ms}"

    @property
    def packed_until(self) -> str:
        """Hash tier -> ms: the chunks of that tier ending by then are packed, or being packed."""
        return f"{self.stream}:packeduntil"

    @property
    def loose_chunks(self) -> str:
        """Set of `aggregate_chunk` keys written after their chunk was packed, to pack again."""
        return f"{self.stream}:loose"


DEFAULT_ALERTS_STREAM = "app:alerts"


@dataclass(frozen=True)
class AlertKeys:
    """The alerts group's output and its per-(sensor, rule) state, prefixed by the alerts stream."""

    stream: str = DEFAULT_ALERTS_STREAM

    @property
    def open(self) -> str:
        """Hash `{sensor_id}|{rule}` -> JSON of the change that raised the open alert."""
        return f"{self.stream}:open"

    @property
    def clock(self) -> str:
        """Hash sensor_id -> `ts_ms:seq` of the newest reading evaluated, so older ones are
        recognised as out of order and repeats as duplicates."""
        return f"{self.stream}:clock"

    @property
    def version(self) -> str:
        """Counter every settled batch of the alerts group increments, so a worker knows whether
        the state it holds is still Redis's."""
        return f"{self.stream}:version"

    @property
    def state(self) -> str:
        """Hash sensor_id -> the sensor's state under every rule that selects it, one binary
        value (absent: nothing kept yet)."""
        return f"{self.stream}:state"

    @property
    def silences(self) -> str:
        """Hash silence id -> JSON of a maintenance silence (analytics/alerts/silences.py)."""
        return f"{self.stream}:silences"

    def heard(self, rule: str) -> str:
        """Sorted set sensor_id -> when a silence rule last heard from it (stream time, ms);
        a sensor leaves it when its silence alert is raised and returns when it speaks."""
        return f"{self.stream}:heard:{rule}"
