"""The token pool on PostgreSQL: reserve / commit / release / expire / lookup / add_pairs / stats.

Every method is one statement (one round trip) on the happy path; the SQL is in ``queries.sql``. Internal
tokens are sealed here on the way in and opened on the way out (``Vault``): callers only see clear pairs.
Methods taking ``conn`` run on that connection, inside the caller's transaction.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import errors as pg_errors
from psycopg.rows import class_row

from tokenpool.db.database import Database
from tokenpool.db.queries import sql
from tokenpool.db.types import Conn
from tokenpool.db.vault_store import SealedToken, Vault, pool_token_aad, pool_token_aads
from tokenpool.observability.metrics import (
    POOL_COMMITS,
    POOL_LEASES_EXPIRED,
    POOL_PAIRS_ADDED,
    POOL_RESERVATIONS,
)
from tokenpool.pool.errors import (
    LeaseExpired,
    PairConflict,
    PoolError,
    PoolExhausted,
    ReservationConflict,
    TooManyOpenReservations,
    UnknownReservation,
)
from tokenpool.pool.model import PairStatus, PoolStats, Reservation, TokenPair

# claim_key is drawn from [0, 9.2e18); a claim starts at a uniform point of the same range.
CLAIM_KEY_RANGE = 9_200_000_000_000_000_000


def random_claim_start() -> int:
    return random.randrange(CLAIM_KEY_RANGE)


@dataclass(frozen=True, slots=True)
class _SealedReservation:
    reservation_id: UUID
    pool: str
    token_ct: bytes
    external_ref: str
    lease_expires_at: datetime


@dataclass(frozen=True, slots=True)
class _ClaimOutcome:
    """One order of a reserve statement: its reservation, or why none (over_cap; else the pool ran short)."""

    n: int
    reservation_id: UUID | None
    pool: str | None
    token_ct: bytes | None
    external_ref: str | None
    lease_expires_at: datetime | None
    over_cap: bool
    retry_after_s: float | None

    def sealed(self) -> _SealedReservation | None:
        if self.reservation_id is None:
            return None
        # The statement returns the reservation's columns together, from one row.
        assert self.pool is not None
        assert self.token_ct is not None
        assert self.external_ref is not None
        assert self.lease_expires_at is not None
        return _SealedReservation(self.reservation_id, self.pool, self.token_ct, self.external_ref,
                                  self.lease_expires_at)


@dataclass(frozen=True, slots=True)
class _ReservationState:
    reservation_id: UUID
    pool: str
    token_ct: bytes
    external_ref: str
    lease_expires_at: datetime
    status: str
    card_ref: str | None
    lapsed: bool


@dataclass(frozen=True, slots=True)
class _StatusCount:
    status: str
    n: int


class PostgresTokenPool:
    """The pool store: implements the reservation protocol and the bulk load over a :class:`Database`."""

    def __init__(self, db: Database, vault: Vault) -> None:
        self._db = db
        self._vault = vault

    async def reserve(self, pool: str, lease_seconds: float, *, owner: UUID | None = None,
                      conn: Conn | None = None) -> Reservation:
        """One reservation, held by ``owner`` (an API key id; None: an unowned, library reservation)."""
        reservations = await self.reserve_many(pool, 1, lease_seconds, conn=conn, owner=owner)
        if not reservations:
            raise PoolExhausted(pool)
        return reservations[0]

    async def reserve_many(
        self, pool: str, n: int, lease_seconds: float, *, owner: UUID | None = None, conn: Conn | None = None
    ) -> list[Reservation]:
        """Up to ``n`` reservations; fewer (possibly none) when the pool holds fewer."""
        if n < 1:
            raise ValueError("n must be at least 1")
        outcomes = await self.reserve_for(pool, [owner] * n, lease_seconds, conn=conn)
        return [outcome for outcome in outcomes if isinstance(outcome, Reservation)]

    async def reserve_for(
        self, pool: str, owners: Sequence[UUID | None], lease_seconds: float, *, max_open: int | None = None,
        conn: Conn | None = None,
    ) -> list[Reservation | PoolError]:
        """One outcome per order, in order: a reservation held by the order's owner, or the error it gets:
        :class:`TooManyOpenReservations` (its owner already holds ``max_open`` live reservations; None: no
        cap; unowned orders are never capped) or :class:`PoolExhausted`. One statement for the whole batch."""
        if not owners:
            raise ValueError("at least one order")
        params = {"pool": pool, "owners": list(owners), "n": len(owners), "start": random_claim_start(),
                  "lease_seconds": lease_seconds, "max_open": max_open}
        rows: list[_ClaimOutcome] = await self._fetch("reserve", params, _ClaimOutcome, conn)
        sealed = [one for one in (row.sealed() for row in rows) if one is not None]
        opened = iter(await self._open(sealed))
        outcomes: list[Reservation | PoolError] = []
        for row, owner in zip(rows, owners, strict=True):
            if row.reservation_id is not None:
                outcomes.append(next(opened))
            elif row.over_cap:
                outcomes.append(TooManyOpenReservations(pool, owner, max_open or 0, row.retry_after_s or 0.0))
            else:
                outcomes.append(PoolExhausted(pool))
        reserved = len(sealed)
        over_cap = sum(isinstance(outcome, TooManyOpenReservations) for outcome in outcomes)
        POOL_RESERVATIONS.labels(pool, "reserved").inc(reserved)
        if over_cap:
            POOL_RESERVATIONS.labels(pool, "over_cap").inc(over_cap)
        if reserved + over_cap < len(rows):
            POOL_RESERVATIONS.labels(pool, "exhausted").inc(len(rows) - reserved - over_cap)
        return outcomes

    async def commit(self, reservation_id: UUID, card_ref: str, *, owner: UUID | None = None,
                     conn: Conn | None = None) -> Reservation:
        """RESERVED -> USED. Idempotent for the same card; raises for any other outcome. Only the
        reservation's ``owner`` may: anyone else gets :class:`UnknownReservation`, as for an unknown id."""
        params = {"reservation_id": reservation_id, "card_ref": card_ref, "owner": owner}
        rows = await self._fetch("commit", params, _SealedReservation, conn)
        if rows:
            POOL_COMMITS.labels("committed").inc()
            return (await self._open(rows))[0]
        state = await self._reservation_state(reservation_id, owner, conn)
        if state.status == PairStatus.USED:
            if state.card_ref == card_ref:
                POOL_COMMITS.labels("replayed").inc()
                sealed = _SealedReservation(state.reservation_id, state.pool, state.token_ct, state.external_ref,
                                            state.lease_expires_at)
                return (await self._open([sealed]))[0]
            POOL_COMMITS.labels("conflict").inc()
            raise ReservationConflict(reservation_id, "already committed to another card")
        POOL_COMMITS.labels("lease_expired").inc()
        raise LeaseExpired(reservation_id)  # EXPIRED, or RESERVED past its lease

    async def release(self, reservation_id: UUID, *, owner: UUID | None = None, conn: Conn | None = None) -> None:
        """RESERVED -> AVAILABLE, while the lease holds (after it lapses the pair is quarantined); only by the
        reservation's ``owner`` (see commit)."""
        if await self._execute("release", {"reservation_id": reservation_id, "owner": owner}, conn):
            return
        state = await self._reservation_state(reservation_id, owner, conn)
        if state.status == PairStatus.USED:
            raise ReservationConflict(reservation_id, "committed; a used pair cannot be released")
        raise LeaseExpired(reservation_id)

    async def expire_leases(self, limit: int = 10_000) -> int:
        """Quarantines every lapsed reservation, ``limit`` per statement; returns how many."""
        total = 0
        while True:
            expired = await self._execute("expire_leases", {"limit": limit}, None)
            total += expired
            POOL_LEASES_EXPIRED.inc(expired)  # per statement: each one committed on its own
            if expired < limit:
                return total

    async def lookup(self, external_refs: Sequence[str], *, conn: Conn | None = None) -> dict[str, str]:
        """External reference IDs -> internal tokens, for the refs the pool holds."""
        if not external_refs:
            return {}
        rows = await self._fetch("lookup", {"external_refs": list(external_refs)}, _Sealed, conn)
        tokens = await self._vault.open_all([(row.token_ct, pool_token_aad(row.pool, row.external_ref))
                                             for row in rows])
        return {row.external_ref: token for row, token in zip(rows, tokens, strict=True)}

    async def add_pairs(self, pool: str, pairs: Sequence[TokenPair], batch_id: UUID) -> int:
        """Bulk-loads pairs with COPY; returns how many were new. A pair already stored is skipped.

        All or nothing: a pair that contradicts a stored one raises :class:`PairConflict` and
        nothing of the batch is loaded.
        """
        if not pairs:
            return 0
        async with self._db.transaction() as conn:
            return await self.copy_pairs(conn, pool, pairs, batch_id)

    async def copy_pairs(self, conn: Conn, pool: str, pairs: Sequence[TokenPair], batch_id: UUID) -> int:
        """The body of ``add_pairs`` on the caller's connection, inside the caller's transaction.

        The refill job uses it so a batch's pairs commit together with its journal entry.
        """
        await self._vault.ready()
        await conn.execute(sql("create_staging"))
        # Sealing is the refill's main cost in Python: one keyring, bound methods, the pool's part of the
        # associated data framed once (about 2 µs a pair instead of 5).
        keyring = self._vault.keyring
        digest, encrypt, version, aad = keyring.digest, keyring.encrypt, keyring.primary_version, pool_token_aads(pool)
        async with conn.cursor().copy(sql("copy_staging")) as copy:
            copy.set_types(["bytea", "bytea", "int4", "text"])
            for pair in pairs:
                token, ref = pair.internal_token, pair.external_ref
                await copy.write_row((digest(token), encrypt(token, aad(ref)), version, ref))
        params = {"pool": pool, "batch_id": batch_id}
        try:
            async with conn.transaction():  # a savepoint: a unique violation undoes only this statement
                cursor = await conn.execute(sql("load_staging_new"), params)
        except pg_errors.UniqueViolation:
            cursor = await conn.execute(sql("load_staging"), params)
        added = cursor.rowcount
        if added < len(pairs):
            # Some staged pairs were skipped: already stored (fine) or contradicting (not fine). Checked
            # only now so the common load of all-new pairs pays nothing for it; raising rolls the insert
            # back with the rest of the transaction.
            row = await (await conn.execute(sql("staging_conflicts"), {"pool": pool})).fetchone()
            if row and row[0]:
                raise PairConflict(int(row[0]))
        POOL_PAIRS_ADDED.labels(pool).inc(added)  # counted before the caller commits: a rollback after is rare
        return added

    def seal(self, pool: str, pair: TokenPair) -> SealedToken:
        return self._vault.seal(pair.internal_token, pool_token_aad(pool, pair.external_ref))

    async def insert_used_pair(self, conn: Conn, pool: str, pair: TokenPair, card_id: UUID) -> None:
        """A pair obtained from TOME for one card, stored as USED by it (in the card's transaction)."""
        await self._vault.ready()
        sealed = self.seal(pool, pair)
        await conn.execute(sql("pair_insert_used"), {
            "pool": pool, "token_digest": sealed.digest, "token_ct": sealed.ciphertext,
            "key_version": sealed.key_version, "external_ref": pair.external_ref, "card_id": card_id,
        })

    async def insert_reserved_pair(self, conn: Conn, pool: str, pair: TokenPair, batch_id: UUID,
                                   lease_seconds: float, *, owner: UUID | None = None) -> Reservation:
        """A pair obtained from TOME for a reservation, stored RESERVED with a lease (and its owner) like any
        claimed pair."""
        await self._vault.ready()
        sealed = self.seal(pool, pair)
        cursor = conn.cursor(row_factory=class_row(_SealedReservation))
        await cursor.execute(sql("pair_insert_reserved"), {
            "pool": pool, "token_digest": sealed.digest, "token_ct": sealed.ciphertext,
            "key_version": sealed.key_version, "external_ref": pair.external_ref, "batch_id": batch_id,
            "lease_seconds": lease_seconds, "owner": owner,
        })
        row = await cursor.fetchone()
        assert row is not None
        return Reservation(row.reservation_id, row.pool, pair.internal_token, row.external_ref, row.lease_expires_at)

    async def stats(self, pool: str) -> PoolStats:
        return await self._stats("stats", pool)

    async def exact_stats(self, pool: str) -> PoolStats:
        """Counts from a full scan; for reconciliation, never on a hot path."""
        return await self._stats("exact_stats", pool)

    async def _stats(self, query: str, pool: str) -> PoolStats:
        rows = await self._fetch(query, {"pool": pool}, _StatusCount, None)
        return PoolStats(pool, {PairStatus(row.status): int(row.n) for row in rows if row.n})

    async def _reservation_state(self, reservation_id: UUID, owner: UUID | None,
                                 conn: Conn | None) -> _ReservationState:
        params = {"reservation_id": reservation_id, "owner": owner}
        rows = await self._fetch("reservation_state", params, _ReservationState, conn)
        if not rows:
            raise UnknownReservation(reservation_id)
        state: _ReservationState = rows[0]
        return state

    async def _open(self, rows: Sequence[_SealedReservation]) -> list[Reservation]:
        tokens = await self._vault.open_all([(row.token_ct, pool_token_aad(row.pool, row.external_ref))
                                             for row in rows])
        return [Reservation(row.reservation_id, row.pool, token, row.external_ref, row.lease_expires_at)
                for row, token in zip(rows, tokens, strict=True)]

    async def _fetch(self, query: str, params: dict[str, Any], row_type: type[Any], conn: Conn | None) -> list[Any]:
        if conn is not None:
            cursor = conn.cursor(row_factory=class_row(row_type))
            await cursor.execute(sql(query), params)
            return await cursor.fetchall()
        async with self._db.connection() as pooled:
            cursor = pooled.cursor(row_factory=class_row(row_type))
            await cursor.execute(sql(query), params)
            return await cursor.fetchall()

    async def _execute(self, query: str, params: dict[str, Any], conn: Conn | None) -> int:
        if conn is not None:
            return (await conn.execute(sql(query), params)).rowcount
        async with self._db.connection() as pooled:
            return (await pooled.execute(sql(query), params)).rowcount


@dataclass(frozen=True, slots=True)
class _Sealed:
    external_ref: str
    pool: str
    token_ct: bytes
