"""What the refill job needs from TOME. ``tome_adapter.TomeRefillAdapter`` provides it over the real
client; ``budget.BudgetedTome`` wraps any implementation in the refill's request budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class RefillTome(Protocol):
    async def issue(self, namespace: str, count: int, *, idempotency_key: str) -> list[str]:
        """``count`` new tokens; the same key must replay the same tokens (crash recovery relies on it)."""
        ...

    async def tokenize(self, namespace: str, values: Sequence[str]) -> list[str]:
        """Deterministic: the same value always yields the same token (so a retry is safe)."""
        ...

    @property
    def requests_made(self) -> int:
        """HTTP attempts sent so far (for refill_runs.tome_requests)."""
        ...
