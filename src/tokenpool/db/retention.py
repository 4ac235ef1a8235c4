"""Retention: delete the bookkeeping rows nobody needs any more; and the bloat watch.

Pruned, after ``retention_*`` (see docs/pool.md, "Retention and bloat"): card Idempotency-Keys, detokenize
audit rows, finished refill runs and done refill batches. Never ``token_pool`` (its USED pairs answer
detokenize; AVAILABLE, RESERVED and EXPIRED pairs are live or quarantined), never an unfinished refill
batch (the crash-safety journal), never a refill lease. ``pool_level_samples`` are pruned by the refill.

Deletes run in chunks of ``retention_chunk_size`` rows, each its own short transaction on a pooled
connection, so a prune holds few row locks at a time and never a snapshot across chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from tokenpool.db.database import Database
from tokenpool.db.queries import sql
from tokenpool.observability.logging import get_logger
from tokenpool.observability.masking import mask_text
from tokenpool.observability.metrics import DB_OLDEST_TRANSACTION, ROWS_PRUNED
from tokenpool.settings import Settings

log = get_logger(__name__)


def retention_policy(settings: Settings) -> dict[str, timedelta]:
    """How long each prunable table keeps a row, in the order they are pruned. Each table has a
    ``retention_count_<table>`` and a ``retention_delete_<table>`` statement in queries.sql."""
    return {
        "idempotency_keys": timedelta(days=settings.retention_idempotency_keys_days),
        "detokenize_audit": timedelta(days=settings.retention_detokenize_audit_days),
        "refill_runs": timedelta(days=settings.retention_refill_runs_days),
        # A batch id was sent to TOME as an Idempotency-Key: its journal row, the record of what that key
        # stood for, stays at least as long as TOME may still replay the key.
        "refill_batches": max(
            timedelta(days=settings.retention_refill_batches_days),
            timedelta(seconds=settings.refill_idempotency_retention_s),
        ),
    }


@dataclass(slots=True)
class TablePrune:
    """One table's part of a prune: rows deleted (on a dry run: that would be), DELETE statements run."""

    table: str
    keep: timedelta
    cutoff: datetime
    rows: int = 0
    chunks: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "chunks": self.chunks, "keep_days": self.keep / timedelta(days=1),
                "cutoff": self.cutoff.isoformat(), "error": self.error}


@dataclass(frozen=True, slots=True)
class PruneReport:
    dry_run: bool
    tables: tuple[TablePrune, ...]

    @property
    def counts(self) -> dict[str, int]:
        return {table.table: table.rows for table in self.tables}

    @property
    def ok(self) -> bool:
        return all(table.error is None for table in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "ok": self.ok,
                "tables": {table.table: table.as_dict() for table in self.tables}}


async def delete_in_chunks(delete_chunk: Callable[[], Awaitable[int]], chunk_size: int,
                           stop: asyncio.Event | None = None) -> tuple[int, int]:
    """Runs ``delete_chunk`` until one deletes fewer than ``chunk_size`` rows, or ``stop`` is set
    (checked between chunks: a stopping worker does not wait for a long backlog). Returns (rows, chunks)."""
    rows = chunks = 0
    while stop is None or not stop.is_set():
        deleted = await delete_chunk()
        rows += deleted
        chunks += 1
        if deleted < chunk_size:
            break
    return rows, chunks


async def prune(db: Database, settings: Settings, *, dry_run: bool = False,
                stop: asyncio.Event | None = None) -> PruneReport:
    """Deletes every row past its retention (``dry_run``: counts them, deletes nothing).

    A table that fails is logged and carries its ``error`` in the report; the other tables are pruned
    all the same. Raises only when the database cannot be reached at all.
    """
    now = await _database_now(db)
    results: list[TablePrune] = []
    for table, keep in retention_policy(settings).items():
        if stop is not None and stop.is_set():
            break
        result = TablePrune(table, keep, now - keep)
        try:
            if dry_run:
                result.rows = await _count(db, table, result.cutoff)
            else:
                chunk = partial(_delete_chunk, db, table, result.cutoff, settings.retention_chunk_size)
                result.rows, result.chunks = await delete_in_chunks(chunk, settings.retention_chunk_size, stop)
        except Exception as exc:  # one table's failure must not keep the others past their retention
            result.error = mask_text(f"{type(exc).__name__}: {exc}")
            log.warning("retention.failed", table=table, rows=result.rows, error=result.error)
        else:
            log.info("retention.counted" if dry_run else "retention.pruned", table=table, rows=result.rows,
                     chunks=result.chunks, keep_days=round(keep / timedelta(days=1), 3))
        results.append(result)
    return PruneReport(dry_run, tuple(results))


async def _database_now(db: Database) -> datetime:
    async with db.connection() as conn:
        row = await (await conn.execute(sql("retention_now"))).fetchone()
    if row is None:
        raise RuntimeError("SELECT now() returned no row")
    now: datetime = row[0]
    return now


async def _count(db: Database, table: str, cutoff: datetime) -> int:
    async with db.connection() as conn:
        row = await (await conn.execute(sql(f"retention_count_{table}"), {"cutoff": cutoff})).fetchone()
    return int(row[0]) if row else 0


async def _delete_chunk(db: Database, table: str, cutoff: datetime, limit: int) -> int:
    # A connection per chunk, in autocommit: the chunk is one short transaction, and the pool is not
    # held away from the refill or the janitor for the length of a long backlog.
    async with db.connection() as conn:
        cursor = await conn.execute(sql(f"retention_delete_{table}"), {"cutoff": cutoff, "limit": limit})
        # A prune function (detokenize_audit's, which also moves the chain's watermark) returns its count.
        row = await cursor.fetchone() if cursor.description else None
    deleted = int(row[0]) if row else max(cursor.rowcount, 0)
    if deleted > 0:
        ROWS_PRUNED.labels(table=table).inc(deleted)  # per chunk: an interrupted prune still counts
    return deleted


async def oldest_transaction_age_s(db: Database) -> float:
    """Seconds since the oldest open transaction in the database (other than ours) began; 0 when none."""
    async with db.connection() as conn:
        row = await (await conn.execute(sql("db_oldest_transaction_age"))).fetchone()
    return float(row[0]) if row else 0.0


async def publish_oldest_transaction_age(db: Database) -> float:
    """Reads :func:`oldest_transaction_age_s` into ``tokenpool_db_oldest_transaction_seconds``; returns it."""
    age = await oldest_transaction_age_s(db)
    DB_OLDEST_TRANSACTION.set(age)
    return age
