"""The `telemetry` command as users run it: errors in one line, status, dead letters, up."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from ingest.contract.reading import Reading
from ingest.keys import StreamKeys
from ingest.settings import Settings
from telemetry.cli import build_parser
from telemetry.localserver import free_port, port_open
from tests.conftest import child_env
from tests.helpers import Recorder, add, drain, entries, reading_runner


def telemetry(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "telemetry", *args],
        env=child_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["status", "--maxlen", "lots"], {}, "--maxlen: expected a positive integer, got 'lots'"),
        (["status"], {"TELEMETRY_MAXLEN": "-3"}, "TELEMETRY_MAXLEN: expected a positive integer"),
        (["status"], {"REDIS_URL": "localhost:6379"}, "REDIS_URL: expected a redis://"),
        (
            ["aggregate"],
            {"TELEMETRY_TIERS": "7s:6h,1m:7d"},
            "tier 1m is not a whole number of the finest tier's 7s buckets",
        ),
        (["status", "--format", "xml"], {}, "argument --format: invalid choice: 'xml'"),
        (["simulate"], {}, "give either a SENSOR_ID or --fleet N"),
        (["simulate", "bad id"], {}, "sensor_id must be 1-128 chars"),
        (["simulate", "s1", "--spike", "2"], {}, "expected a probability between 0 and 1"),
        (["simulate", "s1", "--rate", "fast"], {}, "expected a number, got 'fast'"),
        (["dead-letter", "replay"], {}, "give --id ID (repeatable) or --all"),
        (["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_flags_and_settings_exit_non_zero_with_one_line(
    settings: Settings, args: list[str], env: dict[str, str], message: str
) -> None:
    done = telemetry(settings, *args, **env)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_unreachable_redis_is_one_line_too(settings: Settings) -> None:
    done = telemetry(settings, "status", "--redis-url", "redis://127.0.0.1:1/0")
    assert done.returncode == 1
    assert done.stderr.startswith("telemetry: error: cannot reach Redis")
    assert len(done.stderr.strip().splitlines()) == 1


def test_status_as_json_for_scripts(client: redis.Redis, settings: Settings) -> None:
    for i in range(10):
        add(client, settings.stream, {"sensor_id": "s1", "temp": str(i)})
    client.xgroup_create(settings.stream, "aggregates", "0")
    client.xreadgroup("aggregates", "c1", {settings.stream: ">"}, count=4)
    done = telemetry(settings, "status", "--format", "json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    [group] = status["groups"]
    assert status["length"] == 10
    assert (group["name"], group["pending"], group["lag"], group["entries_read"]) == (
        "aggregates",
        4,
        6,
        4,
    )
    assert group["max_delivery_count"] == 1
    assert group["consumers"][0]["name"] == "c1"
    table = telemetry(settings, "status")
    assert "group aggregates: lag 6" in table.stdout


def test_dead_letters_are_listed_fixed_and_replayed(
    client: redis.Redis, settings: Settings
) -> None:
    keys = StreamKeys(settings.stream)
    bad = add(client, settings.stream, {"sensor_id": "s1", "temp": "warm", "humidity": "0.5"})
    drain(reading_runner(client, settings, Recorder()))
    [(dead_id, _)] = entries(client, keys.dead)

    listing = telemetry(settings, "dead-letter", "list")
    assert f"from {bad}" in listing.stdout and "'warm'" in listing.stdout
    still_bad = telemetry(settings, "dead-letter", "replay", "--id", dead_id)
    assert still_bad.returncode == 1
    assert "kept: still invalid" in still_bad.stdout
    fixed = telemetry(settings, "dead-letter", "replay", "--id", dead_id, "--set", "temp=21.5")
    assert fixed.returncode == 0, fixed.stderr
    assert "1 of 1 dead letters replayed" in fixed.stdout
    assert client.xlen(keys.dead) == 0
    replayed_id, fields = entries(client, settings.stream)[-1]
    reading = Reading.decode(replayed_id, fields)
    assert reading.metrics == {"temp": 21.5, "humidity": 0.5}
    assert str(reading.ts_ms) == bad.split("-")[0]


def test_up_runs_the_pipeline_on_a_private_redis_and_stops_on_ctrl_c(
    settings: Settings, tmp_path: Path
) -> None:
    """The README's main-job command: within 15 s the dashboard is served and data flows, from
    simulated sensors writing to the stream and from simulated devices publishing over MQTT (here
    over two shards: `up` without `--shards` runs in tests/test_server_crashes.py); its servers'
    data and the archive are kept in one folder for the next run."""
    api_port = free_port()
    env = child_env(settings, TELEMETRY_API_PORT=str(api_port), XDG_DATA_HOME=str(tmp_path))
    env.pop("REDIS_URL")
    env.pop("TELEMETRY_ARCHIVE_DIR")
    started = time.monotonic()
    up = subprocess.Popen(
        [sys.executable, "-m", "telemetry", "up", "--fleet", "50", "--rate", "5", "--shards", "2"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert up.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stderr or []), daemon=True)
    reader.start()
    api = f"http://127.0.0.1:{api_port}"

    def sensors() -> list[str]:
        try:
            with urllib.request.urlopen(f"{api}/sensors", timeout=5) as answer:
                return [s["sensor_id"] for s in json.load(answer)]
        except OSError:
            return []

    while time.monotonic() - started < 15 and len(sensors()) < 50:
        time.sleep(0.2)
    found = sensors()
    assert len(found) == 50
    assert sum(s.startswith("mqtt-") for s in found) == 5, "devices publish through the bridge"
    with urllib.request.urlopen(f"{api}/dashboard", timeout=5) as page:
        assert "<title>telemetry</title>" in page.read().decode()

    def groups() -> dict[str, Any]:
        with urllib.request.urlopen(f"{api}/groups", timeout=5) as answer:
            found: dict[str, Any] = json.load(answer)
            return found

    report = groups()
    assert [s["stream"] for s in report["shards"]] == ["app:event:{0}", "app:event:{1}"]
    # The archiver holds what it read until its flush (or its stop).
    deadline = time.monotonic() + 20
    while groups()["total"]["groups"].get("archive", {}).get("pending", 0) == 0:
        assert time.monotonic() < deadline, "the archiver read nothing"
        time.sleep(0.2)
    assert set(groups()["total"]["groups"]) == {"aggregates", "alerts", "archive"}
    started_at = re.search(r"private redis-server at redis://127.0.0.1:(\d+)/0", "".join(lines))
    assert started_at is not None
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=int(started_at.group(1))).ping()
    up.send_signal(signal.SIGINT)
    assert up.wait(30) == 0
    reader.join(10)
    log = "".join(lines)
    for service in ("simulator", "devices", "aggregator", "alerts", "archiver", "api", "bridge"):
        assert f"stopped {service} (status 0)" in log
    kept = tmp_path / "telemetry" / "up"
    assert (kept / "redis" / "appendonlydir").is_dir()
    assert list((kept / "archive").glob("app_event_*/day=*/part-*.parquet"))
    url = re.search(r"private redis-server at (redis://\S+)", log)
    assert url is not None
    assert not port_open(int(url.group(1).rsplit(":", 1)[1].split("/")[0]))
    # Its servers took only the credentials `up` made; they are in the log only as a file.
    connection = re.search(r"passwords, are in (\S+) ", log)
    assert connection is not None and stat.S_IMODE(os.stat(connection.group(1)).st_mode) == 0o600
    urls = dict(line.split("=", 1) for line in Path(connection.group(1)).read_text().splitlines())
    for secret in (urlsplit(urls["REDIS_URL"]).password, urlsplit(urls["MQTT_URL"]).password):
        assert secret and secret not in log


# A service's main loop, reduced to what matters here: it spends nearly all its time inside
# stop.wait(), where the event's lock is held for a moment on every call.
WAITING_SERVICE = """
from ingest.runtime import stop_on_signals
stop = stop_on_signals()
print("ready", flush=True)
while not stop.is_set():
    stop.wait(0)
"""


def test_a_signal_arriving_inside_stop_wait_stops_the_process() -> None:
    for _ in range(20):
        service = subprocess.Popen(
            [sys.executable, "-c", WAITING_SERVICE], stdout=subprocess.PIPE, text=True
        )
        assert service.stdout is not None and service.stdout.readline() == "ready\n"
        service.send_signal(signal.SIGTERM)
        try:
            assert service.wait(10) == 0
        finally:
            service.kill()
            service.wait()


def test_up_without_redis_server_says_how_to_install_it(settings: Settings, tmp_path: Path) -> None:
    env = child_env(settings, PATH="/nonexistent", XDG_DATA_HOME=str(tmp_path))
    env.pop("REDIS_URL")
    done = subprocess.run(
        [sys.executable, "-m", "telemetry", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "redis-server not found on PATH: install Redis 7" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "telemetry", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert re.fullmatch(r"telemetry \d+\.\d+\.\d+\n", done.stdout)


@pytest.mark.parametrize(
    ("command", "offered", "not_offered"),
    [
        (["query"], ["--redis-url", "--tiers"], ["--api-token", "--webhooks", "--mqtt-url"]),
        (["simulate"], ["--maxlen", "--mqtt-ca-file"], ["--tiers", "--api-port"]),
        (["api"], ["--api-hosts", "--tiers"], ["--api-token", "--mqtt-url", "--webhooks"]),
        (["alert-worker"], ["--rules", "--webhooks"], ["--api-token", "--tiers"]),
    ],
)
def test_each_command_offers_the_settings_it_uses(
    command: list[str], offered: list[str], not_offered: list[str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "telemetry", *command, "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    flags = set(re.findall(r"--[a-z-]+", done.stdout))
    assert set(offered) <= flags
    assert not set(not_offered) & flags


def test_every_command_and_option_says_what_it_is_for() -> None:
    def helpless(parser: argparse.ArgumentParser, path: str) -> Iterator[str]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                described = {choice.dest: choice.help for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    if not described.get(name) or not sub.description:
                        yield f"{path} {name}"
                    yield from helpless(sub, f"{path} {name}")
            elif not action.help:
                yield f"{path} {'/'.join(action.option_strings) or action.dest}"

    assert list(helpless(build_parser(), "telemetry")) == []


def test_shell_completion_completes_commands_and_actions(tmp_path: Path) -> None:
    script = tmp_path / "telemetry.bash"
    done = subprocess.run([sys.executable, "-m", "telemetry", "completion", "bash"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0
    script.write_text(done.stdout)
    completed = subprocess.run(
        ["bash", "-c", f"source {script}; COMP_WORDS=(telemetry alerts si); COMP_CWORD=2; "
         'COMP_LINE="telemetry alerts si"; COMP_POINT=19; _shtab_telemetry; '
         'echo "${COMPREPLY[@]}"'],
        capture_output=True, text=True,
    )  # fmt: skip
    assert completed.stdout.split() == ["silence", "silences"]


def on_a_terminal(settings: Settings, *args: str) -> str:
    """What a command writes to a terminal (a pseudo-terminal as its stderr)."""
    main, child = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "telemetry", *args],
                               env=child_env(settings, TELEMETRY_LOG_LEVEL="WARNING"),
                               stdout=subprocess.DEVNULL, stderr=child)  # fmt: skip
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert process.wait(60) == 0
    return seen.decode(errors="replace")


def test_long_work_shows_its_progress_on_a_terminal(
    settings: Settings, client: redis.Redis, tmp_path: Path
) -> None:
    lines = "".join(json.dumps({"sensor_id": f"p{i % 9}", "ts": 1_796_000_000_000 + i,
                                "temp": i}) + "\n" for i in range(20_000))  # fmt: skip
    (tmp_path / "readings.jsonl").write_text(lines)
    shown = on_a_terminal(settings, "import", str(tmp_path / "readings.jsonl"))
    assert "import readings.jsonl" in shown and "100%" in shown
    shown = on_a_terminal(settings, "aggregate", "--drain")
    assert "drain aggregates" in shown and "20000/20000" in shown
    # Not on a terminal: no bar, only the closing line.
    done = subprocess.run([sys.executable, "-m", "telemetry", "archive", "--drain"],
                          env=child_env(settings.replace(archive_dir=str(tmp_path / "a"))),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and "━" not in done.stderr
