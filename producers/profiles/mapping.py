"""What a route's settings change in every reading it decodes, whatever the profile: renames by
field path, scaling, units, fixed labels and fields to leave out (pure)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from math import isfinite

from producers.lenient import metric_name
from producers.payload import Parsed


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

    def apply(self, parsed: Parsed, profile: str,
              units_of: Callable[[Mapping[str, str]], Mapping[str, str]]) -> None:  # fmt: skip
        """Rename, scale and leave out fields of the parsed readings; note for each sensor the
        profile, the route's labels, and the units of its metrics (the route's, else those
        `units_of` gives for the fields as the profile named them)."""
        kept = []
        for fields in parsed.readings:
            profile_units = units_of(fields)
            note = parsed.note(fields["sensor_id"])
            note.profile = profile
            note.labels.update(self.labels)
            out: dict[str, str] = {}
            for name, text in fields.items():
                if name in self.ignore:
                    continue
                new = self.rename.get(name, name)
                factor = self.scale.get(new)
                if factor is None:
                    out[new] = text
                else:
                    scaled = float(text) * factor
                    if not isfinite(scaled):
                        continue
                    out[new] = repr(scaled)
                unit = self.units.get(new) or profile_units.get(name)
                if unit:
                    note.units[new] = unit
            kept.append(out)
        parsed.readings = kept
