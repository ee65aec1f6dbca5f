"""Faults a simulated sensor can show, each switched on by a probability per reading."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class FaultConfig:
    # A reading jumps by +-spike_size degrees.
    spike_prob: float = 0.0
    spike_size: float = 25.0
    # The temperature freezes for stuck_s seconds (at stuck_value when set, else where it was).
    stuck_prob: float = 0.0
    stuck_s: float = 60.0
    stuck_value: float | None = None
    # The temperature drifts away from the truth at this many degrees per hour.
    drift_per_hour: float = 0.0
    # The sensor goes silent for dropout_s seconds: it takes and sends no readings.
    dropout_prob: float = 0.0
    dropout_s: float = 30.0
    # Readings are held back for late_s seconds, then sent together with their original ts.
    late_prob: float = 0.0
    late_s: float = 30.0
    # A reading is sent twice (same seq, same ts), as a device resending after a lost ack.
    duplicate_prob: float = 0.0

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is None:
                continue
            if not math.isfinite(value):
                raise ValueError(f"{spec.name} must be a finite number, got {value}")
            if spec.name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{spec.name} must be a probability in [0, 1], got {value}")
            if spec.name.endswith(("_s", "_size")) and value < 0:
                raise ValueError(f"{spec.name} must not be negative, got {value}")
