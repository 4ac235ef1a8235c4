"""The refill job's view of :class:`tokenpool.tome.client.TomeClient`.

The refill journal needs the issue's Idempotency-Key to be *its* batch id, durable before the call,
so that the next run can ask again with the same key and get the same tokens after a crash. The
adapter passes it on and keeps each call to one TOME request (one batch), which is what the budget
and the journal count.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenpool.tome.client import TomeClient


class TomeRefillAdapter:
    def __init__(self, client: TomeClient) -> None:
        self.client = client

    @property
    def requests_made(self) -> int:
        return self.client.requests_made

    async def issue(self, namespace: str, count: int, *, idempotency_key: str) -> list[str]:
        if count > self.client.batch_size:
            # Over the batch size the client would split the call and derive per-part keys; one journal
            # batch must stay one TOME request with exactly its own key.
            raise ValueError(f"one issue call holds at most {self.client.batch_size} tokens, not {count}")
        return await self.client.issue(
            namespace, count, idempotency_key=idempotency_key, correlation_id=f"refill-{idempotency_key}"
        )

    async def tokenize(self, namespace: str, values: Sequence[str]) -> list[str]:
        return await self.client.tokenize(namespace, values)
