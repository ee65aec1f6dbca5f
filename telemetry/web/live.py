"""Live tails over websockets: `/stream/{name}` for a stream, `/ws/alerts` for alert changes.

Each message is one entry, `{"id": ..., "fields": {...}}`. One reader per stream (a hub) feeds
every client of that stream, so a thousand clients cost Redis one XREAD. Each client has its own
sender: a client that stops reading fills only its own queue and is then closed (code 1013, with
the last ID it was sent, to resume from) while the others carry on.

With `max_frequency=N` a client gets at most N messages a second: extras are dropped, and the
next message carries `"skipped": k`, the number of entries left out before it, so the client sees
the newest entry at its own pace. With `last_id=ID` a client first gets every entry after ID
still in the stream, then the live tail, with nothing lost in between. With `sensor=ID` only
that sensor's entries are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from ingest.backoff import Backoff
from ingest.contract.reading import SENSOR_ID, entry_order, parse_entry_id
from ingest.keys import StreamKeys
from ingest.settings import Settings
from ingest.shards import shard_of, shards
from telemetry.web.auth import Access

log = logging.getLogger(__name__)

QUEUE_LIMIT = 10_000
READ_COUNT = 1000
CLOSE_TOO_SLOW = 1013
CLOSE_UNAUTHORISED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_UNKNOWN = 4404
# Streams found by glob that may be watched at once, and the longest name taken.
MAX_HUBS = 1000
MAX_STREAM_NAME = 256
CLOSE_BAD_REQUEST = 4400
Entry = tuple[str, dict[str, str]]


def _resume_point(last_id: str | None) -> str | None:
    """Why `last_id` cannot be resumed from, or None."""
    if last_id is None:
        return None
    try:
        parse_entry_id(last_id)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(eq=False)
class Subscriber:
    """One client's view of a hub: a bounded queue, or with a rate only the newest entry."""

    limited: bool
    # Only entries of this sensor, when set.
    sensor: str | None = None
    queue: asyncio.Queue[Entry] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    newest: Entry | None = None
    unsent: int = 0
    overflowed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, entry: Entry) -> bool:
        return self.sensor is None or entry[1].get("sensor_id") == self.sensor

    def offer(self, entry: Entry) -> None:
        """An entry the hub chose for this subscriber (its sensor's, when it has one)."""
        if self.limited:
            self.newest = entry
            self.unsent += 1
            return
        try:
            self.queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.overflowed = True
            self.wake.set()


class StreamHub:
    """Reads one stream from where it stands and hands each new entry to every subscriber.

    Subscribers of one sensor are indexed by it, so a dashboard following one sensor of a large
    fleet costs a dictionary lookup per entry, not a look at every entry.
    """

    def __init__(self, client: aioredis.Redis, stream: str, block_ms: int) -> None:
        self.client = client
        self.stream = stream
        self.block_ms = block_ms
        self.everything: set[Subscriber] = set()
        self.by_sensor: dict[str, set[Subscriber]] = {}
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    @property
    def subscribers(self) -> int:
        return len(self.everything) + sum(len(s) for s in self.by_sensor.values())

    async def join(self, subscriber: Subscriber) -> None:
        """Subscribe; once this returns, every entry added from now on reaches the subscriber."""
        async with self._starting:
            if subscriber.sensor is None:
                self.everything.add(subscriber)
            else:
                self.by_sensor.setdefault(subscriber.sensor, set()).add(subscriber)
            if self._task is None or self._task.done():
                newest: list[Entry] = await self.client.xrevrange(self.stream, count=1)  # type: ignore[assignment]
                position = newest[0][0] if newest else "0-0"
                self._task = asyncio.create_task(self._read(position), name=f"hub {self.stream}")

    def leave(self, subscriber: Subscriber) -> None:
        if subscriber.sensor is None:
            self.everything.discard(subscriber)
            return
        watching = self.by_sensor.get(subscriber.sensor, set())
        watching.discard(subscriber)
        if not watching:
            self.by_sensor.pop(subscriber.sensor, None)

    async def _read(self, position: str) -> None:
        backoff = Backoff()
        # Ends as soon as nobody listens; a later `join` starts a new reader.
        while self.subscribers:
            try:
                reply: Any = await self.client.xread(
                    {self.stream: position}, count=READ_COUNT, block=self.block_ms
                )
                backoff.reset()
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                log.warning("live tail of %s: redis unavailable (%s); retrying", self.stream, exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            by_sensor = self.by_sensor
            for _, entries in reply or []:
                for entry in entries:
                    for subscriber in tuple(self.everything):
                        subscriber.offer(entry)
                    if by_sensor:
                        for subscriber in tuple(by_sensor.get(entry[1].get("sensor_id", ""), ())):
                            subscriber.offer(entry)
                position = entries[-1][0]


class Live:
    """The hubs of one API process and the rules for who may watch what."""

    def __init__(
        self, settings: Settings, clients: Sequence[aioredis.Redis], access: Access
    ) -> None:
        """`clients`: one per shard, in order."""
        self.settings = settings
        self.shards = shards(settings)
        self.access = access
        # Each exposed stream, and the client of the shard it belongs to.
        self.exposed = {
            stream: client
            for shard, client in zip(self.shards, clients, strict=True)
            for stream in (shard.stream, shard.settings.alerts_stream,
                           StreamKeys(shard.stream).dead)
        }  # fmt: skip
        self.client = clients[0]
        self.origins = {o.strip() for o in (settings.api_origins or "").split(",") if o.strip()}
        # More streams, by glob (TELEMETRY_API_STREAMS), read through the first shard's client.
        self.patterns = [g.strip() for g in (settings.api_streams or "").split(",") if g.strip()]
        self.hubs: dict[str, StreamHub] = {}

    def client_of(self, stream: str) -> aioredis.Redis:
        return self.exposed.get(stream, self.client)

    def hub(self, stream: str) -> StreamHub:
        if stream not in self.hubs:
            self.hubs[stream] = StreamHub(self.client_of(stream), stream, self.settings.block_ms)
        return self.hubs[stream]

    def left(self, stream: str) -> None:
        """Forget the hub of a stream found by glob once nobody watches it."""
        hub = self.hubs.get(stream)
        if stream not in self.exposed and hub is not None and not hub.subscribers:
            del self.hubs[stream]

    def _matched(self, stream: str) -> bool:
        return any(fnmatch.fnmatchcase(stream, glob) for glob in self.patterns)

    async def refusal(self, websocket: WebSocket, stream: str, ticket: str | None
                      ) -> tuple[int, str] | None:  # fmt: skip
        """Why this client may not watch this stream (close code and reason), or None."""
        grant = self.access.websocket_scope(websocket.headers, ticket)
        if grant is None:
            return CLOSE_UNAUTHORISED, "a ticket (POST /ws-ticket) or a token header is required"
        wanted = self.access.needed("GET", f"/stream/{stream}")
        if wanted is not None and grant < wanted:
            return CLOSE_FORBIDDEN, "this token may not watch this stream"
        origin = websocket.headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, websocket.headers):
            return CLOSE_FORBIDDEN, f"origin {origin} is not allowed"
        if stream in self.exposed:
            return None
        if len(stream) > MAX_STREAM_NAME:
            return CLOSE_BAD_REQUEST, f"a stream name has at most {MAX_STREAM_NAME} characters"
        kind = await self.client.type(stream)
        if self._matched(stream):
            if kind not in ("stream", "none"):
                return CLOSE_FORBIDDEN, f"{stream} is not a stream"
            if stream not in self.hubs and len(self.hubs) >= MAX_HUBS:
                return CLOSE_TOO_SLOW, f"{MAX_HUBS} streams are watched already; try later"
            return None
        if kind != "none":
            return CLOSE_FORBIDDEN, f"stream {stream} is not exposed (TELEMETRY_API_STREAMS)"
        return CLOSE_UNKNOWN, f"no stream {stream}"

    def _origin_allowed(self, origin: str, headers: Mapping[str, str]) -> bool:
        return origin in self.origins or urlsplit(origin).netloc == headers.get("host")


def live_router(settings: Settings, clients: Sequence[aioredis.Redis], access: Access) -> APIRouter:
    """`clients`: an asyncio client per shard, in order."""
    router = APIRouter()
    live = Live(settings, clients, access)

    async def tail(websocket: WebSocket, streams: Sequence[str], max_frequency: float | None,
                   last_id: str | None, ticket: str | None, sensor: str | None = None
                   ) -> None:  # fmt: skip
        """Send the entries of `streams` (one, or every shard's) as they arrive."""
        refused = await live.refusal(websocket, streams[0], ticket)
        bad_resume = _resume_point(last_id)
        if refused is None and bad_resume is not None:
            refused = CLOSE_BAD_REQUEST, f"last_id: {bad_resume}"
        if refused is not None:
            # Accepted first, so the client sees the close code and reason.
            await websocket.accept()
            await websocket.close(code=refused[0], reason=refused[1])
            return
        subscriber = Subscriber(limited=max_frequency is not None, sensor=sensor)
        hubs = [live.hub(stream) for stream in streams]
        # Joined before the connection is accepted: every entry added once the client is
        # connected reaches it.
        for hub in hubs:
            await hub.join(subscriber)
        sender = _Sender(websocket, subscriber, max_frequency)
        try:
            await websocket.accept()
            if last_id is not None:
                for stream in streams:
                    await sender.replay(live.client_of(stream), stream, last_id)
            await sender.run()
        except WebSocketDisconnect:
            pass
        finally:
            for hub in hubs:
                hub.leave(subscriber)
                live.left(hub.stream)

    @router.websocket("/stream/{name}")
    async def stream(
        websocket: WebSocket,
        name: str,
        max_frequency: float | None = Query(None, gt=0, le=1000),
        last_id: str | None = None,
        ticket: str | None = None,
        sensor: str | None = Query(None, pattern=f"^{SENSOR_ID.pattern}$"),
    ) -> None:
        """Live tail of a stream (readings, alert changes, dead letters), optionally of one
        sensor's entries only; see module docs."""
        await tail(websocket, [name], max_frequency, last_id, ticket, sensor)

    @router.websocket("/ws/readings")
    async def readings(
        websocket: WebSocket,
        sensor: str = Query(pattern=f"^{SENSOR_ID.pattern}$"),
        max_frequency: float | None = Query(None, gt=0, le=1000),
        last_id: str | None = None,
        ticket: str | None = None,
    ) -> None:
        """One sensor's readings as they arrive, from whichever shard holds them."""
        stream = live.shards[shard_of(sensor, len(live.shards))].stream
        await tail(websocket, [stream], max_frequency, last_id, ticket, sensor)

    @router.websocket("/ws/alerts")
    async def alerts(
        websocket: WebSocket,
        last_id: str | None = None,
        ticket: str | None = None,
    ) -> None:
        """Alert changes as they happen, of every shard."""
        streams = [shard.settings.alerts_stream for shard in live.shards]
        await tail(websocket, streams, None, last_id, ticket)

    return router


class _Sender:
    def __init__(
        self, websocket: WebSocket, subscriber: Subscriber, max_frequency: float | None
    ) -> None:
        self.websocket = websocket
        self.subscriber = subscriber
        self.interval = None if max_frequency is None else 1.0 / max_frequency
        self.last_sent = "0-0"

    async def send(self, entry: Entry, skipped: int = 0) -> None:
        message: dict[str, Any] = {"id": entry[0], "fields": entry[1]}
        if skipped:
            message["skipped"] = skipped
        await self.websocket.send_json(message)
        self.last_sent = entry[0]

    async def replay(self, client: aioredis.Redis, stream: str, last_id: str) -> None:
        """Everything after `last_id` still in the stream; the hub queues what arrives meanwhile."""
        start = f"({last_id}"
        skipped = 0
        newest: Entry | None = None
        while True:
            page: list[Entry] = await client.xrange(stream, min=start, count=READ_COUNT)  # type: ignore[assignment]
            for entry in page:
                if not self.subscriber.wants(entry):
                    continue
                if self.interval is None:
                    await self.send(entry)
                else:
                    skipped += newest is not None
                    newest = entry
            if len(page) < READ_COUNT:
                break
            start = f"({page[-1][0]}"
        if newest is not None:
            await self.send(newest, skipped)

    async def run(self) -> None:
        if self.interval is None:
            await self._run_every_entry()
        else:
            await self._run_limited(self.interval)

    async def _run_every_entry(self) -> None:
        subscriber = self.subscriber
        queue = subscriber.queue
        done = entry_order(self.last_sent)
        # Watching the receiving side is how a client that went away is noticed while the
        # stream is quiet.
        gone = asyncio.ensure_future(self.websocket.receive())
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                waker = asyncio.ensure_future(subscriber.wake.wait())
                await asyncio.wait({getter, waker, gone}, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                if gone.done() and gone.result()["type"] != "websocket.disconnect":
                    gone = asyncio.ensure_future(self.websocket.receive())
                if gone.done() or subscriber.overflowed:
                    getter.cancel()
                    break
                # What queued up while one entry was awaited goes out without a wait per entry,
                # so a client that fell behind catches up at the speed of the socket.
                waiting = [await getter]
                while not queue.empty():
                    waiting.append(queue.get_nowait())
                for entry in waiting:
                    if subscriber.overflowed:
                        break
                    if entry_order(entry[0]) > done:
                        await self.send(entry)
        finally:
            gone.cancel()
        if subscriber.overflowed:
            await self.websocket.close(
                code=CLOSE_TOO_SLOW, reason=f"too slow; resume with last_id={self.last_sent}"
            )

    async def _run_limited(self, interval: float) -> None:
        subscriber = self.subscriber
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            entry, unsent = subscriber.newest, subscriber.unsent
            if entry is not None and unsent and entry_order(entry[0]) > entry_order(self.last_sent):
                subscriber.unsent = 0
                await self.send(entry, unsent - 1)
            with contextlib.suppress(TimeoutError):
                # Wakes early only to notice the client went away.
                message = await asyncio.wait_for(
                    self.websocket.receive(), max(0.0, interval - (loop.time() - started))
                )
                if message["type"] == "websocket.disconnect":
                    return
