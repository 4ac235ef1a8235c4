"""The pool store on PostgreSQL: reserve / commit / release / expire / lookup / add_pairs / stats.

Every method is one statement (one round trip) on the happy path; the SQL is in ``queries.sql``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from tokenpool.db.queries import sql
from tokenpool.observability.metrics import (
    POOL_COMMITS,
    POOL_LEASES_EXPIRED,
    POOL_PAIRS_ADDED,
    POOL_RESERVATIONS,
)
from tokenpool.pool.errors import (
    LeaseExpired,
    PairConflict,
    PoolExhausted,
    ReservationConflict,
    UnknownReservation,
)
from tokenpool.pool.model import PairStatus, PoolStats, Reservation, TokenPair

# claim_key is drawn from [0, 9.2e18); a claim starts at a uniform point of the same range.
CLAIM_KEY_RANGE = 9_200_000_000_000_000_000

Conn = AsyncConnection[TupleRow]


def random_claim_start() -> int:
    return random.randrange(CLAIM_KEY_RANGE)


def _reservation(row: Sequence[Any]) -> Reservation:
    reservation_id, pool, internal_token, external_ref, lease_expires_at = row[:5]
    return Reservation(reservation_id, pool, internal_token, external_ref, lease_expires_at)


async def copy_pairs(conn: Conn, pool: str, pairs: Sequence[TokenPair], batch_id: UUID) -> int:
    """The body of ``add_pairs`` on the caller's connection, inside the caller's transaction.

    The refill job uses it so a batch's pairs commit together with its journal entry.
    """
    await conn.execute(sql("create_staging"))
    async with conn.cursor().copy(sql("copy_staging")) as copy:
        for pair in pairs:
            await copy.write_row((pair.internal_token, pair.external_ref))
    params = {"pool": pool, "batch_id": batch_id}
    try:
        async with conn.transaction():  # a savepoint: a unique violation undoes only this statement
            cursor = await conn.execute(sql("load_staging_new"), params)
    except psycopg.errors.UniqueViolation:
        cursor = await conn.execute(sql("load_staging"), params)
    added = cursor.rowcount
    if added < len(pairs):
        # Some staged pairs were skipped: already stored (fine) or contradicting (not fine). Checked
        # only now so the common load of all-new pairs pays nothing for it; raising rolls the insert
        # back with the rest of the transaction.
        cursor = await conn.execute(sql("staging_conflicts"), {"pool": pool})
        row = await cursor.fetchone()
        if row and row[0]:
            raise PairConflict(int(row[0]))
    POOL_PAIRS_ADDED.labels(pool).inc(added)  # counted before the caller commits: a rollback after is rare
    return added


class PostgresTokenPool:
    """Implements :class:`tokenpool.pool.ports.TokenPoolStore` over a psycopg connection pool.

    Methods taking ``conn`` run on that connection instead of a pooled one, so a caller can make a
    reservation part of its own transaction (card creation: claim + insert card, atomically).
    """

    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self._pool = pool

    async def reserve(self, pool: str, lease_seconds: float, *, conn: Conn | None = None) -> Reservation:
        reservations = await self.reserve_many(pool, 1, lease_seconds, conn=conn)
        if not reservations:
            raise PoolExhausted(pool)
        return reservations[0]

    async def reserve_many(
        self, pool: str, n: int, lease_seconds: float, *, conn: Conn | None = None
    ) -> list[Reservation]:
        """Up to ``n`` reservations; fewer (possibly none) when the pool holds fewer."""
        if n < 1:
            raise ValueError("n must be at least 1")
        params = {"pool": pool, "n": n, "start": random_claim_start(), "lease_seconds": lease_seconds}
        rows = await self._fetch("reserve", params, conn)
        POOL_RESERVATIONS.labels(pool, "reserved").inc(len(rows))
        if len(rows) < n:
            POOL_RESERVATIONS.labels(pool, "exhausted").inc(n - len(rows))
        return [_reservation(row) for row in rows]

    async def commit(self, reservation_id: UUID, card_ref: str, *, conn: Conn | None = None) -> Reservation:
        """RESERVED -> USED. Idempotent for the same card; raises for any other outcome."""
        params = {"reservation_id": reservation_id, "card_ref": card_ref}
        rows = await self._fetch("commit", params, conn)
        if rows:
            POOL_COMMITS.labels("committed").inc()
            return _reservation(rows[0])
        state = await self._reservation_state(reservation_id, conn)
        if state["status"] == PairStatus.USED:
            if state["card_ref"] == card_ref:
                POOL_COMMITS.labels("replayed").inc()
                return _reservation(state["row"])
            POOL_COMMITS.labels("conflict").inc()
            raise ReservationConflict(reservation_id, "already committed to another card")
        POOL_COMMITS.labels("lease_expired").inc()
        raise LeaseExpired(reservation_id)  # EXPIRED, or RESERVED past its lease

    async def release(self, reservation_id: UUID, *, conn: Conn | None = None) -> None:
        """RESERVED -> AVAILABLE, while the lease holds (after it lapses the pair is quarantined)."""
        if await self._fetch("release", {"reservation_id": reservation_id}, conn):
            return
        state = await self._reservation_state(reservation_id, conn)
        if state["status"] == PairStatus.USED:
            raise ReservationConflict(reservation_id, "committed; a used pair cannot be released")
        raise LeaseExpired(reservation_id)

    async def expire_leases(self, limit: int = 10_000) -> int:
        """Quarantines every lapsed reservation, ``limit`` per statement; returns how many."""
        total = 0
        while True:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(sql("expire_leases"), {"limit": limit})
                expired = cursor.rowcount
            total += expired
            POOL_LEASES_EXPIRED.inc(expired)  # per statement: each one committed on its own
            if expired < limit:
                return total

    async def lookup(self, external_refs: Sequence[str], *, conn: Conn | None = None) -> dict[str, str]:
        if not external_refs:
            return {}
        rows = await self._fetch("lookup", {"external_refs": list(external_refs)}, conn)
        return {external_ref: internal_token for external_ref, internal_token in rows}

    async def add_pairs(self, pool: str, pairs: Sequence[TokenPair], batch_id: UUID) -> int:
        """Bulk-loads pairs with COPY; returns how many were new. A pair already stored is skipped.

        All or nothing: a pair that contradicts a stored one raises :class:`PairConflict` and
        nothing of the batch is loaded.
        """
        if not pairs:
            return 0
        async with self._pool.connection() as conn, conn.transaction():
            return await copy_pairs(conn, pool, pairs, batch_id)

    async def stats(self, pool: str) -> PoolStats:
        return await self._stats("stats", pool)

    async def exact_stats(self, pool: str) -> PoolStats:
        """Counts from a full scan; for reconciliation, never on a hot path."""
        return await self._stats("exact_stats", pool)

    async def list_pools(self) -> list[str]:
        return [row[0] for row in await self._fetch("list_pools", {}, None)]

    async def _stats(self, query: str, pool: str) -> PoolStats:
        rows = await self._fetch(query, {"pool": pool}, None)
        return PoolStats(pool, {PairStatus(status): int(n) for status, n in rows if n})

    async def _reservation_state(self, reservation_id: UUID, conn: Conn | None) -> dict[str, Any]:
        rows = await self._fetch("reservation_state", {"reservation_id": reservation_id}, conn)
        if not rows:
            raise UnknownReservation(reservation_id)
        row = rows[0]
        return {"row": row, "status": PairStatus(row[5]), "card_ref": row[6], "lapsed": row[7]}

    async def _fetch(self, query: str, params: dict[str, Any], conn: Conn | None) -> list[tuple[Any, ...]]:
        if conn is not None:
            cursor = await conn.execute(sql(query), params)
            return await cursor.fetchall() if cursor.description else []
        async with self._pool.connection() as pooled:
            cursor = await pooled.execute(sql(query), params)
            return await cursor.fetchall() if cursor.description else []
