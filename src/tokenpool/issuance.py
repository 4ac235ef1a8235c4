"""Token pairs from TOME, journaled so that no token TOME issued is ever lost: the one protocol behind the
refill's batches and the service's single-pair fallback.

1. ``intend``      the batch is journaled BEFORE TOME is asked; its id becomes the issue's Idempotency-Key;
2. ``issue``       NS1 issues the internal tokens (a replay with the same key returns the same tokens);
3. ``tokenize``    NS2 gives each its external reference ID (deterministic: safe to repeat);
4. store + close   the caller stores the pairs in the transaction that marks the batch done
                   (``JournalStore.load_batch`` for the refill, ``close`` for a request);
5. ``recover``     a batch left unfinished by a crash: an intent is issued again with its key, an issued
                   batch's tokens are read back from the journal.

The refill also records the issued tokens (sealed) before tokenizing, so a crash between 2 and 4 costs no
second issue; a request's single pair does not (its intent suffices: the refill replays the issue).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from tokenpool.db.journal_store import JournalStore, UnfinishedBatch
from tokenpool.db.types import Conn
from tokenpool.pool.model import TokenPair


class PairTome(Protocol):
    """The two TOME calls a pair needs (the client, or the refill's budgeted view of it)."""

    async def issue(self, namespace: str, count: int, *, idempotency_key: str,
                    correlation_id: str | None = None) -> list[str]: ...

    async def tokenize(self, namespace: str, values: Sequence[str]) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class JournaledPair:
    pair: TokenPair
    intent_id: UUID


class PairReclaimed(Exception):
    """The refill recovered this intent's pair into the pool first: the request outlived the grace.

    Nothing is lost (the pair is AVAILABLE in the pool) and nothing was stored by the request.
    """

    code = "TOME_PAIR_RECLAIMED"
    detail = "This request outlived the TOME-fallback grace and its pair went to the pool; nothing was stored. Retry."

    def __init__(self, intent_id: UUID) -> None:
        super().__init__(f"intent {intent_id} was recovered by the refill")
        self.intent_id = intent_id


class TomePairs:
    """Pairs of one program: issued on its NS1, tokenized on its NS2 (``on`` gives another program's view)."""

    def __init__(self, tome: PairTome, journal: JournalStore, ns1: str, ns2: str) -> None:
        self._tome = tome
        self._journal = journal
        self._ns1 = ns1
        self._ns2 = ns2

    @property
    def namespaces(self) -> tuple[str, str]:
        return self._ns1, self._ns2

    def on(self, ns1: str, ns2: str) -> TomePairs:
        """The same TOME and journal, on these namespaces (a program's own)."""
        if (ns1, ns2) == (self._ns1, self._ns2):
            return self
        return TomePairs(self._tome, self._journal, ns1, ns2)

    async def issue(self, batch_id: UUID, count: int, *, correlation_id: str | None = None) -> list[str]:
        """NS1 tokens for a journaled batch; the batch id is the Idempotency-Key (one TOME request).

        ``correlation_id`` None: the request's own, bound in the log context, goes to TOME."""
        return await self._tome.issue(self._ns1, count, idempotency_key=str(batch_id), correlation_id=correlation_id)

    async def tokenize(self, tokens: Sequence[str]) -> list[TokenPair]:
        refs = await self._tome.tokenize(self._ns2, tokens)
        return [TokenPair(token, ref) for token, ref in zip(tokens, refs, strict=True)]

    async def one_pair(self, pool: str) -> JournaledPair:
        """A single journaled pair for a request (pool empty, or routed to TOME).

        Raises :class:`tokenpool.tome.contract.TomeError` when TOME cannot help, and a database error
        (before any TOME call) when the intent cannot be journaled.
        """
        intent_id = uuid.uuid4()
        await self._journal.record_service_intent(intent_id, pool, ns1=self._ns1, ns2=self._ns2)
        pairs = await self.tokenize(await self.issue(intent_id, 1))
        return JournaledPair(pairs[0], intent_id)

    async def close(self, conn: Conn, journaled: JournaledPair, stored_by: UUID) -> None:
        """Marks a request's intent done, first in the transaction that stores its pair.

        Raises :class:`PairReclaimed` when the refill recovered it first (storing the pair anyway would
        break its unique constraint).
        """
        if not await self._journal.close_intent(conn, journaled.intent_id, stored_by):
            raise PairReclaimed(journaled.intent_id)

    async def recover(self, batch: UnfinishedBatch) -> list[TokenPair]:
        """The pairs of a batch an earlier run or request left unfinished, ready to load: on the namespaces it
        was journaled for (a replayed Idempotency-Key means something only there), else on these."""
        pairs = self.on(batch.ns1 or self._ns1, batch.ns2 or self._ns2)
        if batch.state == "intent":
            tokens = await pairs.issue(batch.batch_id, batch.count, correlation_id=f"refill-{batch.batch_id}")
            await self._journal.record_issued(batch.batch_id, tokens)
        else:
            tokens = await self._journal.pending_tokens(batch.batch_id)
        return await pairs.tokenize(tokens)
