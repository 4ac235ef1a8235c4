"""The one name for a PostgreSQL connection and for a pool of them, as every store sees them."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

Conn = AsyncConnection[Any]
"""A connection; a store method that takes one runs inside its caller's transaction (if any)."""

ConnectionPool = AsyncConnectionPool[Conn]
"""A psycopg connection pool. Called ``connections`` in code: "pool" is a card program's token pool."""
