"""Silence rules fire on the clock, not on a reading: a periodic sweep, safe to run anywhere."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import redis

from analytics.alerts.commit import silence_template
from analytics.alerts.evaluator import GROUP
from analytics.alerts.kernels import keeps_state
from analytics.alerts.rules import Rule
from ingest.errors import RedisUnavailable
from ingest.keys import AlertKeys, StreamKeys
from ingest.redis.errors import redis_errors
from ingest.redis.scripts import LuaScript

log = logging.getLogger(__name__)

SWEEP_SILENCE = LuaScript("analytics.alerts", "sweep_silence.lua")
# Sweeps a second keep "silent for N s" within N + 1 s; every worker sweeps, and the script makes
# a second sweep of the same moment a no-op.
SWEEP_EVERY_S = 0.5


class SilenceSweeper:
    def __init__(self, client: redis.Redis, keys: StreamKeys, alert_keys: AlertKeys,
                 rules: Sequence[Rule], alerts_maxlen: int) -> None:  # fmt: skip
        self.client = client
        self.rules = [rule for rule in rules if not keeps_state(rule)]
        self.keys = [keys.stream, alert_keys.stream, alert_keys.open] + [
            alert_keys.heard(rule.name) for rule in self.rules
        ]
        self.argv: list[Any] = [GROUP, alerts_maxlen, len(self.rules)]
        for rule in self.rules:
            template = silence_template(rule)
            self.argv += [rule.after_ms, len(template)]
            for name, value in template.items():
                self.argv += [name, value]
        self.raised = 0

    def sweep(self) -> int:
        """Raise what is due now; the number raised."""
        if not self.rules:
            return 0
        with redis_errors():
            raised = int(SWEEP_SILENCE(self.client, self.keys, self.argv))
        if raised:
            self.raised += raised
            log.info("raised %d silence alerts", raised)
        return raised

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(SWEEP_EVERY_S):
            try:
                self.sweep()
            except RedisUnavailable as exc:
                log.debug("silence sweep skipped: %s", exc)
