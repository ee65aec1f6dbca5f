"""Query parameters parsed beyond what their declared types check."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException


def parameter(name: str, parse: Callable[[], int]) -> int:
    """A parsed query parameter, or 422 naming it."""
    try:
        return parse()
    except ValueError as exc:
        raise HTTPException(422, f"{name}: {exc}") from None
