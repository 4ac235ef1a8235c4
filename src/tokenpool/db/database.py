"""The PostgreSQL connection pool every entry point uses, and the one place driver errors become ours.

``Database.open`` does not wait for the server: the service must start (and answer ``/healthz``, and
``/readyz`` with 503) while the database is down, then recover by itself when it returns. Commands that
need the database at once (the CLI, the refill, the worker) pass ``wait=True``.

Every use goes through :meth:`Database.guard` (``connection()`` and ``transaction()`` do): it bounds the
block in time and turns psycopg's exceptions into :mod:`tokenpool.db.errors`.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tokenpool.db.errors import (
    DatabaseBusy,
    DatabaseError,
    DatabaseUnavailable,
    InsufficientPrivilege,
    InvalidValue,
    UniqueViolation,
)
from tokenpool.db.hosts import host_count, primary_url
from tokenpool.db.queries import sql
from tokenpool.db.retry import RetryPolicy, run_retrying
from tokenpool.db.types import Conn
from tokenpool.observability.logging import get_logger
from tokenpool.settings import Settings

# SQLSTATEs of a statement that lost to others on a live connection: query_canceled (statement_timeout),
# deadlock_detected, serialization_failure, lock_not_available. A shutdown (57P01) or a broken connection
# (08xxx, no SQLSTATE) is an outage.
_CONTENTION = frozenset({"57014", "40P01", "40001", "55P03"})

# After this long without a successful reconnect the pool starts a fresh attempt on the next request
# (psycopg_pool backs off exponentially within an attempt): bounds recovery after a long outage.
RECONNECT_TIMEOUT_S = 10.0

log = get_logger("tokenpool.db")

T = TypeVar("T")

# The end (time.monotonic()) of the current run_retrying: every attempt's guarded blocks end by then, so the
# retries of one request fit in its one bound (TOKENPOOL_SERVICE_DB_TIMEOUT_S), never more.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("tokenpool_db_deadline", default=None)

# read_only_sql_transaction: a write reached a server in recovery (a demoted primary, or a standby that a
# multi-host URL without target_session_attrs=read-write accepted). Every pooled connection is suspect.
_READ_ONLY = "25006"


def connection_kwargs(settings: Settings, application_name: str = "tokenpool") -> dict[str, object]:
    # statement_timeout bounds every statement; idle_in_transaction_session_timeout ends forgotten
    # transactions, whose snapshots would otherwise stop VACUUM from clearing dead claim entries.
    options = (
        f"-c statement_timeout={settings.db_statement_timeout_ms}"
        f" -c idle_in_transaction_session_timeout={settings.db_idle_in_transaction_timeout_ms}"
        f" -c application_name={application_name}"
    )
    return {
        "autocommit": True,
        "connect_timeout": max(1, round(settings.db_connect_timeout_s)),
        "options": options,
        # TCP keepalives: a connection to a host that vanished (partition, failover) is found dead in
        # ~25 s instead of the kernel's two hours. libpq ignores them on a Unix socket (embedded server).
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }


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


class Database:
    """A connection pool with time bounds; ``connections`` is the psycopg pool itself (for stores)."""

    def __init__(self, connections: CountingPool, timeout_s: float | None, retry_budget_s: float = 0.0) -> None:
        self.connections = connections
        self._timeout_s = timeout_s
        self._retry = RetryPolicy(retry_budget_s)
        self._check: asyncio.Task[None] | None = None
        self._drain: asyncio.Task[None] | None = None
        self._drained_at = -math.inf

    @classmethod
    async def open(
        cls, url: str, settings: Settings, *, wait: bool = False, min_size: int | None = None,
        max_size: int | None = None, check_on_checkout: bool = False, name: str = "tokenpool",
        bound_s: float | None = None,
    ) -> Database:
        """``check_on_checkout``: test each connection as it is handed out (a Lambda frozen for an hour
        comes back to connections the server or a NAT dropped meanwhile). ``bound_s``: the default time
        bound of one guarded block (None: only each statement's statement_timeout; the refill and the CLI
        run long bulk loads)."""
        connections = CountingPool(
            primary_url(url),
            min_size=min_size or settings.db_pool_min_size,
            max_size=max_size or settings.db_pool_max_size,
            timeout=settings.db_acquire_timeout_s,
            kwargs=connection_kwargs(settings),
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            check=AsyncConnectionPool.check_connection if check_on_checkout else None,
            open=False,
            name=name,
        )
        wait_s = settings.db_connect_timeout_s * host_count(url)
        try:
            if wait:
                # Each host of a multi-host URL may take the whole connect timeout (a failed primary that
                # drops packets) before the next is tried: wait for all of them.
                await connections.open(wait=True, timeout=wait_s)
            else:
                await connections.open(wait=False)
        except PoolTimeout as error:
            await connections.close()
            raise DatabaseUnavailable(f"could not connect within {wait_s} s") from error
        return cls(connections, bound_s, settings.db_retry_budget_s)

    async def close(self) -> None:
        for task in (self._check, self._drain):
            if task is not None:
                task.cancel()
        await self.connections.close()

    async def run_retrying(self, operation: Callable[[], Awaitable[T]], *, idempotent: bool, name: str) -> T:
        """Runs ``operation`` (a whole transaction, taking its own connection through this database) and runs
        it again after a retryable failure (tokenpool.db.retry), within ``db_retry_budget_s``.

        ``idempotent``: running it twice does no harm (a read; a write that replays), so a failure that may
        have committed is retried too; otherwise only failures known not to have committed are."""
        if self._timeout_s is None:  # the refill and the CLI: no request bound, only the retry budget
            return await run_retrying(operation, self._retry, idempotent=idempotent, name=name)
        # A request: all attempts within its one bound; no retry starts after min(budget, bound).
        policy = RetryPolicy(min(self._retry.budget_s, self._timeout_s), self._retry.max_attempts,
                             self._retry.base_s, self._retry.cap_s)
        token = _deadline.set(time.monotonic() + self._timeout_s) if _deadline.get() is None else None
        try:
            return await run_retrying(operation, policy, idempotent=idempotent, name=name)
        finally:
            if token is not None:
                _deadline.reset(token)

    def _bound(self, timeout_s: float | None) -> float | None:
        """A guarded block's time bound: its own (or the default), cut to what is left of run_retrying's."""
        bound = timeout_s or self._timeout_s
        deadline = _deadline.get()
        if deadline is None:
            return bound
        left = max(0.001, deadline - time.monotonic())
        return left if bound is None else min(bound, left)

    @asynccontextmanager
    async def guard(self, timeout_s: float | None = None) -> AsyncIterator[None]:
        """Bounds the block in time and turns every driver failure into a :mod:`tokenpool.db.errors` error.

        A timeout while the database is still answering other requests (a connection came back healthy
        within the bound) is DatabaseBusy: overload, e.g. a burst with more requests than connections, or
        a slow statement. A timeout with nothing answered for the whole bound (a hung or partitioned
        database), a failed connect, a broken connection, or a pool wait with connections left to open
        (the pool cannot open them) is an outage.
        """
        try:
            async with asyncio.timeout(self._bound(timeout_s)):  # None: no bound but the statements' own
                yield
        except Exception as error:
            translated = self.translate(error)
            if translated is None:
                raise
            raise translated from error

    def translate(self, error: BaseException) -> DatabaseError | None:
        """The project's error for a driver failure (or a timeout of a guarded block); None: not ours."""
        if isinstance(error, psycopg.Error) and error.sqlstate == _READ_ONLY:
            # Connected to a server that cannot write: after a failover, every pooled connection may lead
            # to the demoted primary. Replace them all; the new ones find the primary (target_session_attrs).
            self._drain_pool_soon()
            log.warning("database.read_only", error_type=type(error).__name__)
            return DatabaseUnavailable("ReadOnlySqlTransaction")
        if isinstance(error, psycopg.OperationalError) and error.sqlstate in _CONTENTION:
            # The server answered with an error on a live connection (statement timeout, deadlock, lock
            # timeout, serialization failure): contention, not an outage; the pool needs no check.
            log.warning("database.busy", sqlstate=error.sqlstate, error_type=type(error).__name__)
            return DatabaseBusy(type(error).__name__)
        if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError | TimeoutError):
            if self._busy(error):
                log.warning("database.busy", in_use=self.connections.in_use, error_type=type(error).__name__)
                return DatabaseBusy(type(error).__name__)
            if not isinstance(error, TimeoutError | PoolTimeout):
                self._check_pool_soon()  # broken connections: replace the idle ones at once
            log.warning("database.unavailable", error_type=type(error).__name__, error=str(error)[:200])
            return DatabaseUnavailable(type(error).__name__)
        if isinstance(error, pg_errors.InsufficientPrivilege):
            return InsufficientPrivilege(str(error).splitlines()[0][:200])
        if isinstance(error, pg_errors.UniqueViolation):
            return UniqueViolation(error.diag.constraint_name)
        if isinstance(error, pg_errors.DataError):
            # A value PostgreSQL cannot store (e.g. a NUL character in text): the caller's input, not an outage.
            return InvalidValue(str(error).splitlines()[0][:200])
        if isinstance(error, psycopg.Error):
            first_line = str(error).splitlines()[0][:200] if str(error) else ""
            return DatabaseError(f"{type(error).__name__}: {first_line}")
        return None

    def _busy(self, error: Exception) -> bool:
        if not self.connections.answered_within(self._timeout_s or 5.0):
            return False
        if isinstance(error, PoolTimeout):
            return self.connections.in_use >= self.connections.max_size
        return isinstance(error, TimeoutError)

    @asynccontextmanager
    async def transaction(self, timeout_s: float | None = None) -> AsyncIterator[Conn]:
        async with self.guard(timeout_s), self.connections.connection() as conn, conn.transaction():
            yield conn

    def connection(self, timeout_s: float | None = None) -> GuardedConnection:
        """A pooled connection for one guarded block (autocommit: each statement is its own transaction)."""
        return GuardedConnection(self, self._bound(timeout_s))

    async def ping(self, timeout_s: float) -> bool:
        """Reachable? A saturated pool counts as reachable: its connections are all at work."""
        try:
            async with self.guard(timeout_s), self.connections.connection(timeout=timeout_s) as conn:
                await conn.execute(sql("ping"))
        except DatabaseBusy:
            return True
        except DatabaseUnavailable:
            return False
        return True

    def _drain_pool_soon(self) -> None:
        # At most once a second: with a single-host URL to the demoted primary every new connection is
        # read-only as well, and draining on each request would only churn connections.
        now = time.monotonic()
        if (self._drain is None or self._drain.done()) and now - self._drained_at >= 1.0:
            self._drained_at = now
            self._drain = asyncio.create_task(self.connections.drain())

    def _check_pool_soon(self) -> None:
        # After an outage every idle pooled connection is dead; one check replaces them all at once,
        # instead of each failing one request before the pool notices.
        if self._check is None or self._check.done():
            self._check = asyncio.create_task(self.connections.check())


class GuardedConnection:
    """``Database.connection()``: ``guard()`` and a pooled connection in one context manager.

    Why a class and not two nested ``asynccontextmanager`` generators plus the pool's own: this is on
    every request's path, and it saves about a tenth of a card creation's CPU (measured with py-spy under
    wrk, docs/benchmarks.md). The pool's ``connection()`` also commits on exit, which in autocommit mode
    only takes a lock; ``putconn`` rolls back a connection left inside a transaction all the same.
    """

    __slots__ = ("_conn", "_db", "_limit_s", "_timeout")

    def __init__(self, db: Database, limit_s: float | None) -> None:
        self._db = db
        self._limit_s = limit_s
        self._conn: Conn | None = None
        self._timeout: asyncio.Timeout | None = None

    async def __aenter__(self) -> Conn:
        self._timeout = asyncio.timeout(self._limit_s)
        await self._timeout.__aenter__()
        try:
            self._conn = await self._db.connections.getconn()
        except BaseException as error:
            raised = await self._leave(error)
            if raised is None or raised is error:
                raise
            raise raised from error
        return self._conn

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await self._db.connections.putconn(conn)
            except BaseException as returning:  # the bound expired (or a cancellation) while it went back
                error = error or returning
        raised = await self._leave(error)
        if raised is not None and raised is not error:
            raise raised from error  # None or the same error: it propagates as it is

    async def _leave(self, error: BaseException | None) -> BaseException | None:
        """Leaves the time bound; the exception the block ends with (translated), or None."""
        assert self._timeout is not None
        try:
            await self._timeout.__aexit__(type(error) if error else None, error, None)
        except TimeoutError as timed_out:  # the bound expired: asyncio turned our cancellation into this
            error = timed_out
        if error is None:
            return None
        return self._db.translate(error) or error
