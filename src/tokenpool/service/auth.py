"""API keys and scopes.

A key is ``tpk_`` + 43 URL-safe characters (256 random bits), shown once when created; only its
SHA-256 is stored. No slow hash (bcrypt, argon2) is needed: those protect guessable secrets against
offline guessing, and a 256-bit random key cannot be guessed, offline or not. A fast hash lets each
request check its key with one unique-index probe. Checks are cached in-process for
``service_api_key_cache_ttl_s`` seconds, which is therefore the longest a revoked key keeps working.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from uuid import UUID

from tokenpool.db.api_key_store import ApiKeyStore, StoredKey
from tokenpool.db.database import Database
from tokenpool.db.errors import UniqueViolation

KEY_PREFIX = "tpk_"

CARDS_WRITE = "cards:write"
CARDS_READ = "cards:read"
TOKENS_DETOKENIZE = "tokens:detokenize"
RESERVATIONS_WRITE = "reservations:write"
POOLS_READ = "pools:read"
METRICS_READ = "metrics:read"
SCOPES = frozenset({CARDS_WRITE, CARDS_READ, TOKENS_DETOKENIZE, RESERVATIONS_WRITE, POOLS_READ, METRICS_READ})

_CACHE_MAX_ENTRIES = 10_000


class ApiKeyError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Principal:
    api_key_id: UUID
    name: str
    scopes: frozenset[str]


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


def _principal(key: StoredKey) -> Principal:
    return Principal(key.api_key_id, key.name, frozenset(key.scopes))


class ApiKeys:
    def __init__(self, db: Database, *, cache_ttl_s: float = 0.0) -> None:
        self._db = db
        self._store = ApiKeyStore()
        self._ttl = cache_ttl_s
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}

    async def authenticate(self, key: str) -> Principal | None:
        """The live key's principal, or None. Unknown keys are cached too: a flood of bad keys stays off the DB."""
        digest = key_hash(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._db.connection() as conn:
            found = await self._store.by_hash(conn, digest)
        principal = _principal(found) if found else None
        if self._ttl > 0:
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[digest] = (now + self._ttl, principal)
        return principal

    async def create(self, name: str, scopes: list[str]) -> tuple[Principal, str]:
        """A new key; the clear key is returned once and never stored."""
        if not name.strip():
            raise ApiKeyError("a key needs a name")
        key = new_key()
        try:
            async with self._db.connection() as conn:
                stored = await self._store.insert(conn, name, key_hash(key), scopes)
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
            {"name": key.name, "scopes": list(key.scopes), "created_at": key.created_at.isoformat(),
             "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None}
            for key in keys
        ]
