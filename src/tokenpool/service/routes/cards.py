"""POST /v1/cards and GET /v1/cards/{card_id}."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from tokenpool.cards.idempotency import MAX_KEY_LENGTH, is_valid_key
from tokenpool.observability.masking import mask_to_last_four
from tokenpool.service.auth import CARDS_READ, CARDS_WRITE, TOKENS_DETOKENIZE, Principal
from tokenpool.service.cards import CardOrder
from tokenpool.service.problems import ProblemError
from tokenpool.service.routes.docs import PROBLEMS
from tokenpool.service.schemas import CardResponse, CreateCardRequest
from tokenpool.service.security import authorize, bearer_key, require
from tokenpool.service.state import components

router = APIRouter(prefix="/v1", tags=["cards"])


# The hottest route: its request is parsed and its response written here rather than by FastAPI's
# dependency and serialization machinery, which cost about a fifth of a card's CPU (py-spy under wrk,
# docs/benchmarks.md). Same checks, same problems; the OpenAPI document is declared by hand below.
_CREATE_CARD_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/CreateCardRequest"}}}},
    "parameters": [{
        "name": "Idempotency-Key", "in": "header", "required": False,
        "description": f"Up to {MAX_KEY_LENGTH} visible ASCII characters: a retry with the same key and body "
                       "answers with the first card (200, Idempotent-Replayed: true).",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": "^[\\x21-\\x7e]+$"},
    }],
    "security": [{"HTTPBearer": []}],
}


@router.post(
    "/cards", status_code=201, response_model=None, openapi_extra=_CREATE_CARD_OPENAPI,
    responses={201: {"description": "The card.", "model": CardResponse},
               200: {"description": "Idempotent replay: the card this Idempotency-Key created before.",
                     "model": CardResponse}, **PROBLEMS},
)
async def create_card(request: Request) -> Response:
    """Create a card with a token pair from the pool (or TOME when the pool is empty)."""
    principal = await authorize(request, bearer_key(request), CARDS_WRITE)
    found = components(request)
    await found.rate_limits.card(principal)  # every attempt counts, replays and refusals included
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not is_valid_key(idempotency_key):
        raise ProblemError(400, "INVALID_IDEMPOTENCY_KEY",
                           f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} visible ASCII characters.")
    body = await _create_card_body(request)
    order = CardOrder(body.program, body.customer_ref, idempotency_key, principal)
    card, created = await found.cards.create(order)
    content = CardResponse.of(card).model_dump_json()
    if created:
        return Response(content, 201, {"Location": f"/v1/cards/{card.card_id}"}, "application/json")
    return Response(content, 200, {"Idempotent-Replayed": "true"}, "application/json")


async def _create_card_body(request: Request) -> CreateCardRequest:
    raw = await request.body()
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return CreateCardRequest.model_validate_json(raw)
    except ValidationError as error:  # located like FastAPI's own: under "body"
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in error.errors()]) from None


@router.get("/cards/{card_id}", response_model=CardResponse, responses=PROBLEMS)
async def get_card(
    card_id: str, request: Request, principal: Annotated[Principal, Depends(require(CARDS_READ))]
) -> CardResponse:
    """A card. The whole internal_token only for a key that also holds tokens:detokenize (the read is
    audited, like a detokenize); for any other key it is masked to its last four characters."""
    try:
        parsed = uuid.UUID(card_id)
    except ValueError:
        parsed = None
    found = components(request)
    card = await found.cards.get(parsed) if parsed else None
    if card is None:
        raise ProblemError(404, "CARD_NOT_FOUND", "No card with this id.")
    if TOKENS_DETOKENIZE not in principal.scopes:
        return CardResponse.of(replace(card, internal_token=mask_to_last_four(card.internal_token)))
    await found.token_reads.card_read(card, principal, found.client_addresses.of(request))
    return CardResponse.of(card)
