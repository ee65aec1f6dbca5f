"""Websocket fan-out against a real `telemetry api` server: rate limits hold per client, a client
that stops reading delays nobody else, and an unlimited client misses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import websockets
from websockets.frames import Close

from ingest.contract.reading import entry_time_ms
from ingest.redis.connection import connect
from ingest.redis.writer import StreamWriter
from ingest.settings import Settings
from telemetry.localserver import free_port, port_open
from tests.conftest import child_env

RATE = 5000
SECONDS = 4.0


@pytest.fixture
def api_server(settings: Settings) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "telemetry", "api"],
        env=child_env(settings, TELEMETRY_API_PORT=str(port), TELEMETRY_LOG_LEVEL="WARNING"),
    )
    deadline = time.monotonic() + 30
    while not port_open(port):
        assert time.monotonic() < deadline and process.poll() is None, "api did not start"
        time.sleep(0.1)
    yield f"ws://127.0.0.1:{port}"
    process.terminate()
    process.wait(30)


def write_at_rate(settings: Settings, stop: threading.Event, padding: str) -> list[str]:
    """RATE entries a second until stopped, each with `padding` in a field no consumer reads;
    the IDs written."""
    writer = StreamWriter(connect(settings), settings.stream, 10**7, batch_size=100)
    extra = {"_padding": padding} if padding else {}
    ids: list[str] = []
    started = time.monotonic()
    sent = 0
    while not stop.is_set():
        due = int((time.monotonic() - started) * RATE)
        if due > sent:
            batch = [
                {"sensor_id": f"s{(sent + i) % 50}", "temp": "21.5", **extra}
                for i in range(due - sent)
            ]
            ids += writer.write(batch)
            sent = due
        time.sleep(0.005)
    return ids


@contextlib.contextmanager
def writing(settings: Settings, padding: str = "") -> Iterator[list[str]]:
    """Writes at RATE while the block runs; the list holds the IDs written once it has ended."""
    stop = threading.Event()
    written: list[str] = []
    writer = threading.Thread(target=lambda: written.extend(write_at_rate(settings, stop, padding)))
    writer.start()
    try:
        yield written
    finally:
        stop.set()
        writer.join()


Received = list[tuple[float, dict[str, Any]]]


async def watch(url: str, seconds: float) -> Received:
    got: Received = []
    # The server may be busy sending when the client leaves: no need to wait long for its
    # closing handshake.
    async with websockets.connect(url, max_queue=None, close_timeout=1) as ws:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            got.append((time.monotonic(), json.loads(message)))
    return got


@dataclass
class Stalled:
    """What a client that read nothing for a while found when it read again."""

    ids: list[str]
    close: Close | None


async def stall(url: str, seconds: float) -> Stalled:
    """Reads nothing for `seconds`, then what there is for at most as long again. A small
    receive buffer and no compression let the server's socket fill within a second or two."""
    address = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((address.hostname, address.port))
    ids: list[str] = []
    async with websockets.connect(
        url, sock=sock, max_queue=1, ping_interval=None, compression=None, close_timeout=1
    ) as ws:
        ws.transport.pause_reading()
        await asyncio.sleep(seconds)
        ws.transport.resume_reading()
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                ids.append(json.loads(await asyncio.wait_for(ws.recv(), left))["id"])
        except websockets.ConnectionClosed as closed:
            return Stalled(ids, closed.rcvd)
        except TimeoutError:
            pass
    return Stalled(ids, None)


async def clients(base: str, stream: str) -> tuple[list[Received], Stalled, Received]:
    url = f"{base}/stream/{stream}"
    return await asyncio.gather(
        asyncio.gather(*(watch(f"{url}?max_frequency=1", SECONDS) for _ in range(50))),
        stall(url, SECONDS),
        watch(url, SECONDS),
    )


def test_fifty_rate_limited_clients_one_stalled_and_one_taking_everything(
    settings: Settings, api_server: str
) -> None:
    with writing(settings) as written:
        limited, _, everything = asyncio.run(clients(api_server, settings.stream))
    for messages in limited:
        # At most one a second (the first comes at once), and they keep coming. Each carries
        # the newest entry when it was sent (5,000 a second arrive), so the entry times show the
        # server's pacing, free of the client's own scheduling; where the writer itself paused,
        # the arrival times show it instead. Two messages too close together fail both.
        assert SECONDS - 2 <= len(messages) <= SECONDS + 1
        sent = [entry_time_ms(m["id"]) for _, m in messages]
        arrived = [at * 1000 for at, _ in messages]
        gaps = zip(itertools.pairwise(sent), itertools.pairwise(arrived), strict=True)
        assert all(s2 - s1 >= 900 or a2 - a1 >= 900 for (s1, s2), (a1, a2) in gaps)
        assert all(m["skipped"] > 1000 for _, m in messages[1:])
    ids = [m["id"] for _, m in everything]
    assert len(ids) > RATE * (SECONDS - 2)
    # Every entry written while it listened, in order, none missing.
    first = written.index(ids[0])
    assert ids == written[first : first + len(ids)]


def test_a_client_that_stops_reading_is_closed_with_where_to_resume(
    settings: Settings, api_server: str
) -> None:
    # Kilobyte entries fill the socket buffers between server and client within a second or
    # two; the client's queue on the server fills next, and the server closes the client.
    with writing(settings, padding="x" * 1000) as written:
        stalled = asyncio.run(stall(f"{api_server}/stream/{settings.stream}", SECONDS))
    assert stalled.close is not None
    assert stalled.close.code == 1013
    resume = stalled.close.reason.removeprefix("too slow; resume with last_id=")
    # What it found is a run of the stream, and the ID in the reason is the last entry of it:
    # resuming from there neither loses nor repeats an entry.
    first = written.index(stalled.ids[0])
    assert stalled.ids == written[first : first + len(stalled.ids)]
    assert resume == stalled.ids[-1]
