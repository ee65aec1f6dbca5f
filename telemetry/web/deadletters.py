"""Dead letters over HTTP: list them, and put them back on the stream (a write: token needed)."""

from __future__ import annotations

from typing import Annotated

import redis
from fastapi import APIRouter, Header, HTTPException, Query
from pydantic import AfterValidator, BaseModel, Field

from ingest.contract.reading import parse_entry_id
from ingest.deadletter import DeadLetter, ReplayResult, list_dead_letters, replay
from ingest.keys import StreamKeys
from ingest.settings import Settings
from telemetry.web.auth import bearer, check_token


def _entry_id(text: str) -> str:
    parse_entry_id(text)
    return text


EntryId = Annotated[str, AfterValidator(_entry_id)]


class ReplayRequest(BaseModel):
    ids: list[EntryId] = Field(min_length=1, max_length=1000)


def dead_letters_router(settings: Settings, client: redis.Redis) -> APIRouter:
    router = APIRouter()
    keys = StreamKeys(settings.stream)

    @router.get("/dead-letters")
    def dead_letters(
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        after: Annotated[EntryId | None, Query(description="list after this ID")] = None,
    ) -> list[DeadLetter]:
        """Dead letters oldest first, with the group, original entry, fields and reason."""
        return list_dead_letters(client, keys, limit, "-" if after is None else f"({after}")

    @router.post(
        "/dead-letters/replay",
        responses={401: {"description": "missing or wrong API token"},
                   404: {"description": "no dead letter with one of the IDs"}},
    )  # fmt: skip
    def replay_dead_letters(
        request: ReplayRequest, authorization: Annotated[str | None, Header()] = None
    ) -> list[ReplayResult]:
        """Put dead letters back on the stream as they are; each result gives the new entry ID,
        or why the entry still breaks the contract (it then stays a dead letter)."""
        check_token(settings, bearer(authorization))
        letters = []
        for dead_id in request.ids:
            found = list_dead_letters(client, keys, 1, dead_id)
            if not found or found[0].dead_id != dead_id:
                raise HTTPException(404, f"no dead letter with ID {dead_id}")
            letters.append(found[0])
        return replay(client, keys, settings.maxlen, letters)

    return router
