"""The TOME journal on PostgreSQL: refill runs, batches (refill and service intents) and issued tokens.

The journal is what makes a token TOME issued impossible to lose (see tokenpool.issuance and
docs/refill.md): an intent is committed BEFORE TOME is asked, the issued tokens (sealed) BEFORE they are
tokenized, and the pairs are stored in the transaction that marks the batch done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.rows import class_row, dict_row

from tokenpool.db.database import Database
from tokenpool.db.pool_store import PostgresTokenPool
from tokenpool.db.queries import sql
from tokenpool.db.types import Conn
from tokenpool.db.vault_store import Vault, pending_token_aad
from tokenpool.pool.model import TokenPair

Fence = Callable[[Conn], Awaitable[None]]
"""Runs first in a batch's storing transaction and raises if the caller may no longer store (lease lost)."""


@dataclass(frozen=True, slots=True)
class UnfinishedBatch:
    batch_id: UUID
    count: int
    state: str  # 'intent' or 'issued'
    created_at: datetime
    ns1: str | None = None  # the namespaces it was journaled for; None: before migration 0010
    ns2: str | None = None


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: UUID
    pool: str
    trigger: str
    holder: str
    outcome: str
    error: str | None


@dataclass(frozen=True, slots=True)
class RunResultRecord:
    run_id: UUID
    target: int | None
    requested: int
    recovered: int
    added: int
    tome_requests: int
    outcome: str
    error: str | None


@dataclass(frozen=True, slots=True)
class _PendingToken:
    position: int
    token_ct: bytes


class JournalStore:
    def __init__(self, db: Database, pool_store: PostgresTokenPool, vault: Vault) -> None:
        self._db = db
        self._pool_store = pool_store
        self._vault = vault

    # --- Runs ------------------------------------------------------------------------------------------

    async def start_run(self, run: RunRecord) -> None:
        params = {"run_id": run.run_id, "pool": run.pool, "trigger": run.trigger, "holder": run.holder,
                  "outcome": run.outcome, "error": run.error}
        await self._execute("refill_run_start", params)

    async def finish_run(self, result: RunResultRecord) -> None:
        await self._execute("refill_run_finish", {
            "run_id": result.run_id, "target": result.target, "requested": result.requested,
            "recovered": result.recovered, "added": result.added, "tome_requests": result.tome_requests,
            "outcome": result.outcome, "error": result.error,
        })

    async def recent_runs(self, pool: str, limit: int = 10) -> list[dict[str, Any]]:
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(sql("refill_runs_recent"), {"pool": pool, "limit": limit})
            return await cursor.fetchall()

    async def last_success(self, pool: str) -> datetime | None:
        """When the pool's last successful run finished (any runner); while none succeeded, when its first
        run started; None when no run was ever recorded."""
        async with self._db.connection() as conn:
            row = await (await conn.execute(sql("refill_last_success"), {"pool": pool})).fetchone()
        at: datetime | None = row[0] if row else None
        return at

    # --- Batches -----------------------------------------------------------------------------------------

    async def record_intent(self, batch_id: UUID, pool: str, count: int, run_id: UUID, *, ns1: str | None = None,
                            ns2: str | None = None) -> None:
        """A refill batch, journaled before TOME is asked, with the namespaces it is issued and tokenized on."""
        await self._execute("refill_batch_intent", {"batch_id": batch_id, "pool": pool, "count": count,
                                                    "run_id": run_id, "ns1": ns1, "ns2": ns2})

    async def record_service_intent(self, intent_id: UUID, pool: str, *, ns1: str | None = None,
                                    ns2: str | None = None) -> None:
        """A request's single-pair TOME fallback, journaled before TOME is asked (its own short transaction)."""
        await self._execute("tome_fallback_intent", {"batch_id": intent_id, "pool": pool, "ns1": ns1, "ns2": ns2})

    async def unfinished(self, pool: str, service_grace_s: float) -> list[UnfinishedBatch]:
        """Unfinished batches; a service TOME-fallback intent only once older than ``service_grace_s``."""
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(UnfinishedBatch))
            await cursor.execute(sql("refill_batches_unfinished"), {"pool": pool, "service_grace_s": service_grace_s})
            return await cursor.fetchall()

    async def record_issued(self, batch_id: UUID, internal_tokens: Sequence[str]) -> None:
        """The tokens TOME issued for a batch, sealed, and the batch marked issued: one transaction."""
        await self._vault.ready()
        sealed = [self._vault.seal(token, pending_token_aad(batch_id, position))
                  for position, token in enumerate(internal_tokens, start=1)]
        async with self._db.transaction() as conn:
            await conn.execute(sql("refill_pending_tokens_insert"), {
                "batch_id": batch_id, "token_cts": [s.ciphertext for s in sealed],
                "key_versions": [s.key_version for s in sealed],
            })
            await conn.execute(sql("refill_batch_mark_issued"), {"batch_id": batch_id})

    async def pending_tokens(self, batch_id: UUID) -> list[str]:
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(_PendingToken))
            await cursor.execute(sql("refill_pending_tokens_get"), {"batch_id": batch_id})
            rows = await cursor.fetchall()
        return await self._vault.open_all([(row.token_ct, pending_token_aad(batch_id, row.position)) for row in rows])

    async def load_batch(self, pool: str, batch_id: UUID, run_id: UUID, pairs: Sequence[TokenPair],
                         fence: Fence) -> int:
        """Pairs into token_pool + pending rows deleted + batch done: one transaction.

        ``fence(conn)`` runs first in the same transaction (the lease renewal): if our lease was taken
        over it raises, and nothing of this batch is written by us (the new holder finishes it).
        A batch found done meanwhile (a service intent whose request stored its pair after all) adds 0.
        """
        async with self._db.transaction() as conn:
            await fence(conn)
            if await (await conn.execute(sql("refill_batch_lock_open"), {"batch_id": batch_id})).fetchone() is None:
                await conn.execute(sql("refill_pending_tokens_delete"), {"batch_id": batch_id})
                return 0
            added = await self._pool_store.copy_pairs(conn, pool, pairs, batch_id)
            await conn.execute(sql("refill_pending_tokens_delete"), {"batch_id": batch_id})
            await conn.execute(sql("refill_batch_mark_done"), {"batch_id": batch_id, "run_id": run_id, "added": added})
        return added

    async def close_intent(self, conn: Conn, intent_id: UUID, stored_by: UUID) -> bool:
        """Marks a service intent done in the caller's storing transaction; False when the refill took it first.

        Its row lock orders the request against a refill recovering the same intent (which locks the row
        before the pair too): whoever comes second finds the intent done.
        """
        params = {"batch_id": intent_id, "run_id": stored_by, "added": 1}
        if (await conn.execute(sql("refill_batch_mark_done"), params)).rowcount == 0:
            return False
        # A refill that began recovering this intent may have recorded its token, then died: nothing would
        # ever delete that row (done batches are not recovered), and it holds a sealed internal token.
        await conn.execute(sql("refill_pending_tokens_delete"), {"batch_id": intent_id})
        return True

    async def _execute(self, query: str, params: dict[str, Any]) -> None:
        async with self._db.connection() as conn:
            await conn.execute(sql(query), params)
