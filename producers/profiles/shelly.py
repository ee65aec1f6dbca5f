"""Shelly Gen2 (Plus, Pro): `<device id>/events/rpc` carries JSON-RPC notifications,
`NotifyStatus` with what changed and `NotifyFullStatus` with everything, each component keyed
`<type>:<id>` (https://shelly-api-docs.shelly.cloud/gen2/General/Notifications). Metrics are
named `<type>_<id>_<field>` (`temperature_0_tC`, `switch_0_apower`); the sensor id is the
frame's `src`; `params.ts` (seconds) is the event time. Other methods (`NotifyEvent`) carry no
readings and are acknowledged and left; status strings (IP address, SSID) are not readings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from producers.profiles.base import JsonProfile, numbers_only, sensor_id_of

_READINGS_METHODS = frozenset({"NotifyStatus", "NotifyFullStatus"})
# Fields of a component that are not readings.
_NOT_READINGS = frozenset({"id", "by_minute", "minute_ts", "source"})
_FIELD_UNITS = {
    "tC": "°C", "tF": "°F", "rh": "%", "apower": "W", "voltage": "V", "current": "A",
    "freq": "Hz", "pf": "", "aenergy_total": "Wh", "battery_V": "V", "battery_percent": "%",
    "lux": "lx", "rssi": "dBm", "percent": "%",
}  # fmt: skip


class ShellyGen2(JsonProfile):
    name = "shelly-gen2"
    default_topic = "{sensor_id}/events/rpc"

    def reshape(self, sensor_id: str, document: Any) -> tuple[str, Any] | None:
        if not isinstance(document, dict):
            return sensor_id_of(sensor_id), document
        if document.get("method") not in _READINGS_METHODS:
            return None
        source = document.get("src")
        if isinstance(source, str) and source:
            sensor_id = source
        params = document.get("params")
        if not isinstance(params, dict):
            return sensor_id_of(sensor_id), params
        reading: dict[str, Any] = {}
        for key, value in params.items():
            if key == "ts":
                reading["ts"] = value
            elif isinstance(value, dict):
                reading[key] = numbers_only(value, _NOT_READINGS)
        return sensor_id_of(sensor_id), reading

    def units_of(self, names: Sequence[str], context: Any) -> dict[str, str]:
        units = {}
        for name in names:
            parts = name.split("_")
            # temperature_0_tC -> tC; em1_0_aenergy_total -> aenergy_total.
            for start in range(1, len(parts)):
                unit = _FIELD_UNITS.get("_".join(parts[start:]))
                if unit:
                    units[name] = unit
                    break
        return units
