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


@dataclass(frozen=True, slots=True)
class KeyListing:
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyStore:
    async def insert(self, conn: Conn, name: str, key_hash: bytes, scopes: list[str]) -> StoredKey:
        cursor = conn.cursor(row_factory=class_row(StoredKey))
        await cursor.execute(sql("api_key_insert"), {"name": name, "key_hash": key_hash, "scopes": scopes})
        row = await cursor.fetchone()
        assert row is not None
        return row

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
