"""The device registry and questions by label over HTTP: labels set by hand (admin), the
fleet grouped by a label."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Path, Query

from analytics.groupby import Group, group_by, selected_sensors
from analytics.query import Stores
from ingest.contract.reading import METRIC_NAME, SENSOR_ID
from ingest.devices import Device, DeviceRegistry
from ingest.durations import parse_duration_ms
from ingest.labels import MAX_LABELS, Selector, parse_labels, parse_selector
from ingest.settings import Settings

SensorId = Annotated[str, Path(pattern=f"^{SENSOR_ID.pattern}$", description="a sensor id")]
GroupBy = Annotated[
    str | None,
    Query(
        alias="group_by",
        pattern=f"^{METRIC_NAME.pattern}$",
        description="label to group by (none: one group)",
    ),
]
Where = Annotated[
    str | None,
    Query(description="label selector such as site=gh-*,kind!=test", max_length=2000),
]


def selector(where: str | None) -> Selector | None:
    """The selector of a `where` parameter, or 422 saying what to fix."""
    if where is None:
        return None
    try:
        return parse_selector(where)
    except ValueError as exc:
        raise HTTPException(422, f"where: {exc}") from None


def among(stores: Stores, registry: DeviceRegistry, where: str | None) -> set[str] | None:
    """The sensors a `where` parameter picks; None when it is not given."""
    chosen = selector(where)
    return None if chosen is None else set(selected_sensors(stores, registry, chosen))


def devices_router(settings: Settings, stores: Stores, registry: DeviceRegistry) -> APIRouter:
    router = APIRouter()

    @router.get("/sensors/{sensor_id}/device", responses={404: {"description": "not known"}})
    def device(sensor_id: SensorId) -> Device:
        """What the registry holds about a sensor: labels, units, online, dropped fields."""
        found = registry.get(sensor_id)
        if found is None:
            raise HTTPException(404, f"no device {sensor_id} in the registry")
        return found

    @router.put("/sensors/{sensor_id}/labels", responses={409: {"description": "registry full"}})
    def label(
        sensor_id: SensorId,
        labels: Annotated[
            dict[str, str],
            Body(description='{"site": "gh-3", "old": ""}: an empty value removes a label'),
        ],
    ) -> Device:
        """Set and remove labels of a sensor (admin)."""
        if len(labels) > MAX_LABELS:
            raise HTTPException(422, f"at most {MAX_LABELS} labels at a time")
        try:
            setting, removing = parse_labels([f"{k}={v}" for k, v in labels.items()])
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        if registry.label([sensor_id], setting, removing):
            raise HTTPException(409, f"the registry holds {settings.max_sensors} sensors already")
        found = registry.get(sensor_id)
        assert found is not None
        return found

    @router.delete("/sensors/{sensor_id}/device")
    def forget(sensor_id: SensorId) -> dict[str, int]:
        """Remove a sensor from the registry (admin); its aggregates stay."""
        return {"removed": registry.forget([sensor_id])}

    @router.get("/fleet/groups")
    def groups(
        metric: Annotated[str, Query(pattern=f"^{METRIC_NAME.pattern}$")],
        group_by_label: GroupBy = None,
        last: str = "1h",
        where: Where = None,
    ) -> list[Group]:
        """Count, mean, min, max and percentiles of a metric per value of a label over the
        window `last`; percentiles are merged from the sensors' histograms."""
        try:
            span = parse_duration_ms(last)
        except ValueError as exc:
            raise HTTPException(422, f"last: {exc}") from None
        return group_by(stores, registry, metric, group_by_label, span,
                        selector=selector(where))  # fmt: skip

    return router
