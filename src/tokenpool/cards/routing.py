"""Canary routing of card creations between the pool and TOME.

The share is applied by error diffusion rather than by a coin toss: out of every 100 decisions,
exactly ``percent`` go to the pool, spread evenly (at 10 %: every tenth). Exact shares make TOME's
load in a rollout predictable and the routing testable without statistics; card creations carry no
affinity, so nothing is lost by not routing on a hash of the customer.
"""

from __future__ import annotations

from tokenpool.cards.model import TokenSource


class TrafficSplitter:
    """Not thread-safe; one per event loop (decisions are taken between awaits)."""

    def __init__(self) -> None:
        self._credit = 0

    def choose(self, pool_percent: int) -> TokenSource:
        if not 0 <= pool_percent <= 100:
            raise ValueError("pool_percent must be within 0..100")
        self._credit += pool_percent
        if self._credit >= 100:
            self._credit -= 100
            return TokenSource.POOL
        return TokenSource.TOME
