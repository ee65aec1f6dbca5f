"""The servers themselves killed with SIGKILL under the whole pipeline: readings written straight
to the stream and published by MQTT devices through the bridge, two aggregators, an alert
worker and the API, all real processes. Counts are checked against the stream afterwards.

Over 400 lines: the pipeline harness (the producers and `Pipeline`) serves every test here."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from analytics.aggregator import GROUP as AGGREGATES
from analytics.alerts.evaluator import GROUP as ALERTS
from ingest.errors import RedisUnavailable
from ingest.redis.connection import connect, read_range
from ingest.redis.writer import StreamWriter
from ingest.settings import Settings
from ingest.status import GroupStatus, stream_status
from telemetry.localserver import (
    BROKER_AUTOSAVE_S,
    LocalMosquitto,
    LocalRedis,
    free_port,
    port_open,
)
from tests.conftest import child_env, make_settings

DIRECT_SENSORS = 40
DEVICES = 10
# Each reading's temp runs 20..29 by seq, so every sensor raises and resolves "warm" often.
RULES = """
[[rule]]
name = "warm"
type = "threshold"
metric = "temp"
severity = "warning"
above = 25.0
clear = 23.0
"""


def temp_of(seq: int) -> str:
    return str(20 + seq % 10)


class DirectFleet:
    """Sensors writing straight to the stream, as `telemetry simulate` does: a batch every
    20 ms; a batch Redis did not acknowledge stays buffered and is sent again."""

    def __init__(self, settings: Settings) -> None:
        self.writer = StreamWriter(
            connect(settings, socket_timeout_s=2), settings.stream, settings.maxlen,
            batch_size=10**6, durability=settings.durability,
        )  # fmt: skip
        self.acked: set[tuple[str, int]] = set()
        self._unacked: list[tuple[str, int]] = []

    def run(self, stop: threading.Event) -> None:
        seq = 0
        while not stop.is_set():
            batch = [(f"d{i}", seq) for i in range(DIRECT_SENSORS)]
            self.writer.add_many(
                [{"sensor_id": s, "seq": str(q), "temp": temp_of(q)} for s, q in batch]
            )
            self._unacked += batch
            seq += 1
            try:
                self.writer.flush()
            except RedisUnavailable:
                stop.wait(0.2)
                continue
            self.acked.update(self._unacked)
            self._unacked.clear()
            stop.wait(0.02)
        while self._unacked:
            try:
                self.writer.flush()
                self.acked.update(self._unacked)
                self._unacked.clear()
            except RedisUnavailable:
                time.sleep(0.2)


class MqttDevices:
    """Devices publishing JSON readings with seq at QoS 1, every 50 ms."""

    def __init__(self, broker: LocalMosquitto) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="devices")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.sent: list[tuple[mqtt.MQTTMessageInfo, str, int]] = []

    def run(self, stop: threading.Event) -> None:
        seq = 0
        while not stop.wait(0.05):
            for d in range(DEVICES):
                body = json.dumps({"temp": float(temp_of(seq)), "seq": seq})
                info = self.client.publish(f"sensors/m{d}/telemetry", body, qos=1)
                self.sent.append((info, f"m{d}", seq))
            seq += 1

    def acked(self, timeout_s: float) -> set[tuple[str, int]]:
        """Wait until the broker acknowledged everything (or timeout_s passed)."""
        deadline = time.monotonic() + timeout_s
        while not all(info.is_published() for info, _, _ in self.sent):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.client.loop_stop()
        return {(s, q) for info, s, q in self.sent if info.is_published()}


class Pipeline:
    """The services, each a `telemetry` child process logging to a file."""

    def __init__(self, settings: Settings, broker: LocalMosquitto, tmp: Path) -> None:
        rules = tmp / "rules.toml"
        rules.write_text(RULES)
        self.api_port = free_port()
        self.logs = tmp / "logs"
        self.logs.mkdir()
        env = child_env(settings, MQTT_URL=broker.url, TELEMETRY_API_PORT=str(self.api_port))
        commands = {
            "aggregator-1": ["aggregate", "--consumer", "agg-1"],
            "aggregator-2": ["aggregate", "--consumer", "agg-2"],
            "alerts": ["alert-worker", "--rules", str(rules), "--consumer", "alerts-1"],
            "bridge": ["bridge", "--client-id", "crash-bridge"],
            "api": ["api"],
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []
        for name, argv in commands.items():
            log = (self.logs / f"{name}.log").open("wb")
            self._files.append(log)
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "telemetry", *argv], env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while self.healthz() != 200 or "subscribed to" not in self.log("bridge"):
            assert time.monotonic() < deadline, "the pipeline did not start"
            time.sleep(0.1)

    def healthz(self) -> int:
        try:
            with urllib.request.urlopen(self.url("/healthz"), timeout=5) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.api_port}{path}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=10) as answer:
            return json.load(answer)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                assert process.wait(30) == 0, f"{name} exited with {process.returncode}"
            finally:
                process.kill()
        for file in self._files:
            file.close()


def group(settings: Settings, name: str) -> GroupStatus:
    status = stream_status(settings, settings.stream, settings.maxlen, 0.8)
    return next(g for g in status.groups if g.name == name)


def wait_settled(settings: Settings, timeout_s: float = 60.0) -> None:
    """Until both groups have read everything and hold nothing pending."""
    deadline = time.monotonic() + timeout_s
    while True:
        groups = [group(settings, name) for name in (AGGREGATES, ALERTS)]
        if all(g.lag == 0 and g.pending == 0 for g in groups):
            return
        assert time.monotonic() < deadline, f"groups did not settle: {groups}"
        time.sleep(0.2)


def stream_seqs(settings: Settings) -> tuple[int, dict[str, list[int]]]:
    """Entries in the stream, and each sensor's seqs in stream order."""
    entries = read_range(connect(settings), settings.stream)
    seqs: dict[str, list[int]] = defaultdict(list)
    for _, fields in entries:
        seqs[fields["sensor_id"]].append(int(fields["seq"]))
    return len(entries), seqs


def aggregated_per_sensor(pipeline: Pipeline, sensor: str) -> int:
    buckets = pipeline.get(f"/sensors/{sensor}/aggregates?metric=temp&tier=10s&from=10m")
    return sum(int(b["count"]) for b in buckets)


def assert_alerts_alternate(settings: Settings) -> int:
    """Per sensor, alert changes go raised, resolved, raised...: never raised twice."""
    states: dict[str, list[str]] = defaultdict(list)
    for _, change in read_range(connect(settings), settings.alerts_stream):
        states[f"{change['sensor_id']}|{change['rule']}"].append(change["state"])
    for key, sequence in states.items():
        assert sequence[0] == "raised", key
        for before, after in itertools.pairwise(sequence):
            assert before != after, f"{key}: {before} twice in a row"
    return sum(len(s) for s in states.values())


@pytest.mark.parametrize("durability", ["always", "everysec"])
def test_redis_killed_under_the_full_pipeline(
    tmp_path: Path, broker: LocalMosquitto, durability: str
) -> None:
    server = LocalRedis(workdir=tmp_path / "redis", appendonly=True, appendfsync=durability)
    server.start()
    settings = make_settings(server.url, durability=durability)
    pipeline = Pipeline(settings, broker, tmp_path)
    fleet, devices = DirectFleet(settings), MqttDevices(broker)
    stop = threading.Event()
    producers = [threading.Thread(target=p.run, args=(stop,)) for p in (fleet, devices)]
    try:
        for producer in producers:
            producer.start()
        time.sleep(4)
        server.kill()
        time.sleep(1.5)
        during = pipeline.healthz()
        time.sleep(1.5)
        server.start()
        deadline = time.monotonic() + 30
        while pipeline.healthz() != 200:
            assert time.monotonic() < deadline, "the API did not see Redis come back"
            time.sleep(0.1)
        time.sleep(4)
        stop.set()
        for producer in producers:
            producer.join(30)
        acked = fleet.acked | devices.acked(30)
        time.sleep(1)
        wait_settled(settings)
        checked = ("d0", f"d{DIRECT_SENSORS - 1}", "m0", f"m{DEVICES - 1}")
        served = {sensor: aggregated_per_sensor(pipeline, sensor) for sensor in checked}
    finally:
        stop.set()
        pipeline.stop()

    try:
        assert during == 503
        api_log = pipeline.log("api")
        assert "Traceback" not in api_log
        assert len(re.findall("redis unavailable", api_log)) == 1
        assert "redis is back" in api_log

        entries, seqs = stream_seqs(settings)
        distinct = {(sensor, s) for sensor, values in seqs.items() for s in values}
        assert len(seqs) == DIRECT_SENSORS + DEVICES
        missing = acked - distinct
        if durability == "always":
            assert not missing, f"{len(missing)} acknowledged readings lost"
        else:
            # At most about a second of writes: the fleet writes 2,000 readings a second and
            # the devices 200.
            assert len(missing) <= 2 * 2200, len(missing)

        aggregates = group(settings, AGGREGATES)
        assert aggregates.unaccounted == 0, aggregates
        assert aggregates.settled["aggregated"] == len(distinct)
        assert aggregates.settled.get("duplicate", 0) == entries - len(distinct)
        assert set(aggregates.settled) <= {"aggregated", "duplicate"}
        # What Redis lost is reported: each sensor's seq jumped over it.
        holes = sum(max(values) + 1 - len(set(values)) for values in seqs.values())
        facts = aggregates.facts
        assert facts.get("seq_gaps", 0) - facts.get("seq_gaps_filled", 0) == holes
        assert holes >= len(missing)
        alerts = group(settings, ALERTS)
        assert alerts.unaccounted == 0, alerts
        assert served == {sensor: len(set(seqs[sensor])) for sensor in served}
        assert assert_alerts_alternate(settings) > 100
    finally:
        server.close()


def test_up_restarts_its_private_redis_and_mosquitto(tmp_path: Path) -> None:
    settings = make_settings("redis://127.0.0.1:1/0")
    api_port = free_port()
    env = child_env(settings, TELEMETRY_API_PORT=str(api_port), XDG_DATA_HOME=str(tmp_path))
    env.pop("REDIS_URL")
    env.pop("TELEMETRY_ARCHIVE_DIR")
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "telemetry", "up", "--fleet", "20", "--rate", "5"],
            env=env,
            stderr=log,
        )
    try:

        def text() -> str:
            return log_path.read_text(errors="replace")

        def wait_for(pattern: str, timeout_s: float = 40.0) -> re.Match[str]:
            deadline = time.monotonic() + timeout_s
            while (found := re.search(pattern, text())) is None:
                assert time.monotonic() < deadline, f"{pattern!r} not logged:\n{text()}"
                time.sleep(0.1)
            return found

        redis_started = wait_for(r"private redis-server at redis://127.0.0.1:(\d+)/0 \(pid (\d+)")
        broker_started = wait_for(r"private mosquitto at mqtt://127.0.0.1:(\d+) \(pid (\d+)")
        redis_port, redis_pid = int(redis_started.group(1)), int(redis_started.group(2))
        broker_pid = int(broker_started.group(2))
        connection = Path(wait_for(r"passwords, are in (\S+) ").group(1))
        urls = dict(line.split("=", 1) for line in connection.read_text().splitlines())
        client = connect(make_settings(urls["REDIS_URL"]))

        def aggregated() -> int:
            try:
                ledger = client.hget("app:event:ledger:aggregates", "settled:aggregated")
                return int(str(ledger or 0))
            except Exception:
                return 0

        def wait_aggregating(beyond: int) -> None:
            deadline = time.monotonic() + 40
            while aggregated() <= beyond:
                assert time.monotonic() < deadline, f"nothing aggregated past {beyond}"
                time.sleep(0.2)

        wait_aggregating(0)
        os.kill(redis_pid, signal.SIGKILL)
        restarted = wait_for(r"restarted private redis-server \(pid (\d+)\) on port (\d+)")
        assert int(restarted.group(2)) == redis_port
        new_redis_pid = int(restarted.group(1))
        wait_aggregating(aggregated())

        os.kill(broker_pid, signal.SIGKILL)
        wait_for(r"restarted private mosquitto \(pid \d+\)")
        before = client.zscore("app:event:sensors", "mqtt-0") or 0
        deadline = time.monotonic() + 40
        while (client.zscore("app:event:sensors", "mqtt-0") or 0) <= before:
            assert time.monotonic() < deadline, "devices' readings stopped after the broker crash"
            time.sleep(0.2)
        wait_for(r"private servers: redis-server up, restarted 1x; mosquitto up, restarted 1x")

        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
        log_text = text()
        assert f"stopped private redis-server (pid {new_redis_pid};" in log_text
        assert f"(pid {redis_pid};" not in log_text
        assert not port_open(redis_port)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_a_broker_killed_keeps_the_messages_it_saved(tmp_path: Path) -> None:
    """Messages the broker acknowledged and held for the (stopped) bridge survive a kill -9 of
    the broker once its autosave interval has passed, and reach the stream exactly once."""
    broker = LocalMosquitto(workdir=tmp_path / "mosquitto")
    broker.start()
    server = LocalRedis(workdir=tmp_path / "redis")
    server.start()
    settings = make_settings(server.url)
    env = child_env(settings, MQTT_URL=broker.url)
    bridge_command = [sys.executable, "-m", "telemetry", "bridge", "--client-id", "keeper"]
    try:
        # The bridge subscribes once, so the broker keeps a session for it, then stops.
        first = subprocess.Popen(bridge_command, env=env, stderr=subprocess.PIPE, text=True)
        assert first.stderr is not None
        for line in first.stderr:
            if "subscribed to" in line:
                break
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0

        devices = MqttDevices(broker)
        stop = threading.Event()
        publishing = threading.Thread(target=devices.run, args=(stop,))
        publishing.start()
        time.sleep(2)
        stop.set()
        publishing.join()
        acked = devices.acked(30)
        assert len(acked) >= 200
        # Past the autosave interval, everything acknowledged is on the broker's disk.
        time.sleep(BROKER_AUTOSAVE_S + 1.5)
        broker.kill()
        broker.start()

        bridge = subprocess.Popen(bridge_command, env=env, stderr=subprocess.DEVNULL)
        try:
            client = connect(settings)
            deadline = time.monotonic() + 30
            while client.xlen(settings.stream) < len(acked):
                assert time.monotonic() < deadline, "the saved messages did not arrive"
                time.sleep(0.1)
            time.sleep(1)
        finally:
            bridge.send_signal(signal.SIGTERM)
            assert bridge.wait(30) == 0
        _, seqs = stream_seqs(settings)
        stored = [(sensor, s) for sensor, values in seqs.items() for s in values]
        assert sorted(stored) == sorted(acked)
    finally:
        broker.close()
        server.close()
