"""ASGI middleware that refuses a request before the app reads it: API key, body size.

Both answer with the server's JSON error body (`{"error": ...}`) and never buffer a body.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from forgeml.serve.errors import error_response

# Health probes stay open with an API key: orchestrators call them without credentials.
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


class ApiKeyMiddleware:
    """Every route except the health probes needs `Authorization: Bearer KEY` (401 otherwise).

    The key is compared in constant time (`hmac.compare_digest`), so response timing does not
    reveal how much of a guess was right.
    """

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app = app
        self.key = api_key.encode() if api_key is not None else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        given = token.strip().encode("utf-8", "replace")
        if scheme.lower() == "bearer" and hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            "missing or wrong API key; send the header Authorization: Bearer KEY",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"the request body is larger than the limit of {limit} bytes (--max-body-bytes); "
            "send fewer rows per request",
        )


class BodyLimitMiddleware:
    """413 for a body over `limit` bytes: at once from Content-Length, else while it streams.

    A chunked body is counted as the app reads it; the read that crosses the limit raises
    `BodyTooLarge` (an HTTPException, answered by the app's handler), so at most `limit` bytes
    plus one chunk are ever held.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                response = error_response(400, f"invalid Content-Length header {declared!r}")
                await response(scope, receive, send)
                return
            if size > self.limit:
                error = BodyTooLarge(self.limit)
                # Close the connection: the unread body must not be taken for the next request.
                response = error_response(413, error.detail, headers={"Connection": "close"})
                await response(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)
