"""The refill lease rows (``refill_leases``): one per pool, a holder and an expiry; no advisory lock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row

from tokenpool.db.database import Database
from tokenpool.db.queries import sql
from tokenpool.db.types import Conn


@dataclass(frozen=True, slots=True)
class LeaseRow:
    holder: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class _LeaseState:
    holder: str
    expires_at: datetime
    lapsed: bool


class LeaseStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def acquire(self, pool: str, holder: str, ttl_s: float) -> LeaseRow | None:
        """Ours now (None: another live holder has it; ``current`` says who)."""
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(LeaseRow))
            await cursor.execute(sql("refill_lease_acquire"), {"pool": pool, "holder": holder, "ttl_s": ttl_s})
            return await cursor.fetchone()

    async def current(self, pool: str) -> LeaseRow | None:
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(_LeaseState))
            await cursor.execute(sql("refill_lease_get"), {"pool": pool})
            row = await cursor.fetchone()
        return None if row is None else LeaseRow(row.holder, row.expires_at)

    async def renew(self, pool: str, holder: str, ttl_s: float, conn: Conn | None = None) -> bool:
        """Extends the lease while still ours; given ``conn``, inside the caller's transaction (a fence)."""
        params = {"pool": pool, "holder": holder, "ttl_s": ttl_s}
        if conn is not None:
            return await (await conn.execute(sql("refill_lease_renew"), params)).fetchone() is not None
        async with self._db.connection() as pooled:
            return await (await pooled.execute(sql("refill_lease_renew"), params)).fetchone() is not None

    async def release(self, pool: str, holder: str) -> None:
        async with self._db.connection() as conn:
            await conn.execute(sql("refill_lease_release"), {"pool": pool, "holder": holder})
