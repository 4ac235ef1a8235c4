"""Coalesces concurrent ``reserve()`` calls of one process into ``reserve_many`` statements.

Why: one claim statement costs a round trip, a plan execution and a trigger run, and on the client
~250 us of Python per call; under a burst those fixed costs, not the rows, set the ceiling. Callers
that arrive while statements are in flight wait in a queue; whichever flush finishes first takes
up to ``max_batch`` of them in one statement. There is no timer: a lone caller's claim goes out at
once as a batch of one, so batching adds no latency when idle.

Only for reservations that stand alone (autocommit). A claim that must share a transaction with
other writes (a card insert) goes to the store directly with its connection.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from typing import Protocol
from uuid import UUID

from tokenpool.pool.errors import PoolExhausted, PoolUnavailable
from tokenpool.pool.model import Reservation


def _fail(futures: list[asyncio.Future[Reservation]], error: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


class ManyReserver(Protocol):
    async def reserve_many(self, pool: str, n: int, lease_seconds: float) -> list[Reservation]: ...

    async def release(self, reservation_id: UUID) -> None: ...


_Key = tuple[str, float]


class ClaimBatcher:
    def __init__(self, store: ManyReserver, *, max_batch: int = 64, max_in_flight: int = 4) -> None:
        self._store = store
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._waiting: dict[_Key, deque[asyncio.Future[Reservation]]] = defaultdict(deque)
        self._in_flight: dict[_Key, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()

    async def reserve(self, pool: str, lease_seconds: float) -> Reservation:
        key = (pool, lease_seconds)
        future: asyncio.Future[Reservation] = asyncio.get_running_loop().create_future()
        self._waiting[key].append(future)
        if self._in_flight[key] < self._max_in_flight:
            self._in_flight[key] += 1
            task = asyncio.create_task(self._flush(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _flush(self, key: _Key) -> None:
        pool, lease_seconds = key
        queue = self._waiting[key]
        batch: list[asyncio.Future[Reservation]] = []
        try:
            while queue:
                batch = [f for f in (queue.popleft() for _ in range(min(len(queue), self._max_batch)))
                         if not f.done()]
                if not batch:
                    continue
                try:
                    reservations = await self._store.reserve_many(pool, len(batch), lease_seconds)
                except Exception as error:  # every waiter of the batch learns why, none hangs
                    _fail(batch, error)
                    continue
                await self._hand_out(pool, batch, reservations)
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

    async def _hand_out(
        self, pool: str, batch: list[asyncio.Future[Reservation]], reservations: list[Reservation]
    ) -> None:
        unclaimed: list[Reservation] = []
        for future, reservation in zip(batch, reservations, strict=False):
            if future.done():  # its caller gave up (cancelled) while the statement ran
                unclaimed.append(reservation)
            else:
                future.set_result(reservation)
        for future in batch[len(reservations):]:
            if not future.done():
                future.set_exception(PoolExhausted(pool))
        # A pair nobody will use goes straight back, rather than lapsing into quarantine.
        for reservation in unclaimed:
            await self._store.release(reservation.reservation_id)
