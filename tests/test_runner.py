"""The consumer-group runner on a real Redis: garbage, poison entries, group lifecycle."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest
import redis

from ingest.contract.columns import ReadingColumns, decode_columns
from ingest.deadletter import list_dead_letters
from ingest.groups import Batch, GroupRunner, PreparingHandler
from ingest.groups.consumer import FORGET_CONSUMERS
from ingest.keys import StreamKeys
from ingest.settings import Settings
from tests.helpers import Recorder, add, drain, entries, pending_count, reading_runner

GARBAGE: list[tuple[dict[str, str], str]] = [
    ({"temp": "21.5"}, "sensor_id is missing"),
    ({"sensor_id": "s1", "temp": "warm"}, "must be a finite decimal number, got 'warm'"),
    ({"sensor_id": "s1", "temp": "NaN"}, "must be a finite decimal number, got 'NaN'"),
    ({"sensor_id": "s1", "temp": "inf"}, "must be a finite decimal number, got 'inf'"),
    ({"sensor_id": "s1", "x" * 10_240: "1"}, "(10240 chars) is not a valid metric name"),
    ({"sensor_id": "bad*id", "temp": "1"}, "sensor_id must be 1-128 chars"),
    ({"sensor_id": "{tag}", "temp": "1"}, "sensor_id must be 1-128 chars"),
    ({"sensor_id": "has space", "temp": "1"}, "sensor_id must be 1-128 chars"),
    ({"sensor_id": "sensör", "temp": "1"}, "sensor_id must be 1-128 chars"),
    ({"sensor_id": "s1"}, "entry has no metrics"),
]


def test_garbage_is_dead_lettered_with_reasons_and_the_rest_flows(
    client: redis.Redis, settings: Settings
) -> None:
    keys = StreamKeys(settings.stream)
    written_valid, expected_reasons = [], {}
    for i in range(300):
        written_valid.append(add(client, keys.stream, {"sensor_id": f"s{i % 7}", "temp": str(i)}))
        if i % 30 == 0:
            fields, reason = GARBAGE[i // 30]
            expected_reasons[add(client, keys.stream, fields)] = reason
    # Bytes that are not UTF-8 at all (the client writes surrogate escapes back as raw bytes),
    # and an entry made only of a field nobody reads.
    not_utf8 = add(client, keys.stream, {"sensor_id": "\udcff\udcfe", "temp": "1"})
    raw = redis.Redis.from_url(settings.redis_url)
    assert raw.xrange(keys.stream, min=not_utf8, max=not_utf8) == [
        (not_utf8.encode(), {b"sensor_id": b"\xff\xfe", b"temp": b"1"})
    ]
    expected_reasons[not_utf8] = "sensor_id must be 1-128 chars"
    expected_reasons[add(client, keys.stream, {"_meta": "x"})] = "sensor_id is missing"
    handler = Recorder()
    runner = reading_runner(client, settings, handler)
    drain(runner)

    letters = list_dead_letters(client, keys, 1000)
    assert sorted(handler.seen) == sorted(written_valid)
    assert {letter.entry_id for letter in letters} == set(expected_reasons)
    assert runner.stats.processed + runner.stats.dead_lettered == client.xlen(keys.stream)
    assert pending_count(client, keys.stream, "aggregates") == 0
    for letter in letters:
        assert letter.group == "aggregates" and letter.stream == keys.stream
        assert expected_reasons[letter.entry_id] in letter.reason
    # The original fields come back byte for byte, even the ones that were not UTF-8.
    undecodable = next(letter for letter in letters if letter.entry_id == not_utf8)
    assert undecodable.fields["sensor_id"].encode("utf-8", "surrogateescape") == b"\xff\xfe"
    raw_record = entries(client, keys.dead, count=1)[0][1]
    assert set(raw_record) == {
        "stream",
        "group",
        "id",
        "consumer",
        "deliveries",
        "reason",
        "fields",
    }
    assert isinstance(json.loads(raw_record["fields"]), dict)


def test_an_entry_the_handler_always_fails_on_is_dead_lettered_after_max_deliveries(
    client: redis.Redis, settings: Settings
) -> None:
    keys = StreamKeys(settings.stream)
    ids = [add(client, keys.stream, {"sensor_id": f"s{i}", "temp": "1"}) for i in range(50)]
    handler = Recorder(fail_if=lambda reading: reading.sensor_id == "s17")
    runner = reading_runner(client, settings, handler)
    drain(runner)

    [letter] = list_dead_letters(client, keys)
    assert letter.entry_id == ids[17]
    assert letter.deliveries == settings.max_deliveries + 1
    assert "more than max_deliveries=3" in letter.reason
    assert "ValueError: refusing this reading" in letter.reason
    assert sorted(handler.seen) == sorted(ids[:17] + ids[18:])
    assert pending_count(client, keys.stream, "aggregates") == 0


def test_an_existing_group_is_joined_and_a_deleted_stream_gets_its_group_back(
    client: redis.Redis, settings: Settings
) -> None:
    client.xgroup_create(settings.stream, "aggregates", "0", mkstream=True)
    first = add(client, settings.stream, {"sensor_id": "s1", "temp": "1"})
    handler = Recorder()
    runner = reading_runner(client, settings, handler)
    assert runner.ensure_group() is False
    drain(runner)
    client.delete(settings.stream)
    second = add(client, settings.stream, {"sensor_id": "s1", "temp": "2"})
    drain(runner)
    assert handler.seen == [first, second]
    assert runner.ensure_group() is False


def test_a_read_after_the_scripts_were_flushed_loses_and_repeats_nothing(
    client: redis.Redis, settings: Settings
) -> None:
    ids = [add(client, settings.stream, {"sensor_id": "s1", "temp": str(i)}) for i in range(25)]
    handler = Recorder(fail_if=lambda _: not client.script_flush())
    runner = reading_runner(client, settings.replace(read_batch=10, reads_per_batch=1), handler)
    drain(runner)
    # Each batch flushes the scripts. A read sent after a flush ran its MULTI without the trim
    # check and left what it read pending here, to be re-read. The next read is sent before a
    # batch is handled, so only the last one (entries 21 to 25) went out after a flush.
    assert handler.seen == ids
    assert runner.stats.recovered == 5
    assert pending_count(client, settings.stream, "aggregates") == 0


def test_own_pending_entries_are_re_read_first_after_a_restart(
    client: redis.Redis, settings: Settings
) -> None:
    ids = [add(client, settings.stream, {"sensor_id": "s1", "temp": str(i)}) for i in range(10)]
    reading_runner(client, settings, Recorder()).ensure_group()
    # An earlier run of consumer c1 read these and died before acknowledging.
    client.xreadgroup("aggregates", "c1", {settings.stream: ">"}, count=4)
    handler = Recorder()
    runner = reading_runner(client, settings.replace(claim_idle_ms=600_000), handler)
    drain(runner)
    assert handler.seen == ids
    assert runner.stats.recovered == 4


def test_idle_consumers_holding_nothing_are_forgotten_and_holders_kept(
    client: redis.Redis, settings: Settings
) -> None:
    add(client, settings.stream, {"sensor_id": "s1", "temp": "1"})
    add(client, settings.stream, {"sensor_id": "s1", "temp": "2"})
    reading_runner(client, settings, Recorder()).ensure_group()
    client.xreadgroup("aggregates", "holder", {settings.stream: ">"}, count=1)
    client.xgroup_createconsumer(settings.stream, "aggregates", "empty")
    time.sleep(0.05)
    removed = FORGET_CONSUMERS(client, [settings.stream], ["aggregates", 10, "me"])
    names = {c["name"] for c in client.xinfo_consumers(settings.stream, "aggregates")}
    assert removed == ["empty"]
    assert names == {"holder"}


class PreparingRecorder(PreparingHandler[ReadingColumns]):
    """A handler that prepares a batch apart from writing it, its writes acknowledging; the
    write fails for a batch holding `poison` always, and for one holding `flaky` once."""

    acknowledges = True

    def __init__(self, client: redis.Redis, poison: str, flaky: str) -> None:
        self.client = client
        self.poison, self.flaky = poison, flaky
        self.written: list[str] = []
        self.writer_threads: set[str] = set()
        self.flaky_failed = False

    def __call__(self, batch: Batch[ReadingColumns]) -> None:
        self.prepare(batch)()

    def prepare(self, batch: Batch[ReadingColumns]) -> Callable[[], None]:
        ids = list(batch.ids)

        def write() -> None:
            self.writer_threads.add(threading.current_thread().name)
            if self.poison in ids:
                raise ValueError("poison")
            if self.flaky in ids and not self.flaky_failed:
                self.flaky_failed = True
                raise ValueError("flaky")
            self.client.xack(batch.stream, batch.group, *ids)
            self.written.extend(ids)

        return write


def test_a_preparing_handler_writes_each_batch_once_while_the_next_is_prepared(
    client: redis.Redis, settings: Settings
) -> None:
    ids = [add(client, settings.stream, {"sensor_id": "s1", "temp": str(i)}) for i in range(3000)]
    handler = PreparingRecorder(client, poison=ids[1234], flaky=ids[2345])
    runner = GroupRunner(
        client, settings.replace(read_batch=100), "aggregates", "c1", handler, decode_columns
    )
    drain(runner)
    assert sorted(handler.written) == sorted(set(ids) - {ids[1234]})
    assert len(handler.written) == len(set(handler.written))
    assert runner.stats.processed == len(ids) - 1 and runner.stats.dead_lettered == 1
    assert handler.flaky_failed
    # A failed write is handled again at once: only the poison entry waited to be claimed.
    assert runner.stats.claimed <= settings.max_deliveries
    assert any(name.startswith("aggregates-writer") for name in handler.writer_threads)
    assert pending_count(client, settings.stream, "aggregates") == 0


class OverlapRecorder(PreparingHandler[ReadingColumns]):
    """A preparing handler whose write of a batch waits (a little) for the next batch's prepare
    to begin, and records whether it did: writes are apart from preparing only if the runner
    prepares the next batch while it writes."""

    acknowledges = True

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.prepared = 0
        self.written: list[str] = []
        self.overlapped: list[bool] = []

    def __call__(self, batch: Batch[ReadingColumns]) -> None:
        self.prepare(batch)()

    def prepare(self, batch: Batch[ReadingColumns]) -> Callable[[], None]:
        self.prepared += 1
        number, ids = self.prepared, list(batch.ids)

        def write() -> None:
            deadline = time.monotonic() + 0.2
            while self.prepared == number and time.monotonic() < deadline:
                time.sleep(0.001)
            self.overlapped.append(self.prepared > number)
            self.client.xack(batch.stream, batch.group, *ids)
            self.written.extend(ids)

        return write


def test_entries_arriving_while_a_batch_is_prepared_are_prepared_while_it_is_written(
    client: redis.Redis, settings: Settings
) -> None:
    handler = OverlapRecorder(client)
    # Batches of at most 500, so that 3000 entries make at least six however the reads fall.
    settings = settings.replace(read_batch=500, reads_per_batch=1)
    runner = GroupRunner(client, settings, "aggregates", "c1", handler, decode_columns)
    runner.ensure_group()
    stop = threading.Event()
    running = threading.Thread(target=runner.run, args=(stop,))
    running.start()
    try:
        # A live stream: most reads come back with some entries, not a full batch.
        ids = [
            add(client, settings.stream, {"sensor_id": "s1", "temp": str(i)}) for i in range(3000)
        ]
        deadline = time.monotonic() + 10
        while len(handler.written) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.01)
        # The last batch was written once the stream went quiet, without waiting for more.
        assert sorted(handler.written) == sorted(ids)
    finally:
        stop.set()
        running.join()
    assert len(handler.overlapped) >= 5
    assert sum(handler.overlapped) >= len(handler.overlapped) // 2
    assert pending_count(client, settings.stream, "aggregates") == 0


class HandoverRecorder(Recorder):
    """Remembers each batch's hand-over count."""

    def __init__(self) -> None:
        super().__init__()
        self.handovers: list[int | None] = []

    def __call__(self, batch: Batch[ReadingColumns]) -> None:
        super().__call__(batch)
        self.handovers.append(batch.handovers)


def test_claims_and_restarts_count_hand_overs_and_new_batches_carry_the_count(
    client: redis.Redis, settings: Settings
) -> None:
    settings = settings.replace(claim_idle_ms=50, read_batch=5, reads_per_batch=1)
    count = StreamKeys(settings.stream).handovers("aggregates")
    for i in range(10):
        add(client, settings.stream, {"sensor_id": "s1", "temp": str(i)})
    reading_runner(client, settings, Recorder()).ensure_group()
    # A consumer that died holding five entries: the next one claims them once idle.
    client.xreadgroup("aggregates", "gone", {settings.stream: ">"}, count=5)
    time.sleep(0.1)
    handler = HandoverRecorder()
    drain(reading_runner(client, settings, handler))
    # Starting counts one (it re-reads its own pending entries), the claim another; the claimed
    # batch is checked entry by entry, the one read as new carries the count at its read.
    assert client.get(count) == "2"
    assert handler.handovers == [None, 2]
    # Another start counts one more; with nothing idle no claim is sent, so none is counted.
    add(client, settings.stream, {"sensor_id": "s1", "temp": "10"})
    drain(reading_runner(client, settings, handler))
    assert client.get(count) == "3"
    assert handler.handovers == [None, 2, 3]


class SlowOnce(Recorder):
    """A handler whose one batch takes longer than the claim idle time."""

    def __init__(self, slow_batch: int, seconds: float) -> None:
        super().__init__()
        self.batches, self.slow_batch, self.seconds = 0, slow_batch, seconds

    def __call__(self, batch: Batch[ReadingColumns]) -> None:
        self.batches += 1
        if self.batches == self.slow_batch:
            time.sleep(self.seconds)
        super().__call__(batch)


def test_entries_read_ahead_during_a_slow_batch_are_not_claimed_back(
    client: redis.Redis, settings: Settings
) -> None:
    """While one batch takes longer than claim_idle_ms, the next reads' entries wait with this
    consumer; it processes them before it next claims, rather than taking them back as idle
    (every claim counts as a delivery, towards max_deliveries)."""
    ids = [add(client, settings.stream, {"sensor_id": "s1", "temp": str(i)}) for i in range(3000)]
    handler = SlowOnce(slow_batch=3, seconds=2 * settings.claim_idle_ms / 1000)
    runner = GroupRunner(
        client, settings.replace(read_batch=100), "aggregates", "c1", handler, decode_columns,
        reads_per_batch=2,
    )  # fmt: skip
    drain(runner)
    assert handler.seen == ids
    assert runner.stats.claimed == 0


def test_a_handler_that_misspells_a_part_it_takes_cannot_be_made() -> None:
    class Misspelt(PreparingHandler[ReadingColumns]):
        acknowledges = True

        def __call__(self, batch: Batch[ReadingColumns]) -> None: ...

        def prepared(self, batch: Batch[ReadingColumns]) -> Callable[[], None]:
            return lambda: None

    with pytest.raises(TypeError, match="prepare"):
        Misspelt()  # type: ignore[abstract]
