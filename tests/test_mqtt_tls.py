"""Every MQTT connection (the bridge, simulated devices, the alert fan-out's publisher) speaks
mqtts:// to a real mosquitto whose certificate a private CA signed, given that CA."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ingest.mqttclient import MqttBroker, start_publisher
from ingest.redis.connection import connect
from ingest.settings import Settings
from telemetry.localserver import LocalMosquitto
from tests.conftest import child_env


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def private_ca(tmp_path: Path) -> Path:
    """A CA, and a server certificate for 127.0.0.1 that it signed."""
    folder = tmp_path / "pki"
    folder.mkdir()
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=telemetry test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=folder,
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=folder,
    )
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.pem",
            cwd=folder)  # fmt: skip
    return folder


@pytest.fixture
def tls_broker(tmp_path: Path, private_ca: Path) -> Iterator[LocalMosquitto]:
    broker = LocalMosquitto(workdir=tmp_path / "mosquitto", tls_folder=private_ca)
    broker.start()
    yield broker
    broker.close()


def test_the_simulator_and_the_bridge_speak_tls_with_a_private_ca(
    settings: Settings, tls_broker: LocalMosquitto, private_ca: Path
) -> None:
    env = child_env(settings, MQTT_URL=tls_broker.url, MQTT_CA_FILE=str(private_ca / "ca.pem"))
    assert tls_broker.url.startswith("mqtts://")
    bridge = subprocess.Popen(
        [sys.executable, "-m", "telemetry", "bridge", "--client-id", "tls-bridge"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert bridge.stderr is not None
        for line in bridge.stderr:
            if "subscribed to" in line:
                threading.Thread(target=bridge.stderr.read, daemon=True).start()
                break
        else:
            raise AssertionError("the bridge did not subscribe over TLS")
        devices = subprocess.run(
            [sys.executable, "-m", "telemetry", "simulate", "--fleet", "3", "--rate", "50",
             "--count", "10", "--via-mqtt"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert devices.returncode == 0, devices.stderr
        client = connect(settings)
        deadline = time.monotonic() + 20
        while client.xlen(settings.stream) < 30:
            assert time.monotonic() < deadline, "readings published over TLS did not arrive"
            time.sleep(0.1)
    finally:
        bridge.terminate()
        bridge.wait(30)


def test_the_alert_publisher_speaks_tls_with_a_private_ca(
    tls_broker: LocalMosquitto, private_ca: Path
) -> None:
    broker = MqttBroker(tls_broker.url, ca_file=str(private_ca / "ca.pem"))
    received = threading.Event()
    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2)
    broker.configure(subscriber)
    subscriber.on_message = lambda _c, _u, _m: received.set()
    subscriber.on_connect = lambda c, _u, _f, _r, _p: c.subscribe("alerts/#", qos=1)
    subscriber.connect(broker.host, broker.port)
    subscriber.loop_start()
    publisher = start_publisher(broker, "alerts", 100)
    try:
        deadline = time.monotonic() + 20
        while not received.is_set():
            assert time.monotonic() < deadline, "nothing arrived over TLS"
            publisher.publish("alerts/s1/hot", b"{}", qos=1)
            time.sleep(0.2)
    finally:
        publisher.loop_stop()
        subscriber.loop_stop()


def test_without_the_ca_the_certificate_is_refused(
    tls_broker: LocalMosquitto, settings: Settings
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "telemetry", "simulate", "--fleet", "1", "--rate", "50",
         "--count", "3", "--via-mqtt"],
        env=child_env(settings, MQTT_URL=tls_broker.url), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "certificate verify failed" in done.stderr
