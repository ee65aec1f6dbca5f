"""An MQTT client that publishes: for alert fan-out and for simulated devices."""

from __future__ import annotations

import os
import socket
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def broker_name(url: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.hostname}:{parsed.port or default_port(parsed.scheme)}"


def default_port(scheme: str) -> int:
    return 8883 if scheme == "mqtts" else 1883


def start_publisher(url: str, role: str, queue_limit: int) -> mqtt.Client:
    """Connected in the background (and reconnecting with backoff up to 30 s); QoS 1 messages
    published meanwhile wait in paho's queue, up to `queue_limit`."""
    parsed = urlparse(url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"telemetry-{role}-{socket.gethostname()}-{os.getpid()}",
    )
    if parsed.username:
        client.username_pw_set(unquote(parsed.username), unquote(parsed.password or ""))
    if parsed.scheme == "mqtts":
        client.tls_set()
    client.max_queued_messages_set(queue_limit)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.connect_async(parsed.hostname or "localhost", parsed.port or default_port(parsed.scheme))
    client.loop_start()
    return client
