"""API keys on PostgreSQL: only each key's SHA-256 is stored (see tokenpool.service.auth for why SHA-256)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg.rows import class_row

from tokenpool.db.queries import sql
from tokenpool.db.types import Conn


@dataclass(frozen=True, slots=True)
class StoredKey:
    api_key_id: UUID
    name: str
    scopes: list[str]
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class KeyListing:
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    expired: bool | None  # on the database's clock; None: the key never expires


class ApiKeyStore:
    async def insert(self, conn: Conn, name: str, key_hash: bytes, scopes: list[str],
                     expires_in_s: float | None = None) -> StoredKey:
        """A new key; ``expires_in_s`` from now on the database's clock (None: it never expires)."""
        cursor = conn.cursor(row_factory=class_row(StoredKey))
        await cursor.execute(sql("api_key_insert"), {"name": name, "key_hash": key_hash, "scopes": scopes,
                                                     "expires_in_s": expires_in_s})
        row = await cursor.fetchone()
        assert row is not None
        return row

    async def touch(self, conn: Conn, api_key_id: UUID, min_interval_s: float) -> None:
        """Records a use of the key, unless one was recorded less than ``min_interval_s`` ago."""
        await conn.execute(sql("api_key_touch"), {"api_key_id": api_key_id, "min_interval_s": min_interval_s})

    async def revoke(self, conn: Conn, name: str) -> bool:
        return (await conn.execute(sql("api_key_revoke"), {"name": name})).rowcount > 0

    async def by_hash(self, conn: Conn, key_hash: bytes) -> StoredKey | None:
        cursor = conn.cursor(row_factory=class_row(StoredKey))
        await cursor.execute(sql("api_key_by_hash"), {"key_hash": key_hash})
        return await cursor.fetchone()

    async def list(self, conn: Conn) -> list[KeyListing]:
        cursor = conn.cursor(row_factory=class_row(KeyListing))
        await cursor.execute(sql("api_key_list"))
        return await cursor.fetchall()
