"""The extension points ARCHITECTURE.md names, each shown by adding a toy one."""

from __future__ import annotations

import collections
import functools
from typing import Any

import numpy as np
import pytest
import redis

from analytics.alerts.kinds import KINDS
from analytics.alerts.kinds.base import Floats, Ints, Judgement, Kind, Records, RuleTable
from analytics.alerts.rules import Rule
from ingest.contract.columns import ReadingColumns, decode_columns
from ingest.groups import Batch, GroupRunner
from ingest.groups.settlement import SETTLE_LIBRARY, Gate, SettlingArgs
from ingest.keys import StreamKeys
from ingest.redis.connection import read_range
from ingest.redis.writer import StreamWriter
from ingest.settings import Settings
from producers.payload import parse_posted
from producers.pipeline import StreamSink, received
from tests.alerting import changes, evaluate_all, write
from tests.helpers import drain


class ReadingsPerSensor:
    """A toy analysis: how many readings each sensor sent. The runner acknowledges a batch
    once this returns; an entry that breaks the contract never reaches it."""

    acknowledges = False

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def __call__(self, batch: Batch[ReadingColumns]) -> None:
        readings = batch.entries
        self.counts.update(readings.sensors[k] for k in readings.sensor.tolist())


def test_a_consumer_group_is_a_handler_and_a_group_name(
    client: redis.Redis, settings: Settings
) -> None:
    writer = StreamWriter(client, settings.stream, settings.maxlen)
    writer.write([{"sensor_id": f"s{i % 3}", "temp": str(i)} for i in range(3000)])
    writer.write([{"sensor_id": "s0", "temp": "not a number"}])
    handler = ReadingsPerSensor()
    drain(GroupRunner(client, settings, "per-sensor", "c1", handler, decode_columns))
    assert handler.counts == {"s0": 1000, "s1": 1000, "s2": 1000}
    # The bad reading went to the dead-letter stream with its reason; nothing is pending.
    dead = read_range(client, f"{settings.stream}:dead")
    assert len(dead) == 1 and "temp" in dead[0][1]["reason"]
    assert client.xpending(settings.stream, "per-sensor")["pending"] == 0


# A toy effectively-once analysis: readings per sensor counted in a Redis hash, settled with the
# batch by the library every settling script loads.
COUNT_AND_SETTLE = (
    SETTLE_LIBRARY
    + """
local settlement = read_settlement()
if settle_gate(settlement) ~= 1 then
  return 0
end
for i = settlement.next_arg, #ARGV do
  redis.call('HINCRBY', KEYS[4], ARGV[i], 1)
end
settle_finish(settlement)
return 1
"""
)


class ReadingsPerSensorInRedis:
    acknowledges = True

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client, self.keys = client, StreamKeys(settings.stream)
        self.calls: list[SettlingArgs] = []

    def __call__(self, batch: Batch[ReadingColumns]) -> None:
        args = SettlingArgs(self.keys, batch, Gate.OWNED, ["counts"], [("settled:counted", 1)])
        readings = batch.entries
        args.argv += [readings.sensors[k] for k in readings.sensor.tolist()]
        self.calls.append(args)
        self.client.eval(COUNT_AND_SETTLE, len(args.keys), *args.keys, *args.all_argv)


def test_a_consumer_group_settles_exactly_once_from_the_shared_library(
    client: redis.Redis, settings: Settings
) -> None:
    writer = StreamWriter(client, settings.stream, settings.maxlen)
    writer.write([{"sensor_id": f"s{i % 3}", "temp": str(i)} for i in range(3000)])
    handler = ReadingsPerSensorInRedis(client, settings)
    drain(GroupRunner(client, settings, "counted", "c1", handler, decode_columns))
    expected = {"s0": "1000", "s1": "1000", "s2": "1000"}
    assert client.hgetall("counts") == expected
    # Every call sent again, as a client does when a reply is lost: nothing changes.
    for args in handler.calls:
        assert client.eval(COUNT_AND_SETTLE, len(args.keys), *args.keys, *args.all_argv) == 0
    assert client.hgetall("counts") == expected
    ledger = client.hgetall(StreamKeys(settings.stream).ledger("counted"))
    assert int(ledger["settled:counted"]) == len(handler.calls)
    assert client.xpending(settings.stream, "counted")["pending"] == 0


class Band(Kind):
    """A toy alert kind: bad while a value is farther than `limit` from zero, either side."""

    name = "band"
    settings = frozenset({"limit"})

    def parse(self, table: RuleTable) -> dict[str, Any]:
        limit = table.number("limit")
        return {"level": limit, "clear": limit}

    def limit_text(self, rule: Rule) -> str:
        return f"|value| > {rule.level:g}"

    def judge(self, rule: Rule, records: Records, ts: Ints, values: Floats) -> Judgement:
        far = np.abs(values) > rule.level
        return Judgement(values, far, ~far, np.ones(len(ts), bool))


def test_an_alert_kind_is_a_module(
    client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(KINDS, "band", Band())
    temps = [0.0, 3.0, 6.0, 7.0, 2.0, -8.0, 0.0]
    readings = [{"sensor_id": "s1", "ts": str(1000 * i), "seq": str(i), "temp": str(t)}
                for i, t in enumerate(temps)]  # fmt: skip
    write(client, settings.stream, readings, first_ms=1)
    rules = 'name = "wide"\ntype = "band"\nmetric = "temp"\nlimit = 5.0\n'
    evaluate_all(client, settings, "[[rule]]\n" + rules)
    got = [(c["state"], int(c["ts"]), c["kind"]) for c in changes(client, settings.alerts_stream)]
    assert got == [
        ("raised", 2000, "band"),
        ("resolved", 4000, "band"),
        ("raised", 5000, "band"),
        ("resolved", 6000, "band"),
    ]
    assert changes(client, settings.alerts_stream)[0]["message"] == "temp |value| > 5 (got 6)"


def test_an_input_protocol_is_a_parser_a_sink_and_an_acknowledgement(
    client: redis.Redis, settings: Settings
) -> None:
    """A toy input: JSON lines, each acknowledged (here: remembered) once written."""
    lines = [b'{"sensor_id": "s1", "temp": 21.5}', b'{"sensor_id": "s1", "temp": "hot"}',
             b'[{"sensor_id": "s2", "temp": 19}, {"sensor_id": "s3", "rh": 0.4}]']  # fmt: skip
    sink = StreamSink(client, settings, batch_size=1000)
    acknowledged = []
    for number, line in enumerate(lines):
        unit = received(settings.stream, "lines", "toy", parse_posted(line),
                        functools.partial(dict, line=line.decode()))  # fmt: skip
        sink.write_now(unit)
        acknowledged.append(number)
    assert acknowledged == [0, 1, 2]
    assert [f["sensor_id"] for _, f in read_range(client, settings.stream)] == ["s1", "s2", "s3"]
    dead = read_range(client, f"{settings.stream}:dead")
    # "hot" is a label under lenient decoding, which leaves the second line no metric.
    assert [(d["group"], d["reason"][:20]) for _, d in dead] == [("lines", "entry has no metrics")]
