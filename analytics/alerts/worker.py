"""`telemetry alert-worker`: one worker of the `alerts` consumer group, with its silence sweep
and, when an MQTT broker or webhooks are configured, the fan-out of alert changes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import redis

from analytics.alerts.config import AlertConfig, load_config
from analytics.alerts.evaluator import GROUP, AlertEvaluator
from analytics.alerts.fanout import GROUP as FANOUT_GROUP
from analytics.alerts.fanout import AlertFanout, decode_change, targets_from
from analytics.alerts.labelview import LabelView
from analytics.alerts.listing import alert_sources
from analytics.alerts.rules import Rule
from analytics.alerts.silence import SilenceSweeper
from analytics.alerts.silences import SilenceView, silences_home
from analytics.worker import default_consumer_name
from ingest.contract.columns import ReadingColumns, decode_columns
from ingest.contract.entries import per_entry
from ingest.contract.replycolumns import decode_layouts
from ingest.groups import GroupRunner, RunnerStats
from ingest.groups.shardrun import run_each
from ingest.keys import AlertKeys, StreamKeys
from ingest.metrics import GROUP_WORKER, serve_metrics
from ingest.mqttclient import MqttBroker
from ingest.redis.connection import connect
from ingest.runtime import CommandLineError, stop_on_signals
from ingest.settings import Settings
from ingest.shards import Shard, shards

log = logging.getLogger(__name__)


def config_from(settings: Settings) -> AlertConfig:
    if settings.rules is None:
        raise CommandLineError("give the rules file with --rules FILE (or TELEMETRY_ALERT_RULES)")
    return load_config(settings.rules)


def alert_runner(
    client: redis.Redis, settings: Settings, rules: Sequence[Rule], consumer: str
) -> GroupRunner[ReadingColumns]:
    """One consumer of the alerts group."""
    evaluator = AlertEvaluator.configured(client, settings, rules)
    return GroupRunner(
        client, settings, GROUP, consumer, evaluator, decode_columns,
        reads_per_batch=settings.reads_per_batch, decode_replies=decode_layouts,
    )  # fmt: skip


def run_alert_worker(
    settings: Settings, consumer: str | None, *, drain: bool, serve: Sequence[Shard] | None = None
) -> RunnerStats:
    """Serve the shards in `serve` (default: every one), each with its silence sweep and
    fan-out, until stopped, or drained."""
    config = config_from(settings)
    rules = config.rules
    log.info("evaluating %d rules from %s", len(rules), settings.rules)
    serve_metrics(settings.metrics_port, settings.metrics_host, (*GROUP_WORKER, "telemetry_alert_"))
    name = consumer or default_consumer_name()
    stop = stop_on_signals()
    broker = MqttBroker.from_settings(settings)
    targets = targets_from(broker, settings.webhook_urls, config.notifications)
    if targets:
        log.info("alert changes go to %s", ", ".join(t.name for t in targets))
    silences = SilenceView(*silences_home(alert_sources(settings)))
    runners, background = [], []
    for shard in serve or shards(settings):
        each = shard.settings
        runners.append(alert_runner(connect(each), each, rules, name))
        keys, alert_keys = StreamKeys(each.stream), AlertKeys(each.alerts_stream)
        sweeper = SilenceSweeper(connect(each), keys, alert_keys, rules, each.alerts_maxlen)
        sweeping = threading.Thread(target=sweeper.run, args=(stop,),
                                    name=f"silence-{shard.index}", daemon=True)  # fmt: skip
        background.append(sweeping)
        if targets:
            labels = LabelView(connect(each), keys)
            fanout = AlertFanout(targets, silences, labels)
            fanout_runner = GroupRunner(
                connect(each), each, FANOUT_GROUP, name, fanout,
                per_entry(decode_change), stream=each.alerts_stream, start_id="$",
            )  # fmt: skip
            fanning = threading.Thread(target=fanout_runner.run, args=(stop,),
                                       name=f"fanout-{shard.index}", daemon=True)  # fmt: skip
            background.append(fanning)
    for thread in background:
        thread.start()
    try:
        return run_each(runners, stop, drain=drain)
    finally:
        stop.set()
        for thread in background:
            thread.join(timeout=5)
        for target in targets:
            target.close()
