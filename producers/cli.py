"""`telemetry bridge`: flags and the run."""

from __future__ import annotations

import argparse
import socket

from ingest.errors import SettingsError
from ingest.metrics import WRITER, serve_metrics
from ingest.mqttclient import MqttBroker
from ingest.runtime import CommandLineError, stop_on_signals
from ingest.settings import Settings
from producers.bridge import Bridge, BridgeCounts, BridgeOptions
from producers.payload import DECODINGS, DEFAULT_TOPICS, LENIENT
from producers.routes import default_routes, load_routes


def add_bridge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--topic", action="append", metavar="TEMPLATE",
        help="topic template with {sensor_id} and optionally {metric}; repeatable "
        f"(default: {' and '.join(DEFAULT_TOPICS)})",
    )  # fmt: skip
    parser.add_argument(
        "--routes", metavar="FILE",
        help="routes file (TOML): device profiles (json, zigbee2mqtt, tasmota, shelly-gen2, "
        "sparkplug) per topic pattern, labels, renames, units; replaces --topic",
    )  # fmt: skip
    parser.add_argument(
        "--decoding", choices=DECODINGS, default=LENIENT,
        help="lenient: booleans, numeric strings, nested objects, labels and odd fields dropped "
        "one by one; strict: a reading with any field outside the stream contract is refused "
        "(default: lenient; a routes file may say otherwise)",
    )  # fmt: skip
    parser.add_argument(
        "--client-id", help="fixed MQTT client id, which keeps the session (default: host name)"
    )
    parser.add_argument("--share", metavar="GROUP", help="MQTT v5 shared subscription group")
    parser.add_argument("--qos", type=int, choices=[0, 1], default=1,
                        help="1: a message is acknowledged once written (default); 0: at most "
                        "once")  # fmt: skip
    parser.add_argument("--mqtt-version", type=int, choices=[3, 5], default=5, help="3 = 3.1.1")
    parser.add_argument("--max-payload", type=int, default=65_536, metavar="BYTES",
                        help="larger messages are dead-lettered (default 65536)")  # fmt: skip
    parser.add_argument("--silence", type=float, default=60.0, metavar="S",
                        help="warn when connected but nothing arrives for this long")  # fmt: skip


def bridge_options(settings: Settings, args: argparse.Namespace) -> BridgeOptions:
    broker = MqttBroker.from_settings(settings)
    if broker is None:
        raise CommandLineError("no broker: set MQTT_URL or --mqtt-url")
    if args.share and args.mqtt_version != 5:
        raise CommandLineError("--share needs --mqtt-version 5")
    if args.routes and args.topic:
        raise CommandLineError("give --routes or --topic, not both: routes list their topics")
    try:
        if args.routes:
            routes = load_routes(args.routes, args.decoding)
        else:
            routes = default_routes(args.topic, args.decoding)
    except (ValueError, SettingsError) as exc:
        raise CommandLineError(str(exc)) from None
    return BridgeOptions(
        broker=broker,
        routes=routes,
        client_id=args.client_id or f"telemetry-bridge-{socket.gethostname()}",
        qos=args.qos,
        protocol=args.mqtt_version,
        share=args.share,
        max_payload_bytes=args.max_payload,
        silence_s=args.silence,
    )


def run_bridge(settings: Settings, args: argparse.Namespace) -> BridgeCounts:
    options = bridge_options(settings, args)
    serve_metrics(settings.metrics_port, settings.metrics_host, (*WRITER, "telemetry_bridge_"))
    return Bridge(settings, options).run(stop_on_signals())
