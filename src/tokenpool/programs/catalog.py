"""The registered programs as one process of the service sees them: a cached snapshot of ``programs``.

Every card, reservation and pool request names a program, so the check must cost no database round trip on
the hot path, and a flood of unknown names must not cost one either:

* **Snapshot.** All registered programs, read in one statement (a handful of rows) and kept ``ttl_s``
  (``TOKENPOOL_SERVICE_PROGRAMS_TTL_S``). Once stale it is reread in the background while requests go on
  with the last one, so that no request queues behind the read; older than twice ``ttl_s`` (an instance
  that had no request for a while) the read is waited for. A removed program (or a changed namespace)
  thus reaches every instance within ``ttl_s`` when it is busy, ``2 x ttl_s`` at most. The very first
  read is waited for too.
* **A name not in the snapshot rereads it at once**, so a program added a moment ago works on its first
  request. Concurrent misses share one reread (joining one under way is free).
* **Bounded cost of unknown names.** Rereads caused by misses draw on a token bucket (``miss_reloads_per_s``,
  burst ``miss_reload_burst``): a flood of made-up names costs at most that many statements per second, not
  one per request; beyond it the snapshot answers. And a name a reread found unknown is refused without
  another reread for ``unknown_ttl_s`` (at most ``max_unknown`` names remembered, the oldest forgotten
  first), so one client hammering a typo does not use up the bucket that a just-added program needs.

No I/O here: ``load`` (an injected coroutine, ``ProgramStore.registered`` in the service) does the reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

from tokenpool.observability.logging import get_logger
from tokenpool.programs.errors import UnknownProgram
from tokenpool.programs.model import Program

log = get_logger("tokenpool.programs")

Loader = Callable[[], Awaitable[Sequence[Program]]]


class _Bucket:
    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class ProgramCatalog:
    def __init__(
        self, load: Loader, *, ttl_s: float, unknown_ttl_s: float, miss_reloads_per_s: float,
        miss_reload_burst: int = 5, max_unknown: int = 10_000, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._unknown_ttl_s = unknown_ttl_s
        self._max_unknown = max_unknown
        self._clock = clock
        self._bucket = _Bucket(miss_reloads_per_s, miss_reload_burst, clock())
        self._programs: dict[str, Program] = {}
        self._unknown: dict[str, float] = {}  # name -> refused without a reread until then
        self._loaded = False
        self._fresh_until = 0.0
        self._reading: asyncio.Future[None] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self.reads = 0  # statements sent, for tests and logs

    async def require(self, name: str) -> Program:
        """The registered program ``name``; raises :class:`UnknownProgram` otherwise."""
        program = await self.get(name)
        if program is None:
            raise UnknownProgram(name)
        return program

    async def get(self, name: str) -> Program | None:
        just_read = await self._fresh_enough()
        program = self._programs.get(name)
        if program is not None:
            return program
        if just_read:
            self._remember_unknown(name)
            return None
        now = self._clock()
        if self._unknown.get(name, 0.0) > now:
            return None
        reading = self._reading is not None and not self._reading.done()
        if not reading and not self._bucket.take(now):  # joining a read already under way costs nothing
            return None
        await self._read()
        program = self._programs.get(name)
        if program is None:
            self._remember_unknown(name)
        return program

    async def registered(self) -> list[Program]:
        """Every registered program, by name."""
        await self._fresh_enough()
        return sorted(self._programs.values(), key=lambda program: program.name)

    def invalidate(self) -> None:
        """The next request rereads (tests; a process that just changed ``programs`` itself)."""
        self._fresh_until = 0.0
        self._unknown.clear()

    async def _fresh_enough(self) -> bool:
        """Whether the snapshot was read for this call (then a miss needs no second read)."""
        now = self._clock()
        if not self._loaded or now >= self._fresh_until + self._ttl_s:
            await self._read()  # the first read, or a snapshot too old to answer with: a failure reaches the request
            return True
        if now >= self._fresh_until and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._refresh_quietly())
        return False

    async def _refresh_quietly(self) -> None:
        with contextlib.suppress(Exception):  # logged by _read_now; the last snapshot stays in use
            await self._read()

    async def _read(self) -> None:
        """One read of ``programs``, shared by everyone who asks while it runs."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read_now())
            # Retrieved here too: a reader cancelled meanwhile leaves nobody to see the error.
            self._reading.add_done_callback(lambda done: done.cancelled() or done.exception())
        # Shielded: a request that gives up (client gone, timeout) must not cancel the others' read.
        await asyncio.shield(self._reading)

    async def _read_now(self) -> None:
        self.reads += 1
        try:
            programs = await self._load()
        except Exception as exc:
            # Keep the last snapshot until the next attempt (one TTL later); a waiting request sees the error.
            self._fresh_until = self._clock() + self._ttl_s
            log.warning("programs.unreadable", error=f"{type(exc).__name__}: {exc}"[:300], kept=len(self._programs))
            raise
        self._programs = {program.name: program for program in programs if program.registered}
        self._loaded = True
        self._fresh_until = self._clock() + self._ttl_s

    def _remember_unknown(self, name: str) -> None:
        self._unknown.pop(name, None)
        while len(self._unknown) >= self._max_unknown:
            self._unknown.pop(next(iter(self._unknown)))
        self._unknown[name] = self._clock() + self._unknown_ttl_s
