"""`POST /readings`: readings over HTTP, validated with the stream contract before any is written.

A body holds one reading object or an array of them; all are written (202 with their entry IDs
in order, and the fields dropped from them under lenient decoding) or, when any cannot be a
reading at all, none is (422 with the reason for each bad one). `?decoding=strict` refuses a
reading for any field outside the stream contract.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import redis
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ingest.contract.reading import SENSOR_ID
from ingest.settings import Settings
from producers.payload import LENIENT, MAX_READINGS, parse_posted
from producers.pipeline import Received, StreamSink

READING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["sensor_id"],
    "properties": {
        "sensor_id": {"type": "string", "pattern": f"^{SENSOR_ID.pattern}$"},
        "ts": {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
               "description": "event time: milliseconds since the epoch, or ISO 8601"},
        "seq": {"type": "integer", "minimum": 0},
    },
    "additionalProperties": {"type": "number", "description": "a metric"},
}  # fmt: skip


# Reasons a 422 lists; a body of 10,000 bad readings gets the first ones and a count.
LISTED_REFUSALS = 100


class DroppedField(BaseModel):
    sensor_id: str
    field: str
    reason: str


class Accepted(BaseModel):
    ids: list[str]
    # Fields left out of the readings written (lenient decoding); the first LISTED_REFUSALS.
    dropped: list[DroppedField] = []


def readings_router(settings: Settings, client: redis.Redis) -> APIRouter:
    router = APIRouter()
    sink = StreamSink(client, settings, batch_size=settings.write_batch,
                      durability=settings.durability)  # fmt: skip

    @router.post(
        "/readings",
        status_code=202,
        response_model=Accepted,
        responses={
            401: {"description": "missing or wrong API token"},
            413: {"description": "body over the size limit"},
            422: {"description": "readings that break the stream contract, with reasons"},
            429: {
                "description": "a group is too far behind: nothing written, send again after "
                "Retry-After seconds (TELEMETRY_BACKLOG_POLICY)"
            },
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [READING_SCHEMA, {"type": "array", "items": READING_SCHEMA}]
                        }
                    }
                },
            }
        },
    )
    async def post_readings(
        request: Request,
        decoding: Annotated[str, Query(pattern="^(lenient|strict)$")] = LENIENT,
    ) -> Any:
        """Write one reading (`{"sensor_id": "s1", "temp": 21.5, "ts": 1700000000000}`) or an
        array of them: every other field is a metric with a finite number value; `ts`
        (milliseconds or ISO 8601) and `seq` are optional. Decoding is lenient by default
        (booleans, numeric strings, nested objects, string labels; odd fields dropped and
        listed); `decoding=strict` refuses a reading with any field outside the contract."""
        # The app caps every body at TELEMETRY_API_MAX_BODY (413 past it, before reading on).
        body = await request.body()
        # Parsed in a thread: a megabyte of readings would hold every other client up.
        parsed = await run_in_threadpool(parse_posted, body, MAX_READINGS, decoding)
        if parsed.too_many:
            raise HTTPException(413, parsed.refused[0].reason)
        if parsed.refused:
            refused = parsed.refused
            bad = [{"index": r.at, "reason": r.reason} for r in refused[:LISTED_REFUSALS]]
            if len(refused) > LISTED_REFUSALS:
                more = len(refused) - LISTED_REFUSALS
                bad.append({"index": -1, "reason": f"and {more} more readings refused"})
            return JSONResponse({"detail": bad}, status_code=422)
        unit = Received(entries=parsed.readings, notes=parsed.notes)
        ids = await run_in_threadpool(sink.write_now, unit)
        answer: dict[str, Any] = {"ids": ids}
        if parsed.dropped:
            answer["dropped"] = [{"sensor_id": d.sensor_id, "field": d.name, "reason": d.reason}
                                 for d in parsed.dropped[:LISTED_REFUSALS]]  # fmt: skip
        # Serialised directly: validating thousands of IDs against the response model would
        # cost more than writing them.
        return Response(msgspec.json.encode(answer), status_code=202, media_type="application/json")

    return router
