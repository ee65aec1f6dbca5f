"""Helpers for the alert tests: write readings with known IDs, run the group, read the changes."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

import redis

from analytics.alerts.evaluator import GROUP, AlertEvaluator
from analytics.alerts.rules import parse_rules
from analytics.alerts.silence import SilenceSweeper
from ingest.contract.columns import decode_columns
from ingest.groups import GroupRunner
from ingest.keys import AlertKeys, StreamKeys
from ingest.redis.connection import fields_arg, read_range
from ingest.settings import Settings
from tests.helpers import drain

# What two runs over the same readings must agree on: everything but wall-clock fields.
WALL_CLOCK_FIELDS = ("detected_ms",)


def write(
    client: redis.Redis, stream: str, readings: Iterable[Mapping[str, str]], *, first_ms: int
) -> list[str]:
    """XADD each reading with an explicit ID (`first_ms + i`-0), so two streams written from the
    same readings have the same IDs and their alert changes can be compared field by field."""
    ids = []
    pipe = client.pipeline(transaction=False)
    for i, fields in enumerate(readings):
        entry_id = f"{first_ms + i}-0"
        pipe.xadd(stream, fields_arg(fields), id=entry_id)
        ids.append(entry_id)
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()
    return ids


def evaluate_all(client: redis.Redis, settings: Settings, rules_text: str,
                 consumer: str = "w1") -> AlertEvaluator:  # fmt: skip
    """Run one in-process worker until the group has settled everything."""
    handler = AlertEvaluator.configured(client, settings, parse_rules(rules_text))
    drain(GroupRunner(client, settings, GROUP, consumer, handler, decode_columns))
    return handler


def changes(client: redis.Redis, alerts_stream: str) -> list[dict[str, str]]:
    return [dict(fields) for _, fields in read_range(client, alerts_stream)]


def comparable(records: Iterable[Mapping[str, str]]) -> list[tuple[tuple[str, str], ...]]:
    return sorted(
        tuple(sorted((k, v) for k, v in r.items() if k not in WALL_CLOCK_FIELDS)) for r in records
    )


def timeline(records: Iterable[Mapping[str, str]]) -> list[tuple[str, str, str, int]]:
    """(sensor, rule, state, event ts) in event-time order."""
    return sorted(
        ((r["sensor_id"], r["rule"], r["state"], int(r["ts"])) for r in records),
        key=lambda t: (t[0], t[1], t[3], t[2] == "raised"),
    )


class LiveWorker:
    """An in-process worker with its silence sweep, running in threads until `stop`."""

    def __init__(self, client: redis.Redis, settings: Settings, rules_text: str) -> None:
        rules = parse_rules(rules_text)
        self.stop_event = threading.Event()
        handler = AlertEvaluator.configured(client, settings, rules)
        runner = GroupRunner(client, settings, GROUP, "live", handler, decode_columns)
        sweeper = SilenceSweeper(
            redis.Redis.from_url(settings.redis_url, decode_responses=True),
            StreamKeys(settings.stream),
            AlertKeys(settings.alerts_stream),
            rules,
            settings.alerts_maxlen,
        )
        self.threads = [
            threading.Thread(target=runner.run, args=(self.stop_event,), daemon=True),
            threading.Thread(target=sweeper.run, args=(self.stop_event,), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=10)
