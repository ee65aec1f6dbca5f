"""Exactly-once settlement, offered to any handler that writes a batch's effects in one Lua
script: the script loads `SETTLE_LIBRARY` (ingest/lua/settle.lua) before its own code, takes
`SettlingArgs` (the settlement's KEYS and ARGV, then its own), and calls `settle_gate` before its
effects and `settle_finish` (the ledger and XACK) after them. A script that runs again for a
batch it settled, or for entries another consumer took meanwhile, changes nothing.

`GATE` runs the gate alone, for a handler that wants to know before doing its work (the alerts
group reads state in the same transaction)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from ingest.groups.batch import Batch
from ingest.keys import StreamKeys
from ingest.redis.scripts import Arg, LuaScript, lua_file

SETTLE_LIBRARY = lua_file("ingest", "settle.lua")
GATE = LuaScript("ingest", "gate.lua", library="settle.lua")
# What settle_gate answers.
SETTLE, NOT_OURS, OLDER_PENDING = 1, 0, -1


class Gate(enum.Enum):
    # Every entry of the batch is still pending with this consumer.
    OWNED = "owned"
    # As OWNED, and no older entry of the group is pending: batches settle in stream order.
    IN_ORDER = "in_order"


class SettlingArgs:
    """KEYS and ARGV for one call of a settling script: the settlement's first (the layout
    settle.lua reads), then the script's own fixed keys, then keys added with `key`, numbered
    as they are added; `argv` is the script's own ARGV."""

    def __init__(
        self,
        keys: StreamKeys,
        batch: Batch[Any],
        gate: Gate,
        own_keys: Sequence[str] = (),
        increments: Sequence[tuple[str, int]] = (),
    ) -> None:
        group, ids = batch.group, batch.ids
        self.keys = [keys.stream, keys.ledger(group), keys.handovers(group), *own_keys]
        self._index: dict[str, int] = {}
        self._settlement: list[Arg] = [
            group, batch.consumer, gate.value, len(ids), ",".join(ids),
            "" if batch.handovers is None else batch.handovers,
        ]  # fmt: skip
        self._increments: list[Arg] = []
        self.ledger(increments)
        self.argv: list[Any] = []

    def ledger(self, increments: Sequence[tuple[str, int]]) -> None:
        """What settling the batch adds to the group's ledger, field by field."""
        self._increments = [len(increments)]
        for field, amount in increments:
            self._increments += [field, amount]

    def key(self, name: str) -> int:
        """The index in KEYS of `name`, added when new."""
        index = self._index.get(name)
        if index is None:
            self.keys.append(name)
            index = self._index[name] = len(self.keys)
        return index

    @property
    def all_argv(self) -> list[Arg]:
        return [*self._settlement, *self._increments, *self.argv]
