"""The TOME budget: requests per second and requests in flight, both capped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from tokenpool.refill.budget import BudgetedTome, TomeBudget


class SlowTome:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests_made = 0
        self.started: list[float] = []

    async def _call(self) -> None:
        self.started.append(time.monotonic())
        self.requests_made += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(self.delay_s)
        self.in_flight -= 1

    async def issue(self, namespace: str, count: int, *, idempotency_key: str,
                    correlation_id: str | None = None) -> list[str]:
        await self._call()
        return [f"{idempotency_key}-{i}" for i in range(count)]

    async def tokenize(self, namespace: str, values: Sequence[str]) -> list[str]:
        await self._call()
        return [f"ext-{value}" for value in values]


async def test_no_more_requests_are_in_flight_than_the_budget_allows():
    tome = SlowTome(delay_s=0.02)
    budgeted = BudgetedTome(tome, TomeBudget(max_rps=1_000, max_in_flight=3))
    await asyncio.gather(*(budgeted.tokenize("NS2", [str(i)]) for i in range(12)))
    assert tome.max_in_flight == 3
    assert budgeted.requests_made == 12


async def test_requests_per_second_are_capped():
    tome = SlowTome(delay_s=0)
    budgeted = BudgetedTome(tome, TomeBudget(max_rps=20, max_in_flight=10))
    started = time.monotonic()
    await asyncio.gather(*(budgeted.issue("NS1", 1, idempotency_key=str(i)) for i in range(30)))
    elapsed = time.monotonic() - started
    # A burst of one second's worth (20), then 20/s: the last 10 need about half a second more.
    assert elapsed >= 0.4
    assert sum(1 for t in tome.started if t - started < 0.2) <= 25  # burst 20 + 0.2 s x 20/s leaked
