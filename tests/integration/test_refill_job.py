"""The refill routine against real PostgreSQL and the real TOME emulator process."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import psycopg
import pytest

from tests.fixtures.database import register_program
from tests.integration.refill_support import journal_leftovers, pool_tokens, refill_deps, refill_settings
from tokenpool.programs import UnknownProgram
from tokenpool.refill.job import refill_pool
from tokenpool.refill.model import Outcome

POOL = "default"


async def test_a_run_fills_the_pool_to_its_target_and_a_second_run_adds_nothing(settings, database_url, tome):
    config = refill_settings(settings, tome, refill_target=45)
    async with refill_deps(config) as deps:
        first = await refill_pool(deps, POOL)
        second = await refill_pool(deps, POOL)
        stats = await deps.store.exact_stats(POOL)
    assert (first.outcome, first.added, first.requested, first.target) == (Outcome.SUCCEEDED, 45, 45, 45)
    assert first.tome_requests == 10  # 5 batches (10, 10, 10, 10, 5) x (issue + tokenize)
    assert (second.outcome, second.added, second.requested, second.tome_requests) == (Outcome.SUCCEEDED, 0, 0, 0)
    assert stats.available == 45
    assert sorted(pool_tokens(database_url, POOL)) == sorted(tome.issued(config.tome_ns1))


async def test_count_adds_exactly_that_many_pairs_whatever_the_target(settings, tome):
    config = refill_settings(settings, tome, refill_target=10)
    async with refill_deps(config) as deps:
        await refill_pool(deps, POOL)
        result = await refill_pool(deps, POOL, count=23)
        stats = await deps.store.stats(POOL)
    assert (result.outcome, result.added, result.requested) == (Outcome.SUCCEEDED, 23, 23)
    assert stats.available == 33


@pytest.mark.parametrize(("max_factor", "target"), [(10, 150), (2, 40)])
async def test_the_forecast_raises_the_target_when_consumption_is_high_up_to_its_cap(settings, database_url, tome,
                                                                                     max_factor, target):
    # 10 pairs consumed in the last hour = 10/h; x 10 h interval x 1.5 = a forecast of 150 > target 20,
    # capped at max_factor x 20.
    config = refill_settings(settings, tome, refill_target=20, refill_interval_s=36_000, refill_batch_size=50,
                             refill_forecast_max_factor=max_factor)
    async with refill_deps(config) as deps:
        await refill_pool(deps, POOL)
        for i in range(10):
            reservation = await deps.store.reserve(POOL, 30)
            await deps.store.commit(reservation.reservation_id, f"card-{i}")
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM pool_level_samples")
            conn.execute("INSERT INTO pool_level_samples (pool, sampled_at, consumed, available) "
                         "VALUES (%s, now() - interval '1 hour', 0, 20)", (POOL,))
        result = await refill_pool(deps, POOL)
        stats = await deps.store.stats(POOL)
    assert result.plan is not None
    assert round(result.plan.consumption_per_hour or 0) == 10
    assert (result.target, result.plan.forecast, result.requested) == (target, 150, target - 10)
    assert stats.available == target


async def test_two_runs_started_at_once_one_refills_and_one_reports_the_holder(settings, tome):
    tome.set_faults(latency_ms=30)
    config = refill_settings(settings, tome, refill_target=60)
    async with refill_deps(config) as deps:
        results = await asyncio.gather(refill_pool(deps, POOL), refill_pool(deps, POOL))
        stats = await deps.store.stats(POOL)
    outcomes = Counter(result.outcome for result in results)
    assert outcomes == {Outcome.SUCCEEDED: 1, Outcome.SKIPPED_LEASE_HELD: 1}
    skipped = next(r for r in results if r.outcome is Outcome.SKIPPED_LEASE_HELD)
    winner = next(r for r in results if r.outcome is Outcome.SUCCEEDED)
    assert skipped.lease_holder
    assert skipped.lease_holder in (skipped.error or "")
    assert winner.added == 60
    assert stats.available == 60  # not overfilled


async def test_a_lease_left_by_a_crashed_runner_lapses_and_the_next_run_proceeds(settings, database_url, tome):
    config = refill_settings(settings, tome, refill_target=10)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO refill_leases (pool, holder, expires_at) "
                     "VALUES (%s, 'deadhost:1:abc', now() + interval '1 hour')", (POOL,))
    async with refill_deps(config) as deps:
        held = await refill_pool(deps, POOL)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE refill_leases SET expires_at = now() - interval '1 second'")
        after_lapse = await refill_pool(deps, POOL)
        runs = await deps.journal.recent_runs(POOL)
    assert held.outcome is Outcome.SKIPPED_LEASE_HELD
    assert "deadhost:1:abc" in (held.error or "")
    assert (after_lapse.outcome, after_lapse.added) == (Outcome.SUCCEEDED, 10)
    assert [run["outcome"] for run in runs] == ["succeeded", "skipped_lease_held"]


async def test_tome_errors_and_rate_limits_mid_run_are_retried_to_completion(settings, database_url, tome):
    tome.set_faults(error_rate=0.3, rate_limit_rps=40)
    config = refill_settings(settings, tome, refill_target=60, tome_max_attempts=8, tome_total_timeout_s=10.0,
                             tome_breaker_failure_threshold=50, tome_breaker_minimum_calls=100)
    async with refill_deps(config) as deps:
        result = await refill_pool(deps, POOL)
        stats = await deps.store.stats(POOL)
    faults = tome.stats()["faults"]
    injected = sum(n for ns in (config.tome_ns1, config.tome_ns2) for op in faults.get(ns, {}).values()
                   for n in op.values())
    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert injected > 0  # the faults did hit this run
    assert result.tome_requests > 12  # 6 batches x 2 calls, plus the retries
    assert stats.available == 60
    assert sorted(pool_tokens(database_url, POOL)) == sorted(tome.issued(config.tome_ns1))


async def test_a_tome_outage_fails_the_run_fast_with_a_clear_reason_and_loses_nothing(settings, database_url, tome):
    tome.set_faults(outage=True)
    config = refill_settings(settings, tome, refill_target=30)
    async with refill_deps(config) as deps:
        started = time.monotonic()
        failed = await refill_pool(deps, POOL)
        elapsed = time.monotonic() - started
        tome.set_faults(outage=False)
        await asyncio.sleep(config.tome_breaker_ttl_s)  # let the breaker half-open
        recovered = await refill_pool(deps, POOL)
    assert failed.outcome is Outcome.FAILED
    assert "TomeUnavailable" in (failed.error or "")
    assert "503" in (failed.error or "") or "circuit breaker is open" in (failed.error or "")
    assert elapsed < config.tome_total_timeout_s + 1
    assert failed.added == 0
    assert (recovered.outcome, recovered.added) == (Outcome.SUCCEEDED, 30), recovered.error
    assert sorted(pool_tokens(database_url, POOL)) == sorted(tome.issued(config.tome_ns1))
    assert journal_leftovers(database_url, POOL) == (0, 0)


async def test_a_batch_left_issued_but_not_loaded_is_finished_first_by_the_next_run(settings, database_url, tome):
    config = refill_settings(settings, tome, refill_target=20)
    async with refill_deps(config) as deps:
        # A crash after TOME answered and the tokens were journaled, before tokenize/load.
        journal = deps.journal
        batch_id = uuid.uuid4()
        await journal.record_intent(batch_id, POOL, 10, uuid.uuid4())
        tokens = await deps.tome.issue(config.tome_ns1, 10, idempotency_key=str(batch_id))
        await journal.record_issued(batch_id, tokens)
        # And one that crashed right after TOME answered, before the journal recorded the tokens.
        lost_answer = uuid.uuid4()
        await journal.record_intent(lost_answer, POOL, 10, uuid.uuid4())
        replayed = await deps.tome.issue(config.tome_ns1, 10, idempotency_key=str(lost_answer))
        result = await refill_pool(deps, POOL)
    assert (result.outcome, result.recovered, result.added, result.requested) == (Outcome.SUCCEEDED, 20, 20, 0)
    assert set(tokens) | set(replayed) == set(pool_tokens(database_url, POOL))
    assert sorted(pool_tokens(database_url, POOL)) == sorted(tome.issued(config.tome_ns1))
    assert journal_leftovers(database_url, POOL) == (0, 0)


async def test_a_batch_journaled_before_its_programs_namespaces_changed_is_finished_where_it_was_issued(
    settings, database_url, admin_database_url, tome
):
    config = refill_settings(settings, tome)
    old1, old2, new1, new2 = (f"{ns}-{age}" for age in ("old", "new") for ns in (config.tome_ns1, config.tome_ns2))
    register_program(database_url, "moving", refill_target=0, ns1=old1, ns2=old2)  # target 0: recovery only
    async with refill_deps(config) as deps:
        batch_id = uuid.uuid4()  # a crash right after TOME answered, before the tokens were journaled
        await deps.journal.record_intent(batch_id, "moving", 5, uuid.uuid4(), ns1=old1, ns2=old2)
        issued = await deps.tome.issue(old1, 5, idempotency_key=str(batch_id))
        with psycopg.connect(admin_database_url, autocommit=True) as conn:  # tokenpool program set --ns1 --ns2
            conn.execute("UPDATE programs SET ns1 = %s, ns2 = %s WHERE name = 'moving'", (new1, new2))
        result = await refill_pool(deps, "moving")
    assert (result.outcome, result.recovered, result.requested) == (Outcome.SUCCEEDED, 5, 0)
    assert sorted(pool_tokens(database_url, "moving")) == sorted(issued) == sorted(tome.issued(old1))
    assert tome.issued(new1) == []
    assert (tome.items(old2, "tokenize"), tome.items(new2, "tokenize")) == (5, 0)


async def test_a_run_for_an_unregistered_program_raises_before_any_lease_or_tome_call(settings, database_url, tome):
    config = refill_settings(settings, tome)
    before = tome.stats()["requests"]
    async with refill_deps(config) as deps:
        with pytest.raises(UnknownProgram):
            await refill_pool(deps, "nobody")
    assert tome.stats()["requests"] == before
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM refill_leases").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM refill_runs").fetchone() == (0,)


async def test_a_database_that_cannot_be_reached_ends_the_run_as_failed_with_the_reason(settings, tome):
    config = refill_settings(settings, tome, refill_target=10)
    async with refill_deps(config) as deps:
        await deps.db.close()  # every statement now fails to get a connection
        result = await refill_pool(deps, POOL)
    assert result.outcome is Outcome.FAILED
    assert result.error
    assert "Pool" in result.error  # psycopg_pool: the pool is closed
    assert result.added == 0
