import sys

from telemetry.cli import main

raise SystemExit(main(sys.argv[1:]))
