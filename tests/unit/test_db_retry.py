"""Which database failures are retried, whether they may have committed, and the bounded retry itself.

Real psycopg exception classes, raised by fake operations; the retry against a real server (a card
statement that hits 40001 once) is in tests/integration/test_db_failover.py.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from tokenpool.db.database import Database
from tokenpool.db.errors import DatabaseBusy, DatabaseUnavailable, UniqueViolation
from tokenpool.db.hosts import host_count, primary_url
from tokenpool.db.retry import Outcome, RetryPolicy, classify, may_retry, run_retrying
from tokenpool.observability.metrics import DB_RETRIES


def _translated(error: Exception, ours: Exception) -> Exception:
    ours.__cause__ = error
    return ours


@pytest.mark.parametrize(
    ("error", "outcome", "reason"),
    [
        (pg_errors.SerializationFailure("could not serialize"), Outcome.NOT_COMMITTED, "serialization_failure"),
        (pg_errors.DeadlockDetected("deadlock"), Outcome.NOT_COMMITTED, "deadlock"),
        (pg_errors.ReadOnlySqlTransaction("read-only"), Outcome.NOT_COMMITTED, "read_only"),
        (pg_errors.CannotConnectNow("starting up"), Outcome.NOT_COMMITTED, "cannot_connect_now"),
        (pg_errors.AdminShutdown("terminating connection"), Outcome.AMBIGUOUS, "admin_shutdown"),
        (pg_errors.CrashShutdown("crash"), Outcome.AMBIGUOUS, "crash_shutdown"),
        # Lost after the statement was sent: it may have committed.
        (psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
         Outcome.AMBIGUOUS, "connection_lost"),
        (psycopg.OperationalError(), Outcome.AMBIGUOUS, "connection_lost"),
        (pg_errors.ConnectionFailure("08006"), Outcome.AMBIGUOUS, "connection_lost"),
        # Never sent, or never connected: nothing happened.
        (psycopg.OperationalError("the connection is closed"), Outcome.NOT_COMMITTED, "connect"),
        (psycopg.OperationalError("connection failed: connection refused"), Outcome.NOT_COMMITTED, "connect"),
        (pg_errors.ConnectionTimeout("connection timeout expired"), Outcome.NOT_COMMITTED, "connect"),
        # Not retryable: the request's own fault, a bug, or overload.
        (pg_errors.UniqueViolation("duplicate"), Outcome.NOT_RETRYABLE, "other"),
        (pg_errors.CheckViolation("check"), Outcome.NOT_RETRYABLE, "other"),
        (pg_errors.InvalidTextRepresentation("22P02"), Outcome.NOT_RETRYABLE, "other"),
        (pg_errors.UndefinedTable("42P01"), Outcome.NOT_RETRYABLE, "other"),
        (pg_errors.QueryCanceled("statement timeout"), Outcome.NOT_RETRYABLE, "other"),
        (pg_errors.LockNotAvailable("55P03"), Outcome.NOT_RETRYABLE, "other"),
        (ValueError("not a database error"), Outcome.NOT_RETRYABLE, "other"),
        (TimeoutError(), Outcome.NOT_RETRYABLE, "other"),
    ],
)
def test_classification(error: Exception, outcome: Outcome, reason: str) -> None:
    assert (classify(error).outcome, classify(error).reason) == (outcome, reason)
    # The same through our translated errors (the guard raises them `from` psycopg's).
    wrapped = _translated(error, DatabaseUnavailable("x"))
    assert (classify(wrapped).outcome, classify(wrapped).reason) == (outcome, reason)


def test_ambiguous_failures_are_retried_only_when_idempotent() -> None:
    lost, deadlock = classify(psycopg.OperationalError()), classify(pg_errors.DeadlockDetected())
    assert may_retry(lost, idempotent=True)
    assert not may_retry(lost, idempotent=False)
    assert may_retry(deadlock, idempotent=True)
    assert may_retry(deadlock, idempotent=False)
    constraint = classify(pg_errors.UniqueViolation())
    assert not may_retry(constraint, idempotent=True)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _failing(errors: list[Exception], result: str = "done"):  # type: ignore[no-untyped-def]
    calls = []

    async def operation() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return operation, calls


async def test_a_known_not_committed_failure_is_retried_until_it_succeeds() -> None:
    clock = _Clock()
    operation, calls = _failing([pg_errors.SerializationFailure(), pg_errors.DeadlockDetected()])
    before = DB_RETRIES.labels("t_ok", "deadlock")._value.get()
    result = await run_retrying(operation, RetryPolicy(budget_s=5.0), idempotent=False, name="t_ok",
                                clock=clock, sleep=clock.sleep)
    assert result == "done"
    assert len(calls) == 3
    assert len(clock.sleeps) == 2
    assert DB_RETRIES.labels("t_ok", "deadlock")._value.get() == before + 1
    assert DB_RETRIES.labels("t_ok", "serialization_failure")._value.get() >= 1


async def test_an_ambiguous_failure_is_not_retried_unless_idempotent() -> None:
    clock = _Clock()
    lost = _translated(psycopg.OperationalError("server closed the connection"), DatabaseUnavailable("x"))
    operation, calls = _failing([lost])
    with pytest.raises(DatabaseUnavailable):
        await run_retrying(operation, RetryPolicy(budget_s=5.0), idempotent=False, name="t", clock=clock,
                           sleep=clock.sleep)
    assert len(calls) == 1

    operation, calls = _failing([_translated(pg_errors.AdminShutdown(), DatabaseUnavailable("x"))])
    assert await run_retrying(operation, RetryPolicy(budget_s=5.0), idempotent=True, name="t", clock=clock,
                              sleep=clock.sleep) == "done"
    assert len(calls) == 2


async def test_a_failure_not_retryable_is_raised_at_once() -> None:
    clock = _Clock()
    for error in (UniqueViolation("cards_pkey"), _translated(pg_errors.QueryCanceled(), DatabaseBusy("x")),
                  ValueError("bug")):
        operation, calls = _failing([error])
        with pytest.raises(type(error)):
            await run_retrying(operation, RetryPolicy(budget_s=5.0), idempotent=True, name="t", clock=clock,
                               sleep=clock.sleep)
        assert len(calls) == 1
        assert not clock.sleeps


async def test_retries_stop_at_the_attempt_limit() -> None:
    clock = _Clock()
    operation, calls = _failing([pg_errors.DeadlockDetected() for _ in range(10)])
    with pytest.raises(pg_errors.DeadlockDetected):
        await run_retrying(operation, RetryPolicy(budget_s=60.0, max_attempts=4), idempotent=False, name="t",
                           clock=clock, sleep=clock.sleep)
    assert len(calls) == 4


async def test_retries_stop_within_the_time_budget_each_attempt_counting() -> None:
    clock = _Clock()
    errors: list[Exception] = [_translated(psycopg.OperationalError("connection failed: refused"),
                                           DatabaseUnavailable("x")) for _ in range(100)]
    calls = []

    async def slow_outage() -> str:  # each attempt waits 0.4 s before failing (a connect timeout)
        calls.append(1)
        clock.now += 0.4
        raise errors.pop(0)

    policy = RetryPolicy(budget_s=2.0, max_attempts=100, base_s=0.1, cap_s=0.5)
    with pytest.raises(DatabaseUnavailable):  # the last failure as it came: the API answers 503
        await run_retrying(slow_outage, policy, idempotent=False, name="t", clock=clock, sleep=clock.sleep)
    assert clock.now <= 2.0 + 0.4  # no retry starts beyond the budget; the last attempt keeps its own bound
    assert 2 <= len(calls) <= 6


async def test_a_zero_budget_never_retries() -> None:
    clock = _Clock()
    operation, calls = _failing([pg_errors.SerializationFailure()])
    with pytest.raises(pg_errors.SerializationFailure):
        await run_retrying(operation, RetryPolicy(budget_s=0.0), idempotent=True, name="t", clock=clock,
                           sleep=lambda _s: clock.sleep(1.0))
    assert len(calls) == 1


def test_backoff_is_jittered_and_capped() -> None:
    policy = RetryPolicy(budget_s=5.0, base_s=0.1, cap_s=0.5)
    assert policy.backoff_s(0, rng=lambda: 1.0) == pytest.approx(0.1)
    assert policy.backoff_s(2, rng=lambda: 1.0) == pytest.approx(0.4)
    assert policy.backoff_s(10, rng=lambda: 1.0) == pytest.approx(0.5)
    assert policy.backoff_s(10, rng=lambda: 0.0) == 0.0


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("postgresql://u@h1:5432,h2:5433/db", {"target_session_attrs": "read-write"}),
        ("host=a,b port=5432,5433 dbname=db", {"target_session_attrs": "read-write"}),
        ("postgresql://u@h1,h2/db?target_session_attrs=any", {}),  # said explicitly: left alone
        ("host=a,b dbname=db target_session_attrs=primary", {}),
        ("postgresql://u@h1:5432/db", {}),
        ("host=/tmp/sockets dbname=db", {}),
    ],
)
def test_a_multi_host_url_asks_for_the_primary_unless_it_says_otherwise(url: str, extra: dict[str, str]) -> None:
    assert host_count(url) == (2 if extra or "h1,h2" in url or "a,b" in url else 1)
    written = primary_url(url)
    assert written == url if not extra else conninfo_to_dict(written) == conninfo_to_dict(url) | extra


async def test_read_only_server_is_unavailable_and_the_pool_is_drained() -> None:
    drained = []

    class _Pool:
        in_use = 0
        max_size = 10

        def answered_within(self, _seconds: float) -> bool:
            return True

        async def drain(self) -> None:
            drained.append(1)

    database = Database(_Pool(), 2.0)  # type: ignore[arg-type]
    for _ in range(3):  # drained once, not once per failing request
        with pytest.raises(DatabaseUnavailable) as raised:
            async with database.guard():
                raise pg_errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")
        assert type(raised.value) is DatabaseUnavailable
        assert raised.value.code == "DATABASE_UNAVAILABLE"
    await asyncio.sleep(0)  # the drain runs in a task of its own
    assert drained == [1]


async def test_a_requests_retries_all_end_within_its_one_bound() -> None:
    """The service's bound (TOKENPOOL_SERVICE_DB_TIMEOUT_S) holds for the request as a whole: a retry's
    guarded block gets only what is left of it."""

    class _Pool:
        in_use = 0
        max_size = 10

        def answered_within(self, _seconds: float) -> bool:
            return False

        async def check(self) -> None:
            pass

    database = Database(_Pool(), 0.5, retry_budget_s=5.0)  # type: ignore[arg-type]
    attempts = []

    async def operation() -> None:
        attempts.append(1)
        async with database.guard():
            if len(attempts) == 1:
                await asyncio.sleep(0.3)
                raise pg_errors.DeadlockDetected("deadlock detected")
            await asyncio.sleep(10)  # hangs: cut at the request's bound, not 0.5 s after this attempt began

    started = asyncio.get_running_loop().time()
    with pytest.raises(DatabaseUnavailable):
        await database.run_retrying(operation, idempotent=False, name="t_bound")
    assert len(attempts) == 2
    assert asyncio.get_running_loop().time() - started < 0.7
