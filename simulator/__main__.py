"""`python -m simulator SENSOR_ID [flags]`: the same as `telemetry simulate`."""

import os
import sys

from ingest.runtime import OneLineArgumentParser, configure_logging, run_command
from ingest.settings import Settings, add_settings_arguments
from simulator.cli import SIMULATE_SETTINGS, add_simulate_arguments, run_simulate


def main(argv: list[str]) -> int:
    parser = OneLineArgumentParser(
        prog="python -m simulator", description="Append simulated sensor readings to the stream."
    )
    add_simulate_arguments(parser)
    add_settings_arguments(parser, SIMULATE_SETTINGS)
    args = parser.parse_args(argv)

    def simulate() -> None:
        settings = Settings.load(os.environ, args)
        configure_logging(settings.log_level)
        run_simulate(settings, args)

    return run_command(parser.prog, simulate)


raise SystemExit(main(sys.argv[1:]))
