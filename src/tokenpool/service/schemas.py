"""Request and response bodies of the API. Requests are strict: unknown fields and wrong types are 4xx."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tokenpool.cards import Card
from tokenpool.programs import NAME_PATTERN
from tokenpool.service.text import PlainText

# Every string of a request has bounds and refuses control characters (service/text.py): the OpenAPI
# document states both (minLength, maxLength, pattern).
PROGRAM_PATTERN = NAME_PATTERN  # a registered program's name (tokenpool.programs)
Program = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=PROGRAM_PATTERN), PlainText()]
CustomerRef = Annotated[str, StringConstraints(min_length=1, max_length=128), PlainText()]
ExternalRef = Annotated[str, StringConstraints(min_length=1, max_length=256), PlainText()]
CardRef = Annotated[str, StringConstraints(min_length=1, max_length=128), PlainText()]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CreateCardRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"program": "default", "customer_ref": "cust-0001"}]})

    program: Program = Field(description="Card program: the pool to take the token pair from.")
    customer_ref: CustomerRef


class CardResponse(BaseModel):
    card_id: UUID
    program: str
    customer_ref: str
    internal_token: str
    external_ref: str
    token_source: Literal["pool", "tome"]
    created_at: datetime

    @classmethod
    def of(cls, card: Card) -> CardResponse:
        return cls(
            card_id=card.card_id, program=card.program, customer_ref=card.customer_ref,
            internal_token=card.internal_token, external_ref=card.external_ref,
            token_source=card.token_source.value, created_at=card.created_at,
        )


class DetokenizeRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"external_refs": ["ext_0001", "ext_0002"]}]})

    # The hard cap keeps validation itself cheap; the configured limit (TOO_MANY_REFS) is lower.
    external_refs: list[ExternalRef] = Field(min_length=1, max_length=10_000)


class DetokenizeResult(BaseModel):
    external_ref: str
    internal_token: str | None
    source: Literal["db", "tome"] | None


class ResponseWarning(BaseModel):
    code: str
    detail: str


class DetokenizeResponse(BaseModel):
    results: list[DetokenizeResult]
    complete: bool = Field(
        description="False when some references could not be looked up in TOME (it was unavailable): "
        "their internal_token is null without meaning 'unknown'."
    )
    warnings: list[ResponseWarning] = Field(default_factory=list)


class ReservationRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"program": "default"}]})

    program: Program


class ReservationResponse(BaseModel):
    reservation_id: UUID
    program: str
    internal_token: str
    external_ref: str
    lease_expires_at: datetime
    token_source: Literal["pool", "tome"]


class CommitRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"card_ref": "card-0001"}]})

    card_ref: CardRef


class ReservationOutcome(BaseModel):
    reservation_id: UUID
    status: Literal["committed", "released"]
    card_ref: str | None = None


class PoolResponse(BaseModel):
    """As ``tokenpool health`` reports it (``tokenpool.refill.health``)."""

    pool: str
    status: Literal["OK", "LOW", "CRITICAL", "EMPTY"]
    target: int
    available: int
    reserved: int
    used: int
    expired: int
    total: int
    consumption_per_hour: float | None
    hours_left: float | None


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadinessResponse(BaseModel):
    status: Literal["ready"]
    database: Literal["ok"]
    tome_breaker: str = Field(description="TOME's circuit breaker: `closed`, `open` or `half_open`.")
