"""Each service process hears of every API key change within milliseconds: PostgreSQL LISTEN/NOTIFY.

The api_keys trigger (migration 0012) sends ``pg_notify('tokenpool_api_keys', api_key_id)`` when a key is
revoked or changed, at commit. :class:`KeyChangeListener` keeps one connection of its own (outside the
pool: a LISTEN belongs to its session) and calls ``on_change(api_key_id)`` for each notification;
``on_change(None)`` means "anything may have changed": after every (re)connection, since notifications
sent while nobody listened are lost.

How long a revocation can go unheard, whatever happens to the connection: the listener sends a heartbeat
(``SELECT 1``) every ``heartbeat_s`` on the listening connection. A notification committed before a
heartbeat was sent reaches the client before that heartbeat's answer (one ordered stream), so once the
answer is in and the notifications before it are handled, every change committed before the heartbeat
was sent has been applied. :meth:`confirmed_within` tells the cache whether that moment is recent; when it
is not (connection killed, server gone, a silent network partition that TCP would take ~25 s to notice),
the cache falls back to a short TTL on its own. Reconnection backs off exponentially (0.1 s to 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from tokenpool.db.database import connection_kwargs
from tokenpool.db.hosts import primary_url
from tokenpool.db.queries import sql
from tokenpool.observability.logging import get_logger
from tokenpool.observability.metrics import API_KEY_LISTENER_DOWN, API_KEY_LISTENER_RECONNECTS
from tokenpool.settings import Settings

CHANNEL = "tokenpool_api_keys"
APPLICATION_NAME = "tokenpool-key-listener"
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0

log = get_logger("tokenpool.db.api_key_listener")

OnChange = Callable[[uuid.UUID | None], None]


class KeyChangeListener:
    def __init__(self, url: str, settings: Settings, on_change: OnChange, *, heartbeat_s: float) -> None:
        self._url = url
        self._settings = settings
        self._on_change = on_change
        self._heartbeat_s = heartbeat_s
        # A heartbeat that does not come back within this long ends the connection (then: reconnect).
        self._heartbeat_timeout_s = max(2.0, 4 * heartbeat_s)
        self._confirmed_at = -math.inf  # time.monotonic() at which the last answered heartbeat was sent
        self._task: asyncio.Task[None] | None = None
        self.connections = 0  # successful LISTENs so far (tests and logs)

    def start(self) -> None:
        if self._task is None:
            API_KEY_LISTENER_DOWN.set(1)  # until the first LISTEN
            self._task = asyncio.create_task(self._run(), name="api-key-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._confirmed_at = -math.inf
        API_KEY_LISTENER_DOWN.set(0)  # stopped on purpose: nothing to alert on

    def confirmed_within(self, seconds: float) -> bool:
        """True if every key change committed more than ``seconds`` ago has been handed to ``on_change``."""
        return time.monotonic() - self._confirmed_at <= seconds

    async def _run(self) -> None:
        backoff = BACKOFF_INITIAL_S
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the connection or the server went away; so may the next attempt
                self._confirmed_at = -math.inf
                API_KEY_LISTENER_DOWN.set(1)
                API_KEY_LISTENER_RECONNECTS.inc()
                log.warning("api_key_listener.lost", error_type=type(error).__name__, error=str(error)[:200],
                            retry_in_s=round(backoff, 2))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            else:
                backoff = BACKOFF_INITIAL_S

    async def _listen(self) -> None:
        kwargs: dict[str, Any] = connection_kwargs(self._settings, application_name=APPLICATION_NAME)
        conn = await psycopg.AsyncConnection.connect(primary_url(self._url), **kwargs)
        async with conn:
            await conn.execute(sql("api_keys_listen"))
            # Whatever changed while nobody listened was not announced to this process: forget it all.
            self._on_change(None)
            self.connections += 1
            API_KEY_LISTENER_DOWN.set(0)
            log.info("api_key_listener.listening", connections=self.connections)
            while True:
                sent = time.monotonic()
                async with asyncio.timeout(self._heartbeat_timeout_s):
                    await conn.execute(sql("api_keys_heartbeat"))
                # Notifications that arrived with the heartbeat wait in the connection's backlog: first these.
                async for notify in conn.notifies(timeout=0):
                    self._deliver(notify.payload)
                self._confirmed_at = sent
                async for notify in conn.notifies(timeout=self._heartbeat_s):
                    self._deliver(notify.payload)

    def _deliver(self, payload: str) -> None:
        try:
            api_key_id: uuid.UUID | None = uuid.UUID(payload)
        except ValueError:  # not ours to parse: forget everything rather than miss a revocation
            api_key_id = None
        log.debug("api_key_listener.changed", api_key_id=str(api_key_id))
        self._on_change(api_key_id)
