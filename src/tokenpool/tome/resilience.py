"""Retry policy (tenacity) and the circuit breaker that guard every TOME call.

Why a small state machine instead of a breaker library
------------------------------------------------------
The issue asks for a breaker that opens on a *failure rate or slow-call rate over a window*, fails
fast while open, lets a few probes through when half-open and closes on their success. We checked
the maintained Python options:

* ``purgatory`` (asyncio-native, in our dependencies) counts *consecutive* failures against a
  threshold and resets the count on any success, so a TOME failing every other call never trips it;
  it has no notion of a slow call; in half-open it admits every concurrent caller (no probe cap: a
  refill fan-out would stampede a recovering TOME) and the first success closes it; its clock is
  ``time.time()``, which jumps with NTP. Driving it from an outside rate window means calling its
  domain internals with a threshold of 1 — the library would then contribute only an enum and a TTL.
* ``pybreaker`` also counts consecutive failures and supports asyncio only through Tornado.
* ``aiobreaker`` is an unmaintained fork of pybreaker.

None expresses the Resilience4j model (count or time window, failure-rate and slow-call-rate
thresholds, minimum calls, capped half-open probes), so :class:`CircuitBreaker` implements exactly
that in ~150 lines with an injectable monotonic clock, and is unit tested state by state
(``tests/unit/test_tome_breaker.py``). Retries stay with tenacity, a maintained library that does
express what we need (full-jitter exponential backoff, attempt and delay stops), plus a custom wait
for ``Retry-After``, which tenacity lacks.

Ordering: the retry wraps the breaker (``retry(breaker(http_call))``), so every HTTP attempt is one
breaker outcome, and an open breaker ends the retry loop at once instead of being retried.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from tokenpool.settings import Settings
from tokenpool.tome.contract import TomeRateLimited, TomeUnavailable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


BREAKER_STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"  # neither: e.g. a 429 (TOME is up, just pushing back) or a cancelled call


class CircuitOpen(Exception):
    """Raised by :meth:`CircuitBreaker.acquire` while open (or half-open with every probe taken)."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"circuit {name} is open; next probe in {retry_after_s:.3f}s")
        self.name = name
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 5
    """Consecutive failures that open the breaker whatever the window says (bounds an outage's cost)."""
    failure_rate: float = 0.5
    """Failures / calls in the window at or above which the breaker opens."""
    slow_call_s: float = 3.0
    """A call slower than this counts as slow (even when it succeeds)."""
    slow_call_rate: float = 0.8
    """Slow calls / calls in the window at or above which the breaker opens."""
    window_s: float = 30.0
    """Length of the sliding time window the rates are computed over."""
    minimum_calls: int = 10
    """Calls the window must hold before the rates are evaluated."""
    open_ttl_s: float = 10.0
    """How long the breaker stays open before it lets probes through."""
    half_open_calls: int = 2
    """Probes admitted at once in half-open; this many successes close the breaker."""

    @classmethod
    def from_settings(cls, settings: Settings) -> BreakerConfig:
        return cls(
            failure_threshold=settings.tome_breaker_failure_threshold,
            failure_rate=settings.tome_breaker_failure_rate,
            slow_call_s=settings.tome_breaker_slow_call_s,
            slow_call_rate=settings.tome_breaker_slow_call_rate,
            window_s=settings.tome_breaker_window_s,
            minimum_calls=settings.tome_breaker_minimum_calls,
            open_ttl_s=settings.tome_breaker_ttl_s,
            half_open_calls=settings.tome_breaker_half_open_calls,
        )


@dataclass(frozen=True, slots=True)
class Permit:
    """Proof that a call was admitted; hand it back to :meth:`CircuitBreaker.record`."""

    generation: int
    probe: bool
    started_at: float


StateListener = Callable[[str, BreakerState, BreakerState], None]


class CircuitBreaker:
    """Failure-rate / slow-call-rate breaker over a sliding time window (Resilience4j semantics).

    Not thread-safe: one instance per event loop (asyncio runs each method to completion).
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Clock = time.monotonic,
        on_state_change: StateListener | None = None,
    ) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self._clock = clock
        self._on_state_change = on_state_change
        self._state = BreakerState.CLOSED
        self._generation = 0  # bumped on every transition; outcomes of older permits are dropped
        self._opened_at = 0.0
        self._window: deque[tuple[float, bool, bool]] = deque()  # (at, failed, slow)
        self._failures = 0
        self._slow = 0
        self._consecutive_failures = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose TTL has lapsed reports (and becomes) half-open."""
        if self._state is BreakerState.OPEN and self._clock() >= self._opened_at + self.config.open_ttl_s:
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    def check(self) -> None:
        """Raise :class:`CircuitOpen` if open, admitting nothing: the cheap fail-fast test before a call."""
        if self.state is BreakerState.OPEN:
            raise CircuitOpen(self.name, self._opened_at + self.config.open_ttl_s - self._clock())

    def acquire(self) -> Permit:
        """Admit a call or raise :class:`CircuitOpen` (fail fast)."""
        state = self.state
        now = self._clock()
        if state is BreakerState.OPEN:
            raise CircuitOpen(self.name, self._opened_at + self.config.open_ttl_s - now)
        if state is BreakerState.HALF_OPEN:
            if self._probes_in_flight >= self.config.half_open_calls:
                raise CircuitOpen(self.name, 0.0)
            self._probes_in_flight += 1
            return Permit(self._generation, True, now)
        return Permit(self._generation, False, now)

    def record(self, permit: Permit, outcome: Outcome) -> None:
        """Report how an admitted call ended."""
        now = self._clock()
        if permit.generation != self._generation:
            return  # started under an earlier state: it says nothing about the current one
        slow = now - permit.started_at > self.config.slow_call_s
        if permit.probe:
            self._probes_in_flight -= 1
            if outcome is Outcome.IGNORED:
                return
            if outcome is Outcome.FAILURE or slow:
                self._open(now)
                return
            self._probe_successes += 1
            if self._probe_successes >= self.config.half_open_calls:
                self._transition(BreakerState.CLOSED)
            return
        if outcome is Outcome.IGNORED:
            return
        failed = outcome is Outcome.FAILURE
        self._consecutive_failures = self._consecutive_failures + 1 if failed else 0
        self._window.append((now, failed, slow))
        self._failures += failed
        self._slow += slow
        self._evict(now)
        if self._should_open():
            self._open(now)

    def stats(self) -> dict[str, float | int | str]:
        self._evict(self._clock())
        calls = len(self._window)
        return {
            "state": self.state.value,
            "calls_in_window": calls,
            "failure_rate": self._failures / calls if calls else 0.0,
            "slow_call_rate": self._slow / calls if calls else 0.0,
            "consecutive_failures": self._consecutive_failures,
            "opened_count": self.opened_count,
        }

    # --- internals ---------------------------------------------------------------------------------

    def _should_open(self) -> bool:
        if self._consecutive_failures >= self.config.failure_threshold:
            return True
        calls = len(self._window)
        if calls < self.config.minimum_calls:
            return False
        return self._failures / calls >= self.config.failure_rate or self._slow / calls >= self.config.slow_call_rate

    def _evict(self, now: float) -> None:
        horizon = now - self.config.window_s
        while self._window and self._window[0][0] < horizon:
            _, failed, slow = self._window.popleft()
            self._failures -= failed
            self._slow -= slow

    def _open(self, now: float) -> None:
        self._opened_at = now
        self.opened_count += 1
        self._transition(BreakerState.OPEN)

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._probes_in_flight = 0
        self._probe_successes = 0
        if new is BreakerState.CLOSED:
            self._window.clear()
            self._failures = self._slow = self._consecutive_failures = 0
        if self._on_state_change is not None and old is not new:
            self._on_state_change(self.name, old, new)


# --- Retry -------------------------------------------------------------------------------------------


def is_retryable(exc: BaseException) -> bool:
    """5xx, timeouts, connection errors and 429 are retried; an open breaker, a spent deadline and 4xx are not."""
    if isinstance(exc, TomeUnavailable):
        return exc.reason not in ("breaker_open", "deadline")
    return isinstance(exc, TomeRateLimited)


@dataclass(frozen=True, slots=True)
class RetryConfig:
    max_attempts: int = 4
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 2.0
    total_timeout_s: float = 15.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryConfig:
        return cls(
            max_attempts=settings.tome_max_attempts,
            backoff_initial_s=settings.tome_backoff_initial_s,
            backoff_max_s=settings.tome_backoff_max_s,
            total_timeout_s=settings.tome_total_timeout_s,
        )


class _WaitRetryAfterOrJitter:
    """Full-jitter exponential backoff; after a 429 wait at least its ``Retry-After``."""

    def __init__(self, config: RetryConfig) -> None:
        self._backoff = wait_random_exponential(multiplier=config.backoff_initial_s, max=config.backoff_max_s)

    def __call__(self, retry_state: RetryCallState) -> float:
        backoff: float = self._backoff(retry_state)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, TomeRateLimited) and exc.retry_after_s is not None:
            return max(exc.retry_after_s, backoff)
        return backoff


def retrying(
    config: RetryConfig,
    *,
    sleep: Sleep | None = None,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """A tenacity loop: at most ``max_attempts`` tries, and no sleep that would end past the total timeout.

    ``stop_before_delay`` sees the upcoming sleep, so a ``Retry-After`` longer than the budget left
    ends the loop at once (the 429 is raised) instead of sleeping towards a certain failure.
    """
    kwargs = {"sleep": sleep} if sleep is not None else {}
    return AsyncRetrying(
        stop=stop_after_attempt(config.max_attempts) | stop_before_delay(config.total_timeout_s),
        wait=_WaitRetryAfterOrJitter(config),
        retry=retry_if_exception(is_retryable),
        before_sleep=before_sleep,
        reraise=True,
        **kwargs,  # type: ignore[arg-type]
    )
