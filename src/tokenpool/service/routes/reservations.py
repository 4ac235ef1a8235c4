"""The reservation protocol: POST /v1/reservations, .../{id}/commit, .../{id}/release."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from tokenpool.service.auth import RESERVATIONS_WRITE, Principal
from tokenpool.service.problems import ProblemError
from tokenpool.service.routes.docs import AUTHENTICATED, UNKNOWN_PROGRAM, WITH_BODY, ReservationId, link, problems
from tokenpool.service.schemas import CommitRequest, ReservationOutcome, ReservationRequest, ReservationResponse
from tokenpool.service.security import require
from tokenpool.service.state import components

router = APIRouter(prefix="/v1", tags=["reservations"])

Writer = Annotated[Principal, Depends(require(RESERVATIONS_WRITE))]


def _reservation_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ProblemError(404, "RESERVATION_NOT_FOUND", "No reservation with this id.") from None


_RESERVATION_LINKS = {
    "CommitReservation": link("commitReservation", "Commit the pair to a card.",
                              parameters={"reservation_id": "$response.body#/reservation_id"}),
    "ReleaseReservation": link("releaseReservation", "Give the pair back.",
                               parameters={"reservation_id": "$response.body#/reservation_id"}),
}
_SCOPE = "The scope needed: `reservations:write`."
_NOT_FOUND = ("`RESERVATION_NOT_FOUND`: no such reservation (or an id that is no UUID, or another key's "
              "reservation); a released reservation is gone.")
_FINISHED = {409: "`RESERVATION_CONFLICT`: committed to another card, or released after commit.",
             410: "`RESERVATION_LEASE_EXPIRED`: the lease lapsed; the pair is quarantined."}


@router.post("/reservations", status_code=201, response_model=ReservationResponse, operation_id="createReservation",
             responses={201: {"description": "The reserved pair.", "links": _RESERVATION_LINKS},
                        **problems(*AUTHENTICATED, *WITH_BODY, 429, details={
                            403: _SCOPE, 422: UNKNOWN_PROGRAM,
                            429: "`TOO_MANY_OPEN_RESERVATIONS`: this key holds its maximum of open reservations "
                                 "(`TOKENPOOL_MAX_OPEN_RESERVATIONS`); commit or release one first."})})
async def reserve(body: ReservationRequest, request: Request, principal: Writer) -> ReservationResponse:
    """Hold a token pair for a lease; commit it to a card or release it before the lease lapses. The
    reservation belongs to the key: only it may commit or release it."""
    reservation, source = await components(request).reservations.reserve(body.program, principal.api_key_id)
    return ReservationResponse(
        reservation_id=reservation.reservation_id, program=reservation.pool,
        internal_token=reservation.internal_token, external_ref=reservation.external_ref,
        lease_expires_at=reservation.lease_expires_at, token_source=source.value,
    )


@router.post("/reservations/{reservation_id}/commit", response_model=ReservationOutcome,
             operation_id="commitReservation", responses=problems(
                 *AUTHENTICATED, *WITH_BODY, 404, 409, 410, details={403: _SCOPE, 404: _NOT_FOUND, **_FINISHED}))
async def commit(
    reservation_id: ReservationId, body: CommitRequest, request: Request, principal: Writer
) -> ReservationOutcome:
    """Mark the pair used by ``card_ref``; repeating it for the same card is harmless. Another key's
    reservation answers 404, as an unknown one."""
    parsed = _reservation_id(reservation_id)
    await components(request).reservations.commit(parsed, body.card_ref, principal.api_key_id)
    return ReservationOutcome(reservation_id=parsed, status="committed", card_ref=body.card_ref)


@router.post("/reservations/{reservation_id}/release", response_model=ReservationOutcome,
             operation_id="releaseReservation", responses=problems(
                 *AUTHENTICATED, 404, 409, 410, 422, details={403: _SCOPE, 404: _NOT_FOUND, **_FINISHED}))
async def release(reservation_id: ReservationId, request: Request, principal: Writer) -> ReservationOutcome:
    """Give the pair back to the pool (allowed while the lease holds); another key's reservation answers 404."""
    parsed = _reservation_id(reservation_id)
    await components(request).reservations.release(parsed, principal.api_key_id)
    return ReservationOutcome(reservation_id=parsed, status="released")
