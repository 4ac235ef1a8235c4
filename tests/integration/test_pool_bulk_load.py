"""add_pairs: COPY-based, idempotent for pairs already stored, all-or-nothing on contradictions."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.factories import make_pairs
from tokenpool.pool import PairConflict, TokenPair

POOL = "default"


async def test_overlapping_batches_insert_each_pair_once(store):
    pairs = make_pairs(300)
    assert await store.add_pairs(POOL, pairs[:200], uuid.uuid4()) == 200
    assert await store.add_pairs(POOL, pairs[100:], uuid.uuid4()) == 100
    assert await store.add_pairs(POOL, pairs, uuid.uuid4()) == 0
    stats = await store.exact_stats(POOL)
    assert stats.available == 300
    assert stats == await store.stats(POOL)


async def test_a_batch_with_a_pair_repeated_inside_it_loads_the_pair_once(store):
    pairs = make_pairs(3)
    assert await store.add_pairs(POOL, [*pairs, pairs[0]], uuid.uuid4()) == 3


async def test_reloading_a_pair_that_was_already_used_does_not_make_it_available_again(store):
    pairs = make_pairs(1)
    await store.add_pairs(POOL, pairs, uuid.uuid4())
    reservation = await store.reserve(POOL, 30)
    await store.commit(reservation.reservation_id, "card-1")
    assert await store.add_pairs(POOL, pairs, uuid.uuid4()) == 0
    assert (await store.stats(POOL)).available == 0


@pytest.mark.parametrize(
    "contradiction",
    [
        lambda p: TokenPair(p.internal_token, "ext_other"),  # same token, another reference
        lambda p: TokenPair("9999888877776666", p.external_ref),  # same reference, another token
    ],
)
async def test_a_pair_contradicting_a_stored_one_refuses_the_whole_batch(store, contradiction):
    stored = make_pairs(2)
    await store.add_pairs(POOL, stored, uuid.uuid4())
    batch = [*make_pairs(5), contradiction(stored[0])]
    with pytest.raises(PairConflict):
        await store.add_pairs(POOL, batch, uuid.uuid4())
    assert (await store.exact_stats(POOL)).total == 2


async def test_a_batch_contradicting_itself_is_refused(store):
    batch = [TokenPair("1111222233334444", "ext_a"), TokenPair("1111222233334444", "ext_b")]
    with pytest.raises(PairConflict):
        await store.add_pairs(POOL, batch, uuid.uuid4())
    assert (await store.exact_stats(POOL)).total == 0


async def test_a_pair_already_in_another_pool_is_a_conflict(store):
    pairs = make_pairs(1)
    await store.add_pairs("program-a", pairs, uuid.uuid4())
    with pytest.raises(PairConflict):
        await store.add_pairs("program-b", pairs, uuid.uuid4())


async def test_an_empty_batch_loads_nothing(store):
    assert await store.add_pairs(POOL, [], uuid.uuid4()) == 0


async def test_two_concurrent_loads_of_the_same_new_pairs_load_each_pair_once(store):
    pairs = make_pairs(2_000)
    added = await asyncio.gather(*(store.add_pairs(POOL, pairs, uuid.uuid4()) for _ in range(3)))
    assert sum(added) == 2_000
    stats = await store.exact_stats(POOL)
    assert stats.available == 2_000
    assert stats == await store.stats(POOL)
