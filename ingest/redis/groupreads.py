"""A consumer's reads of new entries: each an XREADGROUP in a MULTI with the trim check and the
group's hand-over count, several sent at once on a pool connection of their own (so the next
reads can be under way while a batch is processed), their replies parsed from the socket's
bytes when the runner decodes entries from them, else by hiredis.

This and the writer are where the group runner and the producers use redis-py's connections
directly (`internals` checks what they rely on).
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis.client import CaseInsensitiveDict, Pipeline

from ingest.errors import IngestError
from ingest.keys import StreamKeys
from ingest.redis.errors import redis_errors
from ingest.redis.replies import EntryLayout, RawEntry, ReadReply, parse_reads
from ingest.redis.scripts import LuaScript

TRIM_CHECK = LuaScript("ingest", "trim_check.lua", library="group_info.lua")
_RECV_BYTES = 1 << 20
# A read's reply, its entries parsed from the bytes or by hiredis.
Read = ReadReply[EntryLayout] | ReadReply[list[RawEntry]]
# Replies the runner parses itself: redis-py would build a dict per entry first.
_RAW_REPLIES = ("XREADGROUP", "XAUTOCLAIM")


class ScriptsFlushed(IngestError):
    """The server forgot a Lua script between loading and use."""


@dataclass
class SentReads:
    """Reads sent on a pool connection of their own, their replies not read yet."""

    connection: redis.Connection
    count: int


def stream_entries(reply: object) -> list[RawEntry]:
    """The entries of an XREADGROUP reply for one stream (RESP2 or RESP3)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values())))
    if not isinstance(reply, list):
        raise TypeError(f"not an XREADGROUP reply: {type(reply).__name__}")
    return list(reply[0][1])


class GroupReads:
    """Reads for one consumer of one group, and pipelines that leave stream replies as Redis
    sent them."""

    def __init__(
        self,
        client: redis.Redis,
        keys: StreamKeys,
        group: str,
        consumer: str,
        read_batch: int,
        *,
        from_bytes: bool,
    ) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self.read_batch = read_batch
        # Parse the replies from their bytes (for a runner that decodes entries from them).
        self.from_bytes = from_bytes
        # The ECHO sent after the reads, and its reply: the replies' bytes end with it.
        self._ending = secrets.token_hex(16)
        self._ending_bytes = f"${len(self._ending)}\r\n{self._ending}\r\n".encode()
        self._raw_callbacks = CaseInsensitiveDict(
            {
                name: callback
                for name, callback in client.response_callbacks.items()
                if name.upper() not in _RAW_REPLIES
            }
        )

    def pipeline(self, *, transaction: bool) -> Pipeline:
        """A pipeline on the client that leaves stream replies as Redis sent them."""
        pipe = self.client.pipeline(transaction=transaction)
        pipe.response_callbacks = self._raw_callbacks
        return pipe

    def load_scripts(self) -> None:
        with redis_errors():
            TRIM_CHECK.load(self.client)

    def send(self, count: int) -> SentReads:
        """Send `count` XREADGROUPs of new entries at once, each in a MULTI that counts what
        trimming took first and reads the group's hand-over count."""
        read = (
            "XREADGROUP", "GROUP", self.group, self.consumer,
            "COUNT", self.read_batch, "STREAMS", self.keys.stream, ">",
        )  # fmt: skip
        trim_check = TRIM_CHECK.command([self.keys.stream, self.keys.lost], [self.group])
        handovers = ("GET", self.keys.handovers(self.group))
        transaction = [("MULTI",), trim_check, handovers, read, ("EXEC",)]
        commands = transaction * count
        if self.from_bytes:
            commands.append(("ECHO", self._ending))
        pool = self.client.connection_pool
        with redis_errors():
            connection: redis.Connection = pool.get_connection()
            try:
                packed = connection.pack_commands(commands)  # type: ignore[no-untyped-call]
                connection.send_packed_command(packed)  # type: ignore[no-untyped-call]
            except BaseException:
                connection.disconnect()  # type: ignore[no-untyped-call]
                pool.release(connection)
                raise
        return SentReads(connection, count)

    def receive(self, sent: SentReads, on_replying: Callable[[], None]) -> list[Read]:
        """The replies to reads sent with `send`. Calls `on_replying` as Redis starts replying,
        before the replies are parsed."""
        connection = sent.connection
        with redis_errors():
            try:
                # Redis has run the reads once it replies: writes sent on another connection
                # before that could run first and hold the replies up.
                connection.can_read(timeout=self._timeout_s(connection))
                on_replying()
                return self._parse(connection, sent.count)
            except BaseException:
                connection.disconnect()  # type: ignore[no-untyped-call]
                raise
            finally:
                self.client.connection_pool.release(connection)

    @staticmethod
    def _timeout_s(connection: redis.Connection) -> float:
        # `connect` always sets one, longer than a blocking read.
        timeout = connection.socket_timeout
        assert isinstance(timeout, int | float), "clients are made with a socket timeout"
        return float(timeout)

    def drop(self, sent: SentReads) -> None:
        """Forget reads sent: their entries stay pending with the consumer, to be re-read."""
        sent.connection.disconnect()  # type: ignore[no-untyped-call]
        self.client.connection_pool.release(sent.connection)

    def _parse(self, connection: redis.Connection, count: int) -> list[Read]:
        """Each read's reply: parsed from the replies' bytes when asked, else (or when that
        parser gives up) by hiredis."""
        if not self.from_bytes:
            return [_parsed_transaction(connection.read_response) for _ in range(count)]
        data = read_until(connection, self._ending_bytes)
        parsed = parse_reads(data, count, self.keys.stream)
        if parsed is not None:
            return list(parsed)
        next_reply = hiredis_replies(connection, data)
        reads: list[Read] = [_parsed_transaction(next_reply) for _ in range(count)]
        next_reply()
        return reads


def _parsed_transaction(next_reply: Callable[[], object]) -> ReadReply[list[RawEntry]]:
    """One MULTI, trim check, GET and XREADGROUP, EXEC, each reply got by calling
    `next_reply`."""
    for _ in range(4):
        next_reply()
    results = next_reply()
    if not isinstance(results, list):
        raise TypeError(f"not a transaction's results: {type(results).__name__}")
    for result in results:
        if isinstance(result, redis.exceptions.NoScriptError):
            # Someone flushed the scripts. The read in the same MULTI still ran, so its
            # entries are pending here: recover them like after an outage.
            raise ScriptsFlushed from result
        if isinstance(result, redis.ResponseError):
            raise result
    (lost, last_delivered), handovers, reply = results
    return ReadReply(int(lost), str(last_delivered), int(handovers or 0), stream_entries(reply))


def read_until(connection: redis.Connection, ending: bytes) -> bytes:
    """Bytes from the connection's socket until they end with `ending` (the reply to the last
    command sent, unique enough that it ends nothing else)."""
    sock: socket.socket | None = connection._sock
    if sock is None:
        raise redis.ConnectionError("not connected to Redis")
    chunks = bytearray()
    view = memoryview(bytearray(_RECV_BYTES))
    try:
        while not chunks.endswith(ending):
            received = sock.recv_into(view)
            if received == 0:
                raise redis.ConnectionError("Redis closed the connection")
            chunks += view[:received]
    except TimeoutError as exc:
        raise redis.TimeoutError("Timeout reading from socket") from exc
    except OSError as exc:
        raise redis.ConnectionError(f"Error while reading from socket: {exc}") from exc
    return bytes(chunks)


def hiredis_replies(connection: redis.Connection, data: bytes) -> Callable[[], object]:
    """A call that returns the replies in `data` one at a time, as the connection's own parser
    (hiredis) would have returned them from its socket."""
    reader = getattr(connection._parser, "_reader", None)
    if reader is None:
        raise RuntimeError("reading replies from bytes needs redis-py's hiredis parser")
    reader.feed(data)
    return connection.read_response
