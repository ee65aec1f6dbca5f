"""What this package relies on in redis-py beyond its documented API, checked once at start so
that a dependency upgrade that moved one is a one-line error, not a worker crashing mid-run.

The fast paths write and read stream commands on pool connections directly: the writer packs
a batch as one payload, and the group runner sends its reads ahead and parses their replies
from the socket's bytes.
"""

from __future__ import annotations

import logging

import redis
import redis.client
import redis.connection
from redis.utils import HIREDIS_AVAILABLE

from ingest.errors import SettingsError

log = logging.getLogger(__name__)

# The redis-py releases the fast paths were tested with (pyproject.toml pins the same range).
TESTED_VERSIONS = ((8, 1), (8, 2))
CONNECTION_METHODS = ("send_packed_command", "pack_commands", "read_response", "can_read")


class ClientLibraryError(SettingsError):
    """The installed redis-py lacks something the fast paths rely on."""


def missing_internals() -> list[str]:
    """What the fast paths use and the installed redis-py does not have."""
    missing = [
        f"Connection.{name}"
        for name in CONNECTION_METHODS
        if not _implemented(getattr(redis.connection.Connection, name, None))
    ]
    connection = redis.connection.Connection()  # type: ignore[no-untyped-call]
    if not hasattr(connection, "_sock"):
        missing.append("Connection._sock")
    if not hasattr(connection, "_parser"):
        missing.append("Connection._parser")
    if not hasattr(redis.client, "CaseInsensitiveDict"):
        missing.append("redis.client.CaseInsensitiveDict")
    if not hasattr(redis.Redis(), "response_callbacks"):
        missing.append("Redis.response_callbacks")
    if not HIREDIS_AVAILABLE:
        missing.append("hiredis (install redis[hiredis])")
    return missing


def _implemented(method: object) -> bool:
    return callable(method) and not getattr(method, "__isabstractmethod__", False)


_checked = False


def check_client_library() -> None:
    """Raise ClientLibraryError naming what moved; warn once about an untested version."""
    global _checked  # noqa: PLW0603 - once per process
    if _checked:
        return
    missing = missing_internals()
    if missing:
        raise ClientLibraryError(
            f"redis-py {redis.__version__} lacks what the stream fast paths use: "
            f"{', '.join(missing)}; install a tested version (pip install 'redis[hiredis]"
            ">=8.1,<8.3')"
        )
    version = tuple(int(part) for part in redis.__version__.split(".")[:2])
    if version not in TESTED_VERSIONS:
        log.warning("redis-py %s is not a version the fast paths were tested with (8.1, 8.2)",
                    redis.__version__)  # fmt: skip
    _checked = True
