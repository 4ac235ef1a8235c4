"""The refill's TOME budget: at most N requests per second and at most M in flight.

Why both: the rate cap keeps the refill from becoming the spike it exists to remove; the in-flight
cap bounds the concurrent load (and memory) when TOME slows down, which a rate alone does not.
The rate is aiolimiter's leaky bucket; the in-flight cap an asyncio.Semaphore.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from aiolimiter import AsyncLimiter

from tokenpool.issuance import PairTome

T = TypeVar("T")


class TomeBudget:
    def __init__(self, max_rps: float, max_in_flight: int) -> None:
        # A bucket of max(1, rps) requests per max(1, rps)/rps seconds: rps on average, bursts of at
        # most one second's worth (and at least one request, for rates below 1/s).
        capacity = max(1.0, max_rps)
        self._limiter = AsyncLimiter(capacity, capacity / max_rps)
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._in_flight, self._limiter:
            return await call()


class CountingTome(PairTome, Protocol):
    """A TOME that counts its HTTP attempts (for refill_runs.tome_requests): the client."""

    @property
    def requests_made(self) -> int: ...


class BudgetedTome:
    """A :class:`PairTome` whose calls each pass the budget first.

    One logical call counts once against the budget; the client's own retries of it (backoff,
    Retry-After) happen inside that slot, so they too are bounded by the in-flight cap.
    """

    def __init__(self, tome: CountingTome, budget: TomeBudget) -> None:
        self._tome = tome
        self._budget = budget

    @property
    def requests_made(self) -> int:
        return self._tome.requests_made

    async def issue(self, namespace: str, count: int, *, idempotency_key: str,
                    correlation_id: str | None = None) -> list[str]:
        return await self._budget.run(lambda: self._tome.issue(namespace, count, idempotency_key=idempotency_key,
                                                               correlation_id=correlation_id))

    async def tokenize(self, namespace: str, values: Sequence[str]) -> list[str]:
        return await self._budget.run(lambda: self._tome.tokenize(namespace, values))
