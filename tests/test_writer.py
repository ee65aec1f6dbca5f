"""The batched writer against a real Redis: batching, the age flush, MAXLEN, outages."""

from __future__ import annotations

import pytest
import redis

from ingest.errors import RedisUnavailable
from ingest.keys import StreamKeys
from ingest.redis.connection import connect
from ingest.redis.writer import StreamWriter
from ingest.settings import Settings
from tests.conftest import RedisProcess, make_settings
from tests.helpers import entries


def test_batches_are_written_in_order_with_their_ids(client: redis.Redis) -> None:
    writer = StreamWriter(client, "app:event", 10_000, batch_size=100)
    for i in range(250):
        writer.add({"sensor_id": "s1", "seq": str(i), "temp": f"{i}.5"})
    # Two full batches went out as they filled; the rest waits for a flush.
    assert client.xlen("app:event") == 200
    ids = writer.flush()
    written = entries(client, "app:event")
    assert [f["seq"] for _, f in written] == [str(i) for i in range(250)]
    assert ids == [entry_id for entry_id, _ in written[200:]]
    assert client.hget(StreamKeys("app:event").meta, "maxlen") == "10000"


def test_maxlen_caps_the_stream(client: redis.Redis) -> None:
    writer = StreamWriter(client, "app:event", 1000, batch_size=500)
    for i in range(20_000):
        writer.add({"sensor_id": "s1", "seq": str(i), "temp": "1"})
    writer.flush()
    # MAXLEN ~ trims whole nodes of 100 entries, so the length stays within one node of N.
    assert 1000 <= client.xlen("app:event") < 1100


def test_non_ascii_and_odd_bytes_survive(client: redis.Redis) -> None:
    writer = StreamWriter(client, "app:event", 1000)
    odd = {"sensor_id": "sensör", "note\r\n": "€ \udcff", "temp": "1"}
    writer.add(odd)
    writer.flush()
    [(_, fields)] = entries(client, "app:event")
    assert fields == odd


def test_an_outage_keeps_the_batch_and_a_later_flush_writes_it(own_redis: RedisProcess) -> None:
    settings = make_settings(own_redis.url)
    client = connect(settings, socket_timeout_s=0.5)
    writer = StreamWriter(client, "app:event", 1000, batch_size=10)
    writer.add_many([{"sensor_id": "s1", "seq": str(i), "temp": "1"} for i in range(5)])
    own_redis.pause()
    try:
        with pytest.raises(RedisUnavailable):
            writer.flush()
        assert writer.buffered == 5
    finally:
        own_redis.resume()
    writer.flush()
    seqs = [f["seq"] for _, f in entries(client, "app:event")]
    # At-least-once: the paused server may have taken the first send too.
    assert set(seqs) == {str(i) for i in range(5)}
    assert writer.buffered == 0


def test_settings_object_is_what_writers_use(settings: Settings) -> None:
    writer = StreamWriter(
        connect(settings), settings.stream, settings.maxlen, batch_size=settings.write_batch
    )
    writer.add({"sensor_id": "s", "temp": "2"})
    writer.close()
    assert connect(settings).xlen(settings.stream) == 1
