"""POST /v1/cards and GET /v1/cards/{card_id}."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response

from tokenpool.cards.idempotency import MAX_KEY_LENGTH, is_valid_key
from tokenpool.observability.masking import mask_to_last_four
from tokenpool.service.auth import CARDS_READ, CARDS_WRITE, TOKENS_DETOKENIZE, Principal
from tokenpool.service.cards import CardOrder
from tokenpool.service.problems import ProblemError
from tokenpool.service.routes.docs import PROBLEMS
from tokenpool.service.schemas import CardResponse, CreateCardRequest
from tokenpool.service.security import require
from tokenpool.service.state import components

router = APIRouter(prefix="/v1", tags=["cards"])


@router.post(
    "/cards", status_code=201, response_model=CardResponse,
    responses={200: {"description": "Idempotent replay: the card this Idempotency-Key created before.",
                     "model": CardResponse}, **PROBLEMS},
)
async def create_card(
    body: CreateCardRequest,
    request: Request,
    response: Response,
    principal: Annotated[Principal, Depends(require(CARDS_WRITE))],
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", description=f"Up to {MAX_KEY_LENGTH} visible ASCII characters."
    )] = None,
) -> CardResponse:
    """Create a card with a token pair from the pool (or TOME when the pool is empty)."""
    if idempotency_key is not None and not is_valid_key(idempotency_key):
        raise ProblemError(400, "INVALID_IDEMPOTENCY_KEY",
                           f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} visible ASCII characters.")
    order = CardOrder(body.program, body.customer_ref, idempotency_key, principal)
    card, created = await components(request).cards.create(order)
    if created:
        response.headers["Location"] = f"/v1/cards/{card.card_id}"
    else:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return CardResponse.of(card)


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
