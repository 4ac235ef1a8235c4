"""The pool port: what card creation, the refill job and the CLI need from a pool store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol
from uuid import UUID

from tokenpool.pool.model import PoolStats, Reservation, TokenPair


class TokenPoolStore(Protocol):
    async def reserve(self, pool: str, lease_seconds: float) -> Reservation: ...

    async def reserve_many(self, pool: str, n: int, lease_seconds: float) -> list[Reservation]: ...

    async def commit(self, reservation_id: UUID, card_ref: str) -> Reservation: ...

    async def release(self, reservation_id: UUID) -> None: ...

    async def expire_leases(self, limit: int = 10_000) -> int: ...

    async def lookup(self, external_refs: Sequence[str]) -> dict[str, str]: ...

    async def add_pairs(self, pool: str, pairs: Sequence[TokenPair], batch_id: UUID) -> int: ...

    async def stats(self, pool: str) -> PoolStats: ...
