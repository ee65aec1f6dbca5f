"""What every input does with what it receives, whatever its protocol.

An input (the MQTT bridge, `POST /readings`, any later one) turns each unit it receives (a
message, a request body) into `Received`: the readings that keep the stream contract and a dead
letter for each that does not. `StreamSink` writes them: readings with `XADD MAXLEN ~`, dead
letters to the dead-letter stream, and what the unit said about its devices (labels, units,
online) to the device registry. The input acknowledges its source only once `write` has
returned; when Redis fails, nothing is acknowledged and the same units are written again later
(the sink keeps what it could not send, so each reading goes out once per attempt that fails
before Redis took it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import redis

from ingest.deadletter import dead_letter_record, queue_dead_letter
from ingest.devices import DeviceNote, DeviceRegistry, NoteFilter, merge_notes
from ingest.keys import StreamKeys
from ingest.redis.connection import connect
from ingest.redis.errors import redis_errors
from ingest.redis.shardedwriter import open_writer
from ingest.settings import Settings
from ingest.shards import is_sharded, shards
from producers.payload import Parsed

Fields = dict[str, str]
# A dead letter's fields (see `ingest.deadletter.dead_letter_record`).
DeadLetter = dict[str, str]


# Reasons one dead letter lists, of the readings a unit had refused.
LISTED_REFUSALS = 20
# Reason given by a dead letter that samples fields dropped from readings that were written.
DROPPED_FIELDS = "fields dropped from readings that were written"


@dataclass
class Received:
    """One unit an input received: its readings, at most one dead letter (for the readings it
    had refused, or a sample of the fields it dropped), and what it said about its devices."""

    entries: list[Fields] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    notes: dict[str, DeviceNote] = field(default_factory=dict)
    dropped: int = 0


def received(
    stream: str,
    source: str,
    producer: str,
    parsed: Parsed,
    raw: Callable[[], Mapping[str, str | bytes]],
    *,
    sample_dropped: bool = False,
) -> Received:
    """What a parser made of one unit, as readings and a dead letter for what was refused: one
    per unit however many readings it refused, listing their reasons by index, naming the input
    (`source`, such as mqtt-bridge) and who received it, and carrying what `raw` gives (cut
    short, see `ingest.deadletter`); `raw` is called only for a unit with something refused, or
    with fields dropped when `sample_dropped` asks for a dead letter showing them (its reason
    starts with DROPPED_FIELDS; it cannot be replayed, as it holds the raw message)."""
    refused = parsed.refused
    unit = Received(parsed.readings, notes=parsed.notes, dropped=len(parsed.dropped))
    if not refused:
        if sample_dropped and parsed.dropped:
            listed = "; ".join(f"{d.sensor_id} {d.name}: {d.reason}"
                               for d in parsed.dropped[:LISTED_REFUSALS])  # fmt: skip
            reason = f"{DROPPED_FIELDS}: {listed}"
            unit.dead.append(dead_letter_record(stream, source, "", producer, 1, reason, raw()))
        return unit
    if len(refused) == 1 and parsed.items <= 1:
        reason = refused[0].reason
    else:
        listed = "; ".join(f"[{r.at}] {r.reason}" for r in refused[:LISTED_REFUSALS])
        more = (
            f"; and {len(refused) - LISTED_REFUSALS} more" if len(refused) > LISTED_REFUSALS else ""
        )
        reason = f"{len(refused)} of {parsed.items} readings refused: {listed}{more}"
    unit.dead.append(dead_letter_record(stream, source, "", producer, 1, reason, raw()))
    return unit


class StreamSink:
    """Writes what inputs received to the stream (or each reading to its sensor's shard), the
    dead-letter stream (the first shard's: a refused unit may name no sensor, or many), and the
    device registry (only what it does not have yet)."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        batch_size: int,
        durability: str | None = None,
    ) -> None:
        """`client` serves an unsharded stream; `durability`: checked against Redis before the
        first write (see StreamWriter)."""
        first = shards(settings)[0]
        self.client = connect(first.settings) if is_sharded(settings) else client
        self.keys = StreamKeys(first.stream)
        self.dead_letter_maxlen = settings.dead_letter_maxlen
        self.writer = open_writer(settings, batch_size=batch_size, durability=durability,
                                  client=client)  # fmt: skip
        self.registry = DeviceRegistry(settings, [client] if not is_sharded(settings) else None)
        self.note_filter = NoteFilter()

    def stage(self, units: Sequence[Received]) -> None:
        """Buffer the units' readings for the next `write`; a unit is staged once, however often
        its write is tried."""
        self.writer.add_many([entry for unit in units for entry in unit.entries])

    def write_now(self, unit: Received) -> list[str]:
        """Write one unit at once, in batches, beside any other caller's (each on its own
        connection); return its entries' IDs in order."""
        ids = self.writer.write(unit.entries)
        self._write_dead([unit])
        self._write_notes([unit])
        return ids

    def write(self, units: Sequence[Received]) -> list[str]:
        """Write what is staged, then the units' dead letters; return the new entry IDs.
        Raises RedisUnavailable or RedisCommandFailed when Redis failed: acknowledge nothing."""
        ids = self.writer.flush()
        self._write_dead(units)
        self._write_notes(units)
        return ids

    def _write_notes(self, units: Sequence[Received]) -> None:
        notes: dict[str, DeviceNote] = {}
        for unit in units:
            if unit.notes:
                merge_notes(notes, unit.notes)
        if not notes:
            return
        news = self.note_filter.news(notes)
        if news:
            # After a failure nothing is known to have been taken: everything goes again.
            try:
                self.registry.note(news)
            except Exception:
                self.note_filter.forget()
                raise
            self.note_filter.sent(news)

    def _write_dead(self, units: Sequence[Received]) -> None:
        dead = [record for unit in units for record in unit.dead]
        if dead:
            with redis_errors():
                pipe = self.client.pipeline(transaction=False)
                for record in dead:
                    queue_dead_letter(pipe, self.keys, self.dead_letter_maxlen, record)
                pipe.execute()
