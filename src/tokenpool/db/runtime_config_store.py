"""Runtime settings (``runtime_config``): a handful of JSON values every instance rereads every few seconds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from tokenpool.db.queries import sql
from tokenpool.db.types import Conn


@dataclass(frozen=True, slots=True)
class _Setting:
    key: str
    value: Any


class RuntimeConfigStore:
    async def all(self, conn: Conn) -> dict[str, Any]:
        cursor = conn.cursor(row_factory=class_row(_Setting))
        await cursor.execute(sql("runtime_config_get"))
        return {row.key: row.value for row in await cursor.fetchall()}

    async def set(self, conn: Conn, key: str, value: Any) -> None:
        await conn.execute(sql("runtime_config_set"), {"key": key, "value": Jsonb(value)})

    async def unset(self, conn: Conn, key: str) -> None:
        await conn.execute(sql("runtime_config_unset"), {"key": key})
