"""What pool monitoring keeps in PostgreSQL: consumption samples and, per alert channel, the health state
it last delivered."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg.rows import class_row

from tokenpool.db.database import Database
from tokenpool.db.queries import sql
from tokenpool.pool.model import SampleSpan


@dataclass(frozen=True, slots=True)
class AlertClaim:
    """A channel whose last delivered state differs from the pool's, claimed for one checker to tell it.

    ``previous_status``: what the channel last delivered (None: nothing yet). ``claimed`` is False for a
    channel recorded as told without a message (a healthy pool's first check).
    """

    channel: str
    previous_status: str | None
    claimed: bool


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

    async def claim_alerts(self, pool: str, status: str, channels: Sequence[str],
                           claim_s: float) -> list[AlertClaim]:
        """Claims, for ``claim_s`` seconds, the channels that must be told ``status``: exactly one of several
        concurrent checkers gets each."""
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(AlertClaim))
            await cursor.execute(sql("pool_alert_claim"), {"pool": pool, "status": status,
                                                           "channels": list(channels), "claim_s": claim_s})
            return await cursor.fetchall()

    async def finish_alerts(self, pool: str, status: str, channels: Sequence[str],
                            delivered: Sequence[str]) -> None:
        """Records ``status`` as delivered on ``delivered`` and releases the claims on ``channels``."""
        async with self._db.connection() as conn:
            await conn.execute(sql("pool_alert_finish"), {"pool": pool, "status": status,
                                                          "channels": list(channels), "delivered": list(delivered)})
