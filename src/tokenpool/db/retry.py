"""Which database failures a whole transaction may be retried after, and a bounded retry of one.

What psycopg sees in a failover (docs/runbook.md, "Failover"): the statement in flight fails with an
``OperationalError`` without SQLSTATE or with 57P01 (admin shutdown); reconnects fail without SQLSTATE until
the new primary answers; a connection still open to the demoted primary gets 25006 on its first write.

Two kinds of retryable failure:

* **not committed**: the transaction certainly did nothing. The connect failed, the server refused it
  (57P03), it lost to another (40001, 40P01: PostgreSQL rolled it back), it wrote to a read-only server
  (25006), or the connection was known closed before the statement was sent. Always safe to run again.
* **ambiguous**: the connection went away after the statement (or its COMMIT) was sent, and the server may
  have committed it: of inserts that failed mid-commit in a failover, about half had committed. 57P01/57P02
  count here too: a backend terminated while waiting for its synchronous standby has committed locally.
  Safe to run again only if running it twice does no harm (a read; a write that replays, e.g. a card under
  an Idempotency-Key).

Everything else is not retried: constraint violations, data errors (22xxx), SQL errors (42xxx), and a
statement timeout (57014): that is overload, and a retry would only add load (it stays SERVICE_BUSY).
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg

from tokenpool.observability.logging import get_logger
from tokenpool.observability.metrics import DB_RETRIES

log = get_logger("tokenpool.db.retry")

T = TypeVar("T")

# SQLSTATE -> the reason a retry is counted under, for the known-not-committed ones.
_NOT_COMMITTED = {
    "40001": "serialization_failure",
    "40P01": "deadlock",
    "25006": "read_only",  # we are on a demoted primary (or a standby): the pool must reconnect
    "57P03": "cannot_connect_now",
}
_AMBIGUOUS = {"57P01": "admin_shutdown", "57P02": "crash_shutdown"}

# psycopg's messages of a connection found closed before anything was sent, and of a failed connect.
_NOT_SENT_PREFIXES = ("the connection is closed", "the connection is lost", "connection failed",
                      "connection is bad")


class Outcome(enum.Enum):
    NOT_RETRYABLE = "not_retryable"
    NOT_COMMITTED = "not_committed"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True, slots=True)
class Classification:
    outcome: Outcome
    reason: str  # the metric label: a SQLSTATE's name, "connect", "connection_lost", or "other"

    @property
    def retryable(self) -> bool:
        return self.outcome is not Outcome.NOT_RETRYABLE


NOT_RETRYABLE = Classification(Outcome.NOT_RETRYABLE, "other")


def driver_error(error: BaseException) -> psycopg.Error | None:
    """The psycopg error behind ``error`` (itself, or a cause of a translated :mod:`tokenpool.db.errors` one)."""
    seen: BaseException | None = error
    for _ in range(5):  # a short chain: ours -> psycopg's
        if seen is None:
            return None
        if isinstance(seen, psycopg.Error):
            return seen
        seen = seen.__cause__
    return None


def classify(error: BaseException) -> Classification:
    """Whether a transaction that failed with ``error`` may run again, and whether it may have committed.

    Pure: looks at the exception (and its ``__cause__``, for our translated errors) only."""
    cause = driver_error(error)
    if cause is None:
        return NOT_RETRYABLE
    sqlstate = cause.sqlstate
    if sqlstate in _NOT_COMMITTED:
        return Classification(Outcome.NOT_COMMITTED, _NOT_COMMITTED[sqlstate])
    if sqlstate in _AMBIGUOUS:
        return Classification(Outcome.AMBIGUOUS, _AMBIGUOUS[sqlstate])
    if not isinstance(cause, psycopg.OperationalError):
        return NOT_RETRYABLE
    if sqlstate is None or sqlstate.startswith("08"):
        if isinstance(cause, psycopg.errors.ConnectionTimeout) or str(cause).startswith(_NOT_SENT_PREFIXES):
            return Classification(Outcome.NOT_COMMITTED, "connect")
        return Classification(Outcome.AMBIGUOUS, "connection_lost")
    return NOT_RETRYABLE


def may_retry(classification: Classification, *, idempotent: bool) -> bool:
    """Known not committed: always. Ambiguous: only when running the transaction twice does no harm."""
    if classification.outcome is Outcome.NOT_COMMITTED:
        return True
    return classification.outcome is Outcome.AMBIGUOUS and idempotent


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``budget_s``: no retry starts after this long since the first attempt (each attempt keeps its own
    bound); ``max_attempts``: attempts in all; backoff: full jitter in [0, min(cap, base * 2^n)]."""

    budget_s: float
    max_attempts: int = 5
    base_s: float = 0.05
    cap_s: float = 1.0

    def backoff_s(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        return rng() * min(self.cap_s, self.base_s * 2.0 ** retry)


async def run_retrying(
    operation: Callable[[], Awaitable[T]], policy: RetryPolicy, *, idempotent: bool, name: str,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Runs ``operation`` (a whole transaction: it takes its own connection) and again after a retryable
    failure, within ``policy``. The last failure is raised as it came (e.g. ``DatabaseUnavailable``, which the
    API answers with 503 and Retry-After)."""
    started = clock()
    attempt = 1
    while True:
        try:
            return await operation()
        except Exception as error:
            classification = classify(error)
            if not may_retry(classification, idempotent=idempotent):
                raise
            pause = policy.backoff_s(attempt - 1)
            if attempt >= policy.max_attempts or clock() - started + pause > policy.budget_s:
                log.warning("database.retry_budget_spent", operation=name, attempts=attempt,
                            reason=classification.reason)
                raise
            DB_RETRIES.labels(name, classification.reason).inc()
            log.info("database.retry", operation=name, attempt=attempt, reason=classification.reason,
                     outcome=classification.outcome.value, pause_s=round(pause, 3))
        await sleep(pause)
        attempt += 1
