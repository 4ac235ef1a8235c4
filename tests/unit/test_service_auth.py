import hashlib

import pytest

from tokenpool.service.auth import SCOPES, ApiKeyError, key_hash, new_key, parse_scopes


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
