"""The TOME contract as tokenpool sees it: wire models, typed errors and token formats.

The wire models describe the HTTP contract documented in ``docs/tome-api.md``. The emulator serves
them and ``tokenpool.tome.client`` (the one adapter module) maps them; the rest of tokenpool only
sees the typed errors below and plain lists of strings.
"""

from __future__ import annotations

import re
import secrets
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr, StringConstraints

from tokenpool.pool.luhn import luhn_check_digit, luhn_valid

DEFAULT_MAX_BATCH = 2_500
CORRELATION_HEADER = "X-Correlation-ID"
IDEMPOTENCY_HEADER = "Idempotency-Key"
PROBLEM_CONTENT_TYPE = "application/problem+json"
NAMESPACE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
MAX_VALUE_LENGTH = 256


class Operation(StrEnum):
    ISSUE = "issue"
    TOKENIZE = "tokenize"
    DETOKENIZE = "detokenize"


# --- Wire models ------------------------------------------------------------------------------------
# Responses are parsed strictly: a number where a string belongs, an empty string or a missing key is
# a bad response, never coerced.

NonEmptyStr = Annotated[StrictStr, StringConstraints(min_length=1)]
Value = Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_VALUE_LENGTH)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class IssueRequest(_Strict):
    count: int = Field(ge=1, description="How many new tokens to issue.")


class TokenizeRequest(_Strict):
    values: list[Value] = Field(min_length=1)


class DetokenizeRequest(_Strict):
    tokens: list[NonEmptyStr] = Field(min_length=1)


class TokensResponse(BaseModel):
    """``issue`` and ``tokenize`` answer with tokens in request order. Unknown keys are tolerated."""

    model_config = ConfigDict(strict=True, frozen=True)
    tokens: list[NonEmptyStr]


class ValuesResponse(BaseModel):
    """``detokenize`` answers with values in request order, ``null`` for an unknown token."""

    model_config = ConfigDict(strict=True, frozen=True)
    values: list[NonEmptyStr | None]


class Problem(BaseModel):
    """RFC 9457 problem details; ``code`` is the stable machine-readable reason."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str


# --- Typed errors -----------------------------------------------------------------------------------


class TomeError(Exception):
    """Base of every error the TOME client raises."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class TomeUnavailable(TomeError):
    """TOME cannot be reached or is failing: breaker open, outage, 5xx, timeout, connection error.

    ``reason`` is one of ``breaker_open``, ``server_error``, ``timeout``, ``connection_error``,
    ``deadline``; ``retry_after_s`` is set when the breaker is open (time until the next probe).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        code: str | None = None,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.reason = reason
        self.retry_after_s = retry_after_s


class TomeRateLimited(TomeError):
    """429 from TOME; ``retry_after_s`` is its ``Retry-After`` (None when absent or unparsable)."""

    def __init__(self, message: str, *, retry_after_s: float | None, code: str | None = None) -> None:
        super().__init__(message, code=code, status=429)
        self.retry_after_s = retry_after_s


class TomeBadResponse(TomeError):
    """TOME answered 2xx but the body is malformed or holds the wrong number of items."""


class TomeBadRequest(TomeError):
    """TOME refused the request (4xx other than 429): our bug or a limit; never retried."""


# --- Token formats -----------------------------------------------------------------------------------
# Internal tokens (``issue``) look like card numbers so systems that expect a PAN accept them: 16 digits,
# Luhn-valid. External references (``tokenize``) are opaque: ``ext_`` + 26 Crockford base32 characters
# (130 random bits), so they can never be mistaken for a PAN.

INTERNAL_TOKEN_LENGTH = 16
EXTERNAL_REF_PREFIX = "ext_"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_INTERNAL_RE = re.compile(r"^\d{16}$")
_EXTERNAL_RE = re.compile(r"^ext_[0-9A-HJKMNP-TV-Z]{26}$")


def new_internal_token() -> str:
    """A random 16-digit Luhn-valid token; the first digit is never 0 (keeps it a fixed-width number)."""
    payload = str(secrets.randbelow(9) + 1) + "".join(str(secrets.randbelow(10)) for _ in range(14))
    return payload + luhn_check_digit(payload)


def is_internal_token(token: str) -> bool:
    return bool(_INTERNAL_RE.match(token)) and luhn_valid(token)


def new_external_ref() -> str:
    bits = secrets.randbits(130)
    chars = [_CROCKFORD[(bits >> (5 * i)) & 31] for i in range(26)]
    return EXTERNAL_REF_PREFIX + "".join(reversed(chars))


def is_external_ref(ref: str) -> bool:
    return bool(_EXTERNAL_RE.match(ref))
