"""OpenAPI descriptions shared by the routes: every problem response an operation can give, and the links
between operations (what a client, or Schemathesis' stateful phase, does with a response next)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

from tokenpool.service.schemas import PROGRAM_PATTERN
from tokenpool.service.text import PlainText

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                "schema": {"type": "integer", "minimum": 1}}}
_CHALLENGE = {"WWW-Authenticate": {"description": "`Bearer`.", "schema": {"type": "string"}}}

# What each status means on any operation; ``problems(..., details=...)`` adds an operation's own codes.
_GENERIC: dict[int, str] = {
    400: "`MALFORMED_JSON`: the body is not JSON; `BAD_REQUEST`: the body could not be read (invalid UTF-8).",
    401: "`AUTHENTICATION_REQUIRED`: no bearer key; `INVALID_API_KEY`: the key is unknown or revoked; "
         "`API_KEY_EXPIRED`: the key's expiry has passed.",
    403: "`INSUFFICIENT_SCOPE`: the key lacks this operation's scope.",
    413: "`BODY_TOO_LARGE`: the body is over the service's limit (`TOKENPOOL_SERVICE_MAX_BODY_BYTES`).",
    422: "`INVALID_CHARACTERS`: a string holds a control character, a line or paragraph separator or a lone "
         "surrogate (`errors` names the fields); `VALIDATION_ERROR`: a missing or unknown field, a wrong type, "
         "a string or list out of its bounds.",
    429: "`RATE_LIMITED`: this key's rate limit is spent; retry after `Retry-After` seconds.",
    500: "`INTERNAL_ERROR`: a bug, quote the correlation id; `TOKEN_UNREADABLE`: a stored token failed its "
         "integrity check; `INSUFFICIENT_PRIVILEGE`: a deployment error.",
    503: "`DATABASE_UNAVAILABLE`, `SERVICE_BUSY`, `VAULT_UNAVAILABLE`, `TOME_UNAVAILABLE`, "
         "`POOL_EXHAUSTED_TOME_UNAVAILABLE`, `TOME_PAIR_RECLAIMED`: retry after `Retry-After` seconds.",
}

# The statuses every operation behind a key can answer with besides its own.
AUTHENTICATED = (401, 403, 500, 503)
WITH_BODY = (400, 413, 422)
# A request naming a card program: registered programs only.
UNKNOWN_PROGRAM = "`UNKNOWN_PROGRAM`: the program is not registered (`tokenpool program add`); nothing written."


def problems(*statuses: int, details: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The documented problem responses (application/problem+json, schema ``Problem``) for ``statuses``."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses)):
        text = " ".join(part for part in (_GENERIC.get(status), (details or {}).get(status)) if part)
        response: dict[str, Any] = {"description": text or "A problem (RFC 9457); see docs/api.md.",
                                    "content": _PROBLEM}
        if status in (429, 503):
            response["headers"] = _RETRY_AFTER
        elif status == 401:
            response["headers"] = _CHALLENGE
        documented[status] = response
    return documented


def link(operation_id: str, description: str, *, parameters: dict[str, str] | None = None,
         request_body: Any = None) -> dict[str, Any]:
    found: dict[str, Any] = {"operationId": operation_id, "description": description}
    if parameters:
        found["parameters"] = parameters
    if request_body is not None:
        found["requestBody"] = request_body
    return found


# Path parameters: bounded, control characters refused (INVALID_CHARACTERS), their bounds in the document.
# An id that is no UUID is simply unknown (404), as docs/api.md says; the bound keeps it short.
ID_MAX_LENGTH = 64
_UUID = {"format": "uuid", "examples": ["3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f"]}
CardId = Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH, description="The card's id (a UUID).",
                             json_schema_extra=_UUID), PlainText()]
ReservationId = Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH,
                                    description="The reservation's id (a UUID).", json_schema_extra=_UUID), PlainText()]
ProgramName = Annotated[str, Path(min_length=1, max_length=64, pattern=PROGRAM_PATTERN, examples=["default"],
                                  description="Card program: a pool's name."), PlainText()]
