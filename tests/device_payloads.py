"""Payloads as common firmware publishes them, written from each vendor's published examples, with
the readings, labels and units the bridge must make of them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recorded:
    profile: str
    topic: str
    payload: bytes
    # The stream entries expected, `ts` left out where the reading takes its arrival time.
    readings: list[dict[str, str]]
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    units: dict[str, dict[str, str]] = field(default_factory=dict)


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


# https://www.zigbee2mqtt.io/devices/WSDCGQ11LM.html, RTCGQ11LM.html, ZNCZ02LM.html: exposes.
ZIGBEE2MQTT = [
    Recorded(
        "zigbee2mqtt", "zigbee2mqtt/kitchen_climate",
        _json({"temperature": 21.32, "humidity": 45.1, "pressure": 1012.3, "battery": 91,
               "voltage": 2995, "linkquality": 102, "last_seen": "2023-11-14T22:13:20.000Z"}),
        [{"sensor_id": "kitchen_climate", "temperature": "21.32", "humidity": "45.1",
          "pressure": "1012.3", "battery": "91.0", "voltage": "2995.0", "linkquality": "102.0",
          "ts": "1700000000000"}],
        units={"kitchen_climate": {"temperature": "°C", "humidity": "%", "pressure": "hPa",
                                   "battery": "%", "voltage": "mV", "linkquality": "lqi"}},
    ),
    Recorded(
        "zigbee2mqtt", "zigbee2mqtt/hall motion",
        _json({"occupancy": True, "illuminance": 8, "illuminance_lux": 8, "battery": 100,
               "voltage": 3055, "linkquality": 60, "device_temperature": 28,
               "battery_low": False}),
        [{"sensor_id": "hall_motion", "occupancy": "1.0", "illuminance": "8.0",
          "illuminance_lux": "8.0", "battery": "100.0", "voltage": "3055.0",
          "linkquality": "60.0", "device_temperature": "28.0", "battery_low": "0.0"}],
        units={"hall_motion": {"illuminance": "lx", "illuminance_lux": "lx", "battery": "%",
                               "voltage": "mV", "linkquality": "lqi",
                               "device_temperature": "°C"}},
    ),
    Recorded(
        "zigbee2mqtt", "zigbee2mqtt/desk_plug",
        _json({"state": "ON", "power": 12.5, "energy": 0.31, "linkquality": 120,
               "update": {"state": "idle"}, "update_available": False}),
        [{"sensor_id": "desk_plug", "state": "1.0", "power": "12.5", "energy": "0.31",
          "linkquality": "120.0"}],
        units={"desk_plug": {"power": "W", "energy": "kWh", "linkquality": "lqi"}},
    ),
]  # fmt: skip

# https://tasmota.github.io/docs/MQTT/ (tele/<topic>/SENSOR) and /Power-Monitoring-Calibration/.
TASMOTA = [
    Recorded(
        "tasmota", "tele/tasmota_8E5A2C/SENSOR",
        _json({"Time": "2021-01-01T12:00:00", "AM2301": {"Temperature": 21.3, "Humidity": 45.0,
               "DewPoint": 8.9}, "TempUnit": "C"}),
        [{"sensor_id": "tasmota_8E5A2C", "AM2301_Temperature": "21.3",
          "AM2301_Humidity": "45.0", "AM2301_DewPoint": "8.9"}],
        units={"tasmota_8E5A2C": {"AM2301_Temperature": "°C", "AM2301_Humidity": "%"}},
    ),
    Recorded(
        "tasmota", "tele/sonoff_pow/SENSOR",
        _json({"Time": "2019-04-08T19:41:48", "ENERGY": {
            "TotalStartTime": "2019-04-08T19:40:00", "Total": 0.011, "Yesterday": 0.0,
            "Today": 0.011, "Period": 0, "Power": 6, "ApparentPower": 12, "ReactivePower": 10,
            "Factor": 0.47, "Voltage": 235, "Current": 0.051}}),
        [{"sensor_id": "sonoff_pow", "ENERGY_Total": "0.011", "ENERGY_Yesterday": "0.0",
          "ENERGY_Today": "0.011", "ENERGY_Period": "0.0", "ENERGY_Power": "6.0",
          "ENERGY_ApparentPower": "12.0", "ENERGY_ReactivePower": "10.0",
          "ENERGY_Factor": "0.47", "ENERGY_Voltage": "235.0", "ENERGY_Current": "0.051"}],
        units={"sonoff_pow": {"ENERGY_Total": "kWh", "ENERGY_Yesterday": "kWh",
                              "ENERGY_Today": "kWh", "ENERGY_Power": "W",
                              "ENERGY_ApparentPower": "VA", "ENERGY_ReactivePower": "var",
                              "ENERGY_Voltage": "V", "ENERGY_Current": "A"}},
    ),
]  # fmt: skip

# https://shelly-api-docs.shelly.cloud/gen2/General/Notifications (NotifyStatus,
# NotifyFullStatus, NotifyEvent) and /gen2/ComponentsAndServices/Switch (status fields).
SHELLY = [
    Recorded(
        "shelly-gen2", "shellyplusht-08b61fcb7f3c/events/rpc",
        _json({"src": "shellyplusht-08b61fcb7f3c", "dst": "shellyplusht-08b61fcb7f3c/events",
               "method": "NotifyStatus", "params": {"ts": 1631266595.43,
               "temperature:0": {"id": 0, "tC": 21.3, "tF": 70.3}}}),
        [{"sensor_id": "shellyplusht-08b61fcb7f3c", "ts": "1631266595430",
          "temperature_0_tC": "21.3", "temperature_0_tF": "70.3"}],
        units={"shellyplusht-08b61fcb7f3c": {"temperature_0_tC": "°C",
                                             "temperature_0_tF": "°F"}},
    ),
    Recorded(
        "shelly-gen2", "shellyplus1pm-441793d69718/events/rpc",
        _json({"src": "shellyplus1pm-441793d69718", "dst": "shellyplus1pm-441793d69718/events",
               "method": "NotifyFullStatus", "params": {
                   "ts": 1654698347.91, "ble": {}, "cloud": {"connected": False},
                   "input:0": {"id": 0, "state": False},
                   "switch:0": {"id": 0, "source": "init", "output": False, "apower": 0.0,
                                "voltage": 229.8, "current": 0.0,
                                "aenergy": {"total": 0.0, "by_minute": [0.0, 0.0, 0.0],
                                            "minute_ts": 1654698346},
                                "temperature": {"tC": 43.9, "tF": 111.0}},
                   "wifi": {"sta_ip": "192.168.2.34", "status": "got ip", "ssid": "Shelly",
                            "rssi": -58}}}),
        [{"sensor_id": "shellyplus1pm-441793d69718", "ts": "1654698347910",
          "cloud_connected": "0.0", "input_0_state": "0.0", "switch_0_output": "0.0",
          "switch_0_apower": "0.0", "switch_0_voltage": "229.8", "switch_0_current": "0.0",
          "switch_0_aenergy_total": "0.0", "switch_0_temperature_tC": "43.9",
          "switch_0_temperature_tF": "111.0", "wifi_rssi": "-58.0"}],
        units={"shellyplus1pm-441793d69718": {
            "switch_0_apower": "W", "switch_0_voltage": "V", "switch_0_current": "A",
            "switch_0_aenergy_total": "Wh", "switch_0_temperature_tC": "°C",
            "switch_0_temperature_tF": "°F", "wifi_rssi": "dBm"}},
    ),
    Recorded(
        "shelly-gen2", "shellyplusht-08b61fcb7f3c/events/rpc",
        _json({"src": "shellyplusht-08b61fcb7f3c", "dst": "shellyplusht-08b61fcb7f3c/events",
               "method": "NotifyEvent", "params": {"ts": 1631266595.43, "events": [
                   {"component": "sys", "event": "ota_progress", "progress_percent": 50}]}}),
        [],
    ),
]  # fmt: skip

# A generic device on a topic with a label level, its fields mapped by the route.
GENERIC = [
    Recorded(
        "json", "site/gh-3/sensors/probe-7",
        _json({"env": {"t": 215, "rh": 0.41}, "rssi": -70, "room": "north",
               "ts": 1_700_000_000}),
        [{"sensor_id": "probe-7", "temp": "21.5", "env_rh": "0.41", "ts": "1700000000000"}],
        labels={"probe-7": {"site": "gh-3", "room": "north", "fleet": "demo"}},
        units={"probe-7": {"temp": "°C"}},
    ),
]  # fmt: skip

ROUTES = """
[[route]]
profile = "zigbee2mqtt"

[[route]]
profile = "tasmota"

[[route]]
profile = "shelly-gen2"

[[route]]
topic = "site/{site}/sensors/{sensor_id}"
labels = { fleet = "demo" }
rename = { "env.t" = "temp" }
scale = { temp = 0.1 }
units = { temp = "°C" }
ignore = ["rssi"]
"""

EVERY = ZIGBEE2MQTT + TASMOTA + SHELLY + GENERIC
