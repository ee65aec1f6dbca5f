"""`python -m simulator SENSOR_ID` and `telemetry simulate`: flags and the run."""

from __future__ import annotations

import argparse
import math
import secrets
from collections.abc import Callable

from ingest.contract.reading import validate_sensor_id
from ingest.errors import InvalidEntry
from ingest.metrics import WRITER, serve_metrics
from ingest.mqttclient import MqttBroker
from ingest.redis.shardedwriter import open_writer
from ingest.runtime import CommandLineError, stop_on_signals
from ingest.settings import CONNECTION, MQTT, STREAM, WRITING, Settings
from simulator.faults import FaultConfig
from simulator.fleet import FleetReport, FleetRunner, ReadingSink
from simulator.model import SensorBank
from simulator.mqttsink import MqttSink

# The settings a simulator uses, offered as its flags.
SIMULATE_SETTINGS = (*CONNECTION, *STREAM, *WRITING, *MQTT, "metrics_port", "metrics_host")


def _number(text: str, kind: Callable[[str], float]) -> float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_float(text: str) -> float:
    value = _number(text, float)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _probability(text: str) -> float:
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sensor_id", nargs="?", help="simulate this one sensor")
    parser.add_argument("--fleet", type=_positive_int, metavar="N", help="simulate N sensors")
    parser.add_argument("--prefix", default="dev-", help="fleet sensor id prefix (default dev-)")
    parser.add_argument(
        "--rate", type=_positive_float, default=1.0, metavar="HZ", help="readings/s per sensor"
    )
    parser.add_argument(
        "--count", type=_positive_int, metavar="N", help="send N readings per sensor, then exit"
    )
    parser.add_argument("--seed", type=int, help="same seed, same readings (default: random)")
    parser.add_argument(
        "--via-mqtt", action="store_true",
        help="publish to sensors/{id}/telemetry on the MQTT broker, as devices do, instead of "
        "writing to the stream (the bridge writes them)",
    )  # fmt: skip
    faults = parser.add_argument_group("faults (probabilities are per reading)")

    def chance(flag: str, what: str) -> None:
        faults.add_argument(flag, type=_probability, default=0.0, metavar="P",
                            help=f"{what} (default 0)")  # fmt: skip

    def seconds(flag: str, default: float) -> None:
        faults.add_argument(flag, type=_positive_float, default=default, metavar="S",
                            help=f"default {default:g}")  # fmt: skip

    chance("--spike", "a reading jumps by --spike-size")
    faults.add_argument("--spike-size", type=float, default=25.0, metavar="DEG", help="default 25")
    chance("--stuck", "the sensor repeats one value for --stuck-for")
    seconds("--stuck-for", 60.0)
    faults.add_argument("--stuck-value", type=float, metavar="DEG", help="default: last value")
    faults.add_argument("--drift", type=float, default=0.0, metavar="DEG_PER_HOUR",
                        help="the temperature drifts this much an hour (default 0)")  # fmt: skip
    chance("--dropout", "the sensor sends nothing for --dropout-for")
    seconds("--dropout-for", 30.0)
    chance("--late", "the sensor buffers --late-for seconds of readings, then sends them")
    seconds("--late-for", 30.0)
    chance("--duplicate", "a reading is sent twice")


def sensor_ids(args: argparse.Namespace) -> list[str]:
    """The sensors to simulate."""
    if (args.sensor_id is None) == (args.fleet is None):
        raise CommandLineError("give either a SENSOR_ID or --fleet N")
    if args.sensor_id is not None:
        ids = [args.sensor_id]
    else:
        width = len(str(args.fleet - 1))
        ids = [f"{args.prefix}{i:0{width}d}" for i in range(args.fleet)]
    try:
        validate_sensor_id(ids[0])
        validate_sensor_id(ids[-1])
    except InvalidEntry as exc:
        raise CommandLineError(exc.reason) from None
    return ids


def fault_config(args: argparse.Namespace) -> FaultConfig:
    try:
        return _fault_config(args)
    except ValueError as exc:
        raise CommandLineError(str(exc)) from None


def _fault_config(args: argparse.Namespace) -> FaultConfig:
    return FaultConfig(
        spike_prob=args.spike,
        spike_size=args.spike_size,
        stuck_prob=args.stuck,
        stuck_s=args.stuck_for,
        stuck_value=args.stuck_value,
        drift_per_hour=args.drift,
        dropout_prob=args.dropout,
        dropout_s=args.dropout_for,
        late_prob=args.late,
        late_s=args.late_for,
        duplicate_prob=args.duplicate,
    )


def run_simulate(settings: Settings, args: argparse.Namespace) -> FleetReport:
    ids = sensor_ids(args)
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    bank = SensorBank(ids, args.rate, seed, fault_config(args))
    serve_metrics(settings.metrics_port, settings.metrics_host, WRITER)
    stop = stop_on_signals()
    writer: ReadingSink
    if args.via_mqtt:
        broker = MqttBroker.from_settings(settings)
        if broker is None:
            raise CommandLineError("--via-mqtt needs a broker: set MQTT_URL or --mqtt-url")
        writer = MqttSink(broker)
    else:
        writer = open_writer(settings, durability=settings.durability)
    runner = FleetRunner(bank, writer, count_per_sensor=args.count)
    return runner.run(stop)
