"""What one alert worker holds of the group's state: every sensor it has met gets a slot, each
rule a record per slot, and each sensor a clock (the newest `ts` and `seq` evaluated).

The tables are a cache of Redis, valid while the state version (bumped by every settled batch)
is the one this worker last saw; `known` says which slots were read or written since.

In Redis a sensor's records for all the rules that select it travel as one binary value (its
layout: the rules in file order), headed by a fingerprint of that layout. A value whose
fingerprint differs was written under other rules (the file changed): the sensor starts afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from analytics.alerts.kernels import dtype_of, fresh, keeps_state
from analytics.alerts.kinds.base import Bools, Ints, Records
from analytics.alerts.rules import Rule
from ingest.contract.columns import NO_SEQ

# A clock no reading is older than: the sensor has none yet.
NO_CLOCK = -(2**62)
# Beyond this many sensors a worker starts its tables afresh (and reads what it needs again).
SLOT_LIMIT = 1_000_000


@dataclass(frozen=True)
class Layout:
    """The stateful rules that select a sensor, and how their records sit in one value."""

    rules: tuple[int, ...]
    dtype: np.dtype
    fingerprint: int


class Tables:
    def __init__(self, rules: Sequence[Rule],
                 labels_of: Callable[[str], Mapping[str, str]] = lambda _: {}) -> None:  # fmt: skip
        """`labels_of`: a sensor's labels, for rules that select by label."""
        self.rules = list(rules)
        self.labels_of = labels_of
        self.version: int | None = None
        self.slot_of: dict[str, int] = {}
        self.names: list[str] = []
        self.layouts: list[Layout] = []
        self._layout_ids: dict[tuple[int, ...], int] = {}
        self._capacity = 1024
        self.layout: Ints = np.full(self._capacity, -1, np.int64)
        self.known: Bools = np.zeros(self._capacity, bool)
        self.clock_ts: Ints = np.full(self._capacity, NO_CLOCK, np.int64)
        self.clock_seq: Ints = np.full(self._capacity, NO_SEQ, np.int64)
        self.stateful = [i for i, r in enumerate(self.rules) if keeps_state(r)]
        self.records: dict[int, Records] = {
            i: fresh(self.rules[i].kind, self._capacity) for i in self.stateful
        }
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
        chosen = []
        labels = self.labels_of(sensor_id)
        for i, rule in enumerate(self.rules):
            self.selects[i][slot] = selected = rule.selects(sensor_id, labels)
            if selected and keeps_state(rule):
                chosen.append(i)
        self.layout[slot] = self._layout_id(tuple(chosen))
        return slot

    def forget(self) -> None:
        """Another worker changed Redis: nothing held is known any more."""
        self.version = None
        self.known[:] = False

    def load(self, slots: Ints, clocks: Sequence[str | None], blobs: Sequence[str | None]) -> None:
        """Sensors' clocks and records as read from Redis: `ts:seq` texts and binary values
        (None where Redis has none: a fresh sensor)."""
        for slot, text in zip(slots.tolist(), clocks, strict=True):
            ts, _, seq = (text or "").partition(":")
            self.clock_ts[slot] = int(ts) if ts else NO_CLOCK
            self.clock_seq[slot] = int(seq) if seq else NO_SEQ
        for layout, rows in self._by_layout(slots):
            for i in layout.rules:
                self.records[i][slots[rows]] = fresh(self.rules[i].kind, len(rows))
            raw = [_raw(blobs[r]) for r in rows.tolist()]
            fits = np.array([b is not None and len(b) == layout.dtype.itemsize for b in raw], bool)
            if not fits.any() or not layout.rules:
                continue
            stored = b"".join(b for b, ok in zip(raw, fits, strict=True) if ok and b)
            decoded = np.frombuffer(stored, layout.dtype)
            current = decoded["fingerprint"] == layout.fingerprint
            where = slots[rows[fits]][current]
            for i in layout.rules:
                self.records[i][where] = decoded[f"r{i}"][current]
        self.known[slots] = True

    def dump(self, slots: Ints) -> Iterator[tuple[int, list[str], bytes]]:
        """The records of these sensors as Redis keeps them: (value size, sensor ids, values
        concatenated) for each layout."""
        for layout, rows in self._by_layout(slots):
            if not layout.rules:
                continue
            chosen = slots[rows]
            packed = np.empty(len(chosen), layout.dtype)
            packed["fingerprint"] = layout.fingerprint
            for i in layout.rules:
                packed[f"r{i}"] = self.records[i][chosen]
            yield layout.dtype.itemsize, [self.names[s] for s in chosen.tolist()], packed.tobytes()

    def _by_layout(self, slots: Ints) -> Iterator[tuple[Layout, Ints]]:
        """Positions in `slots` grouped by their sensor's layout."""
        ids = self.layout[slots]
        for layout_id in np.unique(ids).tolist():
            yield self.layouts[layout_id], np.flatnonzero(ids == layout_id)

    def _layout_id(self, chosen: tuple[int, ...]) -> int:
        found = self._layout_ids.get(chosen)
        if found is None:
            fields = [("fingerprint", "<u8")] + [
                (f"r{i}", dtype_of(self.rules[i].kind)) for i in chosen
            ]
            signature = ";".join(f"{self.rules[i].name}:{dtype_of(self.rules[i].kind).descr}"
                                 for i in chosen)  # fmt: skip
            fingerprint = int.from_bytes(hashlib.sha1(signature.encode()).digest()[:8], "little")
            found = self._layout_ids[chosen] = len(self.layouts)
            self.layouts.append(Layout(chosen, np.dtype(fields), fingerprint))
        return found

    def _grow(self) -> None:
        old, self._capacity = self._capacity, self._capacity * 2

        def wider(array: np.ndarray, fill: object) -> np.ndarray:
            grown = np.full(self._capacity, fill, array.dtype)
            grown[:old] = array
            return grown

        self.layout = wider(self.layout, -1)
        self.known = wider(self.known, False)
        self.clock_ts = wider(self.clock_ts, NO_CLOCK)
        self.clock_seq = wider(self.clock_seq, NO_SEQ)
        for i in self.stateful:
            grown = fresh(self.rules[i].kind, self._capacity)
            grown[:old] = self.records[i]
            self.records[i] = grown
        for i in self.selects:
            self.selects[i] = wider(self.selects[i], False)


def _raw(text: str | None) -> bytes | None:
    # Values are binary; the client hands them over as text decoded with surrogate escapes.
    return None if text is None else text.encode("utf-8", "surrogateescape")
