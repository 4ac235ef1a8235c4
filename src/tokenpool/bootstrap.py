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


# --- service (issue 5) ---

from typing import TYPE_CHECKING  # noqa: E402  (appended section; the header imports are not mine)

if TYPE_CHECKING:  # fastapi is imported only when the service is built: the CLI starts faster without it
    from fastapi import FastAPI


def create_service_app(settings: Settings) -> FastAPI:
    """The HTTP service (``tokenpool serve``) wired to the configured database and TOME."""
    from tokenpool.service.app import create_app  # deferred: see TYPE_CHECKING above
    from tokenpool.tome.client import TomeClient

    if not settings.tome_url:
        raise ValueError("the service needs TOKENPOOL_TOME_URL (the TOME base URL)")
    return create_app(settings, database_url=database_url(settings), tome_factory=lambda: TomeClient(settings))


# --- refill (issue 4) ---
# Imports here, not at the top: this section is appended to a file shared by several owners.
from tokenpool.db.connection import connection_kwargs  # noqa: E402
from tokenpool.refill.job import RefillDeps  # noqa: E402
from tokenpool.refill.tome_adapter import TomeRefillAdapter  # noqa: E402
from tokenpool.tome.client import TomeClient  # noqa: E402


@asynccontextmanager
async def open_refill(settings: Settings, *, max_size: int = 6) -> AsyncIterator[RefillDeps]:
    """Database + TOME client + the refill adapter, for the refill CLI and the worker."""
    if not settings.tome_url:
        raise ValueError("TOKENPOOL_TOME_URL is not set: the refill job needs TOME (or its emulator)")
    async with open_database(settings, max_size=max_size) as db:
        client = TomeClient(settings)
        try:
            yield RefillDeps(settings, db.pool, db.store, TomeRefillAdapter(client))
        finally:
            await client.aclose()


async def open_refill_for_lambda(settings: Settings) -> tuple[RefillDeps, TomeClient]:
    """Long-lived resources for a Lambda container (closed only when the container dies).

    The pool checks each connection as it hands it out: between invocations Lambda freezes the
    process for minutes or hours, and a connection the server or a NAT timed out meanwhile must be
    replaced, not used.
    """
    if not settings.tome_url:
        raise ValueError("TOKENPOOL_TOME_URL is not set: the refill job needs TOME")
    pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
        database_url(settings), min_size=1, max_size=3, timeout=settings.db_acquire_timeout_s,
        kwargs=connection_kwargs(settings), check=AsyncConnectionPool.check_connection, open=False,
        name="tokenpool-lambda",
    )
    await pool.open(wait=True, timeout=settings.db_connect_timeout_s)
    client = TomeClient(settings)
    return RefillDeps(settings, pool, PostgresTokenPool(pool), TomeRefillAdapter(client)), client
