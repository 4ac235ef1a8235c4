"""The service's PostgreSQL connections: opened without waiting, and every use bounded in time.

Why not :func:`tokenpool.db.connection.open_pool`: it waits for the database, and the service must
start (and answer ``/healthz``, and ``/readyz`` with 503) while the database is down, then recover
by itself when it returns, without a restart.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
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
    """A timeout while the database still answers other requests: overload (or a slow statement), not outage.

    A subclass, so every fallback written for an outage (keep the last runtime config, leave a spare pair
    to the refill) still applies; only the answer's code and the log differ.
    """

    code = "SERVICE_BUSY"
    detail = "Every database connection is busy; retry shortly."


class CountingPool(AsyncConnectionPool[Conn]):
    """psycopg's pool, counting the connections handed out and noting when one last came back healthy.

    ``connection()`` goes through ``getconn``/``putconn``. A connection returned idle (its work done, no
    transaction open) is proof the database answered; one returned mid-statement (a timeout cancelled
    its request) is not.
    """

    in_use = 0
    last_healthy_return = -math.inf  # time.monotonic()

    async def getconn(self, timeout: float | None = None) -> Conn:  # noqa: ASYNC109 (psycopg's signature)
        conn = await super().getconn(timeout)
        self.in_use += 1
        return conn

    async def putconn(self, conn: Conn) -> None:
        self.in_use -= 1
        if not conn.closed and conn.info.transaction_status is TransactionStatus.IDLE:
            self.last_healthy_return = time.monotonic()
        await super().putconn(conn)

    def answered_within(self, seconds: float) -> bool:
        return time.monotonic() - self.last_healthy_return <= seconds


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

        A timeout while the database is still answering other requests (a connection came back healthy
        within the bound) is ServiceBusy: overload, e.g. a burst with more requests than connections, or
        a slow statement. A timeout with nothing answered for the whole bound (a hung or partitioned
        database), a failed connect, a broken connection, or a pool wait with connections left to open
        (the pool cannot open them) is an outage.
        """
        limit_s = timeout_s or self._timeout_s
        try:
            async with asyncio.timeout(limit_s):
                yield
        except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as error:
            if self._busy(error):
                log.warning("database.busy", in_use=self.pool.in_use, error_type=type(error).__name__)
                raise ServiceBusy(type(error).__name__) from error
            if not isinstance(error, TimeoutError | PoolTimeout):
                self._check_pool_soon()  # broken connections: replace the idle ones at once
            log.warning("database.unavailable", error_type=type(error).__name__, error=str(error)[:200])
            raise DatabaseUnavailable(type(error).__name__) from error

    def _busy(self, error: Exception) -> bool:
        if not self.pool.answered_within(self._timeout_s):
            return False
        if isinstance(error, PoolTimeout):
            return self.pool.in_use >= self.pool.max_size
        return isinstance(error, TimeoutError)

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
