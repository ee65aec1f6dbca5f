"""What a Redis crash may lose, and whether the Redis in use keeps that promise.

`everysec`: Redis writes its append-only file every second, so a crash loses up to about a
second of writes that producers already saw acknowledged (the bridge has acknowledged those
MQTT messages by then). `always`: Redis writes and fsyncs every write before it replies, so a
reading a producer saw acknowledged survives a crash of Redis or of its machine.
"""

from __future__ import annotations

import logging

import redis

from ingest.errors import RedisCommandFailed, SettingsError
from ingest.redis.errors import redis_errors

log = logging.getLogger(__name__)

MODES = ("everysec", "always")


class DurabilityError(SettingsError):
    """The Redis in use does not keep what the durability setting promises."""


def parse_durability(text: str) -> str:
    if text not in MODES:
        raise ValueError(f"expected one of {', '.join(MODES)}, got {text!r}")
    return text


def verify_durability(client: redis.Redis, durability: str) -> None:
    """Raise DurabilityError when `durability` is `always` and Redis would acknowledge writes it
    has not made durable; log what a crash may lose otherwise. A Redis that refuses CONFIG
    (a managed service, an ACL user without it) cannot be checked: that is logged too."""
    try:
        with redis_errors():
            config = client.config_get("append*")
    except RedisCommandFailed as exc:
        log.warning("cannot check Redis's persistence settings (%s); assuming %s", exc, durability)
        return
    appendonly, appendfsync = config.get("appendonly"), config.get("appendfsync")
    found = f"this Redis has appendonly {appendonly}, appendfsync {appendfsync}"
    if durability == "always" and (appendonly != "yes" or appendfsync != "always"):
        raise DurabilityError(
            "TELEMETRY_DURABILITY=always needs Redis with appendonly yes and appendfsync always;"
            f" {found}"
        )
    if appendonly != "yes":
        log.warning("%s: a Redis crash loses everything written since its last snapshot", found)
