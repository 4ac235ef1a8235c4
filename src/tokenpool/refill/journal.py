"""The refill job's tables: the batch journal, the run history and the consumption samples.

The batch journal is what makes a refill crash-safe (see docs/refill.md):

1. ``record_intent``   batch row (state ``intent``) committed BEFORE TOME is asked to issue;
2. ``record_issued``   the issued tokens (``refill_pending_tokens``) committed BEFORE tokenizing;
3. ``load_batch``      pairs COPY-loaded into ``token_pool``, pending rows deleted and the batch marked
                       ``done`` in ONE transaction, fenced on the refill lease.

A crash before (2) leaves an ``intent``: the next run issues again with the same Idempotency-Key and
TOME replays the same tokens. A crash between (2) and (3) leaves ``issued`` tokens: the next run
tokenizes (deterministic) and loads them. After (3) nothing is left to do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from tokenpool.db.pool_store import copy_pairs
from tokenpool.db.queries import sql
from tokenpool.pool.model import TokenPair
from tokenpool.refill.model import Outcome, RefillResult
from tokenpool.refill.plan import SampleSpan

Conn = AsyncConnection[TupleRow]


@dataclass(frozen=True, slots=True)
class UnfinishedBatch:
    batch_id: UUID
    count: int
    state: str  # 'intent' or 'issued'
    created_at: datetime


class RefillJournal:
    def __init__(self, db: AsyncConnectionPool[Conn]) -> None:
        self.db = db

    # --- Runs -------------------------------------------------------------------------------------------

    async def start_run(self, run_id: UUID, pool: str, trigger: str, holder: str,
                        outcome: Outcome = Outcome.RUNNING, error: str | None = None) -> None:
        params = {"run_id": run_id, "pool": pool, "trigger": trigger, "holder": holder,
                  "outcome": outcome.value, "error": error}
        await self._execute("refill_run_start", params)

    async def finish_run(self, result: RefillResult) -> None:
        await self._execute("refill_run_finish", {
            "run_id": result.run_id, "target": result.target, "requested": result.requested,
            "recovered": result.recovered, "added": result.added, "tome_requests": result.tome_requests,
            "outcome": result.outcome.value, "error": result.error,
        })

    async def recent_runs(self, pool: str, limit: int = 10) -> list[dict[str, Any]]:
        async with self.db.connection() as conn:
            cursor = await conn.execute(sql("refill_runs_recent"), {"pool": pool, "limit": limit})
            names = [column.name for column in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]

    # --- Batches ------------------------------------------------------------------------------------------

    async def record_intent(self, batch_id: UUID, pool: str, count: int, run_id: UUID) -> None:
        await self._execute("refill_batch_intent",
                            {"batch_id": batch_id, "pool": pool, "count": count, "run_id": run_id})

    async def unfinished(self, pool: str, service_grace_s: float) -> list[UnfinishedBatch]:
        """Unfinished batches; a service TOME-fallback intent only once older than ``service_grace_s``."""
        async with self.db.connection() as conn:
            params = {"pool": pool, "service_grace_s": service_grace_s}
            rows = await (await conn.execute(sql("refill_batches_unfinished"), params)).fetchall()
        return [UnfinishedBatch(row[0], int(row[1]), str(row[2]), row[3]) for row in rows]

    async def record_issued(self, batch_id: UUID, internal_tokens: Sequence[str]) -> None:
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute(sql("refill_pending_tokens_insert"),
                               {"batch_id": batch_id, "internal_tokens": list(internal_tokens)})
            await conn.execute(sql("refill_batch_mark_issued"), {"batch_id": batch_id})

    async def pending_tokens(self, batch_id: UUID) -> list[str]:
        async with self.db.connection() as conn:
            rows = await (await conn.execute(sql("refill_pending_tokens_get"), {"batch_id": batch_id})).fetchall()
        return [str(row[0]) for row in rows]

    async def load_batch(self, pool: str, batch_id: UUID, run_id: UUID, pairs: Sequence[TokenPair],
                         fence: Callable[[Conn], Awaitable[None]]) -> int:
        """Pairs into token_pool + pending rows deleted + batch done: one transaction.

        ``fence(conn)`` runs first in the same transaction (the lease renewal): if our lease was taken
        over it raises, and nothing of this batch is written by us (the new holder finishes it).
        A batch found done meanwhile (a service intent whose request stored its pair after all) adds 0.
        """
        async with self.db.connection() as conn, conn.transaction():
            await fence(conn)
            if await (await conn.execute(sql("refill_batch_lock_open"), {"batch_id": batch_id})).fetchone() is None:
                await conn.execute(sql("refill_pending_tokens_delete"), {"batch_id": batch_id})
                return 0
            added = await copy_pairs(conn, pool, pairs, batch_id)
            await conn.execute(sql("refill_pending_tokens_delete"), {"batch_id": batch_id})
            await conn.execute(sql("refill_batch_mark_done"), {"batch_id": batch_id, "run_id": run_id, "added": added})
        return added

    # --- Consumption samples ------------------------------------------------------------------------------

    async def sample(self, pool: str, consumed: int, available: int, min_interval_s: float) -> None:
        await self._execute("pool_sample_insert", {"pool": pool, "consumed": consumed, "available": available,
                                                   "min_interval_s": min_interval_s})

    async def sample_span(self, pool: str, window_s: float) -> SampleSpan | None:
        async with self.db.connection() as conn:
            row = await (await conn.execute(sql("pool_sample_span"), {"pool": pool, "window_s": window_s})).fetchone()
        if row is None:
            return None
        return SampleSpan(int(row[0]), int(row[1]), float(row[2]))

    async def prune_samples(self, pool: str, keep_s: float) -> None:
        await self._execute("pool_samples_prune", {"pool": pool, "keep_s": keep_s})

    async def _execute(self, query: str, params: dict[str, Any]) -> None:
        async with self.db.connection() as conn:
            await conn.execute(sql(query), params)
