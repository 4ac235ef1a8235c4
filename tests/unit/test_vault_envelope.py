"""Field encryption and keyed digests with keys already unwrapped (tokenpool.vault.Keyring); no I/O."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import pytest
from structlog.testing import capture_logs

from tokenpool.vault import CiphertextRejected, DataKey, Keyring, UnknownKeyVersion, associated_data
from tokenpool.vault.keyring import NONCE_WARNING_AT

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(32, 64))
KEY_3 = bytes(range(64, 96))
DIGEST_KEY = bytes(range(100, 132))
TOKEN = "4000123412341234"
ROW_A = associated_data("token_pool", "default", "ext-ref-a")
ROW_B = associated_data("token_pool", "default", "ext-ref-b")


def keyring(*versions: int, primary_version: int | None = None) -> Keyring:
    keys = {1: KEY_1, 2: KEY_2, 3: KEY_3}
    return Keyring([DataKey(v, keys[v]) for v in versions], DIGEST_KEY, primary_version=primary_version)


def with_byte(blob: bytes, index: int, value: int) -> bytes:
    changed = bytearray(blob)
    changed[index] = value
    return bytes(changed)


def test_a_value_decrypts_to_itself_with_the_same_associated_data() -> None:
    ring = keyring(1)
    blob = ring.encrypt(TOKEN, ROW_A)
    assert ring.decrypt(blob, ROW_A) == TOKEN
    assert TOKEN.encode() not in blob
    assert ring.encrypt(TOKEN, ROW_A) != blob  # a fresh nonce each time


def test_the_blob_names_format_version_and_nonce_before_the_sealed_value() -> None:
    blob = keyring(1, 2).encrypt(TOKEN, ROW_A)
    assert blob[0] == 0x01
    assert int.from_bytes(blob[1:5], "big") == 2
    assert len(blob) == 1 + 4 + 12 + len(TOKEN) + 16
    assert Keyring.version_of(blob) == 2


def test_a_blob_moved_to_another_row_is_rejected() -> None:
    ring = keyring(1)
    with pytest.raises(CiphertextRejected):
        ring.decrypt(ring.encrypt(TOKEN, ROW_A), ROW_B)


@pytest.mark.parametrize("index", [0, 5, 16, 17, -1])
def test_any_changed_byte_is_rejected(index: int) -> None:
    ring = keyring(1)
    blob = ring.encrypt(TOKEN, ROW_A)
    with pytest.raises(CiphertextRejected):
        ring.decrypt(with_byte(blob, index, blob[index] ^ 0x01), ROW_A)


def test_a_version_relabelled_to_one_the_keyring_lacks_is_an_unknown_version() -> None:
    ring = keyring(1, 2, primary_version=1)
    blob = ring.encrypt(TOKEN, ROW_A)
    with pytest.raises(UnknownKeyVersion) as raised:
        ring.decrypt(with_byte(blob, 4, 7), ROW_A)
    assert raised.value.version == 7


def test_a_version_relabelled_to_one_the_keyring_holds_is_rejected_never_a_wrong_plaintext() -> None:
    ring = keyring(1, 2, primary_version=1)
    blob = ring.encrypt(TOKEN, ROW_A)
    with pytest.raises(CiphertextRejected):
        ring.decrypt(with_byte(blob, 4, 2), ROW_A)


def test_a_different_key_under_the_same_version_is_rejected() -> None:
    blob = keyring(1).encrypt(TOKEN, ROW_A)
    impostor = Keyring([DataKey(1, KEY_2)], DIGEST_KEY)
    with pytest.raises(CiphertextRejected):
        impostor.decrypt(blob, ROW_A)


@pytest.mark.parametrize("blob", [b"", b"\x01\x00\x00\x00\x01", b"\x02" + bytes(40)])
def test_a_malformed_blob_is_rejected(blob: bytes) -> None:
    with pytest.raises(CiphertextRejected):
        Keyring.version_of(blob)
    with pytest.raises(CiphertextRejected):
        keyring(1).decrypt(blob, ROW_A)


def test_old_blobs_still_decrypt_after_a_new_primary_is_added() -> None:
    old = keyring(1).encrypt(TOKEN, ROW_A)
    ring = keyring(1, 2)
    assert ring.primary_version == 2
    assert ring.versions == (1, 2)
    assert ring.decrypt(old, ROW_A) == TOKEN
    assert Keyring.version_of(ring.encrypt(TOKEN, ROW_A)) == 2


def test_a_new_key_can_be_rolled_out_before_it_becomes_primary() -> None:
    ring = keyring(1, 2, primary_version=1)
    assert Keyring.version_of(ring.encrypt(TOKEN, ROW_A)) == 1


def test_reencrypt_moves_a_blob_to_the_primary_version() -> None:
    old = keyring(1).encrypt(TOKEN, ROW_A)
    ring = keyring(1, 3)
    moved = ring.reencrypt(old, ROW_A)
    assert Keyring.version_of(moved) == 3
    assert keyring(3).decrypt(moved, ROW_A) == TOKEN
    with pytest.raises(CiphertextRejected):
        ring.reencrypt(old, ROW_B)


def test_associated_data_is_unambiguous() -> None:
    assert associated_data("ab", "c") != associated_data("a", "bc")
    assert associated_data("a", "") != associated_data("a")
    assert associated_data("x") == b"\x00\x00\x00\x01x"


def test_associated_data_reads_ints_and_uuids_as_their_text() -> None:
    batch = uuid.uuid4()
    assert associated_data("refill_pending_tokens", batch, 7) == associated_data(
        "refill_pending_tokens", str(batch), "7"
    )
    assert associated_data(b"\xff") == b"\x00\x00\x00\x01\xff"
    with pytest.raises(TypeError):
        associated_data(True)
    with pytest.raises(TypeError):
        associated_data(1.5)  # type: ignore[arg-type]


def test_the_digest_is_keyed_hmac_sha256() -> None:
    ring = keyring(1)
    digest = ring.digest(TOKEN)
    assert digest == hmac.digest(DIGEST_KEY, TOKEN.encode(), "sha256")
    assert len(digest) == 32
    assert digest != hashlib.sha256(TOKEN.encode()).digest()
    assert digest == ring.digest(TOKEN)
    assert digest != ring.digest(TOKEN + "0")
    assert ring.hexdigest(TOKEN) == digest.hex()
    other = Keyring([DataKey(1, KEY_1)], bytes(32))
    assert other.digest(TOKEN) != digest


def test_a_digest_key_longer_than_a_block_is_hashed_first_as_hmac_says() -> None:
    long_key = bytes(range(100))
    ring = Keyring([DataKey(1, KEY_1)], long_key)
    assert ring.digest(TOKEN) == hmac.digest(long_key, TOKEN.encode(), "sha256")


def test_no_repr_shows_a_key() -> None:
    data_key = DataKey(1, KEY_1)
    assert KEY_1.hex() not in repr(data_key)
    assert repr(KEY_1) not in repr(data_key)
    assert "version=1" in repr(data_key)
    ring = keyring(1, 2)
    assert repr(KEY_1) not in repr(ring)
    assert repr(DIGEST_KEY) not in repr(ring)


def test_keys_and_versions_are_checked() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        DataKey(1, b"short")
    with pytest.raises(ValueError, match="version"):
        DataKey(0, KEY_1)
    with pytest.raises(ValueError, match="two different"):
        Keyring([DataKey(1, KEY_1), DataKey(1, KEY_2)], DIGEST_KEY)
    with pytest.raises(ValueError, match="at least one"):
        Keyring([], DIGEST_KEY)
    with pytest.raises(ValueError, match="digest key"):
        Keyring([DataKey(1, KEY_1)], b"short")
    with pytest.raises(UnknownKeyVersion):
        keyring(1, primary_version=2)


def test_encryptions_are_counted_per_version_and_warned_about_once_past_the_budget() -> None:
    ring = keyring(1, 2)
    ring.encrypt(TOKEN, ROW_A)
    ring.encrypt(TOKEN, ROW_A)
    assert ring.encryptions == {1: 0, 2: 2}
    ring.encryptions[2] = NONCE_WARNING_AT
    with capture_logs() as logs:
        ring.encrypt(TOKEN, ROW_A)
        ring.encrypt(TOKEN, ROW_A)
    warnings = [entry for entry in logs if entry["event"] == "vault_data_key_nonce_budget"]
    assert len(warnings) == 1
    assert warnings[0]["key_version"] == 2
    assert warnings[0]["log_level"] == "warning"


def test_a_reloaded_keyring_keeps_the_digest_key_and_the_counts() -> None:
    ring = keyring(1)
    blob = ring.encrypt(TOKEN, ROW_A)
    reloaded = ring.with_data_keys([DataKey(1, KEY_1), DataKey(2, KEY_2)])
    assert reloaded.primary_version == 2
    assert reloaded.encryptions == {1: 1, 2: 0}
    assert reloaded.digest(TOKEN) == ring.digest(TOKEN)
    assert reloaded.decrypt(blob, ROW_A) == TOKEN


def test_the_bulk_loads_associated_data_is_the_rows_associated_data() -> None:
    from tokenpool.db.vault_store import pool_token_aad, pool_token_aads

    aad = pool_token_aads("program-a")
    assert [aad(ref) for ref in ("ext_1", "é", "")] == [pool_token_aad("program-a", ref) for ref in ("ext_1", "é", "")]


def test_a_keyring_refuses_one_key_under_two_versions_or_purposes() -> None:
    key = bytes(range(32))
    with pytest.raises(ValueError, match="two versions or purposes"):
        Keyring([DataKey(1, key), DataKey(2, key)], bytes(32))
    with pytest.raises(ValueError, match="two versions or purposes"):
        Keyring([DataKey(1, key)], key)
