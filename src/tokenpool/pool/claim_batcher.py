"""Coalesces concurrent ``reserve()`` calls of one process into one claim statement per batch.

Why: one claim statement costs a round trip, a plan execution and a trigger run, and on the client
~250 us of Python per call; under a burst those fixed costs, not the rows, set the ceiling. Callers
that arrive while statements are in flight wait in a queue; whichever flush finishes first takes
up to ``max_batch`` of them in one statement. There is no timer: a lone caller's claim goes out at
once as a batch of one, so batching adds no latency when idle.

Each caller names its owner (the API key the reservation will belong to; None for library callers),
and one batch may hold several owners: the statement leases each pair to its order's owner and checks
each owner's cap on open reservations (``max_open_per_owner``) for the whole batch at once.

Only for reservations that stand alone (autocommit). A claim that must share a transaction with
other writes (a card insert) goes to the store directly with its connection.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Protocol
from uuid import UUID

from tokenpool.pool.errors import PoolError, PoolUnavailable
from tokenpool.pool.model import Reservation

_Waiter = tuple[asyncio.Future[Reservation], UUID | None]


def _fail(waiters: Sequence[_Waiter], error: BaseException) -> None:
    for future, _owner in waiters:
        if not future.done():
            future.set_exception(error)


class ManyReserver(Protocol):
    async def reserve_for(
        self, pool: str, owners: Sequence[UUID | None], lease_seconds: float, *, max_open: int | None = None
    ) -> list[Reservation | PoolError]: ...

    async def release(self, reservation_id: UUID, *, owner: UUID | None = None) -> None: ...


_Key = tuple[str, float]


class ClaimBatcher:
    def __init__(self, store: ManyReserver, *, max_batch: int = 64, max_in_flight: int = 4,
                 max_open_per_owner: int | None = None) -> None:
        self._store = store
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._max_open = max_open_per_owner
        self._waiting: dict[_Key, deque[_Waiter]] = defaultdict(deque)
        self._in_flight: dict[_Key, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()

    async def reserve(self, pool: str, lease_seconds: float, owner: UUID | None = None) -> Reservation:
        """A reservation held by ``owner``; raises PoolExhausted, or TooManyOpenReservations when the owner
        already holds ``max_open_per_owner`` live reservations."""
        key = (pool, lease_seconds)
        future: asyncio.Future[Reservation] = asyncio.get_running_loop().create_future()
        self._waiting[key].append((future, owner))
        if self._in_flight[key] < self._max_in_flight:
            self._in_flight[key] += 1
            task = asyncio.create_task(self._flush(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _flush(self, key: _Key) -> None:
        pool, lease_seconds = key
        queue = self._waiting[key]
        batch: list[_Waiter] = []
        try:
            while queue:
                batch = [w for w in (queue.popleft() for _ in range(min(len(queue), self._max_batch)))
                         if not w[0].done()]
                if not batch:
                    continue
                try:
                    outcomes = await self._store.reserve_for(pool, [owner for _f, owner in batch], lease_seconds,
                                                             max_open=self._max_open)
                except Exception as error:  # every waiter of the batch learns why, none hangs
                    _fail(batch, error)
                    continue
                await self._hand_out(batch, outcomes)
        except BaseException:
            # Cancelled (shutdown): no waiter may be left hanging, neither this batch nor, when no
            # other flush is running to serve them, those still queued.
            _fail(batch, PoolUnavailable(pool))
            if self._in_flight[key] == 1:
                _fail(list(queue), PoolUnavailable(pool))
                queue.clear()
            raise
        finally:
            self._in_flight[key] -= 1

    async def _hand_out(self, batch: list[_Waiter], outcomes: list[Reservation | PoolError]) -> None:
        unclaimed: list[tuple[Reservation, UUID | None]] = []
        for (future, owner), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Reservation):
                if future.done():  # its caller gave up (cancelled) while the statement ran
                    unclaimed.append((outcome, owner))
                else:
                    future.set_result(outcome)
            elif not future.done():
                future.set_exception(outcome)
        # A pair nobody will use goes straight back, rather than lapsing into quarantine.
        for reservation, owner in unclaimed:
            await self._store.release(reservation.reservation_id, owner=owner)
