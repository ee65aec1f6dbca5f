"""Process plumbing every command shares: logging, signal-driven shutdown, one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from ingest.errors import IngestError, RedisUnavailable, SettingsError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)


def stop_on_signals() -> threading.Event:
    """An event set by the first SIGTERM or SIGINT; work in hand finishes, then the process exits.

    A second signal exits at once, for an operator who does not want to wait.
    """
    stop = threading.Event()
    # The handler must not set the event itself: setting takes the event's lock, which the
    # main thread holds for a moment inside every stop.wait(), and a handler interrupting it
    # there would wait for that lock forever. It hands the signal to a thread instead.
    received, announce = os.pipe()

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        os.write(announce, bytes([signum]))

    def set_stop() -> None:
        while True:
            signum = os.read(received, 1)[0]
            if not stop.is_set():
                logging.getLogger("shutdown").info(
                    "%s received: finishing the work in hand", signal.Signals(signum).name
                )
                stop.set()

    threading.Thread(target=set_stop, name="signals", daemon=True).start()
    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


class CommandLineError(SettingsError):
    """A flag or argument combination that cannot work; the message says what to fix."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """Reports a bad flag in one line (and the exit status 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{error_label(self.prog)} {message} (see --help)\n")


def error_label(prog: str) -> str:
    """`prog: error:`, in red on a terminal unless NO_COLOR is set (https://no-color.org)."""
    label = f"{prog}: error:"
    if sys.stderr.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb":
        return f"\033[1;31m{label}\033[0m"
    return label


def run_command(prog: str, command: Callable[[], int | None]) -> int:
    """Run a command, turning the errors a user can fix into one line and a non-zero status."""
    try:
        return command() or 0
    except (SettingsError, CommandLineError) as exc:
        print(f"{error_label(prog)} {exc}", file=sys.stderr)
        return 2
    except RedisUnavailable as exc:
        print(f"{error_label(prog)} cannot reach Redis: {exc}", file=sys.stderr)
        return 1
    except IngestError as exc:
        print(f"{error_label(prog)} {exc}", file=sys.stderr)
        return 1
