"""What every JSON profile does: parse the payload, let the profile reshape the document, decode
the readings leniently or strictly, and apply the route's field mapping."""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

from ingest.errors import InvalidEntry
from producers.payload import MAX_READINGS, Parsed, document_readings, json_document
from producers.profiles.mapping import FieldMapping

_NOT_SENSOR_ID_CHARS = re.compile(r"[^A-Za-z0-9_.:\-]")


def sensor_id_of(name: str) -> str:
    """A device's own name (a Zigbee2MQTT friendly name, a Shelly id) as a sensor id: each
    character the stream contract does not allow becomes `_`."""
    return _NOT_SENSOR_ID_CHARS.sub("_", name)[:128]


def numbers_only(component: Mapping[str, Any], leave_out: frozenset[str] = frozenset()
                 ) -> dict[str, Any]:  # fmt: skip
    """A device's sub-object without its status strings, lists and the fields named: firmware
    nests readings beside text that describes the device, not the sensor's surroundings."""
    kept: dict[str, Any] = {}
    for name, value in component.items():
        if name in leave_out or isinstance(value, str | list):
            continue
        kept[name] = numbers_only(value, leave_out) if isinstance(value, dict) else value
    return kept


class JsonProfile:
    """The generic profile: the payload is one reading object or an array of them."""

    name = "json"
    default_topic = "sensors/{sensor_id}/telemetry"
    # Metric name -> unit, for metrics this kind of device always reports in one unit.
    units: ClassVar[Mapping[str, str]] = {}

    def reshape(self, sensor_id: str, document: Any) -> tuple[str, Any] | None:
        """The sensor id and the readings (an object or an array of them) of a document; None
        for a message that carries no readings and is to be acknowledged and left."""
        return sensor_id, document

    def units_context(self, document: Any) -> Hashable:
        """What, besides the field names, the units depend on in a document as the device sent
        it (Tasmota names its temperature unit)."""
        return ()

    def units_of(self, names: Sequence[str], context: Any) -> dict[str, str]:
        """Units of the metrics named, given what `units_context` found."""
        return {name: unit for name in names if (unit := self.units.get(name))}

    def parse(self, sensor_id: str, payload: bytes, decoding: str, mapping: FieldMapping,
              max_readings: int = MAX_READINGS) -> Parsed:  # fmt: skip
        """The readings of one message on a topic of this profile; `sensor_id` the topic's."""
        try:
            document = json_document(payload)
        except InvalidEntry as exc:
            return Parsed.unreadable(exc.reason)
        shaped = self.reshape(sensor_id, document)
        if shaped is None:
            return Parsed()
        sensor_id, readings = shaped
        if not isinstance(readings, dict | list):
            return Parsed.unreadable(f"the {self.name} profile found no readings object")
        parsed = document_readings(readings, sensor_id, max_readings, decoding)
        context = self.units_context(document)
        mapping.apply(parsed, self.name, lambda names: self.units_of(names, context), context)
        return parsed
