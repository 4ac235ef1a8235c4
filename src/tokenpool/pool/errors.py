"""Errors of the pool, each with a stable ``code`` the HTTP layer turns into a problem response."""

from __future__ import annotations

from uuid import UUID


class PoolError(Exception):
    code = "POOL_ERROR"


class PoolExhausted(PoolError):
    """No AVAILABLE pair right now. Raised at once: a claim never waits for a refill."""

    code = "POOL_EXHAUSTED"

    def __init__(self, pool: str) -> None:
        super().__init__(f"pool {pool!r} has no available token pair")
        self.pool = pool


class PoolUnavailable(PoolError):
    """A reservation was abandoned before it was made (shutdown); nothing was reserved for it."""

    code = "POOL_UNAVAILABLE"

    def __init__(self, pool: str) -> None:
        super().__init__(f"reservation for pool {pool!r} abandoned: the claim batcher is shutting down")
        self.pool = pool


class TooManyOpenReservations(PoolError):
    """The reservation's owner (an API key) already holds its maximum of live reservations; nothing was
    reserved. ``retry_after_s``: until the owner's first lease lapses, the latest one of them frees a slot
    (a commit or release frees one sooner)."""

    code = "TOO_MANY_OPEN_RESERVATIONS"

    def __init__(self, pool: str, owner: UUID | None, limit: int, retry_after_s: float) -> None:
        super().__init__(f"the key holds its maximum of {limit} open reservations; commit or release one first")
        self.pool = pool
        self.owner = owner
        self.limit = limit
        self.retry_after_s = retry_after_s


class UnknownReservation(PoolError):
    code = "RESERVATION_NOT_FOUND"

    def __init__(self, reservation_id: UUID) -> None:
        super().__init__(f"no reservation {reservation_id}")
        self.reservation_id = reservation_id


class LeaseExpired(PoolError):
    """The lease lapsed before commit or release; the pair is quarantined, never re-issued."""

    code = "RESERVATION_LEASE_EXPIRED"

    def __init__(self, reservation_id: UUID) -> None:
        super().__init__(f"the lease of reservation {reservation_id} has lapsed")
        self.reservation_id = reservation_id


class ReservationConflict(PoolError):
    """The reservation was committed to another card (or is committed and cannot be released)."""

    code = "RESERVATION_CONFLICT"

    def __init__(self, reservation_id: UUID, detail: str) -> None:
        super().__init__(f"reservation {reservation_id}: {detail}")
        self.reservation_id = reservation_id


class PairConflict(PoolError):
    """A loaded pair disagrees with one already stored (same internal token, other external ref).

    TOME is deterministic per value, so this means corrupted input; the whole load is refused.
    """

    code = "PAIR_CONFLICT"

    def __init__(self, conflicts: int) -> None:
        super().__init__(f"{conflicts} pair(s) conflict with pairs already in the pool")
        self.conflicts = conflicts
