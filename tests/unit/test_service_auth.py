import hashlib
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from tokenpool.db.api_key_store import StoredKey
from tokenpool.service.auth import (
    SCOPES,
    ApiKeyError,
    ApiKeys,
    Principal,
    key_hash,
    new_key,
    parse_duration,
    parse_scopes,
)


def test_a_new_key_carries_256_random_bits_and_is_never_the_same():
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("tpk_") and len(k) == 4 + 43 for k in keys)


def test_the_stored_form_is_the_sha256_of_the_key():
    assert key_hash("tpk_abc") == hashlib.sha256(b"tpk_abc").digest()


def test_scopes_are_parsed_deduplicated_and_checked():
    assert parse_scopes("cards:write, cards:read,cards:write") == ["cards:read", "cards:write"]
    assert set(parse_scopes(",".join(SCOPES))) == SCOPES
    with pytest.raises(ApiKeyError, match="unknown"):
        parse_scopes("cards:write,cards:delete")
    with pytest.raises(ApiKeyError):
        parse_scopes(" , ")


# --- Key lifetimes ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 30 * 86_400), ("12h", 43_200), ("90m", 5_400), ("45s", 45), ("2w", 14 * 86_400),
    ("1d12h", 129_600), (" 1H30M ", 5_400), ("3650d", 3_650 * 86_400),
])
def test_durations_are_whole_numbers_with_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "", "30", "d", "-5d", "+5d", "30x", "30 d", "thirty days", "0d", "0s0m", "1d1d", "3651d", "P30D",
])
def test_nonsense_durations_are_refused_saying_what_is_expected(text):
    with pytest.raises(ApiKeyError, match=r"30d|ten years|twice|no time"):
        parse_duration(text)


def test_a_principal_is_expired_from_its_expiry_on():
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    principal = Principal(uuid.uuid4(), "k", frozenset(), expires)
    assert not principal.expired(expires.timestamp() - 0.001)
    assert principal.expired(expires.timestamp())
    assert not Principal(uuid.uuid4(), "k", frozenset()).expired()


# --- The key cache: long while revocations are heard, short otherwise -------------------------------------

class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now


class _Feed:
    def __init__(self) -> None:
        self.confirmed = True

    def confirmed_within(self, seconds: float) -> bool:
        return self.confirmed


class _Store:
    """by_hash in memory, counting lookups; ``during`` runs while a lookup is in flight."""

    def __init__(self, key: StoredKey) -> None:
        self.key = key
        self.lookups = 0
        self.during = None

    async def by_hash(self, _conn, _digest):
        self.lookups += 1
        if self.during is not None:
            self.during()
        return self.key


class _Db:
    def connection(self):
        @asynccontextmanager
        async def opened():
            yield object()
        return opened()


@pytest.fixture
def keys(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("tokenpool.service.auth.time", clock)
    api_keys = ApiKeys(_Db(), cache_ttl_s=60.0, fallback_ttl_s=1.0)  # type: ignore[arg-type]
    store = _Store(StoredKey(uuid.uuid4(), "k", ["pools:read"], None))
    api_keys._store = store  # type: ignore[assignment]
    feed = _Feed()
    api_keys.listen(feed)
    return api_keys, store, feed, clock


async def test_a_check_is_cached_long_while_the_listener_confirms_it_hears_every_change(keys):
    api_keys, store, _feed, clock = keys
    await api_keys.authenticate("tpk_a")
    clock.now += 30
    await api_keys.authenticate("tpk_a")
    assert store.lookups == 1
    clock.now += 31
    await api_keys.authenticate("tpk_a")
    assert store.lookups == 2, "past the cache TTL"


async def test_without_a_confirmed_listener_a_check_is_cached_one_second_at_most(keys):
    api_keys, store, feed, clock = keys
    await api_keys.authenticate("tpk_a")
    feed.confirmed = False  # connection lost, or no heartbeat answered lately
    clock.now += 0.9
    await api_keys.authenticate("tpk_a")
    assert store.lookups == 1
    clock.now += 0.2
    await api_keys.authenticate("tpk_a")
    assert store.lookups == 2


async def test_a_change_heard_drops_the_keys_checks_and_a_lookup_it_overtook_is_not_cached(keys):
    api_keys, store, _feed, _clock = keys
    await api_keys.authenticate("tpk_a")
    api_keys.forget(store.key.api_key_id)
    store.during = lambda: api_keys.forget(None)  # a change arrives while the next lookup is in flight
    await api_keys.authenticate("tpk_a")
    store.during = None
    await api_keys.authenticate("tpk_a")
    assert store.lookups == 3, "the overtaken lookup was not cached"
    await api_keys.authenticate("tpk_a")
    assert store.lookups == 3
