"""What every input does with what it receives, whatever its protocol.

An input (the MQTT bridge, `POST /readings`, any later one) turns each unit it receives (a
message, a request body) into `Received`: the readings that keep the stream contract and a dead
letter for each that does not. `StreamSink` writes them: readings with `XADD MAXLEN ~`, dead
letters to the dead-letter stream. The input acknowledges its source only once `write` has
returned; when Redis fails, nothing is acknowledged and the same units are written again later
(the sink keeps what it could not send, so each reading goes out once per attempt that fails
before Redis took it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import redis

from ingest.deadletter import dead_letter_record, queue_dead_letter
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


@dataclass
class Received:
    """One unit an input received: its readings, and at most one dead letter, for the readings
    it had refused."""

    entries: list[Fields] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


def received(
    stream: str,
    source: str,
    producer: str,
    parsed: Parsed,
    raw: Callable[[], Mapping[str, str | bytes]],
) -> Received:
    """What a parser made of one unit, as readings and a dead letter for what was refused: one
    per unit however many readings it refused, listing their reasons by index, naming the input
    (`source`, such as mqtt-bridge) and who received it, and carrying what `raw` gives (cut
    short, see `ingest.deadletter`); `raw` is called only for a unit with something refused."""
    refused = parsed.refused
    if not refused:
        return Received(parsed.readings)
    if len(refused) == 1 and parsed.items <= 1:
        reason = refused[0].reason
    else:
        listed = "; ".join(f"[{r.at}] {r.reason}" for r in refused[:LISTED_REFUSALS])
        more = (
            f"; and {len(refused) - LISTED_REFUSALS} more" if len(refused) > LISTED_REFUSALS else ""
        )
        reason = f"{len(refused)} of {parsed.items} readings refused: {listed}{more}"
    dead = dead_letter_record(stream, source, "", producer, 1, reason, raw())
    return Received(parsed.readings, [dead])


class StreamSink:
    """Writes what inputs received to the stream (or each reading to its sensor's shard) and
    the dead-letter stream (the first shard's: a refused unit may name no sensor, or many)."""

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

    def stage(self, units: Sequence[Received]) -> None:
        """Buffer the units' readings for the next `write`; a unit is staged once, however often
        its write is tried."""
        self.writer.add_many([entry for unit in units for entry in unit.entries])

    def write_now(self, unit: Received) -> list[str]:
        """Write one unit at once, in batches, beside any other caller's (each on its own
        connection); return its entries' IDs in order."""
        ids = self.writer.write(unit.entries)
        self._write_dead([unit])
        return ids

    def write(self, units: Sequence[Received]) -> list[str]:
        """Write what is staged, then the units' dead letters; return the new entry IDs.
        Raises RedisUnavailable or RedisCommandFailed when Redis failed: acknowledge nothing."""
        ids = self.writer.flush()
        self._write_dead(units)
        return ids

    def _write_dead(self, units: Sequence[Received]) -> None:
        dead = [record for unit in units for record in unit.dead]
        if dead:
            with redis_errors():
                pipe = self.client.pipeline(transaction=False)
                for record in dead:
                    queue_dead_letter(pipe, self.keys, self.dead_letter_maxlen, record)
                pipe.execute()
