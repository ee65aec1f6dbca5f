"""Who may do what through the API: the bearer token, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import HTTPException

from ingest.settings import Settings


def token_accepted(settings: Settings, presented: str | None) -> bool:
    """True when no API token is configured, or this one matches (in constant time)."""
    expected = settings.api_token
    return expected is None or (presented is not None and hmac.compare_digest(presented, expected))


def check_token(settings: Settings, presented: str | None) -> None:
    """401 unless the configured API token (if any) was presented."""
    if not token_accepted(settings, presented):
        raise HTTPException(401, "a valid API token is required (Authorization: Bearer TOKEN)")


def bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
