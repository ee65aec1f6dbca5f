"""The MQTT bridge: device messages in, stream entries out, acknowledged only once written.

paho's network thread parses and queues each message (an exception there would kill the
thread, so nothing in `on_message` raises), and writes the queue in batches through the ingest
writer once enough has gathered; only after Redis took a batch are the PUBACKs for its QoS 1
messages sent, in the order they arrived. The main thread writes what a trickle leaves waiting
and, after a failed write, retries with backoff while the network thread only queues. While
Redis is down nothing is acknowledged: the broker keeps the messages in the bridge's persistent
session and delivers them again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import Counter, Gauge

from ingest.backoff import Backoff, retry_delay, why_writes_wait
from ingest.durability import verify_durability
from ingest.errors import RedisCommandFailed, RedisUnavailable
from ingest.mqttclient import MqttBroker
from ingest.redis.connection import connect
from ingest.settings import Settings
from producers.payload import Parsed
from producers.pipeline import Received, StreamSink, received
from producers.routes import Route, Router

log = logging.getLogger(__name__)

MESSAGES = Counter("telemetry_bridge_messages", "MQTT messages by outcome", ["outcome"])
for _outcome in ("written", "dead_lettered", "retained"):
    MESSAGES.labels(_outcome)
RECONNECTS = Counter("telemetry_bridge_reconnects", "Connections to the broker after the first")
SILENT = Gauge("telemetry_bridge_silent", "1 while connected but no message has arrived lately")
DROPPED_FIELDS = Counter("telemetry_bridge_dropped_fields",
                         "Fields left out of readings that were written")  # fmt: skip
REBIRTHS = Counter("telemetry_bridge_sparkplug_rebirths",
                   "Rebirths asked of Sparkplug B edge nodes")  # fmt: skip
BATCH_MAX = 1000
FLUSH_EVERY_S = 0.01
# paho's network thread writes what it has gathered once this many messages wait, or once the
# oldest has waited this long; a trickle that reaches neither is written by the main thread.
WRITE_AT = 500
GATHER_S = 0.002
SESSION_EXPIRY_S = 7 * 86_400
# At most one dead letter per this long shows the fields a bridge dropped from readings.
DROPPED_SAMPLE_EVERY_S = 60.0


@dataclass(frozen=True)
class BridgeOptions:
    broker: MqttBroker
    routes: Sequence[Route]
    client_id: str
    qos: int = 1
    protocol: int = 5
    share: str | None = None
    max_payload_bytes: int = 65_536
    silence_s: float = 60.0


@dataclass
class BridgeCounts:
    received: int = 0
    written: int = 0
    dead_lettered: int = 0
    retained: int = 0
    reconnects: int = 0
    dropped_fields: int = 0


@dataclass
class _Message:
    mid: int
    qos: int
    unit: Received


class Bridge:
    def __init__(self, settings: Settings, options: BridgeOptions) -> None:
        self.settings = settings
        self.options = options
        self.client = connect(settings)
        # Writes when the bridge decides (a burst, a pause), never because a batch filled.
        self.sink = StreamSink(self.client, settings, batch_size=10**9)
        self.counts = BridgeCounts()
        self.router = Router(options.routes, options.max_payload_bytes)
        self._dropped_sampled_at = -DROPPED_SAMPLE_EVERY_S
        self._queue: deque[_Message] = deque()
        self._first_queued_at = 0.0
        # (mid, qos) of messages written and not yet acknowledged; see `_ack_written`.
        self._acks_due: deque[tuple[int, int]] = deque()
        # Either thread may write; one at a time. After a failed write only the main thread
        # tries again (with backoff), so the network thread never waits on a Redis that is down.
        self._write_lock = threading.Lock()
        # Why the last write failed, until one succeeds (None: writes succeed).
        self._failure: Exception | None = None
        self._last_message_at = time.monotonic()
        self._connected = threading.Event()
        self._connections = 0
        # Messages taken from the queue, written or being written, not yet acknowledged.
        self._in_flight: list[_Message] = []
        self._stopping = False
        self.mqtt = self._mqtt_client()

    # -- MQTT side (paho's network thread) ------------------------------------------------

    def _mqtt_client(self) -> mqtt.Client:
        v5 = self.options.protocol == 5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.options.client_id,
            # A fixed id and a session the broker keeps: QoS 1 messages wait for us.
            clean_session=None if v5 else False,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
        )
        self.options.broker.configure(client)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        self._connections += 1
        if self._connections > 1:
            self.counts.reconnects += 1
            RECONNECTS.inc()
        prefix = f"$share/{self.options.share}/" if self.options.share else ""
        topics = [(prefix + f, self.options.qos) for f in self.router.subscriptions()]
        client.subscribe(topics)
        self._connected.set()
        self._last_message_at = time.monotonic()
        log.info("connected to %s; subscribed to %s", self._where(), [t for t, _ in topics])

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        if self._stopping:
            return
        log.warning("disconnected from %s (%s); reconnecting with backoff", self._where(), reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            if not self._queue:
                self._first_queued_at = time.monotonic()
            self._queue.append(self._parse(message))
            # Writing here rather than in the main thread spares the two threads from taking
            # the interpreter from each other, which cost more than the writing itself.
            if self._failure is None and (
                len(self._queue) >= WRITE_AT or time.monotonic() - self._first_queued_at >= GATHER_S
            ):
                self._write_queued()
            self._ack_written()
        except Exception:
            # Never let an exception reach paho's network thread; the message stays
            # unacknowledged and comes back with the session.
            log.exception("could not handle a message on %r", message.topic)

    def _parse(self, message: mqtt.MQTTMessage) -> _Message:
        self._last_message_at = time.monotonic()
        self.counts.received += 1
        if message.retain:
            # A retained message is a device's last value, replayed by the broker at every
            # subscription (each reconnect): not a new reading. Acknowledged, never written.
            self.counts.retained += 1
            MESSAGES.labels("retained").inc()
            return _Message(message.mid, message.qos, Received())
        topic, payload = message.topic, bytes(message.payload)
        try:
            parsed = self.router.parse(topic, payload)
        except Exception as exc:
            # Whatever went wrong with this one message, it must not come back after every
            # restart and stop all MQTT ingestion: it is dead-lettered and acknowledged.
            log.exception("could not parse a message on %r; dead-lettered", topic[:200])
            parsed = Parsed.unreadable(f"the bridge could not parse it ({type(exc).__name__})")
        for reply_topic, reply in parsed.replies:
            log.info("asking for a rebirth on %s", reply_topic)
            REBIRTHS.inc()
            self.mqtt.publish(reply_topic, reply, qos=0)
        sample = False
        if parsed.dropped:
            self.counts.dropped_fields += len(parsed.dropped)
            DROPPED_FIELDS.inc(len(parsed.dropped))
            now = time.monotonic()
            if now - self._dropped_sampled_at >= DROPPED_SAMPLE_EVERY_S:
                self._dropped_sampled_at, sample = now, True
        unit = received(
            self.sink.keys.stream, "mqtt-bridge", self.options.client_id, parsed,
            lambda: {"topic": topic, "payload": payload}, sample_dropped=sample,
        )  # fmt: skip
        return _Message(message.mid, message.qos, unit)

    def _ack_written(self) -> None:
        """Acknowledge the messages written so far.

        Called by paho's network thread for each message, and by the main thread after the
        writes it does itself (a trickle, or retries while Redis is down). An acknowledgement
        sent from the main thread wakes the network thread once each; sent from the network
        thread it costs a fraction of that.
        """
        due = self._acks_due
        while due:
            try:
                mid, qos = due.popleft()
            except IndexError:  # the other thread took the last one
                return
            self.mqtt.ack(mid, qos)

    def _where(self) -> str:
        return self.options.broker.name

    # -- Redis side (main thread, and the network thread's writes) -----------------------------

    def run(self, stop: threading.Event) -> BridgeCounts:
        self._verify_durability(stop)
        v5 = self.options.protocol == 5
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        self.mqtt.connect_async(
            self.options.broker.host,
            self.options.broker.port,
            keepalive=30,
            clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self.mqtt.loop_start()
        backoff = Backoff()
        silent = False
        try:
            while not stop.is_set():
                waiting = bool(self._in_flight or self._queue)
                # What the network thread will not write: a trickle it stopped adding to, or
                # anything once a write failed.
                if waiting and (
                    self._failure is not None
                    or time.monotonic() - self._last_message_at >= GATHER_S
                ):
                    if self._write_queued():
                        backoff.reset()
                        self._ack_written()
                    else:
                        stop.wait(retry_delay(backoff, self._failure))
                    continue
                silent = self._watch(silent)
                stop.wait(GATHER_S if waiting else FLUSH_EVERY_S)
            # Finish what arrived: written and acknowledged, or left to the broker.
            self._write_queued()
            self._ack_written()
        finally:
            self._stopping = True
            self.mqtt.disconnect()
            self.mqtt.loop_stop()
        log.info(
            "bridge stopping: received=%d written=%d dead_lettered=%d retained=%d reconnects=%d "
            "dropped_fields=%d", self.counts.received, self.counts.written,
            self.counts.dead_lettered, self.counts.retained, self.counts.reconnects,
            self.counts.dropped_fields,
        )  # fmt: skip
        return self.counts

    def _verify_durability(self, stop: threading.Event) -> None:
        """Check Redis keeps what the durability setting promises before taking any message:
        the bridge acknowledges a message once Redis has acknowledged its readings."""
        backoff = Backoff()
        while not stop.is_set():
            try:
                verify_durability(self.client, self.settings.durability)
                return
            except RedisUnavailable as exc:
                log.warning("redis unavailable (%s); waiting for it before subscribing", exc)
                stop.wait(backoff.next_delay())

    def _watch(self, silent: bool) -> bool:
        quiet_for = time.monotonic() - self._last_message_at
        now_silent = self._connected.is_set() and quiet_for > self.options.silence_s
        if now_silent and not silent:
            log.warning("connected but no message for %.0fs", quiet_for)
        elif silent and not now_silent:
            log.info("messages are arriving again")
        SILENT.set(1 if now_silent else 0)
        return now_silent

    def _write_queued(self) -> bool:
        """Write everything queued, batch by batch; False (and the network thread stops
        writing) if Redis failed."""
        with self._write_lock:
            while self._in_flight or self._queue:
                if not self._write_batch():
                    return False
            return True

    def _write_batch(self) -> bool:
        """Write up to BATCH_MAX queued messages, then hand them over to be acknowledged; False
        if Redis failed (the messages stay unacknowledged and the same batch is tried again)."""
        if not self._in_flight:
            take = min(BATCH_MAX, len(self._queue))
            self._in_flight = [self._queue.popleft() for _ in range(take)]
            self.sink.stage([m.unit for m in self._in_flight])
        try:
            self.sink.write([m.unit for m in self._in_flight])
        except (RedisUnavailable, RedisCommandFailed) as exc:
            # Held back by a group, the bridge tries again every HELD_BACK_RETRY_S: one line
            # when that starts, not one per try.
            if type(exc) is not type(self._failure):
                log.warning("%s; holding %d messages unacknowledged", why_writes_wait(exc),
                            len(self._in_flight) + len(self._queue))  # fmt: skip
            self._failure = exc
            return False
        if self._failure is not None:
            log.info("writing again")
            self._failure = None
        batch, self._in_flight = self._in_flight, []
        self._acks_due.extend((m.mid, m.qos) for m in batch if m.qos > 0)
        entries = sum(len(m.unit.entries) for m in batch)
        dead = sum(len(m.unit.dead) for m in batch)
        self.counts.written += entries
        self.counts.dead_lettered += dead
        MESSAGES.labels(outcome="written").inc(entries)
        MESSAGES.labels(outcome="dead_lettered").inc(dead)
        return True
