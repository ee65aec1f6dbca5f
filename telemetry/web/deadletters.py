"""Dead letters over HTTP: list them, and put them back on the stream (a write: token needed,
see `auth`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import AfterValidator, BaseModel, Field

from ingest.contract.reading import parse_entry_id
from ingest.deadletter import DeadLetter, ReplayResult, ShardedDeadLetters
from ingest.settings import Settings


def _entry_id(text: str) -> str:
    try:
        parse_entry_id(text)
    except ValueError:
        # Said without the value: an answer never carries back what was sent.
        raise ValueError("expected a stream entry ID such as 1700000000000-0") from None
    return text


EntryId = Annotated[str, AfterValidator(_entry_id)]


class ReplayRequest(BaseModel):
    ids: list[EntryId] = Field(min_length=1, max_length=1000)


def dead_letters_router(settings: Settings) -> APIRouter:
    router = APIRouter()
    every_shard = ShardedDeadLetters(settings)

    @router.get("/dead-letters")
    def dead_letters(
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        after: Annotated[EntryId | None, Query(description="list after this ID")] = None,
    ) -> list[DeadLetter]:
        """Dead letters oldest first, with the group, original entry, fields and reason."""
        return every_shard.listed(limit, "-" if after is None else f"({after}")

    @router.post(
        "/dead-letters/replay",
        responses={401: {"description": "missing or wrong API token"},
                   404: {"description": "no dead letter with one of the IDs"}},
    )  # fmt: skip
    def replay_dead_letters(request: ReplayRequest) -> list[ReplayResult]:
        """Put dead letters back on the stream as they are; each result gives the new entry ID,
        or why the entry still breaks the contract (it then stays a dead letter). An ID listed
        more than once is replayed once."""
        chosen, missing = every_shard.chosen(request.ids)
        if missing:
            raise HTTPException(404, f"no dead letter with ID {missing[0]}")
        return every_shard.replay(chosen)

    return router
