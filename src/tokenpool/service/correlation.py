"""The correlation id of the request being served: taken from ``X-Correlation-ID`` or generated.

A client-supplied id is accepted only when it is short, of a safe alphabet, and holds no run of
12+ digits: correlation ids are logged whole, so one must never be able to carry a card number.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

CORRELATION_HEADER = "X-Correlation-ID"

_SAFE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_PAN_LIKE = re.compile(r"\d{12,}")

_correlation_id: ContextVar[str] = ContextVar("tokenpool_correlation_id", default="-")


def choose_correlation_id(supplied: str | None) -> str:
    if supplied and _SAFE.match(supplied) and not _PAN_LIKE.search(supplied):
        return supplied
    return str(uuid.uuid4())


def set_correlation_id(value: str) -> None:
    _correlation_id.set(value)


def current_correlation_id() -> str:
    return _correlation_id.get()
