"""FastAPI dependencies that authenticate ``Authorization: Bearer <key>`` and check one scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tokenpool.service.auth import Principal
from tokenpool.service.problems import ProblemError
from tokenpool.service.state import components

_bearer = HTTPBearer(auto_error=False, description="An API key from `tokenpool apikey create`.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    async def authorized(request: Request, credentials: Credentials) -> Principal:
        return await authorize(request, None if credentials is None else credentials.credentials, scope)

    return authorized


def bearer_key(request: Request) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (what HTTPBearer reads), for routes without dependencies."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


async def authorize(request: Request, key: str | None, scope: str) -> Principal:
    """The principal of ``key`` if it is live and holds ``scope``; a 401 or 403 problem otherwise."""
    if key is None:
        raise ProblemError(401, "AUTHENTICATION_REQUIRED", "Send 'Authorization: Bearer <api key>'.",
                           headers=_CHALLENGE)
    found = components(request)
    # A cache hit costs no database call; a miss is bounded by the store's own guarded connection.
    principal = await found.api_keys.authenticate(key)
    if principal is None:
        raise ProblemError(401, "INVALID_API_KEY", "The API key is unknown or revoked.", headers=_CHALLENGE)
    request.state.principal = principal  # an audited refusal after this point names the key
    structlog.contextvars.bind_contextvars(api_key_name=principal.name)
    if principal.expired():
        # Its own code: only the key's holder can present it, so saying it expired tells nobody else anything,
        # and tells its holder what to do (a new key) instead of suggesting a typo.
        raise ProblemError(401, "API_KEY_EXPIRED", "The API key has expired; ask for a new one.", headers=_CHALLENGE)
    if scope not in principal.scopes:
        raise ProblemError(403, "INSUFFICIENT_SCOPE", f"The API key lacks the scope {scope!r}.")
    return principal
