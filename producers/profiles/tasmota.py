"""Tasmota: `tele/<topic>/SENSOR` carries `{"Time": ..., "<Sensor>": {"Temperature": 21.3, ...},
"TempUnit": "C"}`, one object per attached sensor, `ENERGY` for power monitoring
(https://tasmota.github.io/docs/MQTT/). Metrics are named `<Sensor>_<Quantity>`
(`AM2301_Temperature`, `ENERGY_Power`). `Time` is the device's local time without a zone, so the
reading takes its arrival time; strings inside a sensor's object (`TotalStartTime`) are left
out."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from producers.profiles.base import JsonProfile, numbers_only, sensor_id_of

_UNIT_FIELDS = {"TempUnit": "Temperature", "PressureUnit": "Pressure", "SpeedUnit": "Speed"}
_NOT_READINGS = frozenset({"Time", *_UNIT_FIELDS})
_QUANTITY_UNITS = {
    "Humidity": "%", "DewPoint": "", "Illuminance": "lx", "CarbonDioxide": "ppm",
    "Power": "W", "ApparentPower": "VA", "ReactivePower": "var", "Voltage": "V", "Current": "A",
    "Total": "kWh", "Today": "kWh", "Yesterday": "kWh", "Factor": "", "Distance": "cm",
}  # fmt: skip
_TEMPERATURE_UNITS = {"C": "°C", "F": "°F"}


class Tasmota(JsonProfile):
    name = "tasmota"
    default_topic = "tele/{sensor_id}/SENSOR"

    def reshape(self, sensor_id: str, document: Any) -> tuple[str, Any] | None:
        if not isinstance(document, dict):
            return sensor_id_of(sensor_id), document
        reading = {
            k: numbers_only(v) if isinstance(v, dict) else v
            for k, v in document.items()
            if k not in _NOT_READINGS
        }
        return sensor_id_of(sensor_id), reading

    def units_context(self, document: Any) -> Hashable:
        declared = []
        for field, quantity in _UNIT_FIELDS.items():
            unit = document.get(field) if isinstance(document, dict) else None
            if isinstance(unit, str):
                declared.append((quantity, _TEMPERATURE_UNITS.get(unit, unit)[:16]))
        return tuple(declared)

    def units_of(self, names: Sequence[str], context: Any) -> dict[str, str]:
        declared = dict(context)
        units = {}
        for name in names:
            quantity = name.rpartition("_")[2]
            unit = declared.get(quantity) or _QUANTITY_UNITS.get(quantity)
            if unit:
                units[name] = unit
        return units
