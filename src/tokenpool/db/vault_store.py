"""The vault's keys in PostgreSQL, and the associated data that binds each ciphertext to its row.

``vault_keys`` holds the data keys (one row per version; the newest is the primary, used by new writes)
and the digest key, each wrapped by the key provider's key-encryption key: the database never holds a
clear key. The first process to need the keys creates them; concurrent first starts insert with
``ON CONFLICT DO NOTHING`` and all read back the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import class_row

from tokenpool.db.database import Database
from tokenpool.db.errors import DatabaseUnavailable, InsufficientPrivilege
from tokenpool.db.hosts import primary_url
from tokenpool.db.queries import sql
from tokenpool.db.types import Conn
from tokenpool.observability.logging import get_logger
from tokenpool.vault import DataKey, KeyProvider, KeyProviderError, Keyring, UnknownKeyVersion, associated_data

log = get_logger(__name__)

DATA = "data"
DIGEST = "digest"


def pool_token_aad(pool: str, external_ref: str) -> bytes:
    """A pair's ciphertext is bound to its pool and its external reference (both never change)."""
    return associated_data("token_pool", pool, external_ref)


def pool_token_aads(pool: str) -> Callable[[str], bytes]:
    """``pool_token_aad(pool, ref)`` for many refs of one pool: the pool's part is framed once (bulk loads)."""
    prefix = associated_data("token_pool", pool)
    length = struct.Struct(">I").pack

    def aad(external_ref: str) -> bytes:
        encoded = external_ref.encode()
        return prefix + length(len(encoded)) + encoded

    return aad


def learned_token_aad(external_ref: str) -> bytes:
    return associated_data("learned_pairs", external_ref)


def pending_token_aad(batch_id: UUID | str, position: int) -> bytes:
    return associated_data("refill_pending_tokens", str(batch_id), position)


@dataclass(frozen=True, slots=True)
class WrappedKey:
    purpose: str
    version: int
    wrapped: bytes
    kek_id: str


@dataclass(frozen=True, slots=True)
class VersionCount:
    table_name: str
    key_version: int
    rows: int


def keyring_from(keys: Iterable[WrappedKey], unwrap: Callable[[WrappedKey], bytes],
                 previous: Keyring | None = None) -> Keyring:
    """``previous``: the keyring this one replaces (a reload), whose encryption counts per data key go on:
    they are the nonce budget, and must not restart at every reload."""
    data = [DataKey(key.version, unwrap(key)) for key in keys if key.purpose == DATA]
    digest = [key for key in keys if key.purpose == DIGEST]
    if not data or not digest:
        raise LookupError("the vault has no keys yet")
    if previous is not None:
        return previous.with_data_keys(data)  # the digest key never changes
    return Keyring(data, unwrap(digest[0]))


def _first_keys(provider: KeyProvider) -> list[dict[str, Any]]:
    rows = []
    for purpose in (DIGEST, DATA):
        _clear, wrapped = provider.generate_key()
        rows.append({"purpose": purpose, "version": 1, "wrapped": wrapped, "kek_id": provider.kek_id})
    return rows


def load_keyring_sync(conn: psycopg.Connection[Any], provider: KeyProvider) -> Keyring:
    """For migrations (synchronous): the keyring, created on first use."""
    for attempt in range(2):
        with conn.cursor(row_factory=class_row(WrappedKey)) as cursor:
            keys = cursor.execute(sql("vault_keys_get")).fetchall()
        if keys or attempt:
            return keyring_from(keys, lambda key: provider.unwrap(bytes(key.wrapped)))
        conn.cursor().executemany(sql("vault_key_insert"), _first_keys(provider))
    raise AssertionError("unreachable")


def ensure_keys(url: str, provider: KeyProvider) -> None:
    """Creates the vault's first keys if the database has none (``db upgrade``, as the owner: the
    application's role then only reads them)."""
    with psycopg.connect(primary_url(url), autocommit=True) as conn:
        load_keyring_sync(conn, provider)


class VaultStore:
    def __init__(self, db: Database, provider: KeyProvider) -> None:
        self._db = db
        self._provider = provider
        # Unwrapped keys by (purpose, version, wrapping): a reload unwraps only keys it has not seen (a KMS
        # Decrypt is a network call), and a re-wrapped key is unwrapped again.
        self._unwrapped: dict[tuple[str, int, bytes], bytes] = {}

    @property
    def kek_id(self) -> str:
        return self._provider.kek_id

    def rotate_kek(self) -> str:
        """A new key-encryption key at the provider; :meth:`rewrap` then moves the stored keys to it."""
        return self._provider.rotate_kek()

    async def keys(self) -> list[WrappedKey]:
        async with self._db.connection() as conn:
            return await _keys(conn)

    async def keyring(self, previous: Keyring | None = None) -> Keyring:
        """The keyring (unwrapped keys in this process's memory only), created on first use; ``previous``:
        the one it replaces (see :func:`keyring_from`)."""
        keys = await self.keys()
        if not keys:
            try:
                async with self._db.transaction() as conn:
                    for row in _first_keys(self._provider):
                        await conn.execute(sql("vault_key_insert"), row)
            except InsufficientPrivilege as error:
                raise KeyProviderError("the database holds no vault keys yet and this role may not create them: "
                                       "run `tokenpool db upgrade` (as the owner role)") from error
            keys = await self.keys()
        missing = [key for key in keys if _cache_key(key) not in self._unwrapped]
        if missing:  # off the event loop: a KMS call blocks for tens of milliseconds
            clear = await asyncio.to_thread(lambda: [self._provider.unwrap(bytes(key.wrapped)) for key in missing])
            self._unwrapped.update(zip(map(_cache_key, missing), clear, strict=True))
        return keyring_from(keys, lambda key: self._unwrapped[_cache_key(key)], previous)

    async def rotate(self) -> int:
        """A new data-key version, primary for new writes from now on (in every process once it reloads)."""
        await self.keyring()  # the first keys exist
        _clear, wrapped = self._provider.generate_key()
        async with self._db.connection() as conn:
            cursor = await conn.execute(sql("vault_data_key_next"),
                                        {"wrapped": wrapped, "kek_id": self._provider.kek_id})
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async def rewrap(self) -> int:
        """Every stored key re-wrapped under the provider's current key-encryption key; returns how many changed."""
        changed = 0
        for key in await self.keys():
            if key.kek_id == self._provider.kek_id:
                continue
            rewrapped = self._provider.rewrap(bytes(key.wrapped))
            async with self._db.connection() as conn:
                cursor = await conn.execute(sql("vault_key_rewrap"), {
                    "purpose": key.purpose, "version": key.version, "old_wrapped": key.wrapped,
                    "wrapped": rewrapped, "kek_id": self._provider.kek_id,
                })
                changed += cursor.rowcount
        return changed

    async def version_counts(self) -> list[VersionCount]:
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(VersionCount))
            await cursor.execute(sql("vault_version_counts"))
            return await cursor.fetchall()


def _cache_key(key: WrappedKey) -> tuple[str, int, bytes]:
    return key.purpose, key.version, bytes(key.wrapped)


async def _keys(conn: Conn) -> list[WrappedKey]:
    cursor = conn.cursor(row_factory=class_row(WrappedKey))
    await cursor.execute(sql("vault_keys_get"))
    return await cursor.fetchall()


def versions_below(counts: Sequence[VersionCount], primary: int) -> int:
    """Rows still under an older key version (what ``keys reencrypt`` has left to do)."""
    return sum(count.rows for count in counts if count.key_version < primary)


@dataclass(frozen=True, slots=True)
class SealedToken:
    """An internal token as stored: its digest (lookup, uniqueness), ciphertext and key version."""

    digest: bytes
    ciphertext: bytes
    key_version: int


class Vault:
    """This process's keyring, kept current: reloaded every ``refresh_s`` (so new writes move to a data key
    rotated in meanwhile) and at once when a ciphertext names a version it does not hold yet.

    Python cannot reliably wipe the unwrapped keys from memory (immutable bytes, copies inside libraries);
    they live as long as the process. docs/security.md says so.
    """

    def __init__(self, store: VaultStore, keyring: Keyring | None, *, refresh_s: float = 30.0) -> None:
        self._store = store
        self._keyring = keyring
        self._refresh_s = refresh_s
        self._fresh_until = time.monotonic() + refresh_s
        self._reloading: asyncio.Task[None] | None = None
        self._loading = asyncio.Lock()  # one load at a time: a burst of first requests loads the keys once
        self._reloading_lock = asyncio.Lock()

    @classmethod
    async def load(cls, store: VaultStore, *, refresh_s: float = 30.0) -> Vault:
        return cls(store, await store.keyring(), refresh_s=refresh_s)

    @classmethod
    def unloaded(cls, store: VaultStore, *, refresh_s: float = 30.0) -> Vault:
        """A vault whose keys load on first use (the service starts while the database is down)."""
        vault = cls(store, None, refresh_s=refresh_s)
        vault._fresh_until = 0.0
        return vault

    @property
    def loaded(self) -> bool:
        return self._keyring is not None

    @property
    def keyring(self) -> Keyring:
        if time.monotonic() > self._fresh_until and (self._reloading is None or self._reloading.done()):
            self._fresh_until = time.monotonic() + (self._refresh_s if self._keyring else 1.0)
            with contextlib.suppress(RuntimeError):  # no running loop (synchronous caller): reload later
                self._reloading = asyncio.get_running_loop().create_task(self._reload_quietly())
        if self._keyring is None:
            raise DatabaseUnavailable("the vault's keys are not loaded yet (the database did not answer)")
        return self._keyring

    async def ready(self) -> None:
        """Loads the keys if this process has none yet (callers about to seal or digest, which are sync)."""
        if self._keyring is None:
            async with self._loading:
                if self._keyring is None:
                    await self.reload()

    async def reload(self) -> None:
        # One at a time, and never back to an older primary: a slow reload that read the keys before a
        # rotation must not replace the keyring a later one installed.
        async with self._reloading_lock:
            keyring = await self._store.keyring(self._keyring)
            if self._keyring is None or keyring.primary_version >= self._keyring.primary_version:
                self._keyring = keyring
            self._fresh_until = time.monotonic() + self._refresh_s

    async def _reload_quietly(self) -> None:
        try:
            await self.reload()
        except Exception as exc:  # the database is down: keep the keys we have, try at the next refresh
            log.warning("vault.reload_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")

    def seal(self, token: str, aad: bytes) -> SealedToken:
        keyring = self.keyring
        return SealedToken(keyring.digest(token), keyring.encrypt(token, aad), keyring.primary_version)

    def digest(self, value: str) -> bytes:
        return self.keyring.digest(value)

    def hexdigest(self, value: str) -> str:
        return self.keyring.hexdigest(value)

    async def open_all(self, sealed: Sequence[tuple[bytes, bytes]]) -> list[str]:
        """Decrypts (ciphertext, associated data) pairs; reloads the keys once if one names a newer version."""
        await self.ready()
        try:
            return self._open_all(sealed)
        except UnknownKeyVersion:
            await self.reload()
            return self._open_all(sealed)

    async def open(self, ciphertext: bytes, aad: bytes) -> str:
        return (await self.open_all([(ciphertext, aad)]))[0]

    def _open_all(self, sealed: Sequence[tuple[bytes, bytes]]) -> list[str]:
        decrypt = self.keyring.decrypt
        return [decrypt(ciphertext if isinstance(ciphertext, bytes) else bytes(ciphertext), aad)
                for ciphertext, aad in sealed]

    def hexdigests(self, values: Sequence[str]) -> list[str]:
        """Keyed digests of many values with one keyring (a detokenize's audit: up to thousands of refs)."""
        digest = self.keyring.digest
        return [digest(value).hex() for value in values]
