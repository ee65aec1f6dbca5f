"""`telemetry devices`: the device registry, listed, labelled and forgotten."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from analytics.times import iso
from ingest.devices import DeviceRegistry
from ingest.labels import parse_labels
from ingest.runtime import CommandLineError
from ingest.settings import Settings
from telemetry.querycmd import render, selector_of, zone


def _pairs(mapping: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(mapping.items()))


def devices_listing(settings: Settings, where: str | None, output_format: str,
                    tz_name: str | None) -> str:  # fmt: skip
    tz = zone(tz_name)
    devices = DeviceRegistry(settings).devices(selector_of(where))
    rows = [
        {
            "sensor": d.sensor_id,
            "labels": _pairs(d.labels),
            "units": _pairs(d.units),
            "online": "-" if d.online is None else "yes" if d.online else "no",
            "profile": d.profile or "-",
            "dropped": str(d.dropped),
            "updated": iso(d.updated_ms, tz),
        }
        for d in devices
    ]
    return render(rows, output_format, [asdict(d) for d in devices])


def label_command(settings: Settings, sensor_ids: Sequence[str], pairs: Sequence[str]) -> str:
    """Set (`name=value`) and remove (`name=`) labels of the sensors named."""
    if not sensor_ids or not pairs:
        raise CommandLineError("name sensors and labels: devices label s1 s2 site=gh-3")
    try:
        setting, removing = parse_labels(list(pairs))
    except ValueError as exc:
        raise CommandLineError(str(exc)) from None
    refused = DeviceRegistry(settings).label(sensor_ids, setting, removing)
    if refused:
        raise CommandLineError(
            f"{refused} sensors not labelled: the registry holds TELEMETRY_MAX_SENSORS "
            f"({settings.max_sensors}) already"
        )
    return f"labelled {len(sensor_ids)} sensors"


def devices_forget(settings: Settings, sensor_ids: Sequence[str]) -> str:
    removed = DeviceRegistry(settings).forget(sensor_ids)
    return f"removed {removed} devices from the registry"
