"""Every transition and every error of the pair status machine, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from tests.factories import make_pairs
from tokenpool.pool import (
    LeaseExpired,
    PairStatus,
    PoolExhausted,
    ReservationConflict,
    TooManyOpenReservations,
    UnknownReservation,
)

POOL = "default"
LEASE = 30.0
SHORT_LEASE = 0.05


async def load(store, n: int = 5, pool: str = POOL):
    pairs = make_pairs(n)
    assert await store.add_pairs(pool, pairs, uuid.uuid4()) == n
    return pairs


async def status_of(database_url: str, external_ref: str) -> str:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute("SELECT status FROM token_pool WHERE external_ref = %s", (external_ref,))
        row = await cursor.fetchone()
        return row[0]


async def test_a_reservation_leases_an_available_pair(store, database_url):
    pairs = await load(store)
    reservation = await store.reserve(POOL, LEASE)
    assert reservation.pair in pairs
    assert reservation.pool == POOL
    assert await status_of(database_url, reservation.external_ref) == "RESERVED"


async def test_commit_marks_the_pair_used_by_the_card(store, database_url):
    await load(store)
    reservation = await store.reserve(POOL, LEASE)
    committed = await store.commit(reservation.reservation_id, "card-1")
    assert committed.pair == reservation.pair
    assert await status_of(database_url, reservation.external_ref) == "USED"


async def test_commit_is_idempotent_for_the_same_card(store):
    await load(store)
    reservation = await store.reserve(POOL, LEASE)
    first = await store.commit(reservation.reservation_id, "card-1")
    again = await store.commit(reservation.reservation_id, "card-1")
    assert again.pair == first.pair


async def test_commit_to_a_different_card_is_a_conflict(store):
    await load(store)
    reservation = await store.reserve(POOL, LEASE)
    await store.commit(reservation.reservation_id, "card-1")
    with pytest.raises(ReservationConflict):
        await store.commit(reservation.reservation_id, "card-2")


async def test_commit_of_an_unknown_reservation_is_refused(store):
    with pytest.raises(UnknownReservation):
        await store.commit(uuid.uuid4(), "card-1")


async def test_a_lapsed_lease_cannot_be_committed_even_before_the_janitor_runs(store, database_url):
    await load(store)
    reservation = await store.reserve(POOL, SHORT_LEASE)
    await asyncio.sleep(SHORT_LEASE * 3)
    with pytest.raises(LeaseExpired):
        await store.commit(reservation.reservation_id, "card-1")
    assert await status_of(database_url, reservation.external_ref) == "RESERVED"


async def test_expire_leases_quarantines_lapsed_reservations(store, database_url):
    await load(store, 3)
    lapsed = await store.reserve_many(POOL, 2, SHORT_LEASE)
    live = await store.reserve(POOL, LEASE)
    await asyncio.sleep(SHORT_LEASE * 3)
    assert await store.expire_leases() == 2
    assert await store.expire_leases() == 0
    for reservation in lapsed:
        assert await status_of(database_url, reservation.external_ref) == "EXPIRED"
        with pytest.raises(LeaseExpired):
            await store.commit(reservation.reservation_id, "card-late")
    assert await status_of(database_url, live.external_ref) == "RESERVED"


async def test_expired_pairs_are_never_reissued(store):
    await load(store, 2)
    lapsed = await store.reserve(POOL, SHORT_LEASE)
    await asyncio.sleep(SHORT_LEASE * 3)
    await store.expire_leases()
    other = await store.reserve(POOL, LEASE)
    assert other.pair != lapsed.pair
    with pytest.raises(PoolExhausted):
        await store.reserve(POOL, LEASE)


async def test_expire_leases_works_through_more_than_one_batch(store):
    await load(store, 7)
    await store.reserve_many(POOL, 7, SHORT_LEASE)
    await asyncio.sleep(SHORT_LEASE * 3)
    assert await store.expire_leases(limit=3) == 7


async def test_release_returns_the_pair_to_the_pool(store, database_url):
    await load(store, 1)
    reservation = await store.reserve(POOL, LEASE)
    await store.release(reservation.reservation_id)
    assert await status_of(database_url, reservation.external_ref) == "AVAILABLE"
    again = await store.reserve(POOL, LEASE)
    assert again.pair == reservation.pair
    assert again.reservation_id != reservation.reservation_id


async def test_a_released_reservation_can_no_longer_be_committed(store):
    await load(store, 1)
    reservation = await store.reserve(POOL, LEASE)
    await store.release(reservation.reservation_id)
    with pytest.raises(UnknownReservation):
        await store.commit(reservation.reservation_id, "card-1")


async def test_a_committed_pair_cannot_be_released(store):
    await load(store, 1)
    reservation = await store.reserve(POOL, LEASE)
    await store.commit(reservation.reservation_id, "card-1")
    with pytest.raises(ReservationConflict):
        await store.release(reservation.reservation_id)


async def test_a_lapsed_lease_cannot_be_released(store):
    await load(store, 1)
    reservation = await store.reserve(POOL, SHORT_LEASE)
    await asyncio.sleep(SHORT_LEASE * 3)
    with pytest.raises(LeaseExpired):
        await store.release(reservation.reservation_id)


async def test_release_of_an_unknown_reservation_is_refused(store):
    with pytest.raises(UnknownReservation):
        await store.release(uuid.uuid4())


async def test_pools_are_separate(store):
    await load(store, 2, pool="program-a")
    await load(store, 1, pool="program-b")
    reservation = await store.reserve("program-b", LEASE)
    assert reservation.pool == "program-b"
    assert (await store.stats("program-a")).available == 2
    assert (await store.stats("program-b")).available == 0


async def test_lookup_answers_a_batch_in_one_call(store):
    pairs = await load(store, 4)
    found = await store.lookup([pairs[0].external_ref, pairs[3].external_ref, "ext_unknown"])
    assert found == {pairs[0].external_ref: pairs[0].internal_token, pairs[3].external_ref: pairs[3].internal_token}
    assert await store.lookup([]) == {}


async def test_stats_follow_every_transition_and_match_an_exact_count(store):
    await load(store, 10)
    committed = await store.reserve(POOL, LEASE)
    await store.commit(committed.reservation_id, "card-1")
    released = await store.reserve(POOL, LEASE)
    await store.release(released.reservation_id)
    await store.reserve_many(POOL, 2, SHORT_LEASE)
    await store.reserve(POOL, LEASE)
    await asyncio.sleep(SHORT_LEASE * 3)
    await store.expire_leases()
    stats = await store.stats(POOL)
    assert stats.counts == {
        PairStatus.AVAILABLE: 6, PairStatus.RESERVED: 1, PairStatus.USED: 1, PairStatus.EXPIRED: 2
    }
    assert stats == await store.exact_stats(POOL)
    assert stats.as_dict() == {
        "pool": POOL, "available": 6, "reserved": 1, "used": 1, "expired": 2, "total": 10
    }


# --- The database itself refuses illegal transitions, whatever statement tries -----------------------

ILLEGAL_UPDATES = [
    ("USED", "UPDATE token_pool SET status = 'AVAILABLE', card_ref = NULL WHERE id = %(id)s"),
    ("USED", "UPDATE token_pool SET status = 'RESERVED' WHERE id = %(id)s"),
    ("USED", "UPDATE token_pool SET card_ref = 'another-card' WHERE id = %(id)s"),
    ("EXPIRED", "UPDATE token_pool SET status = 'AVAILABLE', reservation_id = NULL, lease_expires_at = NULL"
                " WHERE id = %(id)s"),
    ("EXPIRED", "UPDATE token_pool SET status = 'RESERVED' WHERE id = %(id)s"),
    ("AVAILABLE", "UPDATE token_pool SET status = 'EXPIRED' WHERE id = %(id)s"),
    ("AVAILABLE", "UPDATE token_pool SET token_digest = sha256('forged') WHERE id = %(id)s"),
    ("AVAILABLE", "UPDATE token_pool SET external_ref = 'forged' WHERE id = %(id)s"),
    ("AVAILABLE", "UPDATE token_pool SET status = 'RESERVED' WHERE id = %(id)s"),  # no lease: CHECK
    ("AVAILABLE", "UPDATE token_pool SET status = 'LOST' WHERE id = %(id)s"),
]


@pytest.mark.parametrize(("start", "statement"), ILLEGAL_UPDATES)
async def test_the_database_refuses_an_illegal_change(store, admin_database_url, start, statement):
    # As the owner: the app role may not even write a pair's identity columns (grants.sql); the trigger
    # refuses the change whoever sends it.
    await load(store, 1)
    if start != "AVAILABLE":
        reservation = await store.reserve(POOL, SHORT_LEASE if start == "EXPIRED" else LEASE)
        if start == "USED":
            await store.commit(reservation.reservation_id, "card-1")
        else:
            await asyncio.sleep(SHORT_LEASE * 3)
            await store.expire_leases()
    async with await psycopg.AsyncConnection.connect(admin_database_url, autocommit=True) as conn:
        row = await (await conn.execute("SELECT id, status FROM token_pool")).fetchone()
        assert row[1] == start
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute(statement, {"id": row[0]})


async def test_the_app_role_cannot_rewrite_a_pairs_sealed_token_or_identity(store, database_url):
    await load(store, 1)
    for column in ("token_ct = '\\x00'", "token_digest = sha256('x')", "external_ref = 'x'", "pool = 'x'"):
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(f"UPDATE token_pool SET {column}")


async def test_a_pair_may_go_from_available_straight_to_used_by_a_card(store, database_url):
    # Card creation claims and uses a pair in one statement (no lease needed when nothing is in between).
    await load(store, 1)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("UPDATE token_pool SET status = 'USED', card_ref = 'c', used_at = now()")
        row = await (await conn.execute("SELECT status FROM token_pool")).fetchone()
    assert row[0] == "USED"
    assert (await store.stats(POOL)).count(PairStatus.USED) == 1


async def test_the_pool_table_cannot_be_truncated(store, database_url):
    await load(store, 1)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("TRUNCATE token_pool CASCADE")  # plain TRUNCATE is also refused by the cards FK


async def test_one_claim_statement_serves_several_owners_each_within_its_cap(store):
    await load(store, 5)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    held = await store.reserve(POOL, LEASE, owner=alice)
    outcomes = await store.reserve_for(POOL, [alice, alice, None, bob, alice, bob, None, None], LEASE, max_open=2)
    kinds = [type(o).__name__ for o in outcomes]
    # alice holds one: her first order fits, her next two are over; bob's two fit; unowned orders are never
    # capped; the pool (5 pairs, 1 held) runs out after four, in order of arrival.
    assert kinds == ["Reservation", "TooManyOpenReservations", "Reservation", "Reservation",
                     "TooManyOpenReservations", "Reservation", "PoolExhausted", "PoolExhausted"]
    over = outcomes[1]
    assert isinstance(over, TooManyOpenReservations)
    assert 0 < over.retry_after_s <= LEASE  # until alice's first lease lapses
    # Each reservation is its owner's: committing it as anyone else finds nothing.
    with pytest.raises(UnknownReservation):
        await store.commit(held.reservation_id, "card-1", owner=bob)
    with pytest.raises(UnknownReservation):
        await store.release(held.reservation_id)  # not even a library caller without an owner
    await store.commit(held.reservation_id, "card-1", owner=alice)
    unowned = outcomes[2]
    await store.release(unowned.reservation_id)
