"""What one alert worker holds of the group's state: every sensor it has met gets a slot, and
each rule a record per slot, with each sensor's clock (newest `ts` and `seq` evaluated).

The tables are a cache of Redis, valid while the state version (bumped by every settled batch)
is the one this worker last saw; `known` says which slots were read or written since.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from analytics.alerts.kernels import DTYPES, Bools, Ints, Records, fresh
from analytics.alerts.rules import Rule

# A clock no reading is older than: the sensor has none yet.
NO_CLOCK = -(2**62)
NO_SEQ = -1
# Beyond this many sensors a worker starts its tables afresh (and reads what it needs again).
SLOT_LIMIT = 1_000_000


class Tables:
    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self.version: int | None = None
        self.slot_of: dict[str, int] = {}
        self.names: list[str] = []
        self._capacity = 1024
        self.clock_ts: Ints = np.full(self._capacity, NO_CLOCK, np.int64)
        self.clock_seq: Ints = np.full(self._capacity, NO_SEQ, np.int64)
        self.clock_known: Bools = np.zeros(self._capacity, bool)
        # Per rule index (silence rules have none): records, which are known, which rules
        # select which slot.
        self.stateful = [i for i, r in enumerate(self.rules) if r.kind != "silence"]
        self.records: dict[int, Records] = {
            i: fresh(self.rules[i].kind, self._capacity) for i in self.stateful
        }
        self.known: dict[int, Bools] = {i: np.zeros(self._capacity, bool) for i in self.stateful}
        self.selects: dict[int, Bools] = {
            i: np.zeros(self._capacity, bool) for i in range(len(self.rules))
        }

    def slot(self, sensor_id: str) -> int:
        found = self.slot_of.get(sensor_id)
        if found is not None:
            return found
        slot = len(self.names)
        if slot == self._capacity:
            self._grow()
        self.slot_of[sensor_id] = slot
        self.names.append(sensor_id)
        for i, rule in enumerate(self.rules):
            self.selects[i][slot] = rule.selects(sensor_id)
        return slot

    def forget(self) -> None:
        """Another worker changed Redis: nothing held is known any more."""
        self.version = None
        self.clock_known[:] = False
        for known in self.known.values():
            known[:] = False

    def _grow(self) -> None:
        old, self._capacity = self._capacity, self._capacity * 2

        def wider(array: np.ndarray, fill: object) -> np.ndarray:
            grown = np.full(self._capacity, fill, array.dtype)
            grown[:old] = array
            return grown

        self.clock_ts = wider(self.clock_ts, NO_CLOCK)
        self.clock_seq = wider(self.clock_seq, NO_SEQ)
        self.clock_known = wider(self.clock_known, False)
        for i in self.stateful:
            grown = fresh(self.rules[i].kind, self._capacity)
            grown[:old] = self.records[i]
            self.records[i] = grown
            self.known[i] = wider(self.known[i], False)
        for i in self.selects:
            self.selects[i] = wider(self.selects[i], False)

    def load_state(self, rule_index: int, slots: Ints, values: Sequence[str | None]) -> None:
        """Records read from Redis (None: none stored, a fresh state)."""
        kind = self.rules[rule_index].kind
        records = fresh(kind, len(slots))
        for row, text in enumerate(values):
            if text is not None:
                records[row] = np.frombuffer(_raw(text), DTYPES[kind])[0]
        self.records[rule_index][slots] = records
        self.known[rule_index][slots] = True

    def load_clock(self, slots: Ints, values: Sequence[str | None]) -> None:
        for slot, text in zip(slots.tolist(), values, strict=True):
            if text is None:
                self.clock_ts[slot], self.clock_seq[slot] = NO_CLOCK, NO_SEQ
            else:
                ts, _, seq = text.partition(":")
                self.clock_ts[slot] = int(ts)
                self.clock_seq[slot] = int(seq) if seq else NO_SEQ
            self.clock_known[slot] = True


def _raw(text: str) -> bytes:
    # Records are binary; the client hands them over as text decoded with surrogate escapes.
    return text.encode("utf-8", "surrogateescape")
