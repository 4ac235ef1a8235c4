"""What the service needs from TOME; ``tokenpool.tome.client`` provides it.

Errors: the client raises subclasses of :class:`tokenpool.tome.contract.TomeError`; the service
treats every one of them as "TOME could not help right now".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class TomePort(Protocol):
    async def issue(self, namespace: str, count: int, *, idempotency_key: str,
                    correlation_id: str | None = None) -> list[str]: ...

    async def tokenize(self, namespace: str, values: Sequence[str]) -> list[str]: ...

    async def detokenize(self, namespace: str, tokens: Sequence[str]) -> list[str | None]: ...

    def breaker_state(self) -> str: ...
