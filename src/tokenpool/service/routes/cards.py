"""POST /v1/cards and GET /v1/cards/{card_id}."""

from __future__ import annotations

import json
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
from tokenpool.service.problems import ProblemError, invalid_characters_detail
from tokenpool.service.routes.docs import AUTHENTICATED, UNKNOWN_PROGRAM, WITH_BODY, CardId, link, problems
from tokenpool.service.schemas import CardResponse, CreateCardRequest
from tokenpool.service.security import authorize, bearer_key, require
from tokenpool.service.state import components
from tokenpool.service.text import INVALID_CHARACTERS, INVALID_CHARACTERS_ERROR, MESSAGE, has_forbidden_characters

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

_CARD_LINKS = {
    "GetCard": link("getCard", "The card just created.", parameters={"card_id": "$response.body#/card_id"}),
    "Detokenize": link("detokenize", "The card's external reference, back to its internal token.",
                       request_body={"external_refs": ["$response.body#/external_ref"]}),
    "GetPool": link("getPool", "The pool the pair came from.", parameters={"program": "$response.body#/program"}),
}


@router.post(
    "/cards", status_code=201, response_model=None, openapi_extra=_CREATE_CARD_OPENAPI, operation_id="createCard",
    responses={
        201: {"description": "The card.", "model": CardResponse, "links": _CARD_LINKS, "headers": {
            "Location": {"description": "`/v1/cards/{card_id}`.", "schema": {"type": "string"}}}},
        200: {"description": "Idempotent replay: the card this Idempotency-Key created before.",
              "model": CardResponse, "links": _CARD_LINKS, "headers": {
                  "Idempotent-Replayed": {"description": "`true`.", "schema": {"type": "string", "enum": ["true"]}}}},
        **problems(*AUTHENTICATED, *WITH_BODY, 409, 429, details={
            400: "`INVALID_IDEMPOTENCY_KEY`: the Idempotency-Key is not 1-255 visible ASCII characters.",
            403: "The scope needed: `cards:write`.",
            409: "`IDEMPOTENCY_KEY_IN_USE`: the key's first request is still unreadable; retry.",
            422: f"`IDEMPOTENCY_KEY_REUSED`: this Idempotency-Key came with another body before. {UNKNOWN_PROGRAM}",
            429: "Card creations per key: `TOKENPOOL_RATE_LIMIT_CARDS`.",
        }),
    },
)
async def create_card(request: Request) -> Response:
    """Create a card with a token pair from the pool (or TOME when the pool is empty)."""
    principal = await authorize(request, bearer_key(request), CARDS_WRITE)
    found = components(request)
    await found.rate_limits.card(principal)  # every attempt counts, replays and refusals included
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None:
        _check_idempotency_key(idempotency_key)
    body = await _create_card_body(request)
    order = CardOrder(body.program, body.customer_ref, idempotency_key, principal)
    card, created = await found.cards.create(order)
    content = CardResponse.of(card).model_dump_json()
    if created:
        return Response(content, 201, {"Location": f"/v1/cards/{card.card_id}"}, "application/json")
    return Response(content, 200, {"Idempotent-Replayed": "true"}, "application/json")


def _check_idempotency_key(key: str) -> None:
    # Header values arrive decoded as Latin-1: a C1 control is one byte 0x80-0x9F. (NUL, CR and LF never get
    # here: the HTTP server refuses such a request itself.)
    if has_forbidden_characters(key):
        error = {"loc": ["header", "Idempotency-Key"], "msg": MESSAGE, "type": INVALID_CHARACTERS_ERROR}
        raise ProblemError(422, INVALID_CHARACTERS, invalid_characters_detail("Idempotency-Key"),
                           extra={"errors": [error]})
    if not is_valid_key(key):
        raise ProblemError(400, "INVALID_IDEMPOTENCY_KEY",
                           f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} visible ASCII characters.")


async def _create_card_body(request: Request) -> CreateCardRequest:
    raw = await request.body()
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return CreateCardRequest.model_validate_json(raw)
    except ValidationError as error:  # located like FastAPI's own: under "body"
        errors = error.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            errors = _errors_as_python_json(raw) or errors
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


def _errors_as_python_json(raw: bytes) -> list[Any] | None:
    """The body's errors when Python's json reads it although pydantic's parser did not; else None.

    pydantic's parser refuses a lone surrogate escape (``"\\ud800"``) as invalid JSON; Python's json, which
    FastAPI uses for every other route, decodes it to a lone surrogate that the field's validator refuses
    (INVALID_CHARACTERS, naming the field), as on those routes. Only on this error path: no cost otherwise.
    """
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # invalid UTF-8 or JSON, absurd nesting: malformed it stays
        return None
    try:
        CreateCardRequest.model_validate(parsed)
    except ValidationError as error:
        return error.errors()
    return None  # valid to Python's json only (NaN, ...): malformed all the same


@router.get("/cards/{card_id}", response_model=CardResponse, operation_id="getCard", responses=problems(
    *AUTHENTICATED, 404, 422, details={
        403: "The scope needed: `cards:read`.",
        404: "`CARD_NOT_FOUND`: no card with this id (or an id that is no UUID).",
    }))
async def get_card(
    card_id: CardId, request: Request, principal: Annotated[Principal, Depends(require(CARDS_READ))]
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
