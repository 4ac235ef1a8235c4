"""The single-runner lease: one row per pool in ``refill_leases``, with a holder and an expiry.

A runner acquires the row (free, lapsed or already its own), renews it every third of its TTL while
it works, fences every batch load on it (``renew`` inside the load transaction) and deletes it at the
end. A runner killed without a goodbye simply stops renewing: the row lapses after its TTL.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from tokenpool.db.lease_store import LeaseStore
from tokenpool.db.types import Conn
from tokenpool.observability.logging import get_logger
from tokenpool.refill.model import LeaseHeld, LeaseLost

log = get_logger(__name__)


def new_holder_id() -> str:
    """``host:pid:uuid``: the host and pid tell an operator where to look; the uuid keeps two runs of
    one process (the worker, a warm Lambda) apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class RefillLease:
    def __init__(self, leases: LeaseStore, pool: str, holder: str, ttl_s: float) -> None:
        self.leases = leases
        self.pool = pool
        self.holder = holder
        self.ttl_s = ttl_s
        self.lost = asyncio.Event()

    async def acquire(self) -> None:
        """Raises :class:`LeaseHeld` naming the current holder when the lease is not free."""
        if await self.leases.acquire(self.pool, self.holder, self.ttl_s) is not None:
            return
        current = await self.leases.current(self.pool)
        if current is None:  # released between our two statements: try once more
            return await self.acquire()
        raise LeaseHeld(self.pool, current.holder, current.expires_at)

    async def renew(self, conn: Conn | None = None) -> None:
        """Extends the lease; raises :class:`LeaseLost` if someone else holds it now.

        Given ``conn``, runs in the caller's transaction: that is the fence of a batch load.
        """
        if not await self.leases.renew(self.pool, self.holder, self.ttl_s, conn):
            self.lost.set()
            raise LeaseLost(self.pool, self.holder)

    async def release(self) -> None:
        await self.leases.release(self.pool, self.holder)

    async def _heartbeat(self) -> None:
        interval = self.ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew()
            except LeaseLost:
                log.error("refill.lease_lost", pool=self.pool, holder=self.holder)
                return
            except Exception as exc:  # a database blip: the next beat may succeed before expiry
                log.warning("refill.lease_renew_failed", pool=self.pool, error=str(exc))

    @asynccontextmanager
    async def held(self) -> AsyncIterator[RefillLease]:
        """Acquire, renew in the background while the block runs, release at the end."""
        await self.acquire()
        beat = asyncio.create_task(self._heartbeat(), name=f"refill-lease-{self.pool}")
        try:
            yield self
        finally:
            beat.cancel()
            with suppress(asyncio.CancelledError):
                await beat
            try:
                # Shielded: a cancelled run (SIGTERM) still hands the lease back instead of making
                # the next runner wait out the TTL.
                await asyncio.shield(self.release())
            except Exception as exc:
                log.warning("refill.lease_release_failed", pool=self.pool, error=str(exc))
