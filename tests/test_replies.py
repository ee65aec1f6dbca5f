"""Reads parsed from the bytes of Redis's replies: the same entries and readings as hiredis and
`decode_columns` give, on real replies, or a clear refusal that sends the batch down that path."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ingest.contract.columns import ReadingColumns, _decode_at_once, decode_columns
from ingest.contract.replycolumns import decode_layouts
from ingest.groups import Batch, GroupRunner
from ingest.keys import StreamKeys
from ingest.redis.connection import connect, read_range
from ingest.redis.groupreads import TRIM_CHECK, read_until, stream_entries
from ingest.redis.replies import EntryLayout, parse_reads
from ingest.settings import Settings
from tests.helpers import drain
from tests.test_columns import entry_fields, reading_fields, rows_of

STREAM = "app:event"
ENDING = "replies-end"
# Values a field may hold that only the bytes tell apart: line ends inside a value, a header's
# look-alike, bytes that are not UTF-8, and decimals past the array parser's reach.
ODD_BYTES = [b"1\r\n2", b"\r\n", b"$3\r\nabc", b"*2", b"\n", b"\r", b"\xff\xfe", b"caf\xc3\xa9",
             b"12345678901234567", b"1e3", b"-0", b"0.1000000000000000055511151231257827",
             b"9007199254740993", b"00000000000000000001"]  # fmt: skip


def fields_as_bytes(flat: list[str]) -> list[bytes]:
    return [text.encode("utf-8", "surrogateescape") for text in flat]


@st.composite
def entries_with_odd_bytes(draw: st.DrawFn) -> list[list[bytes]]:
    entries = [fields_as_bytes(flat) for flat in draw(st.lists(entry_fields(), max_size=25))]
    for flat in entries:
        if len(flat) > 1 and draw(st.integers(0, 9)) == 0:
            flat[2 * draw(st.integers(0, len(flat) // 2 - 1)) + 1] = draw(
                st.sampled_from(ODD_BYTES)
            )
    return entries


def write(client: redis.Redis, entries: Sequence[Sequence[bytes]]) -> None:
    # Raw XADDs: a name may repeat within an entry.
    pipe: Any = client.pipeline(transaction=False)
    for flat in entries:
        pipe.execute_command("XADD", STREAM, "*", *flat)
    pipe.execute()


def read_replies(client: redis.Redis, group: str, reads: int, count: int) -> bytes:
    """The bytes of `reads` reads as a group runner sends them, and an ECHO after them."""
    keys = StreamKeys(STREAM)
    TRIM_CHECK.load(client)
    read = ("XREADGROUP", "GROUP", group, "c1", "COUNT", count, "STREAMS", STREAM, ">")
    transaction = [
        ("MULTI",),
        TRIM_CHECK.command([keys.stream, keys.lost], [group]),
        ("GET", keys.handovers(group)),
        read,
        ("EXEC",),
    ]
    connection: Any = client.connection_pool.get_connection()
    try:
        connection.send_packed_command(
            connection.pack_commands(transaction * reads + [("ECHO", ENDING)])
        )
        return read_until(connection, f"${len(ENDING)}\r\n{ENDING}\r\n".encode())
    finally:
        client.connection_pool.release(connection)


def assert_same_columns(got: ReadingColumns, expected: ReadingColumns) -> None:
    assert (got.ids, got.sensors, got.metric_names) == (
        expected.ids,
        expected.sensors,
        expected.metric_names,
    )
    for name in ("sensor", "ts_ms", "seq", "value_row", "value_metric", "value"):
        assert np.array_equal(getattr(got, name), getattr(expected, name)), name
    # -0.0 and 0.0 are equal as numbers; a value keeps its sign.
    assert np.array_equal(np.signbit(got.value), np.signbit(expected.value))


@pytest.fixture(params=[2, 3], ids=["RESP2", "RESP3"])
def protocol_client(request: pytest.FixtureRequest, settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        protocol=request.param,
        decode_responses=True,
        encoding_errors="surrogateescape",
    )


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entries=entries_with_odd_bytes(), reads=st.integers(1, 3), count=st.integers(1, 12))
def test_parsed_reads_hold_the_entries_hiredis_gives_and_decode_as_strs_do(
    protocol_client: redis.Redis, entries: list[list[bytes]], reads: int, count: int
) -> None:
    client = protocol_client
    client.flushall()
    write(client, entries)
    for group in ("bytes", "strs"):
        client.xgroup_create(STREAM, group, "0", mkstream=True, entries_read=0)
    parsed = parse_reads(read_replies(client, "bytes", reads, count), reads, STREAM)
    event("parsed" if parsed is not None else "left to hiredis")
    if parsed is None:
        # Only line ends inside a field make the parser give up on a reply of this shape.
        assert any(b"\r\n" in text for flat in entries for text in flat)
        return
    # The entries as the runner gets them from hiredis: flat fields, in order, repeats kept.
    client.response_callbacks.pop("XREADGROUP", None)
    read_by_hiredis = client.xreadgroup("strs", "c1", {STREAM: ">"}, count=reads * count)
    expected = stream_entries(read_by_hiredis)
    layouts = [reply.entries for reply in parsed]
    got = [entry for layout in layouts for entry in layout.entries()]
    assert [(entry_id, list(flat or ())) for entry_id, flat in expected] == got
    assert [reply.handovers for reply in parsed] == [0] * reads
    if not got:
        return
    assert EntryLayout.concatenated(layouts).ids() == [entry_id for entry_id, _ in got]
    # Decoded at once from the bytes exactly when strs decode at once, to the same columns.
    from_strs = _decode_at_once([i for i, _ in got], [flat for _, flat in got])
    from_bytes = decode_layouts(layouts)
    event("decoded from bytes" if from_bytes is not None else "decoded from strs")
    assert (from_bytes is None) == (from_strs is None)
    if from_bytes is not None and from_strs is not None:
        assert_same_columns(from_bytes, from_strs)


# A few names only: each new one is remembered by the decoders, up to a bound.
FLEET_METRICS = ["temp", "humidity", "co2", "x", "battery_voltage_of_the_main_cell_pack"]
DECIMAL_TEXTS = st.one_of(
    st.from_regex(r"[+-]?[0-9]{1,9}(\.[0-9]{0,9})?", fullmatch=True),
    st.from_regex(r"[+-]?\.[0-9]{1,15}", fullmatch=True),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True),
            st.none() | st.integers(0, 2**63 - 1),
            st.none() | st.integers(0, 2**63 - 1),
            st.dictionaries(
                st.sampled_from(FLEET_METRICS),
                DECIMAL_TEXTS,
                min_size=1,
                max_size=4,
            ),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_valid_readings_decode_from_bytes_as_from_strs(
    client: redis.Redis, made: list[tuple[str, int | None, int | None, dict[str, str]]]
) -> None:
    client.flushall()
    entries = [fields_as_bytes(reading_fields(*reading)) for reading in made]
    write(client, entries)
    client.xgroup_create(STREAM, "g", "0", entries_read=0)
    parsed = parse_reads(read_replies(client, "g", 1, len(entries)), 1, STREAM)
    assert parsed is not None
    got = parsed[0].entries.entries()
    from_bytes = decode_layouts([parsed[0].entries])
    from_strs = _decode_at_once([i for i, _ in got], [flat for _, flat in got])
    assert from_bytes is not None and from_strs is not None
    assert_same_columns(from_bytes, from_strs)


def test_a_value_that_forges_reply_lines_is_not_taken_for_entries(client: redis.Redis) -> None:
    """A value holding line ends and what look like an entry's header lines, so that the next
    entry's lines would pass for the forged entry's fields, is read as hiredis reads it."""
    # The next entry is 12 lines (`*2`, its ID, `*4` and four bulk strings): six forged fields.
    forged = b"1\r\n*2\r\n$3\r\n9-9\r\n*6"
    entries = [
        [b"sensor_id", b"s1", b"temp", forged],
        [b"sensor_id", b"s2", b"temp", b"1"],
        [b"sensor_id", b"s3", b"temp", b"2"],
    ]
    write(client, entries)
    client.xgroup_create(STREAM, "g", "0", entries_read=0)
    parsed = parse_reads(read_replies(client, "g", 1, 10), 1, STREAM)
    if parsed is not None:
        assert [flat for _, flat in parsed[0].entries.entries()] == [
            [text.decode() for text in flat] for flat in entries
        ]


def test_every_valid_reading_of_a_fleet_goes_the_fast_way(client: redis.Redis) -> None:
    rng = np.random.default_rng(3)
    entries = [
        [b"sensor_id", f"dev-{k % 300:05d}".encode(), b"ts", str(1_700_000_000_000 + k).encode(),
         b"seq", str(k).encode(), b"temp", f"{rng.normal(20, 5):.{k % 6}f}".encode(),
         b"battery_v", f"{rng.uniform(0, 4):.4f}".encode()]
        for k in range(3000)
    ]  # fmt: skip
    write(client, entries)
    client.xgroup_create(STREAM, "g", "0", entries_read=0)
    parsed = parse_reads(read_replies(client, "g", 2, 2000), 2, STREAM)
    assert parsed is not None and [len(reply.entries) for reply in parsed] == [2000, 1000]
    columns = decode_layouts([reply.entries for reply in parsed])
    assert columns is not None
    got = [entry for reply in parsed for entry in reply.entries.entries()]
    expected, _ = decode_columns([i for i, _ in got], [flat for _, flat in got])
    assert_same_columns(columns, expected)


class Recorder:
    acknowledges = False

    def __init__(self) -> None:
        self.readings: list[tuple[str, object]] = []

    def __call__(self, batch: Batch[ReadingColumns]) -> None:
        self.readings += zip(batch.ids, rows_of(batch.entries), strict=True)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entries=entries_with_odd_bytes())
def test_a_runner_hands_on_and_dead_letters_the_same_whichever_way_it_decodes(
    settings: Settings, entries: list[list[bytes]]
) -> None:
    client = connect(settings)
    client.flushall()
    write(client, entries)
    outcomes = []
    for group, decode_replies in (("bytes", decode_layouts), ("strs", None)):
        recorder = Recorder()
        runner = GroupRunner(
            client, settings.replace(read_batch=7), group, "c1", recorder, decode_columns,
            reads_per_batch=3, decode_replies=decode_replies,
        )  # fmt: skip
        drain(runner)
        dead = read_range(client, StreamKeys(STREAM).dead)
        reasons = [(f["id"], f["reason"]) for _, f in dead if f["group"] == group]
        outcomes.append((recorder.readings, reasons, runner.stats.processed))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][2] + len(outcomes[0][1]) == len(entries)


def test_a_stop_between_reads_leaves_nothing_unread(settings: Settings) -> None:
    """Reads sent ahead and parsed from bytes are processed before the runner returns."""
    client = connect(settings)
    write(client, [[b"sensor_id", b"s1", b"seq", str(k).encode(), b"temp", b"1.5"]
                   for k in range(5000)])  # fmt: skip
    recorder = Recorder()
    runner = GroupRunner(
        client, settings.replace(read_batch=100), "g", "c1", recorder, decode_columns,
        reads_per_batch=4, decode_replies=decode_layouts,
    )  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    while len(recorder.readings) < 1000:
        thread.join(0.01)
    stop.set()
    thread.join(10)
    held = len(recorder.readings)
    assert client.xpending(STREAM, "g")["pending"] == 0
    assert [entry_id for entry_id, _ in recorder.readings] == [
        entry_id for entry_id, _ in read_range(client, STREAM, count=held)
    ]
