"""MQTT connections, configured alike for every part that makes one (the bridge, the alert
fan-out, simulated devices): the broker's URL with its credentials, and for mqtts:// the CA that
signed the broker's certificate and an optional client certificate."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ingest.settings import Settings


@dataclass(frozen=True)
class MqttBroker:
    url: str
    # For mqtts://: the CA that signed the broker's certificate (None: the system's CAs), and a
    # client certificate and key where the broker asks for one.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> MqttBroker | None:
        if settings.mqtt_url is None:
            return None
        return cls(settings.mqtt_url, settings.mqtt_ca_file, settings.mqtt_cert_file,
                   settings.mqtt_key_file)  # fmt: skip

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "localhost"

    @property
    def port(self) -> int:
        return urlparse(self.url).port or (8883 if self.tls else 1883)

    @property
    def name(self) -> str:
        """Where the broker is, without its credentials: for logs and metric labels."""
        return f"{urlparse(self.url).scheme}://{self.host}:{self.port}"

    def configure(self, client: mqtt.Client) -> None:
        """Give a paho client the credentials and TLS set-up of this broker."""
        parsed = urlparse(self.url)
        if parsed.username:
            client.username_pw_set(unquote(parsed.username), unquote(parsed.password or ""))
        if self.tls:
            client.tls_set(ca_certs=self.ca_file, certfile=self.cert_file, keyfile=self.key_file)


def start_publisher(broker: MqttBroker, role: str, queue_limit: int) -> mqtt.Client:
    """Connected in the background (and reconnecting with backoff up to 30 s); QoS 1 messages
    published meanwhile wait in paho's queue, up to `queue_limit`."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"telemetry-{role}-{socket.gethostname()}-{os.getpid()}",
    )
    broker.configure(client)
    client.max_queued_messages_set(queue_limit)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.connect_async(broker.host, broker.port)
    client.loop_start()
    return client
