"""Value objects of the pool and the status machine every pair follows.

    AVAILABLE --reserve--> RESERVED --commit--> USED          (final)
        |                     |  \\--release--> AVAILABLE     (holder says it did not use the pair)
        |                     \\----lapse----> EXPIRED        (quarantined: the holder may have used it)
        \\---------------card---------------> USED          (claim and commit in one statement)

The same transitions are enforced in the database (``token_pool_guard_transitions``, last replaced in
migration 0008); ``ALLOWED_TRANSITIONS`` is the reference both are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from uuid import UUID


class PairStatus(StrEnum):
    AVAILABLE = "AVAILABLE"
    RESERVED = "RESERVED"
    USED = "USED"
    EXPIRED = "EXPIRED"


ALLOWED_TRANSITIONS: frozenset[tuple[PairStatus, PairStatus]] = frozenset(
    {
        (PairStatus.AVAILABLE, PairStatus.RESERVED),
        (PairStatus.AVAILABLE, PairStatus.USED),
        (PairStatus.RESERVED, PairStatus.USED),
        (PairStatus.RESERVED, PairStatus.AVAILABLE),
        (PairStatus.RESERVED, PairStatus.EXPIRED),
    }
)


def is_allowed(old: PairStatus, new: PairStatus) -> bool:
    return old == new or (old, new) in ALLOWED_TRANSITIONS


@dataclass(frozen=True, slots=True)
class TokenPair:
    """An internal token (TOME NS1) and the external reference ID NS2 gave it."""

    internal_token: str
    external_ref: str


@dataclass(frozen=True, slots=True)
class Reservation:
    reservation_id: UUID
    pool: str
    internal_token: str
    external_ref: str
    lease_expires_at: datetime

    @property
    def pair(self) -> TokenPair:
        return TokenPair(self.internal_token, self.external_ref)


@dataclass(frozen=True, slots=True)
class PoolStats:
    pool: str
    counts: dict[PairStatus, int] = field(default_factory=dict)

    def count(self, status: PairStatus) -> int:
        return self.counts.get(status, 0)

    @property
    def available(self) -> int:
        return self.count(PairStatus.AVAILABLE)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, object]:
        """Lowercase status names, as ``tokenpool pool stats --json`` prints them."""
        out: dict[str, object] = {"pool": self.pool}
        out.update({status.value.lower(): self.count(status) for status in PairStatus})
        out["total"] = self.total
        return out


@dataclass(frozen=True, slots=True)
class SampleSpan:
    """Oldest and newest consumption samples of a pool in the forecast window (consumed = reserved + used +
    expired, from the trigger-kept counts)."""

    first_consumed: int
    last_consumed: int
    seconds: float
