"""A request the server refuses, and the JSON error body every route answers it with.

Every refusal is a 4xx with one line saying what is wrong and how to fix it, and `field` naming
the part of the request at fault (the OpenAI-compatible routes use OpenAI's error shape instead,
openai/schemas.py).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class RequestError(Exception):
    """A request the server refuses: HTTP status, one-line message, the field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}


def invalid(field: str, problem: str) -> RequestError:
    return RequestError(422, f"{field}: {problem}", field)


def one_line(message: str) -> str:
    """`message` with line breaks and other unprintable characters escaped as repr writes them:
    a message quoting a client's key or name stays one line."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def error_response(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": one_line(message)}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)
