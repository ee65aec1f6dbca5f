"""Alert rule kinds, one module each behind `Kind` (see `base`): a new kind is a module, its
entry here, and its tests."""

from __future__ import annotations

from analytics.alerts.kinds.anomaly import Anomaly
from analytics.alerts.kinds.base import Kind
from analytics.alerts.kinds.rate import Rate
from analytics.alerts.kinds.silence import Silence
from analytics.alerts.kinds.threshold import Threshold

KINDS: dict[str, Kind] = {kind.name: kind for kind in (Threshold(), Rate(), Anomaly(), Silence())}
