"""`telemetry secrets` and the deploy files that use it, against real servers: each Redis role
runs its components and nothing more, and devices reach the shipped broker config over TLS with
their own certificates while the bridge uses its password."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import redis
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from analytics.alerts.evaluator import GROUP as ALERTS
from telemetry.localserver import LocalRedis, free_port, port_open
from telemetry.secrets import make_secrets
from telemetry.web.app import create_app
from tests.conftest import ROOT, child_env, make_settings
from tests.helpers import entries
from tests.test_bridge import wait_subscribed

SAMPLE_RULES = ROOT / "analytics" / "alerts" / "sample_rules.toml"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    made = tmp_path_factory.mktemp("deploy") / "secrets"
    make_secrets(made, devices=["dev-0"])
    return made


def variables(folder: Path) -> dict[str, str]:
    lines = (folder / "compose.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_secrets_are_made_once_private_and_added_to(folder: Path) -> None:
    before = variables(folder)
    assert make_secrets(folder, devices=["dev-0"]) == []
    assert variables(folder) == before
    assert make_secrets(folder, devices=["dev-0", "dev-1"]) == [folder / "tls/devices/dev-1.pem"]
    for private in ("compose.env", "redis-users.acl", "mosquitto-passwords", "tls/ca.key",
                    "tls/server.key", "tls/devices/dev-0.key"):  # fmt: skip
        assert (folder / private).stat().st_mode & 0o077 == 0, private
    acl = (folder / "redis-users.acl").read_text()
    assert not any(password in acl for password in before.values())


@pytest.fixture(params=["redis", "rediss"])
def acl_redis(folder: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalRedis]:
    """redis-server with the made users (and, for this test alone, one that may read the ACL
    log), speaking plain Redis or TLS with the made CA's certificate."""
    users = tmp_path / "users.acl"
    users.write_text((folder / "redis-users.acl").read_text() + "user auditor on nopass +@all ~*\n")
    tls = folder / "tls" if request.param == "rediss" else None
    server = LocalRedis(workdir=tmp_path / "redis", aclfile=users, tls_folder=tls)
    server.start()
    yield server
    server.close()


def role_url(folder: Path, server: LocalRedis, role: str) -> str:
    password = variables(folder)[f"REDIS_{role.upper()}_PASSWORD"]
    return server.address.replace("://", f"://{role}:{password}@", 1)


def test_each_redis_role_runs_its_components_and_nothing_more(
    folder: Path, acl_redis: LocalRedis, tmp_path: Path
) -> None:
    auditor = redis.Redis.from_url(acl_redis.address, username="auditor", password="-")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(acl_redis.address).ping()

    def telemetry(role: str, *args: str) -> None:
        settings = make_settings(role_url(folder, acl_redis, role))
        done = subprocess.run([sys.executable, "-m", "telemetry", *args],
                              env=child_env(settings), capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr

    telemetry("writer", "simulate", "--fleet", "5", "--count", "40", "--rate", "200",
              "--stuck", "0.5", "--stuck-value", "45")  # fmt: skip
    telemetry("worker", "aggregate", "--drain")
    telemetry("worker", "alert-worker", "--rules", str(SAMPLE_RULES), "--drain")
    telemetry("worker", "archive", "--drain", "--archive-dir", str(tmp_path / "archive"))
    assert list((tmp_path / "archive").rglob("*.parquet"))
    telemetry("api", "status")
    api_settings = make_settings(role_url(folder, acl_redis, "api"))
    api = TestClient(create_app(api_settings))
    with api, api.websocket_connect("/stream/app:event") as tail:
        writer = redis.Redis.from_url(role_url(folder, acl_redis, "writer"))
        writer.xadd("app:event", {"sensor_id": "dev-8", "temp": "3"})
        assert tail.receive_json()["fields"] == {"sensor_id": "dev-8", "temp": "3"}
    assert len(api.get("/sensors").json()) == 5
    assert api.get("/sensors/dev-0/rolling?metric=temp&last=1h").json()["stats"]["count"] == 40
    assert api.post("/readings", json={"sensor_id": "dev-9", "temp": 1.0}).status_code == 202
    assert api.get("/groups").status_code == 200 and api.get("/metrics").status_code == 200
    assert api.get("/alerts").status_code == 200
    # The same roles serve a sharded stream.
    telemetry("writer", "simulate", "--fleet", "6", "--count", "5", "--rate", "200",
              "--shard-count", "3")  # fmt: skip
    telemetry("worker", "aggregate", "--drain", "--shard-count", "3")
    assert sum(auditor.xlen(f"app:event:{{{i}}}") for i in range(3)) == 30
    # Every command the components sent was allowed...
    assert auditor.acl_log() == []
    worker = redis.Redis.from_url(role_url(folder, acl_redis, "worker"))
    ledger = worker.hgetall(f"app:event:ledger:{ALERTS}")
    assert int(ledger[b"settled:evaluated"]) == 200
    assert auditor.xlen("app:event") == 202
    # ... and what a role does not need is refused.
    refused = {
        "writer": [("HGETALL", "app:event:ledger:aggregates"), ("FLUSHALL",),
                   ("XADD", "app:alerts", "*", "a", "1"), ("CONFIG", "SET", "appendonly", "no")],
        "worker": [("FLUSHALL",), ("CONFIG", "SET", "appendonly", "no"), ("KEYS", "*"),
                   ("SCRIPT", "FLUSH"), ("SET", "other:key", "1")],
        "api": [("FLUSHALL",), ("DEL", "app:event"), ("CONFIG", "SET", "appendonly", "no"),
                ("SET", "app:event:rollup", "1")],
    }  # fmt: skip
    for role, commands in refused.items():
        client = redis.Redis.from_url(role_url(folder, acl_redis, role))
        for command in commands:
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)  # type: ignore[no-untyped-call]
    assert len(auditor.acl_log(count=100)) == sum(map(len, refused.values()))


@pytest.fixture
def shipped_broker(folder: Path, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """mosquitto with deploy/mosquitto.conf as compose mounts it, on free ports: the plain
    listener for the bridge, and the TLS one for devices."""
    plain, tls = free_port(), free_port()
    (tmp_path / "data").mkdir()
    config = (ROOT / "deploy" / "mosquitto.conf").read_text()
    for container, here in (("/mosquitto/secrets/", f"{folder}/"),
                            ("/mosquitto/config/", f"{ROOT}/deploy/"),
                            ("/mosquitto/data/", f"{tmp_path}/data/")):  # fmt: skip
        config = config.replace(container, here)
    config = config.replace("listener 1883", f"listener {plain} 127.0.0.1")
    config = config.replace("listener 8883", f"listener {tls} 127.0.0.1")
    config = re.sub(r"(?m)^log_dest .*$", "log_dest stderr", config) + "user root\n"
    (tmp_path / "mosquitto.conf").write_text(config)
    broker = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "mosquitto.conf")])
    try:
        deadline = time.monotonic() + 10
        while not (port_open(plain) and port_open(tls)):
            assert broker.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)
        yield plain, tls
    finally:
        broker.terminate()
        broker.wait(10)


def device(folder: Path, port: int, name: str | None) -> tuple[mqtt.Client, list[str]]:
    """A device connecting over TLS, with the certificate made for `name` (or none)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"device-{name}")
    tls = folder / "tls"
    if name is None:
        client.tls_set(ca_certs=str(tls / "ca.pem"))
    else:
        client.tls_set(ca_certs=str(tls / "ca.pem"), certfile=str(tls / f"devices/{name}.pem"),
                       keyfile=str(tls / f"devices/{name}.key"))  # fmt: skip
    answers: list[str] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: answers.append(str(reason))
    # A refused TLS handshake never reaches CONNACK: the connection just drops.
    client.on_disconnect = lambda _c, _u, _f, reason, _p: answers.append(f"dropped: {reason}")
    try:
        client.connect("127.0.0.1", port)
        client.loop_start()
    except OSError as exc:
        answers.append(type(exc).__name__)
    deadline = time.monotonic() + 10
    while not answers and time.monotonic() < deadline:
        time.sleep(0.05)
    return client, answers


def test_devices_publish_over_tls_with_their_certificates_and_only_as_themselves(
    folder: Path, acl_redis: LocalRedis, shipped_broker: tuple[int, int]
) -> None:
    plain, tls = shipped_broker
    password = variables(folder)["MQTT_BRIDGE_PASSWORD"]
    settings = make_settings(role_url(folder, acl_redis, "writer"))
    env = child_env(settings, MQTT_URL=f"mqtt://telemetry-bridge:{password}@127.0.0.1:{plain}")
    bridge = subprocess.Popen([sys.executable, "-m", "telemetry", "bridge"], env=env,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    client = redis.Redis.from_url(role_url(folder, acl_redis, "worker"), decode_responses=True)
    try:
        wait_subscribed(bridge)
        anonymous, refused = device(folder, tls, None)
        anonymous.loop_stop()
        assert refused != ["Success"]
        sensor, answers = device(folder, tls, "dev-0")
        assert answers == ["Success"]
        for topic, temp in (("sensors/dev-1/telemetry", 1), ("sensors/dev-0/telemetry", 2)):
            sensor.publish(topic, json.dumps({"temp": temp}), qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 20
        while client.xlen("app:event") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        sensor.loop_stop()
        # The reading published as another sensor never reached the bridge.
        assert [f for _, f in entries(client, "app:event")] == [
            {"sensor_id": "dev-0", "temp": "2.0"}
        ]
    finally:
        bridge.terminate()
        bridge.wait(30)
