"""The composition root: the one place that turns settings into concrete adapters.

Every entry point (CLI, API, worker, Lambda) starts here, so each stays a few lines long.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from tokenpool.db import migrate
from tokenpool.db.connection import open_pool
from tokenpool.db.embedded import start_embedded
from tokenpool.db.pool_store import PostgresTokenPool
from tokenpool.settings import Settings


def database_url(settings: Settings) -> str:
    """The configured PostgreSQL URL, or the embedded server's (started if it is not running)."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return start_embedded(settings.home)


def upgrade_database(settings: Settings) -> list[migrate.Migration]:
    return migrate.upgrade(database_url(settings))


@dataclass(frozen=True, slots=True)
class Database:
    url: str
    pool: AsyncConnectionPool[AsyncConnection[TupleRow]]
    store: PostgresTokenPool


@asynccontextmanager
async def open_database(settings: Settings, *, max_size: int | None = None) -> AsyncIterator[Database]:
    url = database_url(settings)
    pool = await open_pool(url, settings, max_size=max_size)
    try:
        yield Database(url, pool, PostgresTokenPool(pool))
    finally:
        await pool.close()
