"""Connection pools with the timeouts every statement must carry (no request may hang on the database)."""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from tokenpool.settings import Settings


def connection_kwargs(settings: Settings) -> dict[str, object]:
    # statement_timeout bounds every statement; idle_in_transaction_session_timeout ends forgotten
    # transactions, whose snapshots would otherwise stop VACUUM from clearing dead claim entries.
    options = (
        f"-c statement_timeout={settings.db_statement_timeout_ms}"
        f" -c idle_in_transaction_session_timeout={settings.db_idle_in_transaction_timeout_ms}"
        " -c application_name=tokenpool"
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


async def open_pool(url: str, settings: Settings, *, min_size: int | None = None,
                    max_size: int | None = None) -> AsyncConnectionPool[AsyncConnection[TupleRow]]:
    pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
        url,
        min_size=min_size or settings.db_pool_min_size,
        max_size=max_size or settings.db_pool_max_size,
        timeout=settings.db_acquire_timeout_s,
        kwargs=connection_kwargs(settings),
        open=False,
        name="tokenpool",
    )
    await pool.open(wait=True, timeout=settings.db_connect_timeout_s)
    return pool
