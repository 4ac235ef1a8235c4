"""The service's PostgreSQL connections: opened without waiting, and every use bounded in time.

Why not :func:`tokenpool.db.connection.open_pool`: it waits for the database, and the service must
start (and answer ``/healthz``, and ``/readyz`` with 503) while the database is down, then recover
by itself when it returns, without a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tokenpool.db.connection import connection_kwargs
from tokenpool.db.queries import sql
from tokenpool.observability.logging import get_logger
from tokenpool.settings import Settings

Conn = AsyncConnection[TupleRow]
ConnPool = AsyncConnectionPool[Conn]

# After this long without a successful reconnect the pool starts a fresh attempt on the next request
# (psycopg_pool backs off exponentially within an attempt): bounds recovery after a long outage.
RECONNECT_TIMEOUT_S = 10.0

log = get_logger("tokenpool.service.database")


class DatabaseUnavailable(Exception):
    code = "DATABASE_UNAVAILABLE"
    detail = "The database is unavailable; retry later."


class ServiceBusy(DatabaseUnavailable):
    """No pooled connection came free in time while every one was in use and working: overload, not outage.

    A subclass, so every fallback written for an outage (keep the last runtime config, leave a spare pair
    to the refill) still applies; only the answer's code and the log differ.
    """

    code = "SERVICE_BUSY"
    detail = "Every database connection is busy; retry shortly."


class CountingPool(AsyncConnectionPool[Conn]):
    """psycopg's pool, counting the connections handed out (``connection()`` goes through these two)."""

    in_use = 0

    async def getconn(self, timeout: float | None = None) -> Conn:  # noqa: ASYNC109 (psycopg's signature)
        conn = await super().getconn(timeout)
        self.in_use += 1
        return conn

    async def putconn(self, conn: Conn) -> None:
        self.in_use -= 1
        await super().putconn(conn)


class ServiceDatabase:
    def __init__(self, pool: CountingPool, timeout_s: float) -> None:
        self.pool = pool
        self._timeout_s = timeout_s
        self._check: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, settings: Settings) -> ServiceDatabase:
        pool = CountingPool(
            url,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
            timeout=settings.db_acquire_timeout_s,
            kwargs=connection_kwargs(settings),
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            open=False,
            name="tokenpool-service",
        )
        await pool.open(wait=False)
        return cls(pool, settings.service_db_timeout_s)

    async def close(self) -> None:
        if self._check is not None:
            self._check.cancel()
        await self.pool.close()

    @asynccontextmanager
    async def guard(self, timeout_s: float | None = None) -> AsyncIterator[None]:
        """Bounds the block in time and turns every database failure into DatabaseUnavailable.

        A timeout while every pooled connection is checked out is ServiceBusy: the database answers,
        this process has more requests than connections (a burst). A failed connect, or a broken
        connection with some left idle, is an outage. (A database that hangs every connection at once
        reads as busy; ``/readyz`` and the connection errors that follow tell the two apart.)
        """
        try:
            async with asyncio.timeout(timeout_s or self._timeout_s):
                yield
        except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as error:
            timed_out = isinstance(error, PoolTimeout | TimeoutError)
            if timed_out and self.pool.in_use >= self.pool.max_size:
                log.warning("database.busy", in_use=self.pool.in_use, error_type=type(error).__name__)
                raise ServiceBusy(type(error).__name__) from error
            self._check_pool_soon()
            log.warning("database.unavailable", error_type=type(error).__name__, error=str(error)[:200])
            raise DatabaseUnavailable(type(error).__name__) from error

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        async with self.guard(), self.pool.connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        async with self.guard(), self.pool.connection() as conn:
            yield conn

    async def ping(self, timeout_s: float) -> bool:
        """Reachable? A saturated pool counts as reachable: its connections are all at work."""
        try:
            async with self.guard(timeout_s), self.pool.connection(timeout=timeout_s) as conn:
                await conn.execute(sql("ping"))
        except ServiceBusy:
            return True
        except DatabaseUnavailable:
            return False
        return True

    def _check_pool_soon(self) -> None:
        # After an outage every idle pooled connection is dead; one check replaces them all at once,
        # instead of each failing one request before the pool notices.
        if self._check is None or self._check.done():
            self._check = asyncio.create_task(self.pool.check())
