"""Per-API-key rate limits (the ``limits`` library, its asyncio API): card creations, detokenized refs.

Over a limit the request is refused with ``429 RATE_LIMITED`` and ``Retry-After``: the seconds until the
key's window frees (at least 1). The open-reservation cap is not here: it is counted in the database, in
the claim statement itself (``TOKENPOOL_MAX_OPEN_RESERVATIONS``, queries.sql ``reserve``).

**Where the counters live.** By default in the process's memory: each process counts alone, so with N
processes (``--workers N``, several hosts) and no shared storage a key can do N times the setting. With
``TOKENPOOL_RATE_LIMIT_STORAGE_URL`` (Redis) every process counts in the same place.

**The shared storage failing fails open, to per-process limits.** A call that errors or takes longer than
``rate_limit_storage_timeout_s`` is counted in this process's memory instead, and so is every call for the
next ``rate_limit_storage_retry_s``; then the storage is tried again. A Redis outage must not stop card
issuance (payments), and counting alone still bounds a runaway client (at N x the limit). It is logged
(``rate_limit.shared_storage_failed``, once per failure spell), counted
(``tokenpool_rate_limit_storage_errors_total``) and visible (``tokenpool_rate_limit_shared`` 0).

**The strategy** (``TOKENPOOL_RATE_LIMIT_STRATEGY``, default ``fixed-window``): a counter per key and
window, incremented by the request's cost. It is the cheapest check on the hot card route: measured in
this process with the library's memory storage, about 10-17 µs of CPU a check, against 30-60 µs for the
moving window (whose memory storage sweeps expired entries through a thread hop per key), and O(1) memory
per key whatever the cost: a moving window keeps one entry per unit of cost, 20,000 per key for the refs
limit (in Redis too). Its price: a key can spend its whole limit at the end of one window and again at the
start of the next, up to twice the limit within one window's length. ``moving-window`` is exact (never
more than the limit in any window) and ``sliding-window-counter`` approximates it in O(1); both work with
either storage.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.storage import storage_from_string

from tokenpool.observability.logging import get_logger
from tokenpool.observability.metrics import RATE_LIMIT_SHARED, RATE_LIMIT_STORAGE_ERRORS, RATE_LIMITED
from tokenpool.service.auth import Principal
from tokenpool.service.problems import ProblemError
from tokenpool.settings import Settings

log = get_logger("tokenpool.service.rate_limits")


@dataclass(frozen=True, slots=True)
class _Limit:
    name: str  # the metric label and the counters' namespace
    item: RateLimitItem
    what: str  # for the problem's detail


def shared_storage_uri(url: str) -> str:
    """``redis://...`` as the limits library's asyncio storage spells it (``async+redis://...``)."""
    return url if url.startswith("async+") else "async+" + url


class RateLimits:
    def __init__(self, *, cards: str, detokenize_refs: str, strategy: str = "fixed-window",
                 shared: Storage | None = None, timeout_s: float = 0.25, retry_s: float = 5.0) -> None:
        self.cards_limit = _Limit("cards", parse(cards), "card creations")
        self.refs_limit = _Limit("detokenize_refs", parse(detokenize_refs), "detokenized refs")
        self._local = _limiter(strategy, MemoryStorage())
        self._shared_storage = shared
        self._shared = _limiter(strategy, shared) if shared is not None else None
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._shared_down_until = 0.0  # time.monotonic(); while in the future, count in-process
        self._shared_ok = True
        RATE_LIMIT_SHARED.set(1 if shared is not None else 0)

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        shared: Storage | None = None
        if settings.rate_limit_storage_url is not None:
            uri = shared_storage_uri(settings.rate_limit_storage_url.get_secret_value())
            options: dict[str, float | str | bool] = {"wrap_exceptions": True}
            if uri.startswith("async+redis"):
                # redis-py's asyncio client, not coredis (the library's default): with coredis a fixed window
                # is INCRBY then EXPIRE in two calls, and a timeout between the two would leave a counter that
                # never expires (the key locked out for good); redis-py's runs both in one Lua script.
                timeout = settings.rate_limit_storage_timeout_s
                options.update(implementation="redispy", key_prefix=settings.rate_limit_key_prefix,
                               socket_connect_timeout=timeout, socket_timeout=timeout)
            storage = storage_from_string(uri, **options)
            assert isinstance(storage, Storage), f"{uri} is not an asyncio storage"
            shared = storage
        return cls(cards=settings.rate_limit_cards, detokenize_refs=settings.rate_limit_detokenize_refs,
                   strategy=settings.rate_limit_strategy, shared=shared,
                   timeout_s=settings.rate_limit_storage_timeout_s, retry_s=settings.rate_limit_storage_retry_s)

    async def card(self, principal: Principal) -> None:
        """Counts one card creation of the key; 429 RATE_LIMITED when its limit is used up."""
        await self._take(self.cards_limit, principal, 1)

    async def detokenize_refs(self, principal: Principal, refs: int) -> None:
        """Counts ``refs`` detokenized refs of the key (all or none); 429 RATE_LIMITED when they do not fit."""
        await self._take(self.refs_limit, principal, max(1, refs))

    async def close(self) -> None:
        # The library has no close for its Redis client: close redis-py's client it holds (best effort).
        client = getattr(getattr(self._shared_storage, "bridge", None), "storage", None)
        aclose = getattr(client, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception as error:  # closing at shutdown: nothing left to protect
                log.debug("rate_limit.close_failed", error_type=type(error).__name__)

    async def _take(self, limit: _Limit, principal: Principal, cost: int) -> None:
        identifiers = (limit.name, str(principal.api_key_id))
        if cost > limit.item.amount:  # never fits, whatever the window holds
            RATE_LIMITED.labels(limit.name).inc()
            raise ProblemError(
                429, "RATE_LIMITED",
                f"This request alone needs {cost} of the key's {limit.item.amount} {limit.what} per "
                f"{_period(limit.item)}: send smaller requests.",
                headers={"Retry-After": str(math.ceil(limit.item.get_expiry()))},
            )
        allowed, reset_at = await self._hit(limit.item, identifiers, cost)
        if allowed:
            return
        RATE_LIMITED.labels(limit.name).inc()
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise ProblemError(
            429, "RATE_LIMITED",
            f"The API key's limit of {limit.item.amount} {limit.what} per {_period(limit.item)} is used up; "
            f"retry in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )

    async def _hit(self, item: RateLimitItem, identifiers: tuple[str, str], cost: int) -> tuple[bool, float]:
        """(allowed, when the window frees as a time.time()); counted in the shared storage when it answers."""
        if self._shared is not None and time.monotonic() >= self._shared_down_until:
            try:
                async with asyncio.timeout(self._timeout_s):
                    outcome = await _hit_with(self._shared, item, identifiers, cost)
            except Exception as error:  # anything: the storage's errors, a timeout, a broken connection
                self._shared_failed(error)
            else:
                if not self._shared_ok:
                    self._shared_ok = True
                    RATE_LIMIT_SHARED.set(1)
                    log.info("rate_limit.shared_storage_back")
                return outcome
        return await _hit_with(self._local, item, identifiers, cost)

    def _shared_failed(self, error: Exception) -> None:
        RATE_LIMIT_STORAGE_ERRORS.inc()
        RATE_LIMIT_SHARED.set(0)
        if self._shared_ok:  # once per failure spell, not once per request
            log.warning("rate_limit.shared_storage_failed", error_type=type(error).__name__,
                        error=str(error)[:200], counting="in-process", retry_every_s=self._retry_s)
        self._shared_ok = False
        self._shared_down_until = time.monotonic() + self._retry_s


def _limiter(strategy: str, storage: Storage) -> RateLimiter:
    if strategy == "moving-window":
        return MovingWindowRateLimiter(storage)
    if strategy == "sliding-window-counter":
        return SlidingWindowCounterRateLimiter(storage)
    if strategy == "fixed-window":
        return FixedWindowRateLimiter(storage)
    raise ValueError(f"unknown rate limit strategy {strategy!r}")


async def _hit_with(limiter: RateLimiter, item: RateLimitItem, identifiers: tuple[str, str],
                    cost: int) -> tuple[bool, float]:
    # A fixed window adds the cost before comparing, so a refused request would still count. For a
    # request of many refs, look first: a batch that does not fit is refused without spending what is
    # left of the window (a smaller one may still fit). A race between the look and the hit can still
    # count a refused batch; it only errs on the strict side. Cards (cost 1) skip the look: one call.
    if cost > 1 and not await limiter.test(item, *identifiers, cost=cost):
        stats = await limiter.get_window_stats(item, *identifiers)
        return False, stats.reset_time
    if await limiter.hit(item, *identifiers, cost=cost):
        return True, 0.0
    stats = await limiter.get_window_stats(item, *identifiers)
    return False, stats.reset_time


def _period(item: RateLimitItem) -> str:
    multiples = item.multiples
    name = item.GRANULARITY.name
    return name if multiples == 1 else f"{multiples} {name}s"
