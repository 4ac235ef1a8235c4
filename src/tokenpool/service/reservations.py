"""The reservation protocol for card services written in other languages: reserve, commit, release.

Standalone reservations go through :class:`ClaimBatcher`, which folds concurrent ones into one claim
statement. When the pool is empty the pair comes from TOME and is inserted as RESERVED with a lease,
so commit, release (the pair then joins the pool) and the lease sweep treat it like any other.

Every reservation belongs to the API key that made it (``token_pool.reserved_by``): only that key may
commit or release it; any other key is answered as for an unknown reservation (404), so a reservation's
existence is not revealed. A key holds at most ``max_open_reservations`` live reservations at once; the
claim statement counts them (429 TOO_MANY_OPEN_RESERVATIONS beyond).

When the database is down, POST /v1/reservations answers 503 rather than handing out a TOME pair:
such a pair could not be recorded, so its commit could not be checked and a release would lose it;
the caller, which keeps its own TOME path for exactly this case, is better placed to use TOME itself.
"""

from __future__ import annotations

from uuid import UUID

from tokenpool.cards import TokenSource
from tokenpool.cards.errors import TemporarilyUnavailable
from tokenpool.db.database import Database
from tokenpool.db.pool_store import PostgresTokenPool
from tokenpool.issuance import PairReclaimed, TomePairs
from tokenpool.observability.logging import get_logger
from tokenpool.pool.claim_batcher import ClaimBatcher
from tokenpool.pool.errors import PoolExhausted
from tokenpool.pool.model import Reservation
from tokenpool.programs import ProgramCatalog
from tokenpool.settings import Settings
from tokenpool.tome.contract import TomeError

log = get_logger("tokenpool.service.reservations")


class ReservationService:
    def __init__(self, db: Database, store: PostgresTokenPool, pairs: TomePairs, settings: Settings,
                 programs: ProgramCatalog) -> None:
        self._db = db
        self._store = store
        self._pairs = pairs
        self._settings = settings
        self._programs = programs
        self._batcher = ClaimBatcher(store, max_open_per_owner=settings.max_open_reservations)

    async def reserve(self, program: str, owner: UUID | None) -> tuple[Reservation, TokenSource]:
        """A reservation held by ``owner`` (the API key's id). Raises
        :class:`tokenpool.programs.UnknownProgram` first of all for an unregistered program."""
        registered = await self._programs.require(program)
        async def claim() -> Reservation:
            async with self._db.guard():
                return await self._batcher.reserve(program, self._settings.lease_seconds, owner)

        try:
            # Retried only after a failure known not to have committed: a lost connection may have left a
            # reservation behind, and a second claim would hold a second pair (until its lease lapses).
            reservation = await self._db.run_retrying(claim, idempotent=False, name="reservation")
            return reservation, TokenSource.POOL
        except PoolExhausted:
            log.info("reservation.pool_empty.tome_fallback", program=program)
        try:
            pairs = self._pairs.on(registered.ns1_in(self._settings), registered.ns2_in(self._settings))
            journaled = await pairs.one_pair(program)
        except TomeError as error:
            raise TemporarilyUnavailable(
                "POOL_EXHAUSTED_TOME_UNAVAILABLE",
                f"Pool {program!r} is empty and TOME is unavailable; nothing was reserved.",
                self._settings.service_retry_after_s,
            ) from error
        try:
            async with self._db.transaction() as conn:
                await self._pairs.close(conn, journaled, journaled.intent_id)
                reservation = await self._store.insert_reserved_pair(
                    conn, program, journaled.pair, journaled.intent_id, self._settings.lease_seconds, owner=owner)
        except PairReclaimed as reclaimed:
            raise TemporarilyUnavailable(reclaimed.code, reclaimed.detail,
                                         self._settings.service_retry_after_s) from None
        return reservation, TokenSource.TOME

    async def commit(self, reservation_id: UUID, card_ref: str, owner: UUID | None) -> None:
        async def commit() -> None:
            async with self._db.guard():
                await self._store.commit(reservation_id, card_ref, owner=owner)

        await self._db.run_retrying(commit, idempotent=False, name="reservation_commit")

    async def release(self, reservation_id: UUID, owner: UUID | None) -> None:
        async def release() -> None:
            async with self._db.guard():
                await self._store.release(reservation_id, owner=owner)

        await self._db.run_retrying(release, idempotent=False, name="reservation_release")
