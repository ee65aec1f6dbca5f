"""Who may do what through the API, decided in one place.

Three scopes, each token granting its own and those below: read (queries, live tails of readings
and alerts), write (`POST /readings`), admin (dead letters and replays, their live tail).
`API_TOKEN` is the admin token; `API_WRITE_TOKEN` and `API_READ_TOKEN` are optional narrower
ones. With no token configured everything is open (for an API on loopback); once any is, every
route but the dashboard's files, `/healthz` and the API docs needs one.

A token travels in the `Authorization: Bearer` header, never in a URL. A browser cannot set that
header on a websocket, so it first trades its token for a ticket (`POST /ws-ticket`): single use,
valid for 30 seconds, passed as `?ticket=`.

`AccessGuard` checks HTTP requests before the app reads anything of their body, and answers with
the security headers every response carries; `Access.websocket_scope` serves the live tails.
"""

from __future__ import annotations

import enum
import hmac
import json
import secrets
import time
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.keys import StreamKeys
from ingest.settings import Settings

TICKET_TTL_S = 30.0
TICKETS_HELD = 10_000
PUBLIC_PATHS = frozenset({"/", "/dashboard", "/healthz", "/docs", "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/", "/docs-static/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
# The dashboard and the docs load only their own files; nothing may frame them.
CSP = b"default-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'"
# The docs page starts Swagger UI with an inline script.
DOCS_CSP = b"default-src 'self'; script-src 'self' 'unsafe-inline'; frame-ancestors 'none'"


class Grant(enum.IntEnum):
    READ = 1
    WRITE = 2
    ADMIN = 3


def needed(method: str, path: str, dead_stream: str) -> Grant | None:
    """The scope a request needs; None for the public ones."""
    if method in SAFE_METHODS and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)):
        return None
    if path.startswith("/dead-letters") or path == f"/stream/{dead_stream}":
        return Grant.ADMIN
    if method in SAFE_METHODS or path == "/ws-ticket":
        return Grant.READ
    if path == "/readings":
        return Grant.WRITE
    return Grant.ADMIN


def bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class Access:
    """The configured tokens and the tickets handed out for them."""

    def __init__(self, settings: Settings) -> None:
        tokens = {
            Grant.ADMIN: settings.api_token,
            Grant.WRITE: settings.api_write_token,
            Grant.READ: settings.api_read_token,
        }
        self._tokens = {
            grant: token.encode("utf-8", "surrogateescape")
            for grant, token in tokens.items()
            if token is not None
        }
        self.dead_stream = StreamKeys(settings.stream).dead
        self._tickets: dict[str, tuple[Grant, float]] = {}

    @property
    def open(self) -> bool:
        return not self._tokens

    def needed(self, method: str, path: str) -> Grant | None:
        """The scope a request needs; None for the public ones."""
        return needed(method, path, self.dead_stream)

    def grant_of(self, token: str | None) -> Grant | None:
        """What a presented token grants: everything when none is configured; compared in
        constant time with each configured one."""
        if self.open:
            return Grant.ADMIN
        if token is None:
            return None
        presented = token.encode("utf-8", "surrogateescape")
        found = None
        for grant, expected in self._tokens.items():
            if hmac.compare_digest(presented, expected):
                found = grant if found is None else max(found, grant)
        return found

    def ticket(self, grant: Grant) -> str:
        now = time.monotonic()
        if len(self._tickets) >= TICKETS_HELD:
            self._tickets = {t: g for t, g in self._tickets.items() if g[1] > now}
        if len(self._tickets) >= TICKETS_HELD:
            raise OverflowError("too many websocket tickets outstanding")
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = (grant, now + TICKET_TTL_S)
        return ticket

    def redeem(self, ticket: str) -> Grant | None:
        held = self._tickets.pop(ticket, None)
        return held[0] if held is not None and held[1] > time.monotonic() else None

    def websocket_scope(self, headers: Mapping[str, str], ticket: str | None) -> Grant | None:
        """What a websocket client may watch: by its Authorization header or its ticket."""
        if self.open:
            return Grant.ADMIN
        if ticket is not None:
            return self.redeem(ticket)
        return self.grant_of(bearer(headers.get("authorization")))


class AccessGuard:
    """ASGI middleware: 401 (no or wrong token) or 403 (a token without the scope) before the
    app sees the request; 415 for a write that is not JSON, so that no web page can post to the
    API as a form; security headers on every answer."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers = dict(scope["headers"])
        csp = DOCS_CSP if path == "/docs" else CSP
        wanted = self.access.needed(method, path)
        if wanted is not None:
            authorization = headers.get(b"authorization")
            grant = self.access.grant_of(bearer(authorization.decode("latin-1") if authorization
                                                else None))  # fmt: skip
            if grant is None:
                await _refuse(send, 401, "a valid API token is required "
                              "(Authorization: Bearer TOKEN)", csp)  # fmt: skip
                return
            if grant < wanted:
                await _refuse(send, 403, f"this token does not grant {wanted.name.lower()}", csp)
                return
            # What the token grants, for a route that hands it on (POST /ws-ticket).
            scope.setdefault("state", {})["grant"] = grant
        if method not in SAFE_METHODS:
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind != b"application/json":
                await _refuse(send, 415, "send the body as Content-Type: application/json", csp)
                return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []), *SECURITY_HEADERS,
                    (b"content-security-policy", csp),
                ]  # fmt: skip
            await send(message)

        await self.app(scope, receive, secured)


async def _refuse(send: Send, status: int, detail: str, csp: bytes) -> None:
    headers = [(b"content-type", b"application/json"), *SECURITY_HEADERS,
               (b"content-security-policy", csp)]  # fmt: skip
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})
