"""API keys and scopes.

A key is ``tpk_`` + 43 URL-safe characters (256 random bits), shown once when created; only its
SHA-256 is stored. No slow hash (bcrypt, argon2) is needed: those protect guessable secrets against
offline guessing, and a 256-bit random key cannot be guessed, offline or not. A fast hash lets each
request check its key with one unique-index probe.

**Checks are cached in-process, and a revocation reaches every process within a second.** Each service
process listens for key changes (db/api_key_listener.py, PostgreSQL LISTEN/NOTIFY): a revocation drops the
key's cached check as soon as it commits. While the listener confirms it hears every change (a heartbeat
on its connection), a check is cached ``service_api_key_cache_ttl_s``; otherwise (listener down,
reconnecting, or not started) at most ``service_api_key_fallback_ttl_s`` (1 s), which is therefore the
longest a revoked key keeps working anywhere. A lookup that was in flight when a change arrived is not
cached (a generation counter), so it cannot put back what the change removed.

**Expiry**: a key may carry ``expires_at`` (``apikey create --expires-in 30d``); past it the key is refused
(401 ``API_KEY_EXPIRED``), checked on every request against the cached expiry, on this host's clock.

**Last use**: recorded at most once per ``service_api_key_last_used_interval_s`` (60 s) per key and
process, in the background: never a write per request, and never on the request's path.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from tokenpool import durations
from tokenpool.db.api_key_store import ApiKeyStore, StoredKey
from tokenpool.db.database import Database
from tokenpool.db.errors import UniqueViolation
from tokenpool.observability.logging import get_logger

KEY_PREFIX = "tpk_"

CARDS_WRITE = "cards:write"
CARDS_READ = "cards:read"
TOKENS_DETOKENIZE = "tokens:detokenize"
RESERVATIONS_WRITE = "reservations:write"
POOLS_READ = "pools:read"
METRICS_READ = "metrics:read"
SCOPES = frozenset({CARDS_WRITE, CARDS_READ, TOKENS_DETOKENIZE, RESERVATIONS_WRITE, POOLS_READ, METRICS_READ})

_CACHE_MAX_ENTRIES = 10_000

log = get_logger("tokenpool.service.auth")


class ApiKeyError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Principal:
    api_key_id: UUID
    name: str
    scopes: frozenset[str]
    expires_at: datetime | None = None

    def expired(self, now: float | None = None) -> bool:
        """Past its expiry (``now``: a time.time(); default: now)."""
        if self.expires_at is None:
            return False
        return (time.time() if now is None else now) >= self.expires_at.timestamp()


class ChangeFeed(Protocol):
    """What the cache needs of the key-change listener (db.api_key_listener.KeyChangeListener)."""

    def confirmed_within(self, seconds: float) -> bool: ...


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_scopes(text: str) -> list[str]:
    scopes = sorted({s.strip() for s in text.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ApiKeyError(f"unknown scope(s) {unknown}; known: {', '.join(sorted(SCOPES))}")
    return scopes


MAX_EXPIRES_IN_S = 3_650 * 86_400  # ten years; a key that should live longer needs no expiry


def parse_duration(text: str) -> int:
    """Whole seconds of a key's lifetime, ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a sum such as ``1d12h``
    (tokenpool.durations); at least one second and at most ten years. ApiKeyError says what is expected."""
    try:
        seconds = int(durations.parse_duration(text))
    except ValueError as error:
        raise ApiKeyError(str(error)) from None
    if seconds < 1:
        raise ApiKeyError(f"{text!r} is no time at all; expected {durations.EXPECTED}")
    if seconds > MAX_EXPIRES_IN_S:
        raise ApiKeyError(f"{text!r} is longer than ten years (3650d); omit --expires-in for a key that never expires")
    return seconds


def _principal(key: StoredKey) -> Principal:
    return Principal(key.api_key_id, key.name, frozenset(key.scopes), key.expires_at)


class ApiKeys:
    def __init__(self, db: Database, *, cache_ttl_s: float = 0.0, fallback_ttl_s: float = 1.0,
                 last_used_interval_s: float | None = None) -> None:
        """``cache_ttl_s`` 0: no cache. ``last_used_interval_s`` None: uses are not recorded (the CLI, tools)."""
        self._db = db
        self._store = ApiKeyStore()
        self._ttl = cache_ttl_s
        self._fallback_ttl = min(cache_ttl_s, fallback_ttl_s)
        self._fallback_bound = fallback_ttl_s
        self._feed: ChangeFeed | None = None
        # digest -> (time.monotonic() when its lookup started, the principal or None for an unknown key)
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}
        self._generation = 0  # bumped by every change heard: a lookup that spans one is not cached
        self._last_used_interval = last_used_interval_s
        self._last_noted: dict[UUID, float] = {}
        self._touches: set[asyncio.Task[None]] = set()

    def listen(self, feed: ChangeFeed) -> None:
        """Cache checks for ``cache_ttl_s`` while ``feed`` confirms it hears every key change."""
        self._feed = feed

    def forget(self, api_key_id: UUID | None) -> None:
        """A key changed (revoked, expiry moved ...): drop its cached checks; None: drop every one."""
        self._generation += 1
        if api_key_id is None:
            self._cache.clear()
            return
        for digest in [d for d, (_at, p) in self._cache.items() if p is not None and p.api_key_id == api_key_id]:
            del self._cache[digest]

    async def authenticate(self, key: str) -> Principal | None:
        """The unrevoked key's principal (check ``expired()``), or None. Unknown keys are cached too: a flood of
        bad keys stays off the database."""
        digest = key_hash(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and self._fresh(now - cached[0]):
            principal = cached[1]
        else:
            generation = self._generation
            async with self._db.connection() as conn:
                found = await self._store.by_hash(conn, digest)
            principal = _principal(found) if found else None
            if self._ttl > 0 and generation == self._generation:
                if len(self._cache) >= _CACHE_MAX_ENTRIES:
                    self._cache.clear()
                self._cache[digest] = (now, principal)
        if principal is not None and self._last_used_interval is not None and not principal.expired():
            self._note_use(principal.api_key_id, now)
        return principal

    def _fresh(self, age: float) -> bool:
        if age < self._fallback_ttl:
            return True
        return age < self._ttl and self._feed is not None and self._feed.confirmed_within(self._fallback_bound)

    def _note_use(self, api_key_id: UUID, now: float) -> None:
        assert self._last_used_interval is not None
        if now - self._last_noted.get(api_key_id, -math.inf) < self._last_used_interval:
            return
        self._last_noted[api_key_id] = now
        task = asyncio.create_task(self._touch(api_key_id, self._last_used_interval))
        self._touches.add(task)
        task.add_done_callback(self._touches.discard)

    async def _touch(self, api_key_id: UUID, interval_s: float) -> None:
        try:
            async with self._db.connection() as conn:
                await self._store.touch(conn, api_key_id, interval_s)
        except Exception as error:  # bookkeeping: a failure costs a stale "last used", never a request
            # Tried again one interval later, not on the next request: during a database outage a retry per
            # request would add a connection attempt to every request.
            log.warning("api_key.last_use_not_recorded", error_type=type(error).__name__)

    async def close(self) -> None:
        """Waits (briefly) for last-use writes in flight; called before the database closes."""
        if self._touches:
            await asyncio.wait(self._touches, timeout=2.0)

    async def create(self, name: str, scopes: Iterable[str], *,
                     expires_in_s: float | None = None) -> tuple[Principal, str]:
        """A new key; the clear key is returned once and never stored. ``expires_in_s``: from now, on the
        database's clock (None: never)."""
        if not name.strip():
            raise ApiKeyError("a key needs a name")
        if expires_in_s is not None and expires_in_s <= 0:
            raise ApiKeyError("a key's lifetime must be positive")
        key = new_key()
        try:
            async with self._db.connection() as conn:
                stored = await self._store.insert(conn, name, key_hash(key), list(scopes), expires_in_s)
        except UniqueViolation as error:
            raise ApiKeyError(f"a key named {name!r} exists (revoked keys keep their name)") from error
        return _principal(stored), key

    async def revoke(self, name: str) -> bool:
        async with self._db.connection() as conn:
            return await self._store.revoke(conn, name)

    async def list(self) -> list[dict[str, object]]:
        async with self._db.connection() as conn:
            keys = await self._store.list(conn)
        return [
            {"name": key.name, "scopes": list(key.scopes), "status": _status(key.revoked_at, key.expired),
             "created_at": _iso(key.created_at), "last_used_at": _iso(key.last_used_at),
             "expires_at": _iso(key.expires_at), "revoked_at": _iso(key.revoked_at)}
            for key in keys
        ]


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _status(revoked_at: datetime | None, expired: bool | None) -> str:
    if revoked_at is not None:
        return "revoked"
    return "expired" if expired else "live"
