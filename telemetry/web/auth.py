"""Who may do what through the API, decided in one place: every write (any method but GET, HEAD
and OPTIONS) and every websocket needs the bearer token when one is configured. Writes are
checked before anything reads their body, so an unauthenticated request costs nothing but its
headers."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from ingest.settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UNAUTHORIZED = json.dumps(
    {"detail": "a valid API token is required (Authorization: Bearer TOKEN)"}
).encode()


def token_accepted(settings: Settings, presented: str | None) -> bool:
    """True when no API token is configured, or this one matches (in constant time)."""
    expected = settings.api_token
    if expected is None:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class WriteGuard:
    """ASGI middleware: 401 for a write without the token, before the app sees it."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = dict(scope["headers"])
            authorization = headers.get(b"authorization")
            presented = bearer(authorization.decode("latin-1") if authorization else None)
            if not token_accepted(self.settings, presented):
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                ]})  # fmt: skip
                await send({"type": "http.response.body", "body": UNAUTHORIZED})
                return
        await self.app(scope, receive, send)
