"""Websocket fan-out against a real `telemetry api` server: rate limits hold per client, a client
that stops reading delays nobody else, and an unlimited client misses nothing."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from ingest.connection import connect
from ingest.reading import entry_time_ms
from ingest.settings import Settings
from ingest.writer import StreamWriter
from telemetry.localserver import free_port, port_open
from tests.conftest import child_env

RATE = 5000
SECONDS = 6.0


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


def write_at_rate(settings: Settings, stop: threading.Event) -> list[str]:
    """RATE entries a second until stopped; the IDs written."""
    writer = StreamWriter(connect(settings), settings.stream, 10**7, batch_size=100,
                          background_flush=False)  # fmt: skip
    ids: list[str] = []
    started = time.monotonic()
    sent = 0
    while not stop.is_set():
        due = int((time.monotonic() - started) * RATE)
        if due > sent:
            batch = [
                {"sensor_id": f"s{(sent + i) % 50}", "temp": "21.5"} for i in range(due - sent)
            ]
            ids += writer.write(batch)
            sent = due
        time.sleep(0.005)
    return ids


Received = list[tuple[float, dict[str, Any]]]


async def watch(url: str, seconds: float, *, reading: bool = True) -> Received:
    got: Received = []
    async with websockets.connect(url, max_queue=None if reading else 1) as ws:
        deadline = time.monotonic() + seconds
        if not reading:
            await asyncio.sleep(seconds)
            return got
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            got.append((time.monotonic(), json.loads(message)))
    return got


async def clients(
    base: str, stream: str
) -> tuple[list[list[tuple[float, dict]]], list[tuple[float, dict]]]:  # type: ignore[type-arg]
    limited = [watch(f"{base}/stream/{stream}?max_frequency=1", SECONDS) for _ in range(50)]
    stalled = watch(f"{base}/stream/{stream}", SECONDS, reading=False)
    everything = watch(f"{base}/stream/{stream}", SECONDS)
    results = await asyncio.gather(*limited, stalled, everything)
    return list(results[:50]), results[-1]


def test_fifty_rate_limited_clients_one_stalled_and_one_taking_everything(
    settings: Settings, api_server: str
) -> None:
    stop = threading.Event()
    written: list[str] = []
    writer = threading.Thread(target=lambda: written.extend(write_at_rate(settings, stop)))
    writer.start()
    try:
        limited, everything = asyncio.run(clients(api_server, settings.stream))
    finally:
        stop.set()
        writer.join()
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
