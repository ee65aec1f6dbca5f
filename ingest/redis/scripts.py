"""Lua scripts kept as .lua files beside the code; every key a script touches arrives in KEYS."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis

Arg = str | int | float


def lua_file(package: str, filename: str) -> str:
    """The source of `package`/lua/`filename`."""
    return resources.files(package).joinpath("lua", filename).read_text(encoding="utf-8")


class LuaScript:
    def __init__(
        self, package: str, filename: str, *, library: str | None = None, prelude: str = ""
    ) -> None:
        """The script in `package`/lua/`filename`, after the functions in `library` (a file
        beside it) when given, all after `prelude` (Lua source written by the caller)."""
        self.name = filename
        files = [library, filename] if library else [filename]
        self.source = prelude + "\n".join(lua_file(package, f) for f in files)
        self.sha = hashlib.sha1(self.source.encode("utf-8")).hexdigest()

    def __call__(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """EVALSHA, loading the script first when the server does not know it (after a restart)."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    def command(self, keys: Sequence[str], args: Sequence[Arg]) -> tuple[Arg, ...]:
        """The EVALSHA command, to send with others; the caller calls `load` and retries when
        Redis answers NOSCRIPT."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def queue(self, pipe: redis.client.Pipeline, keys: Sequence[str], args: Sequence[Arg]) -> None:
        """EVALSHA added to a pipeline; the caller calls `load` and sends the pipeline again
        when Redis answers NOSCRIPT."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    def load(self, client: redis.Redis) -> None:
        client.script_load(self.source)
