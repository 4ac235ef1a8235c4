"""Settings changed at run time without a restart: rows of ``runtime_config``, reread every few seconds.

Today one: ``pool_traffic_percent`` (the canary share), set for every program with
``tokenpool config set pool-traffic-percent N`` and for one with ``... --program P`` (stored as
``pool_traffic_percent:P``; a program's own value wins over the shared one). The environment variable
``TOKENPOOL_POOL_TRAFFIC_PERCENT`` is the default when neither row exists. Why a table rather than a
signal: every instance of the service (and every worker process) sees the same value within the
cache TTL, and the current value is visible to anyone who can read the database.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tokenpool.db.database import Database
from tokenpool.db.errors import DatabaseUnavailable
from tokenpool.db.runtime_config_store import RuntimeConfigStore
from tokenpool.observability.logging import get_logger
from tokenpool.observability.metrics import POOL_TRAFFIC_PERCENT

POOL_TRAFFIC_PERCENT_KEY = "pool_traffic_percent"

# CLI names (kebab-case) -> stored keys, with the check each value must pass.
KNOWN_KEYS = {"pool-traffic-percent": POOL_TRAFFIC_PERCENT_KEY}

log = get_logger("tokenpool.service.runtime_config")


def traffic_key(program: str | None) -> str:
    """The runtime_config key of the canary share: one program's, or (None) every program's."""
    return POOL_TRAFFIC_PERCENT_KEY if program is None else f"{POOL_TRAFFIC_PERCENT_KEY}:{program}"


def parse_percent(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if 0 <= number <= 100 else None


class RuntimeConfig:
    def __init__(self, db: Database, *, default_percent: int, ttl_s: float) -> None:
        self._db = db
        self._store = RuntimeConfigStore()
        self._default_percent = default_percent
        self._ttl_s = ttl_s
        self._values: dict[str, Any] = {}
        self._fresh_until = 0.0
        self._lock = asyncio.Lock()
        self._loaded = False
        self._refreshing: asyncio.Task[None] | None = None

    async def pool_traffic_percent(self, program: str) -> int:
        """The share of ``program``'s card creations served from the pool: its own value, else the shared
        one, else the environment default."""
        await self._refresh_if_stale()
        percent = parse_percent(self._values.get(traffic_key(program)))
        if percent is None:
            percent = parse_percent(self._values.get(POOL_TRAFFIC_PERCENT_KEY))
        result = self._default_percent if percent is None else percent
        POOL_TRAFFIC_PERCENT.labels(program).set(result)
        return result

    async def _refresh_if_stale(self) -> None:
        if time.monotonic() < self._fresh_until:
            return
        if not self._loaded:
            async with self._lock:  # the very first read waits; later ones never do
                if not self._loaded:
                    await self._refresh()
            return
        # Stale: refresh in the background and answer with the last value meanwhile, so that no request
        # queues behind the refresh (under load it may wait for a connection like any other query).
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            async with self._db.connection() as conn:
                self._values = await self._store.all(conn)
        except DatabaseUnavailable:
            # Keep the last known values; the request itself meets the outage on its own query.
            log.warning("runtime_config.unreadable", kept=self._values)
        self._loaded = True
        self._fresh_until = time.monotonic() + self._ttl_s


async def write(db: Database, key: str, value: Any | None) -> None:
    """Sets (or, with None, removes) one runtime setting."""
    async with db.connection() as conn:
        if value is None:
            await RuntimeConfigStore().unset(conn, key)
        else:
            await RuntimeConfigStore().set(conn, key, value)


async def read_all(db: Database) -> dict[str, Any]:
    async with db.connection() as conn:
        return await RuntimeConfigStore().all(conn)
