"""`telemetry alert-worker`: one worker of the `alerts` consumer group, with its silence sweep
and, when an MQTT broker or webhooks are configured, the fan-out of alert changes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import redis

from analytics.alerts.evaluator import GROUP, AlertEvaluator
from analytics.alerts.fanout import GROUP as FANOUT_GROUP
from analytics.alerts.fanout import AlertFanout, decode_change, targets_from
from analytics.alerts.rules import Rule, load_rules
from analytics.alerts.silence import SilenceSweeper
from analytics.worker import default_consumer_name
from ingest.contract.columns import ReadingColumns, decode_columns
from ingest.contract.entries import per_entry
from ingest.contract.replycolumns import decode_layouts
from ingest.groups import GroupRunner, RunnerStats
from ingest.keys import AlertKeys, StreamKeys
from ingest.metrics import serve_metrics
from ingest.mqttclient import MqttBroker
from ingest.redis.connection import connect
from ingest.runtime import CommandLineError, stop_on_signals
from ingest.settings import Settings

log = logging.getLogger(__name__)


def rules_from(settings: Settings) -> list[Rule]:
    if settings.rules is None:
        raise CommandLineError("give the rules file with --rules FILE (or TELEMETRY_ALERT_RULES)")
    return load_rules(settings.rules)


def alert_runner(
    client: redis.Redis, settings: Settings, rules: Sequence[Rule], consumer: str
) -> GroupRunner[ReadingColumns]:
    """One consumer of the alerts group."""
    evaluator = AlertEvaluator.configured(client, settings, rules)
    return GroupRunner(
        client, settings, GROUP, consumer, evaluator, decode_columns,
        reads_per_batch=settings.reads_per_batch, decode_replies=decode_layouts,
    )  # fmt: skip


def run_alert_worker(settings: Settings, consumer: str | None, *, drain: bool) -> RunnerStats:
    rules = rules_from(settings)
    log.info("evaluating %d rules from %s", len(rules), settings.rules)
    serve_metrics(settings.metrics_port, settings.metrics_host)
    runner = alert_runner(connect(settings), settings, rules, consumer or default_consumer_name())
    keys, alert_keys = StreamKeys(settings.stream), AlertKeys(settings.alerts_stream)
    stop = stop_on_signals()
    sweeper = SilenceSweeper(connect(settings), keys, alert_keys, rules, settings.alerts_maxlen)
    background = [threading.Thread(target=sweeper.run, args=(stop,), name="silence", daemon=True)]
    fanout = AlertFanout(targets_from(MqttBroker.from_settings(settings), settings.webhook_urls))
    if fanout.targets:
        log.info("alert changes go to %s", ", ".join(t.name for t in fanout.targets))
        fanout_runner = GroupRunner(
            connect(settings), settings, FANOUT_GROUP, runner.consumer, fanout,
            per_entry(decode_change), stream=settings.alerts_stream, start_id="$",
        )  # fmt: skip
        background.append(
            threading.Thread(target=fanout_runner.run, args=(stop,), name="fanout", daemon=True)
        )
    for thread in background:
        thread.start()
    try:
        return runner.run(stop, drain=drain)
    finally:
        stop.set()
        for thread in background:
            thread.join(timeout=5)
        fanout.close()
