"""What a route's settings change in every reading it decodes, whatever the profile: renames by
field path, scaling, units, fixed labels and fields to leave out (pure)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from math import isfinite

from producers.lenient import metric_name
from producers.payload import Parsed

# Sensors whose last note is remembered, and how often one is noted again unchanged.
NOTED_KEPT = 200_000
NOTE_AGAIN_S = 60.0


class RecentNotes:
    """What each sensor was last noted with, and when: the same note again is news to nobody
    (the registry and the input's sink keep it), so it is made again once a minute, sparing a
    note per reading."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[object, float]] = {}

    def due(self, sensor_id: str, what: object, now: float) -> bool:
        """Whether to note `what` for the sensor now; if so, it is remembered as noted."""
        last = self._last.get(sensor_id)
        if last is not None and last[0] == what and now - last[1] < NOTE_AGAIN_S:
            return False
        if len(self._last) >= NOTED_KEPT:
            self._last.clear()
        self._last[sensor_id] = (what, now)
        return True


@dataclass(frozen=True)
class FieldMapping:
    # Flattened field name -> metric name; a path may be written with dots (`env.t`).
    rename: Mapping[str, str] = field(default_factory=dict)
    # Metric name (after renaming) -> factor its value is multiplied by.
    scale: Mapping[str, float] = field(default_factory=dict)
    # Metric name (after renaming) -> unit.
    units: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    # Flattened field names left out without counting them as dropped.
    ignore: frozenset[str] = frozenset()
    _plans: dict[tuple[tuple[str, ...], Hashable], _Plan] = field(
        default_factory=dict, compare=False, repr=False
    )
    # The plan whose note each sensor was last given (see RecentNotes).
    _noted: RecentNotes = field(default_factory=RecentNotes, compare=False, repr=False)

    @classmethod
    def of(cls, rename: Mapping[str, str] | None = None, scale: Mapping[str, float] | None = None,
           units: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None,
           ignore: list[str] | None = None) -> FieldMapping:  # fmt: skip
        """A mapping from a route's settings, paths written with dots or as flattened."""
        return cls(
            rename={metric_name(k.replace(".", "_")): v for k, v in (rename or {}).items()},
            scale=dict(scale or {}),
            units=dict(units or {}),
            labels=dict(labels or {}),
            ignore=frozenset(metric_name(k.replace(".", "_")) for k in ignore or ()),
        )

    @property
    def is_empty(self) -> bool:
        return not (self.rename or self.scale or self.units or self.labels or self.ignore)

    def apply(
        self,
        parsed: Parsed,
        profile: str,
        units_of: Callable[[Sequence[str]], Mapping[str, str]],
        context: Hashable = (),
    ) -> None:
        """Rename, scale and leave out fields of the parsed readings; note for each sensor the
        profile, the route's labels, and the units of its metrics (the route's, else those
        `units_of` gives for the field names as the profile made them, which may depend on
        `context` only)."""
        kept = []
        now = time.monotonic()
        for fields in parsed.readings:
            key = (tuple(fields), context)
            plan = self._plans.get(key)
            if plan is None:
                plan = self._plan(key[0], units_of(key[0]))
                if len(self._plans) >= PLANS_KEPT:
                    self._plans.clear()
                self._plans[key] = plan
            sensor_id = fields["sensor_id"]
            if self._noted.due(sensor_id, plan, now):
                note = parsed.note(sensor_id)
                note.profile = profile
                note.labels.update(self.labels)
                note.units.update(plan.units)
            kept.append(fields if plan.identity else plan.applied(fields))
        parsed.readings = kept

    def _plan(self, names: Sequence[str], profile_units: Mapping[str, str]) -> _Plan:
        renamed: list[str | None] = []
        factors: list[float | None] = []
        units = {}
        for name in names:
            new = None if name in self.ignore else self.rename.get(name, name)
            renamed.append(new)
            factors.append(None if new is None else self.scale.get(new))
            unit = None if new is None else self.units.get(new) or profile_units.get(name)
            if new is not None and unit:
                units[new] = unit
        identity = renamed == list(names) and not any(f is not None for f in factors)
        return _Plan(tuple(renamed), tuple(factors), units, identity)


# Plans kept per mapping: one per shape of reading (its field names) a route meets.
PLANS_KEPT = 10_000


# Compared by identity: one plan object per shape of reading.
@dataclass(frozen=True, eq=False)
class _Plan:
    """What a mapping does to readings with one list of field names."""

    renamed: tuple[str | None, ...]
    factors: tuple[float | None, ...]
    units: dict[str, str]
    identity: bool

    def applied(self, fields: Mapping[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for text, new, factor in zip(fields.values(), self.renamed, self.factors, strict=True):
            if new is None:
                continue
            if factor is None:
                out[new] = text
                continue
            scaled = float(text) * factor
            if isfinite(scaled):
                out[new] = repr(scaled)
        return out
