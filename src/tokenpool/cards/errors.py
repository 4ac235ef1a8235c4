"""What can go wrong creating, reading or detokenizing cards, as domain errors with a stable ``code``.

The HTTP app maps each class to a status (tokenpool.service.app); nothing here knows HTTP.
"""

from __future__ import annotations


class CardError(Exception):
    code = "CARD_ERROR"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class IdempotencyKeyInUse(CardError):
    """Another request with the same Idempotency-Key is being served right now."""

    code = "IDEMPOTENCY_KEY_IN_USE"

    def __init__(self) -> None:
        super().__init__("Retry: this key is being used.")


class IdempotencyKeyReused(CardError):
    """The Idempotency-Key was used before with a different request body."""

    code = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self) -> None:
        super().__init__("This Idempotency-Key was used with a different request body; use a new key.")


class TemporarilyUnavailable(CardError):
    """No pair could be had right now (the pool and TOME both failed, or TOME is down and the pool is off);
    nothing was written. ``retry_after_s``: when a retry has a chance."""

    code = "UNAVAILABLE"

    def __init__(self, code: str, detail: str, retry_after_s: float) -> None:
        super().__init__(detail)
        self.code = code
        self.retry_after_s = retry_after_s
