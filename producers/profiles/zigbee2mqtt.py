"""Zigbee2MQTT: `zigbee2mqtt/<friendly name>` carries one flat JSON object per update, numbers
beside booleans (`occupancy`, `battery_low`), `"ON"`/`"OFF"` states, and `last_seen` when the
bridge is set to send it (https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from producers.profiles.base import JsonProfile, sensor_id_of

# Fields that describe Zigbee2MQTT itself, not the sensor.
_NOT_READINGS = frozenset({"update", "update_available", "device", "elapsed"})
_STATES = {"ON": 1.0, "OFF": 0.0, "OPEN": 1.0, "CLOSE": 0.0, "LOCK": 1.0, "UNLOCK": 0.0}


class Zigbee2Mqtt(JsonProfile):
    name = "zigbee2mqtt"
    default_topic = "zigbee2mqtt/{sensor_id}"
    # The units Zigbee2MQTT's device definitions (zigbee-herdsman-converters) expose.
    units: ClassVar[Mapping[str, str]] = {
        "temperature": "°C", "local_temperature": "°C", "humidity": "%", "soil_moisture": "%",
        "pressure": "hPa", "battery": "%", "voltage": "mV", "linkquality": "lqi",
        "illuminance": "lx", "illuminance_lux": "lx", "co2": "ppm", "voc": "ppb",
        "formaldehyd": "mg/m³", "pm25": "µg/m³", "power": "W", "energy": "kWh", "current": "A",
        "device_temperature": "°C", "position": "%", "brightness": "",
    }  # fmt: skip

    def reshape(self, sensor_id: str, document: Any) -> tuple[str, Any] | None:
        if not isinstance(document, dict):
            return sensor_id_of(sensor_id), document
        reading: dict[str, Any] = {}
        for name, value in document.items():
            if name in _NOT_READINGS:
                continue
            if name == "last_seen":
                reading["ts"] = value
            elif isinstance(value, str) and value.upper() in _STATES:
                reading[name] = _STATES[value.upper()]
            else:
                reading[name] = value
        return sensor_id_of(sensor_id), reading
