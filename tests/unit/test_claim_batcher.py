"""The batcher's hand-out logic, against an in-memory reserver (the SQL is proven in integration tests)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from tokenpool.pool import PoolError, PoolExhausted, PoolUnavailable, Reservation, TooManyOpenReservations
from tokenpool.pool.claim_batcher import ClaimBatcher


class SlowReserver:
    """The claim statement in memory: pairs in order, each owner's open reservations counted against max_open."""

    def __init__(self, available: int, delay: float = 0.01, fail: Exception | None = None) -> None:
        self.available = available
        self.delay = delay
        self.fail = fail
        self.statements: list[int] = []
        self.owners_seen: list[list[uuid.UUID | None]] = []
        self.open: dict[uuid.UUID, int] = {}
        self.released: list[tuple[uuid.UUID, uuid.UUID | None]] = []

    async def reserve_for(self, pool: str, owners, lease_seconds: float, *,
                          max_open=None) -> list[Reservation | PoolError]:
        self.statements.append(len(owners))
        self.owners_seen.append(list(owners))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        now = datetime.now(UTC)
        outcomes: list[Reservation | PoolError] = []
        for i, owner in enumerate(owners):
            if owner is not None and max_open is not None and self.open.get(owner, 0) >= max_open:
                outcomes.append(TooManyOpenReservations(pool, owner, max_open, 1.0))
            elif self.available:
                self.available -= 1
                if owner is not None:
                    self.open[owner] = self.open.get(owner, 0) + 1
                outcomes.append(Reservation(uuid.uuid4(), pool, f"tok{i}", f"ext{i}", now))
            else:
                outcomes.append(PoolExhausted(pool))
        return outcomes

    async def release(self, reservation_id: uuid.UUID, *, owner: uuid.UUID | None = None) -> None:
        self.released.append((reservation_id, owner))


async def test_a_lone_caller_is_served_by_a_batch_of_one():
    reserver = SlowReserver(10)
    await ClaimBatcher(reserver).reserve("p", 30)
    assert reserver.statements == [1]


async def test_a_burst_is_served_by_few_statements_and_each_caller_gets_its_own_pair():
    reserver = SlowReserver(1_000)
    batcher = ClaimBatcher(reserver, max_batch=64, max_in_flight=2)
    results = await asyncio.gather(*(batcher.reserve("p", 30) for _ in range(300)))
    assert len({r.reservation_id for r in results}) == 300
    assert sum(reserver.statements) == 300
    assert len(reserver.statements) < 20


async def test_callers_beyond_the_pool_get_pool_exhausted():
    reserver = SlowReserver(5)
    batcher = ClaimBatcher(reserver)
    results = await asyncio.gather(*(batcher.reserve("p", 30) for _ in range(8)), return_exceptions=True)
    assert sum(isinstance(r, Reservation) for r in results) == 5
    assert sum(isinstance(r, PoolExhausted) for r in results) == 3


async def test_a_database_error_reaches_every_waiter_of_the_batch():
    batcher = ClaimBatcher(SlowReserver(5, fail=ConnectionError("db down")))
    results = await asyncio.gather(*(batcher.reserve("p", 30) for _ in range(4)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_a_pair_claimed_for_a_caller_who_gave_up_is_released():
    reserver = SlowReserver(10, delay=0.05)
    batcher = ClaimBatcher(reserver)
    task = asyncio.create_task(batcher.reserve("p", 30))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert len(reserver.released) == 1


async def test_waiters_are_failed_not_left_hanging_when_the_flush_is_cancelled():
    reserver = SlowReserver(10, delay=5.0)
    batcher = ClaimBatcher(reserver, max_in_flight=1)
    waiters = [asyncio.create_task(batcher.reserve("p", 30)) for _ in range(3)]
    await asyncio.sleep(0.02)
    for flush in list(batcher._tasks):
        flush.cancel()
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), timeout=1.0)
    assert all(isinstance(r, PoolUnavailable) for r in results)


async def test_one_batch_carries_each_callers_owner_and_applies_each_owners_cap():
    reserver = SlowReserver(100, delay=0.05)
    batcher = ClaimBatcher(reserver, max_in_flight=1, max_open_per_owner=2)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    first = asyncio.create_task(batcher.reserve("p", 30, owner=alice))  # goes out alone
    await asyncio.sleep(0.01)
    owners = [alice, alice, bob, None, None, bob, bob]
    results = await asyncio.gather(*(batcher.reserve("p", 30, owner=o) for o in owners), return_exceptions=True)
    await first
    assert reserver.owners_seen == [[alice], owners]  # the second batch: every owner, in arrival order
    refused = [o for o, r in zip(owners, results, strict=True) if isinstance(r, TooManyOpenReservations)]
    assert refused == [alice, bob]  # alice's third, bob's third; unowned callers are never capped


async def test_a_pair_claimed_for_an_owner_who_gave_up_is_released_as_that_owner():
    reserver = SlowReserver(10, delay=0.05)
    batcher = ClaimBatcher(reserver)
    owner = uuid.uuid4()
    task = asyncio.create_task(batcher.reserve("p", 30, owner=owner))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert [o for _id, o in reserver.released] == [owner]
