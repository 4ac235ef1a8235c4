"""Under concurrency a pair is handed out at most once, and the counts still reconcile."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid

import pytest

from tests.factories import make_pairs
from tokenpool import bootstrap
from tokenpool.pool import PairStatus, PoolExhausted
from tokenpool.settings import Settings

POOL = "default"
LEASE = 60.0


async def _claim_in_process(database_url: str, tasks: int, claims_per_task: int) -> list[str]:
    # Connections are opened before the race and waited for generously: this test is about
    # exclusivity, and a busy server can take seconds to accept 32 new connections at once.
    settings = Settings(db_acquire_timeout_s=30, db_connect_timeout_s=30)
    claimed: list[str] = []
    async with bootstrap.open_backend(database_url, settings, min_size=tasks, max_size=tasks) as backend:

        async def claimer() -> None:
            for _ in range(claims_per_task):
                try:
                    claimed.append((await backend.store.reserve(POOL, LEASE)).internal_token)
                except PoolExhausted:
                    return

        await asyncio.gather(*(claimer() for _ in range(tasks)))
    return claimed


def claim_in_process(database_url: str, tasks: int, claims_per_task: int) -> list[str]:
    """Entry point of a child OS process: its own event loop, its own connections."""
    return asyncio.run(_claim_in_process(database_url, tasks, claims_per_task))


async def test_a_thousand_concurrent_reservations_never_share_a_pair(store):
    pairs = make_pairs(1_200)
    await store.add_pairs(POOL, pairs, uuid.uuid4())

    results = await asyncio.gather(*(store.reserve(POOL, LEASE) for _ in range(1_000)))

    tokens = [r.internal_token for r in results]
    assert len(set(tokens)) == 1_000
    assert len({r.reservation_id for r in results}) == 1_000
    assert set(tokens) <= {p.internal_token for p in pairs}
    stats = await store.stats(POOL)
    assert stats.counts == {PairStatus.AVAILABLE: 200, PairStatus.RESERVED: 1_000}
    assert stats == await store.exact_stats(POOL)


async def test_four_processes_and_many_tasks_drain_the_pool_exactly_once(store, database_url):
    loaded = 2_000
    pairs = make_pairs(loaded)
    await store.add_pairs(POOL, pairs, uuid.uuid4())
    context = multiprocessing.get_context("spawn")

    # This process's 500 claims queue for its connections behind 32 children's: waited for generously, like
    # theirs (the test is about exclusivity, not about how long a claim waits on a busy 2-core machine).
    patient = Settings(db_acquire_timeout_s=60, db_connect_timeout_s=30, db_statement_timeout_ms=60_000)
    with context.Pool(4) as processes:
        # 4 processes x 8 tasks x 80 claims = 2,560 attempts for 2,000 pairs, plus 500 in this process.
        pending = processes.starmap_async(claim_in_process, [(database_url, 8, 80)] * 4)
        async with bootstrap.open_backend(database_url, patient, min_size=8, max_size=8) as here_backend:
            here = await asyncio.gather(*(_safe_reserve(here_backend.store) for _ in range(500)))
        children = await asyncio.to_thread(pending.get, 120)

    claimed = [token for batch in children for token in batch] + [t for t in here if t]
    assert len(claimed) == loaded, "every pair claimed once: none lost, none twice"
    assert len(set(claimed)) == len(claimed)
    assert set(claimed) == {p.internal_token for p in pairs}
    stats = await store.stats(POOL)
    assert stats.count(PairStatus.RESERVED) == loaded
    assert stats.available + stats.count(PairStatus.RESERVED) + stats.count(PairStatus.USED) + stats.count(
        PairStatus.EXPIRED
    ) == loaded
    assert stats == await store.exact_stats(POOL)


async def _safe_reserve(store) -> str | None:
    try:
        return (await store.reserve(POOL, LEASE)).internal_token
    except PoolExhausted:
        return None


async def test_concurrent_commits_and_releases_keep_counts_exact(store):
    await store.add_pairs(POOL, make_pairs(600), uuid.uuid4())
    reservations = await asyncio.gather(*(store.reserve(POOL, LEASE) for _ in range(400)))

    async def finish(i: int, reservation) -> None:
        if i % 2:
            await store.commit(reservation.reservation_id, f"card-{i}")
        else:
            await store.release(reservation.reservation_id)

    await asyncio.gather(*(finish(i, r) for i, r in enumerate(reservations)))
    stats = await store.stats(POOL)
    assert stats.counts == {PairStatus.AVAILABLE: 400, PairStatus.USED: 200}
    assert stats == await store.exact_stats(POOL)


async def test_with_n_pairs_n_reservations_succeed_and_the_next_fails_at_once(store):
    await store.add_pairs(POOL, make_pairs(50), uuid.uuid4())
    await asyncio.gather(*(store.reserve(POOL, LEASE) for _ in range(50)))

    started = time.monotonic()
    with pytest.raises(PoolExhausted) as exhausted:
        await store.reserve(POOL, LEASE)
    assert exhausted.value.pool == POOL
    assert exhausted.value.code == "POOL_EXHAUSTED"
    # Not a benchmark: a bound far above one statement, far below any lock or lease wait.
    assert time.monotonic() - started < 2.0
    assert await store.reserve_many(POOL, 5, LEASE) == []


async def test_an_empty_pool_raises_while_another_pool_has_pairs(store):
    await store.add_pairs("other", make_pairs(3), uuid.uuid4())
    with pytest.raises(PoolExhausted):
        await store.reserve(POOL, LEASE)


async def test_reserve_many_leases_distinct_pairs_in_one_statement(store):
    await store.add_pairs(POOL, make_pairs(30), uuid.uuid4())
    first, second = await asyncio.gather(
        store.reserve_many(POOL, 20, LEASE), store.reserve_many(POOL, 20, LEASE)
    )
    tokens = [r.internal_token for r in first + second]
    assert len(tokens) == 30
    assert len(set(tokens)) == 30
