"""What pool monitoring keeps in PostgreSQL: consumption samples and the last alerted health state."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.rows import class_row

from tokenpool.db.database import Database
from tokenpool.db.queries import sql
from tokenpool.pool.model import SampleSpan


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """The health state changed; ``previous_status`` is None on a pool's first check."""

    previous_status: str | None


class MonitoringStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def sample(self, pool: str, consumed: int, available: int, min_interval_s: float) -> None:
        async with self._db.connection() as conn:
            await conn.execute(sql("pool_sample_insert"), {"pool": pool, "consumed": consumed, "available": available,
                                                           "min_interval_s": min_interval_s})

    async def sample_span(self, pool: str, window_s: float) -> SampleSpan | None:
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(SampleSpan))
            await cursor.execute(sql("pool_sample_span"), {"pool": pool, "window_s": window_s})
            return await cursor.fetchone()

    async def prune_samples(self, pool: str, keep_s: float) -> None:
        async with self._db.connection() as conn:
            await conn.execute(sql("pool_samples_prune"), {"pool": pool, "keep_s": keep_s})

    async def record_health(self, pool: str, status: str) -> AlertTransition | None:
        """Records the pool's health state; a transition only when it changed (exactly one concurrent checker
        gets it, so exactly one sends the alert)."""
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(AlertTransition))
            await cursor.execute(sql("pool_alert_transition"), {"pool": pool, "status": status})
            return await cursor.fetchone()
