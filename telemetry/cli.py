"""`telemetry SUBCOMMAND`: every job of the system behind one command.

The services (workers, the API, `up`) and the Parquet commands import their modules when they
run, so that a short command (a query, `status`, the health check compose runs every 15 s)
loads neither FastAPI, the workers nor pyarrow."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from importlib import metadata
from pathlib import Path

from analytics.archive import EXPORT_FORMATS
from analytics.archive import GROUP as ARCHIVE_GROUP
from analytics.fleet import RANKINGS
from ingest.runtime import CommandLineError, OneLineArgumentParser, configure_logging, run_command
from ingest.settings import (
    AGGREGATE_LIMITS,
    AGGREGATES,
    ALERT_WORKER,
    ALERTS,
    API,
    ARCHIVE,
    CONNECTION,
    MQTT,
    STREAM,
    STREAM_NAMING,
    WORKER,
    WRITING,
    Settings,
    add_settings_arguments,
)
from ingest.shards import Shard, parse_shard_list, shard_for, shards
from producers.backfillformats import FORMATS as IMPORT_FORMATS
from producers.backfillformats import PRECISIONS
from producers.cli import add_bridge_arguments, run_bridge
from simulator.cli import SIMULATE_SETTINGS, add_simulate_arguments, run_simulate
from telemetry.alertscmd import (
    acknowledge_command,
    alerts_listing,
    rules_check,
    silence_command,
    silences_listing,
    unsilence_command,
)
from telemetry.consume import run_consume
from telemetry.devicescmd import devices_forget, devices_listing, label_command
from telemetry.drainbar import drain_bar
from telemetry.healthcheck import healthcheck
from telemetry.inspect import (
    replay_dead_letters,
    show_dead_letters,
    show_status,
    show_storage,
)
from telemetry.querycmd import (
    fleet_query,
    forget_command,
    group_query,
    sensor_query,
    sensors_listing,
)
from telemetry.secrets import make_secrets
from telemetry.shardscmd import show_shards

SERVE_HELP = "serve only these shards, such as 0,2 or 0-3 (default: all)"
FORMAT_HELP = "table for people (default), json or csv for programs"

Action = Callable[[Settings, argparse.Namespace], int | None]


def _simulate(settings: Settings, args: argparse.Namespace) -> None:
    run_simulate(settings, args)


def _consume(settings: Settings, args: argparse.Namespace) -> None:
    run_consume(
        settings,
        args.stream_name,
        args.group,
        args.consumer,
        drain=args.drain,
        start_id=args.start_id,
    )


def _status(settings: Settings, args: argparse.Namespace) -> None:
    print(show_status(settings, args.format))


def _storage(settings: Settings, args: argparse.Namespace) -> None:
    print(show_storage(settings, args.format))


def _dead_letter_list(settings: Settings, args: argparse.Namespace) -> None:
    print(show_dead_letters(settings, args.count, args.format))


def _dead_letter_replay(settings: Settings, args: argparse.Namespace) -> int:
    report, complete = replay_dead_letters(settings, args.id, args.all, args.set, args.unset)
    print(report)
    return 0 if complete else 1


def _served(settings: Settings, args: argparse.Namespace) -> list[Shard] | None:
    """The shards `--shards` pins a worker to; None: every one."""
    if args.serve is None:
        return None
    try:
        chosen = parse_shard_list(args.serve, settings.shard_count)
    except ValueError as exc:
        raise CommandLineError(f"--shards: {exc}") from None
    return [shards(settings)[i] for i in chosen]


def _draining(
    settings: Settings, args: argparse.Namespace, group: str
) -> AbstractContextManager[None]:
    """A progress bar while a worker drains (`--drain`), nothing otherwise."""
    if not args.drain:
        return nullcontext()
    return drain_bar(group, _served(settings, args) or shards(settings))


def _aggregate(settings: Settings, args: argparse.Namespace) -> None:
    from analytics.aggregator import GROUP as AGGREGATES_GROUP  # noqa: PLC0415
    from analytics.worker import run_aggregator  # noqa: PLC0415

    with _draining(settings, args, AGGREGATES_GROUP):
        run_aggregator(settings, args.consumer, drain=args.drain, serve=_served(settings, args))


def _alert_worker(settings: Settings, args: argparse.Namespace) -> None:
    from analytics.alerts.evaluator import GROUP as ALERTS_GROUP  # noqa: PLC0415
    from analytics.alerts.worker import run_alert_worker  # noqa: PLC0415

    with _draining(settings, args, ALERTS_GROUP):
        run_alert_worker(settings, args.consumer, drain=args.drain,
                         serve=_served(settings, args))  # fmt: skip


def _archive(settings: Settings, args: argparse.Namespace) -> None:
    from analytics.archive.worker import run_archiver  # noqa: PLC0415

    with _draining(settings, args, ARCHIVE_GROUP):
        run_archiver(settings, drain=args.drain, serve=_served(settings, args))


def _export(settings: Settings, args: argparse.Namespace) -> None:
    from telemetry.archivecmd import export_command  # noqa: PLC0415 (pyarrow)

    print(export_command(settings, args.since, args.until, args.sensor, args.format,
                         args.output))  # fmt: skip


def _import(settings: Settings, args: argparse.Namespace) -> int:
    from telemetry.archivecmd import import_command  # noqa: PLC0415 (pyarrow)

    report, status = import_command(settings, args.file, args.format, args.sensor_tag,
                                    args.precision)  # fmt: skip
    print(report)
    return status


def _completion(settings: Settings, args: argparse.Namespace) -> None:
    import shtab  # noqa: PLC0415 (only this command needs it)

    print(shtab.complete(build_parser(), shell=args.shell))


def _healthcheck(settings: Settings, args: argparse.Namespace) -> int:
    report, status = healthcheck(settings)
    print(report)
    return status


def _devices_list(settings: Settings, args: argparse.Namespace) -> None:
    print(devices_listing(settings, args.where, args.format, args.tz))


def _devices_label(settings: Settings, args: argparse.Namespace) -> None:
    sensors = [item for item in args.items if "=" not in item]
    print(label_command(settings, sensors, [item for item in args.items if "=" in item]))


def _devices_forget(settings: Settings, args: argparse.Namespace) -> None:
    print(devices_forget(settings, args.sensor_ids))


def _shards(settings: Settings, args: argparse.Namespace) -> None:
    print(show_shards(settings, args.place))


def _shard_of(settings: Settings, args: argparse.Namespace) -> None:
    for sensor_id in args.sensor_ids:
        shard = shard_for(settings, sensor_id)
        print(f"{sensor_id}\t{shard.index}\t{shard.stream}")


def _alerts(settings: Settings, args: argparse.Namespace) -> None:
    print(alerts_listing(settings, args.open, args.sensor, args.since, args.format, args.tz))


def _acknowledge(settings: Settings, args: argparse.Namespace) -> None:
    print(acknowledge_command(settings, args.sensor_id, args.rule, args.by, args.comment))


def _silence(settings: Settings, args: argparse.Namespace) -> None:
    print(silence_command(settings, args.sensor, args.rule, args.where or "", args.duration,
                          args.by, args.comment))  # fmt: skip


def _silences(settings: Settings, args: argparse.Namespace) -> None:
    print(silences_listing(settings, args.format, args.tz))


def _unsilence(settings: Settings, args: argparse.Namespace) -> None:
    print(unsilence_command(settings, args.silence_id, args.by))


def _rules_check(settings: Settings, args: argparse.Namespace) -> None:
    print(rules_check(args.file))


def _query(settings: Settings, args: argparse.Namespace) -> None:
    if args.group_by:
        print(group_query(settings, args.metric, args.group_by, args.last or "15m", args.until,
                          args.format, args.where))  # fmt: skip
        return
    if args.fleet:
        print(fleet_query(settings, args.metric, args.top, args.by, args.last or "15m", args.until,
                          args.format, args.tz, args.where))  # fmt: skip
        return
    if args.sensor_id is None:
        raise CommandLineError("give a SENSOR or --fleet")
    print(sensor_query(settings, args.sensor_id, args.metric, args.tier, args.since, args.until,
                       args.last, args.format, args.tz))  # fmt: skip


def _sensors(settings: Settings, args: argparse.Namespace) -> None:
    print(sensors_listing(settings, args.format, args.tz))


def _forget_sensors(settings: Settings, args: argparse.Namespace) -> None:
    print(forget_command(settings, args.sensor_ids, args.idle_for))


def _api(settings: Settings, args: argparse.Namespace) -> None:
    from telemetry.web.app import serve  # noqa: PLC0415

    serve(settings, insecure=args.insecure)


def _secrets(settings: Settings, args: argparse.Namespace) -> None:
    made = make_secrets(args.folder, hosts=args.host, devices=args.device,
                        stream=settings.stream, alerts_stream=settings.alerts_stream)  # fmt: skip
    for path in made:
        print(f"made {path}")
    print(f"{len(made)} new; everything else in {args.folder} was kept")


def _bridge(settings: Settings, args: argparse.Namespace) -> None:
    run_bridge(settings, args)


def _up(settings: Settings, args: argparse.Namespace) -> int:
    from telemetry.up import run_up  # noqa: PLC0415

    if args.shards is not None:
        settings = settings.replace(shard_count=args.shards)
    return run_up(settings, os.environ, args.fleet, args.rate)


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog="telemetry", description="Sensor telemetry on Redis Streams."
    )
    parser.add_argument(
        "--version", action="version", version=f"telemetry {metadata.version('telemetry')}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, action: Action, help: str, settings: Sequence[str] | None,
        defaults: Mapping[str, str] | None = None,
    ) -> argparse.ArgumentParser:  # fmt: skip
        """A subcommand offering flags for `settings` (None: all of them)."""
        sub = commands.add_parser(name, help=help, description=help)
        assert isinstance(sub, OneLineArgumentParser)
        add_settings_arguments(sub, settings, defaults)
        sub.set_defaults(action=action)
        return sub

    up = command("up", _up, "run the whole pipeline here until Ctrl-C", None, {
        "redis_url": "a private redis-server this command starts, its data kept between runs",
        "mqtt_url": "a private mosquitto this command starts",
        "archive_dir": "the archive folder beside the private servers' data",
    })  # fmt: skip
    up.add_argument("--fleet", type=int, default=200, help="simulated sensors (default 200)")
    up.add_argument("--rate", type=float, default=1.0, help="readings/s per sensor (default 1)")
    up.add_argument("--shards", type=int, help="spread the readings over N streams (default 1)")

    add_simulate_arguments(
        command("simulate", _simulate, "append simulated sensor readings", SIMULATE_SETTINGS)
    )

    consume = command(
        "consume",
        _consume,
        "read a stream with a consumer group, print JSON lines",
        [*CONNECTION, *STREAM, *WORKER],
    )
    consume.add_argument("stream_name", metavar="STREAM", help="the stream to read")
    consume.add_argument("group", metavar="GROUP", help="the consumer group (made if missing)")
    consume.add_argument("consumer", metavar="CONSUMER", help="this reader's name in the group")
    consume.add_argument("--drain", action="store_true", help="exit when nothing is left")
    consume.add_argument(
        "--start-id", default="0", help="where a new group starts: 0 (all) or $ (new only)"
    )

    aggregate = command(
        "aggregate",
        _aggregate,
        "run a worker of the aggregates group",
        [*CONNECTION, *STREAM, *WORKER, *AGGREGATES, *AGGREGATE_LIMITS],
    )
    aggregate.add_argument("--consumer", help="consumer name (default: host-pid)")
    aggregate.add_argument("--drain", action="store_true", help="exit when nothing is left")
    aggregate.add_argument("--shards", dest="serve", metavar="LIST", help=SERVE_HELP)

    alerting = command(
        "alert-worker",
        _alert_worker,
        "run a worker of the alerts group (needs --rules FILE)",
        [*CONNECTION, *STREAM, *WORKER, *ALERT_WORKER, *MQTT],
    )
    alerting.add_argument("--consumer", help="consumer name (default: host-pid)")
    alerting.add_argument("--drain", action="store_true", help="exit when nothing is left")
    alerting.add_argument("--shards", dest="serve", metavar="LIST", help=SERVE_HELP)

    archiving = command(
        "archive",
        _archive,
        "run the archiver: raw readings to Parquet files a day apart (one per stream at a time)",
        [*CONNECTION, *STREAM, *WORKER, *ARCHIVE],
    )
    archiving.add_argument("--drain", action="store_true", help="exit when nothing is left")
    archiving.add_argument("--shards", dest="serve", metavar="LIST", help=SERVE_HELP)

    exporting = command(
        "export",
        _export,
        "raw readings between two times, from the archive and the stream, to a file",
        [*CONNECTION, *STREAM_NAMING, "archive_dir"],
    )
    exporting.add_argument("--since", required=True,
                           help="ISO 8601, epoch ms, or a time ago such as 30d")  # fmt: skip
    exporting.add_argument("--until", default="now", help="ISO 8601, epoch ms, a time ago, now")
    exporting.add_argument("--sensor", default="*", metavar="GLOB", help="sensor id glob")
    exporting.add_argument("--format", choices=EXPORT_FORMATS, default="parquet",
                           help="parquet and csv: a row per reading and metric; jsonl: a "
                           "reading per line (default parquet)")  # fmt: skip
    exporting.add_argument("--output", "-o", type=Path,
                           help="the file to write (default readings.FORMAT)")  # fmt: skip

    importing = command(
        "import",
        _import,
        "write the readings of a file to the stream, at the pace the groups take them",
        [*CONNECTION, *STREAM, *WRITING],
    )
    importing.add_argument("file", type=Path, metavar="FILE", help="the file to import")
    importing.add_argument(
        "--format", choices=IMPORT_FORMATS,
        help="default: from the file's suffix (.csv .jsonl .parquet .lp)",
    )  # fmt: skip
    importing.add_argument(
        "--sensor-tag", default="sensor_id",
        help="Influx: the tag naming the sensor (default sensor_id)",
    )  # fmt: skip
    importing.add_argument(
        "--precision", choices=list(PRECISIONS), default="ns",
        help="Influx: the timestamps' unit (default ns)",
    )  # fmt: skip

    completing = command(
        "completion",
        _completion,
        'print the shell completion script: eval "$(telemetry completion bash)" in ~/.bashrc',
        [],
    )
    completing.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="your shell")

    command(
        "healthcheck",
        _healthcheck,
        "exit 0 while this container's service answers on its metrics or API port",
        ["metrics_port", "api_port"],
    )

    shard_of = command(
        "shard-of",
        _shard_of,
        "the shard and stream each sensor's readings go to (for hand-written producers)",
        [*STREAM_NAMING, "redis_cluster"],
    )
    shard_of.add_argument("sensor_ids", nargs="+", metavar="SENSOR", help="sensor ids")

    placing = command(
        "shards",
        _shards,
        "each shard's stream, slot and master; --place spreads them over a cluster's masters",
        [*CONNECTION, *STREAM_NAMING],
    )
    placing.add_argument(
        "--place", action="store_true",
        help="move each empty shard's slot so shard i is on master i mod the masters",
    )  # fmt: skip

    alert_list = command(
        "alerts",
        _alerts,
        "list open alerts or recent alert changes",
        [*CONNECTION, *STREAM_NAMING, *ALERTS],
    )
    alert_list.add_argument("--open", action="store_true", help="only alerts open now")
    alert_list.add_argument("--sensor", default="*", metavar="GLOB", help="sensor id glob")
    alert_list.add_argument("--since", help="changes since: ISO 8601 or a time ago such as 1h")
    alert_list.add_argument(
        "--format", choices=["table", "json"], default="table", help=FORMAT_HELP
    )
    alert_list.add_argument("--tz", help="show times in this zone (default UTC)")
    alert_actions = alert_list.add_subparsers(dest="alerts_command", metavar="ACTION")
    alert_settings = [*CONNECTION, *STREAM_NAMING, *ALERTS]
    by_help = "who does it, as the alerts stream records it (default: $USER)"

    def alert_action(name: str, action: Action, help: str) -> argparse.ArgumentParser:
        sub = alert_actions.add_parser(name, help=help, description=help)
        add_settings_arguments(sub, alert_settings)
        sub.set_defaults(action=action)
        return sub

    acking = alert_action("ack", _acknowledge, "acknowledge an open alert: someone is on it")
    acking.add_argument("sensor_id", metavar="SENSOR", help="the sensor of the open alert")
    acking.add_argument("rule", metavar="RULE", help="the rule that raised it")
    acking.add_argument("--by", help=by_help)
    acking.add_argument("--comment", default="", help="a note kept with the acknowledgement")
    silencing = alert_action(
        "silence", _silence,
        "hold back notifications of some sensors, labels or rules for a while (maintenance)",
    )  # fmt: skip
    silencing.add_argument("--sensor", default="*", metavar="GLOB", help="sensor id glob")
    silencing.add_argument("--rule", default="*", metavar="GLOB", help="rule name glob")
    silencing.add_argument("--where", metavar="SELECTOR", help="labels, such as site=gh-3")
    silencing.add_argument("--for", dest="duration", required=True, metavar="DURATION",
                           help="how long, such as 2h or 30m")  # fmt: skip
    silencing.add_argument("--by", help=by_help)
    silencing.add_argument("--comment", default="", help="why, such as the ticket")
    listing_silences = alert_action("silences", _silences, "the silences in force")
    listing_silences.add_argument(
        "--format", choices=["table", "json"], default="table", help=FORMAT_HELP
    )
    listing_silences.add_argument("--tz", help="show times in this zone (default UTC)")
    ending = alert_action("unsilence", _unsilence, "end a silence now")
    ending.add_argument("silence_id", metavar="ID", help="as `alerts silences` lists it")
    ending.add_argument("--by", help=by_help)

    rules = commands.add_parser("rules", help="alert rules files", description="alert rules files")
    rules_actions = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    checking = rules_actions.add_parser(
        "check",
        help="check a rules file (rules and notify targets) without starting a worker",
        description="check a rules file (rules and notify targets) without starting a worker",
    )
    add_settings_arguments(checking, [])
    checking.set_defaults(action=_rules_check)
    checking.add_argument("file", metavar="FILE", help="the rules file (TOML)")

    question = command(
        "query",
        _query,
        "aggregates of a sensor, or the fleet's top sensors",
        [*CONNECTION, *STREAM_NAMING, *AGGREGATES],
    )
    question.add_argument("sensor_id", metavar="SENSOR", nargs="?",
                          help="the sensor (or --fleet for the whole fleet)")  # fmt: skip
    question.add_argument("--metric", help="one metric (default: all of the sensor's)")
    question.add_argument("--tier", help="bucket tier such as 10s, 1m, 1h (default: finest fit)")
    question.add_argument("--since", default="1h", help="ISO 8601 or a time ago (default 1h)")
    question.add_argument("--until", default="now", help="ISO 8601, a time ago, or now")
    question.add_argument("--last", help="one merged window over the last 5m, 1h, ...")
    question.add_argument("--fleet", action="store_true", help="rank sensors instead")
    question.add_argument("--top", type=int, default=10, help="with --fleet: how many")
    question.add_argument("--by", choices=RANKINGS, default="mean", help="with --fleet: rank by")
    question.add_argument(
        "--group-by", metavar="LABEL",
        help="with --fleet: count, mean, min, max and percentiles per value of a label "
        "(percentiles merged from the histograms)",
    )  # fmt: skip
    question.add_argument(
        "--where", metavar="SELECTOR",
        help="with --fleet: only sensors whose labels match, such as site=gh-*,kind!=test",
    )  # fmt: skip
    question.add_argument(
        "--format", choices=["table", "json", "csv"], default="table", help=FORMAT_HELP
    )
    question.add_argument("--tz", help="show times in this zone, such as Europe/Paris (UTC)")

    listing_sensors = command(
        "sensors",
        _sensors,
        "every known sensor, its metrics, last seen",
        [*CONNECTION, *STREAM_NAMING, *AGGREGATES],
    )
    listing_sensors.add_argument(
        "--format", choices=["table", "json", "csv"], default="table", help=FORMAT_HELP
    )
    listing_sensors.add_argument("--tz", help="show times in this zone (default UTC)")
    forgetting = listing_sensors.add_subparsers(
        dest="sensors_command", metavar="ACTION"
    ).add_parser(
        "forget",
        help="remove sensors and everything kept about them (see README, Operations)",
        description="remove sensors and everything kept about them (see README, Operations)",
    )
    add_settings_arguments(forgetting, [*CONNECTION, *STREAM_NAMING, "alerts_stream", *AGGREGATES])
    forgetting.set_defaults(action=_forget_sensors)
    forgetting.add_argument("sensor_ids", nargs="*", metavar="SENSOR_ID",
                            help="the sensors to forget")  # fmt: skip
    forgetting.add_argument(
        "--idle-for", metavar="DURATION",
        help="also every sensor whose newest reading is older than this (90d, 12h)",
    )  # fmt: skip

    api = command(
        "api",
        _api,
        "serve the HTTP API (OpenAPI docs at /docs)",
        [*CONNECTION, *STREAM, *WRITING, *AGGREGATES, *ALERTS, *API],
    )
    api.add_argument(
        "--insecure", action="store_true",
        help="serve on a non-loopback address with no token (anyone who reaches it may write)",
    )  # fmt: skip

    add_bridge_arguments(
        command(
            "bridge",
            _bridge,
            "write MQTT devices' readings to the stream",
            [*CONNECTION, *STREAM, *WRITING, *MQTT, "metrics_port", "metrics_host"],
        )
    )

    making = command(
        "secrets",
        _secrets,
        "make a deployment's credentials: Redis users per role, broker users, TLS, API token",
        ["stream", "alerts_stream"],
    )
    making.add_argument("folder", type=Path, help="where to keep them (compose: deploy/secrets)")
    making.add_argument(
        "--host",
        action="append",
        default=[],
        help="a name or address devices reach the broker by (repeatable)",
    )
    making.add_argument("--device", action="append", default=[],
                        help="make a TLS certificate for this sensor id (repeatable)")  # fmt: skip

    status = command(
        "status",
        _status,
        "stream length, groups, lag, pending, trimming risk",
        [*CONNECTION, *STREAM, "trim_warn_ratio"],
    )
    status.add_argument("--format", choices=["table", "json"], default="table", help=FORMAT_HELP)

    storage = command(
        "storage",
        _storage,
        "what the aggregates cost per bucket and tier, and will cost at full retention",
        [*CONNECTION, *STREAM_NAMING, *AGGREGATES],
    )
    storage.add_argument("--format", choices=["table", "json"], default="table", help=FORMAT_HELP)

    devices = commands.add_parser(
        "devices",
        help="the device registry: labels, units, online state, dropped fields",
        description="the device registry: labels, units, online state, dropped fields",
    )
    device_commands = devices.add_subparsers(dest="devices_command", required=True,
                                             metavar="ACTION")  # fmt: skip
    registry_settings = [*CONNECTION, *STREAM_NAMING, "max_sensors"]
    device_list = device_commands.add_parser(
        "list",
        help="every device, or those --where picks",
        description="every device, or those --where picks",
    )
    add_settings_arguments(device_list, registry_settings)
    device_list.set_defaults(action=_devices_list)
    device_list.add_argument("--where", metavar="SELECTOR", help="such as site=gh-*,kind!=test")
    device_list.add_argument(
        "--format", choices=["table", "json", "csv"], default="table", help=FORMAT_HELP
    )
    device_list.add_argument("--tz", help="show times in this zone (default UTC)")
    labelling = device_commands.add_parser(
        "label",
        help="set or remove labels of sensors",
        description="set or remove labels of sensors",
    )
    add_settings_arguments(labelling, registry_settings)
    labelling.set_defaults(action=_devices_label)
    labelling.add_argument(
        "items", nargs="+", metavar="SENSOR_ID|NAME=VALUE",
        help="sensors, then labels to set (site=gh-3) or remove (site=)",
    )  # fmt: skip
    forget_help = "remove sensors from the registry (their aggregates stay; see sensors forget)"
    device_forget = device_commands.add_parser("forget", help=forget_help,
                                               description=forget_help)  # fmt: skip
    add_settings_arguments(device_forget, registry_settings)
    device_forget.set_defaults(action=_devices_forget)
    device_forget.add_argument("sensor_ids", nargs="+", metavar="SENSOR_ID",
                               help="the sensors to remove")  # fmt: skip

    dead = commands.add_parser(
        "dead-letter",
        help="inspect and replay dead-lettered entries",
        description="inspect and replay dead-lettered entries",
    )
    dead_commands = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    listing = dead_commands.add_parser(
        "list",
        help="show dead letters with their reasons",
        description="show dead letters with their reasons",
    )
    add_settings_arguments(listing, [*CONNECTION, *STREAM])
    listing.set_defaults(action=_dead_letter_list)
    listing.add_argument("--count", type=int, default=100, help="newest first, at most this many")
    listing.add_argument("--format", choices=["table", "json"], default="table", help=FORMAT_HELP)
    again = dead_commands.add_parser(
        "replay",
        help="put dead letters back on the stream",
        description="put dead letters back on the stream",
    )
    add_settings_arguments(again, [*CONNECTION, *STREAM])
    again.set_defaults(action=_dead_letter_replay)
    again.add_argument("--id", action="append", default=[], help="dead-letter ID (repeatable)")
    again.add_argument("--all", action="store_true", help="replay every dead letter")
    again.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="fix a field before replaying (repeatable)",
    )
    again.add_argument(
        "--unset",
        action="append",
        default=[],
        metavar="FIELD",
        help="drop a field before replaying (repeatable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))

    def run() -> int | None:
        settings = Settings.load(os.environ, args)
        configure_logging(settings.log_level)
        result: int | None = args.action(settings, args)
        return result

    return run_command("telemetry", run)
