"""Alert actions over HTTP (admin): acknowledging an open alert, adding and ending maintenance
silences; listing the silences in force."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, Field

from analytics.alerts.acknowledge import acknowledge
from analytics.alerts.listing import AlertSources, sensor_source
from analytics.alerts.rules import RULE_NAME
from analytics.alerts.silences import (
    MAX_TEXT,
    ActionError,
    Silence,
    active_silences,
    add_silence,
    new_silence,
    remove_silence,
    silences_home,
)
from analytics.query import now_ms
from ingest.contract.reading import SENSOR_ID
from ingest.durations import parse_duration_ms
from ingest.settings import Settings

SensorId = Annotated[str, Path(pattern=f"^{SENSOR_ID.pattern}$", description="a sensor id")]
RuleName = Annotated[str, Path(pattern=f"^{RULE_NAME.pattern}$", description="a rule name")]


class Acknowledgement(BaseModel):
    by: str = Field("api", max_length=64, description="who is on it")
    comment: str = Field("", max_length=MAX_TEXT)


class Acknowledged(BaseModel):
    id: str = Field(description="the alerts stream entry recording it")


class NewSilence(BaseModel):
    sensors: str = Field("*", max_length=256, description="sensor id glob")
    rules: str = Field("*", max_length=64, description="rule name glob")
    labels: str = Field("", max_length=2000, description="label selector, such as site=gh-3")
    duration: str = Field(max_length=32, description="how long: 30m, 2h, 3d")
    by: str = Field("api", max_length=64)
    comment: str = Field("", max_length=MAX_TEXT)


class SilenceView(BaseModel):
    id: str
    sensors: str
    rules: str
    labels: str
    starts_ms: int
    ends_ms: int
    by: str
    comment: str

    @classmethod
    def of(cls, silence: Silence) -> SilenceView:
        return cls.model_validate(silence.as_dict())


def alerting_router(settings: Settings, sources: AlertSources) -> APIRouter:
    router = APIRouter()
    silences_client, silences_keys = silences_home(sources)

    @router.post("/alerts/{sensor_id}/{rule}/ack", responses={404: {"description": "not open"}})
    def acknowledge_alert(
        sensor_id: SensorId, rule: RuleName, body: Acknowledgement
    ) -> Acknowledged:
        """Acknowledge an open alert (admin); recorded on the alerts stream."""
        client, keys = sensor_source(settings, sources, sensor_id)
        try:
            entry = acknowledge(client, keys, sensor_id, rule, by=body.by, comment=body.comment,
                                now_ms=now_ms(), maxlen=settings.alerts_maxlen)  # fmt: skip
        except ActionError as exc:
            raise HTTPException(422, str(exc)) from None
        if entry is None:
            raise HTTPException(404, f"no open alert of rule {rule} on sensor {sensor_id}")
        return Acknowledged(id=entry)

    @router.get("/silences")
    def silences() -> list[SilenceView]:
        """The maintenance silences in force (or yet to end)."""
        return [SilenceView.of(s) for s in active_silences(silences_client, silences_keys,
                                                            now_ms())]  # fmt: skip

    @router.post("/silences", status_code=201, responses={409: {"description": "too many"}})
    def silence(body: NewSilence) -> SilenceView:
        """Hold back notifications of the alerts of some sensors, labels or rules for a
        while (admin); recorded on the alerts stream."""
        try:
            duration_ms = parse_duration_ms(body.duration)
        except ValueError as exc:
            raise HTTPException(422, f"duration: {exc}") from None
        try:
            made = new_silence(sensors=body.sensors, rules=body.rules, labels=body.labels,
                               duration_ms=duration_ms, by=body.by, comment=body.comment,
                               now_ms=now_ms())  # fmt: skip
        except ActionError as exc:
            raise HTTPException(422, str(exc)) from None
        try:
            add_silence(silences_client, silences_keys, made, settings.alerts_maxlen)
        except ActionError as exc:
            raise HTTPException(409, str(exc)) from None
        return SilenceView.of(made)

    @router.delete("/silences/{silence_id}", status_code=204,
                   responses={404: {"description": "no such silence"}})  # fmt: skip
    def unsilence(
        silence_id: Annotated[str, Path(pattern="^[0-9a-f]{8}$")],
        by: Annotated[str, Query(max_length=64)] = "api",
    ) -> None:
        """End a silence now (admin); recorded on the alerts stream."""
        try:
            ended = remove_silence(silences_client, silences_keys, silence_id, by,
                                   settings.alerts_maxlen, now_ms())  # fmt: skip
        except ActionError as exc:
            raise HTTPException(422, str(exc)) from None
        if not ended:
            raise HTTPException(404, f"no silence {silence_id}")

    return router
