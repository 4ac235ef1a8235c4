"""The circuit breaker's state machine, driven by a fake clock."""

from __future__ import annotations

import pytest

from tokenpool.tome.resilience import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    Outcome,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: FakeClock, **config: float) -> tuple[CircuitBreaker, list[tuple[BreakerState, BreakerState]]]:
    changes: list[tuple[BreakerState, BreakerState]] = []
    base = {
        "failure_threshold": 5,
        "failure_rate": 0.5,
        "slow_call_s": 1.0,
        "slow_call_rate": 0.8,
        "window_s": 10.0,
        "minimum_calls": 10,
        "open_ttl_s": 2.0,
        "half_open_calls": 2,
    }
    breaker = CircuitBreaker(
        "tome",
        BreakerConfig(**(base | config)),  # type: ignore[arg-type]
        clock=clock,
        on_state_change=lambda _name, old, new: changes.append((old, new)),
    )
    return breaker, changes


def call(breaker: CircuitBreaker, clock: FakeClock, outcome: Outcome, duration: float = 0.01) -> None:
    permit = breaker.acquire()
    clock.advance(duration)
    breaker.record(permit, outcome)


def test_consecutive_failures_open_the_breaker_at_the_threshold() -> None:
    clock = FakeClock()
    breaker, changes = make(clock)
    for _ in range(4):
        call(breaker, clock, Outcome.FAILURE)
    assert breaker.state is BreakerState.CLOSED
    call(breaker, clock, Outcome.FAILURE)
    assert breaker.state is BreakerState.OPEN
    assert changes == [(BreakerState.CLOSED, BreakerState.OPEN)]


def test_an_open_breaker_fails_fast_and_says_when_it_will_probe() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=1)
    call(breaker, clock, Outcome.FAILURE)
    clock.advance(0.5)
    with pytest.raises(CircuitOpen) as caught:
        breaker.acquire()
    assert caught.value.retry_after_s == pytest.approx(1.5)


def test_a_failure_rate_over_the_window_opens_it_even_without_a_failure_streak() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=100)
    for index in range(9):  # alternate: never two failures in a row
        call(breaker, clock, Outcome.FAILURE if index % 2 == 0 else Outcome.SUCCESS)
    assert breaker.state is BreakerState.CLOSED  # 9 calls, 5 failures: below minimum_calls
    call(breaker, clock, Outcome.SUCCESS)
    assert breaker.state is BreakerState.OPEN  # 10 calls, 5 failures: at the 50% threshold


def test_a_failure_rate_below_the_threshold_keeps_it_closed() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=100)
    for index in range(100):
        call(breaker, clock, Outcome.FAILURE if index % 3 == 0 else Outcome.SUCCESS)
    assert breaker.state is BreakerState.CLOSED


def test_slow_successes_open_it_on_the_slow_call_rate() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, window_s=30.0)
    for _ in range(9):
        call(breaker, clock, Outcome.SUCCESS, duration=1.5)
    assert breaker.state is BreakerState.CLOSED
    call(breaker, clock, Outcome.SUCCESS, duration=1.5)
    assert breaker.state is BreakerState.OPEN
    assert breaker.stats()["opened_count"] == 1


def test_outcomes_older_than_the_window_no_longer_count() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=100)
    for _ in range(9):
        call(breaker, clock, Outcome.FAILURE)
    clock.advance(11)
    for _ in range(9):
        call(breaker, clock, Outcome.SUCCESS)
    call(breaker, clock, Outcome.FAILURE)
    assert breaker.stats()["calls_in_window"] == 10
    assert breaker.state is BreakerState.CLOSED


def test_ignored_outcomes_such_as_429_and_successes_reset_the_failure_streak() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    for _ in range(4):
        call(breaker, clock, Outcome.FAILURE)
    call(breaker, clock, Outcome.IGNORED)
    call(breaker, clock, Outcome.SUCCESS)  # e.g. a 400: TOME answered, so it is up
    for _ in range(4):
        call(breaker, clock, Outcome.FAILURE)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.stats()["consecutive_failures"] == 4


def test_after_the_ttl_it_half_opens_admits_capped_probes_and_closes_on_their_success() -> None:
    clock = FakeClock()
    breaker, changes = make(clock, failure_threshold=1)
    call(breaker, clock, Outcome.FAILURE)
    clock.advance(2.0)
    assert breaker.state is BreakerState.HALF_OPEN
    first, second = breaker.acquire(), breaker.acquire()
    with pytest.raises(CircuitOpen):
        breaker.acquire()  # only half_open_calls probes at once
    breaker.record(first, Outcome.SUCCESS)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(second, Outcome.SUCCESS)
    assert breaker.state is BreakerState.CLOSED
    assert [new for _, new in changes] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_a_failed_or_slow_probe_reopens_it_for_another_ttl() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=1)
    call(breaker, clock, Outcome.FAILURE)
    clock.advance(2.0)
    call(breaker, clock, Outcome.FAILURE)
    assert breaker.state is BreakerState.OPEN
    clock.advance(2.0)
    call(breaker, clock, Outcome.SUCCESS, duration=1.5)  # slow: TOME is still struggling
    assert breaker.state is BreakerState.OPEN


def test_a_call_admitted_before_the_breaker_opened_cannot_close_it() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=1, half_open_calls=1)
    stale = breaker.acquire()
    call(breaker, clock, Outcome.FAILURE)
    clock.advance(2.0)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(stale, Outcome.SUCCESS)
    assert breaker.state is BreakerState.HALF_OPEN
