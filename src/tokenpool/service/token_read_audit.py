"""The audit of token reads outside detokenize: whole-token card reads, and refused attempts.

A card read that shows the whole internal token writes its row before the answer leaves; if the row
cannot be written the request fails (503 when the database is unavailable) and shows nothing. A
refused attempt at a token-revealing route (400, 401, 403, 422, and 429: a key over its detokenize
limit) writes a row naming the reason code, the origin and the key (when known), never the refs: one
bounded row per request, so a flood of refusals grows the table no faster than the requests arrive.
That row is best effort: when the database is down the refusal is still sent.
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tokenpool.audit.digest import RefDigest
from tokenpool.cards import Card
from tokenpool.db.audit_store import AuditEntry, AuditEvent, AuditStore
from tokenpool.db.database import Database
from tokenpool.observability.logging import get_logger
from tokenpool.service.auth import Principal
from tokenpool.service.correlation import current_correlation_id
from tokenpool.service.problems import ProblemError

if TYPE_CHECKING:
    from tokenpool.service.state import Components

log = get_logger("tokenpool.service.audit")

# Routes that reveal whole tokens, by (method, route template).
TOKEN_READ_ROUTES: dict[tuple[str, str], AuditEvent] = {
    ("POST", "/v1/detokenize"): "detokenize",
    ("GET", "/v1/cards/{card_id}"): "card_read",
}
REFUSALS = frozenset({400, 401, 403, 422, 429})

Handler = Callable[[Request, Any], Response | Awaitable[Response]]


class TokenReadAudit:
    def __init__(self, db: Database, store: AuditStore, ref_digest: RefDigest) -> None:
        self._db = db
        self._store = store
        self._ref_digest = ref_digest

    async def card_read(self, card: Card, principal: Principal, client_addr: str | None) -> None:
        """Before the whole token leaves; raises DatabaseUnavailable when it cannot be recorded."""
        entry = AuditEntry(
            "card_read", "success", current_correlation_id(), client_addr, principal.name, card_id=card.card_id,
            ref_digests=(self._ref_digest(card.external_ref),), from_db=1,
        )
        async with self._db.connection() as conn:
            await self._store.record(conn, entry)

    async def refused(self, event: AuditEvent, reason: str, principal: Principal | None, client_addr: str | None,
                      card_id: uuid.UUID | None) -> None:
        entry = AuditEntry(event, "refused", current_correlation_id(), client_addr,
                           principal.name if principal else None, reason=reason, card_id=card_id)
        try:
            async with self._db.connection() as conn:
                await self._store.record(conn, entry)
        except Exception as error:  # the refusal is answered all the same; it revealed nothing
            log.error("audit.refusal_not_recorded", event=event, reason=reason, error_type=type(error).__name__)


def _card_id(request: Request) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(request.path_params.get("card_id")))
    except ValueError:
        return None


async def _audit_refusal(request: Request, response: Response) -> None:
    route = getattr(request.scope.get("route"), "path", None)
    event = TOKEN_READ_ROUTES.get((request.method, str(route)))
    if event is None or response.status_code not in REFUSALS:
        return
    found: Components = request.app.state.components
    reason = str(json.loads(bytes(response.body))["code"])
    principal = getattr(request.state, "principal", None)  # set by require() once the key is known
    await found.token_reads.refused(event, reason, principal, found.client_addresses.of(request),
                                    _card_id(request) if event == "card_read" else None)


def install_refusal_audit(app: FastAPI) -> None:
    """Wraps the problem handlers (install them first) so refusals at token-revealing routes are audited."""
    for error in (ProblemError, RequestValidationError, StarletteHTTPException):
        inner = app.exception_handlers[error]

        async def audited(request: Request, exc: Exception, inner: Handler = inner) -> Response:
            response = inner(request, exc)
            if inspect.isawaitable(response):
                response = await response
            await _audit_refusal(request, response)
            return response

        app.add_exception_handler(error, audited)
