"""The HTTP service running for real: uvicorn on a free port (in a thread), its own database, the emulator.

Test modules import the fixtures they use from here (``from tests.integration.api_harness import ...``).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from tests.factories import make_pairs
from tests.fixtures.database import OWNER_URLS
from tests.fixtures.tome import FAST_TOME_SETTINGS, TomeEmulator, free_port
from tokenpool.db.database import Database
from tokenpool.db.pool_store import PostgresTokenPool
from tokenpool.db.vault_store import Vault, VaultStore
from tokenpool.service.app import create_app
from tokenpool.service.auth import SCOPES, ApiKeys
from tokenpool.settings import Settings
from tokenpool.tome.client import TomeClient
from tokenpool.vault import key_provider_from_settings

POOL = "default"
HTTP_TIMEOUT = httpx.Timeout(15.0)


def service_settings(database_url: str, tome_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "tome_url": tome_url,
        **FAST_TOME_SETTINGS,
        "db_pool_max_size": 20,
        "db_acquire_timeout_s": 5.0,
        "service_db_timeout_s": 5.0,
        "service_runtime_config_ttl_s": 0.2,
        "service_api_key_cache_ttl_s": 0.2,
        "service_retry_after_s": 2,
        # Per-key limits far above any test's traffic (one key drives whole bursts); tests of the limits set theirs.
        "rate_limit_cards": "1000000/second",
        "rate_limit_detokenize_refs": "1000000000/minute",
        "max_open_reservations": 1_000_000,
    }
    values.update(overrides)
    return Settings(**values)


class ThreadedServer:
    """uvicorn serving one app from a background thread (its own event loop), over real TCP."""

    def __init__(self, settings: Settings, tome_factory: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self.port = free_port()
        self.app = app = create_app(
            settings, database_url=settings.database_url.get_secret_value(),  # type: ignore[union-attr]
            tome_factory=tome_factory or (lambda: TomeClient(settings)),
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
                                lifespan="on", timeout_graceful_shutdown=2, backlog=2048, proxy_headers=False,
                                timeout_keep_alive=round(settings.service_keep_alive_s))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the service did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Api:
    """A running service plus what tests need around it: keys, the pool, the database, the emulator."""

    url: str
    database_url: str
    db: Database
    vault: Vault
    store: PostgresTokenPool
    keys: ApiKeys
    tome: TomeEmulator
    server: ThreadedServer
    admin_database_url: str = ""  # the owner's URL, for the test's own setup and checks (sql)
    _tokens: dict[str, str] = field(default_factory=dict)

    async def key(self, *scopes: str) -> str:
        """A bearer key with these scopes (all scopes when none given), made once per scope set."""
        wanted = sorted(scopes or SCOPES)
        name = ",".join(wanted)
        if name not in self._tokens:
            _principal, key = await self.keys.create(f"test-{uuid.uuid4().hex[:8]}", wanted)
            self._tokens[name] = key
        return self._tokens[name]

    async def headers(self, *scopes: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.key(*scopes)}", **extra}

    @asynccontextmanager
    async def client(self, max_connections: int = 100) -> AsyncIterator[httpx.AsyncClient]:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        async with httpx.AsyncClient(base_url=self.url, timeout=HTTP_TIMEOUT, limits=limits) as client:
            yield client

    async def seed(self, n: int, pool: str = POOL) -> list[Any]:
        pairs = make_pairs(n)
        await self.store.add_pairs(pool, pairs, uuid.uuid4())
        return pairs

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """A statement of the test's own, as the owner role (the service runs as the app role)."""
        with psycopg.connect(self.admin_database_url or self.database_url, autocommit=True) as conn:
            cursor = conn.execute(query, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    async def status_of_token(self, internal_token: str) -> str | None:
        """The status of the pair holding ``internal_token`` (tokens are sealed: found through their refs)."""
        rows = self.sql("SELECT external_ref, status FROM token_pool")
        tokens = await self.store.lookup([ref for ref, _status in rows])
        return next((status for ref, status in rows if tokens.get(ref) == internal_token), None)

    def tome_requests(self) -> int:
        return sum(n for ops in self.tome.stats()["requests"].values() for n in ops.values())


@asynccontextmanager
async def running_api(database_url: str, tome: TomeEmulator, *, admin_database_url: str = "",
                      tome_factory: Callable[[Settings], Any] | None = None, **overrides: Any) -> AsyncIterator[Api]:
    """``database_url`` is the app role's (the service's); ``tome_factory(settings)`` replaces the service's
    TOME client (tests that wrap it)."""
    admin_database_url = admin_database_url or OWNER_URLS.get(database_url, "")
    settings = service_settings(database_url, tome.url, **overrides)
    # Not waiting for the database: some tests start the service while it is down.
    db = await Database.open(database_url, settings, min_size=1, max_size=4, bound_s=10.0)
    vault = Vault.unloaded(VaultStore(db, key_provider_from_settings(settings)))
    server = ThreadedServer(settings, None if tome_factory is None else lambda: tome_factory(settings))
    await asyncio.to_thread(server.start)
    try:
        yield Api(server.url, database_url, db, vault, PostgresTokenPool(db, vault), ApiKeys(db), tome, server,
                  admin_database_url)
    finally:
        await asyncio.to_thread(server.stop)
        await db.close()


@pytest.fixture
async def api(database_url: str, admin_database_url: str, tome: TomeEmulator) -> AsyncIterator[Api]:
    async with running_api(database_url, tome, admin_database_url=admin_database_url) as running:
        yield running


@pytest.fixture
def no_tome_requests(api: Api) -> Iterator[None]:
    """Asserts that the test sent TOME nothing."""
    before = api.tome_requests()
    yield
    assert api.tome_requests() == before, "TOME was called"
