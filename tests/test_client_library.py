"""The redis-py internals the fast paths rely on: there in the installed release, and named in
one line when an upgrade moved one."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import redis.connection

from ingest.redis import internals
from ingest.redis.connection import connect
from ingest.settings import Settings
from tests.conftest import child_env


def test_the_installed_redis_py_has_everything_the_fast_paths_use(settings: Settings) -> None:
    assert internals.missing_internals() == []
    pool = connect(settings).connection_pool
    connection = pool.get_connection()
    try:
        # Only a connected connection has these; the reply parser reads from both.
        assert isinstance(connection._sock, socket.socket)
        assert connection._parser._reader is not None
    finally:
        pool.release(connection)


def test_a_moved_internal_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(redis.connection.AbstractConnection, "can_read")
    monkeypatch.setattr(internals, "_checked", False)
    with pytest.raises(internals.ClientLibraryError) as raised:
        internals.check_client_library()
    message = str(raised.value)
    assert "Connection.can_read" in message
    assert "\n" not in message


MOVED = """
import sys
import redis.connection
del redis.connection.AbstractConnection.can_read
from telemetry.cli import main
sys.exit(main(["aggregate", "--drain"]))
"""


def test_a_command_meeting_a_moved_internal_exits_with_one_line(settings: Settings) -> None:
    done = subprocess.run(
        [sys.executable, "-c", MOVED], env=child_env(settings), capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "lacks what the stream fast paths use: Connection.can_read" in done.stderr
