"""Token formats and the emulator's vault rules that need no HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenpool.tome.contract import (
    is_external_ref,
    is_internal_token,
    luhn_check_digit,
    luhn_valid,
    new_external_ref,
    new_internal_token,
)
from tokenpool.tome.emulator.faults import Faults, FaultsPatch, TokenBucket, retry_after_header
from tokenpool.tome.emulator.vault import IdempotencyMismatch, Vault


@pytest.mark.parametrize("number", ["4111111111111111", "5500005555555559", "79927398713"])
def test_known_card_numbers_pass_the_luhn_check(number: str) -> None:
    assert luhn_valid(number)
    assert luhn_check_digit(number[:-1]) == number[-1]


@pytest.mark.parametrize("number", ["4111111111111112", "79927398710", "", "1", "41111111111111a1"])
def test_wrong_check_digits_and_non_digits_fail_the_luhn_check(number: str) -> None:
    assert not luhn_valid(number)


def test_internal_tokens_are_16_digit_luhn_valid_numbers_without_a_leading_zero() -> None:
    tokens = [new_internal_token() for _ in range(2_000)]
    assert all(is_internal_token(t) and len(t) == 16 and t[0] != "0" for t in tokens)
    assert len(set(tokens)) == len(tokens)


def test_external_refs_are_opaque_and_never_look_like_a_pan() -> None:
    refs = [new_external_ref() for _ in range(2_000)]
    assert all(is_external_ref(r) and r.startswith("ext_") and len(r) == 30 for r in refs)
    assert len(set(refs)) == len(refs)
    assert not any(is_internal_token(r) for r in refs)
    assert not is_external_ref("ext_" + "I" * 26)  # Crockford base32 has no I, L, O, U
    assert not is_internal_token("4111111111111112")


def test_vault_issues_unique_tokens_and_replays_an_idempotency_key(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "v.db")
    first = vault.issue("NS1", 50, "key-1")
    replay = vault.issue("NS1", 50, "key-1")
    other = vault.issue("NS1", 50, "key-2")
    assert not first.replayed
    assert replay.replayed
    assert replay.tokens == first.tokens
    assert not set(first.tokens) & set(other.tokens)
    with pytest.raises(IdempotencyMismatch):
        vault.issue("NS1", 49, "key-1")
    assert vault.issued("NS1", 1_000) == (first.tokens + other.tokens, None)
    vault.close()


def test_vault_tokenize_is_deterministic_per_namespace_and_detokenize_reverses_it(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "v.db")
    refs = vault.tokenize("NS2", ["a", "b", "a"])
    assert refs[0] == refs[2] != refs[1]
    assert vault.tokenize("NS2", ["b"]) == [refs[1]]
    assert vault.tokenize("NS3", ["a"]) != [refs[0]]
    assert vault.detokenize("NS2", [refs[1], "ext_unknown", refs[0]]) == ["b", None, "a"]
    vault.close()
    reopened = Vault(tmp_path / "v.db")
    assert reopened.detokenize("NS2", refs) == ["a", "b", "a"]
    reopened.close()


def test_issued_pages_follow_the_cursor(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "v.db")
    tokens = vault.issue("NS1", 7).tokens
    page1, cursor = vault.issued("NS1", 3)
    assert cursor is not None
    page2, cursor = vault.issued("NS1", 3, cursor)
    assert cursor is not None
    page3, cursor = vault.issued("NS1", 3, cursor)
    assert cursor is None
    assert page1 + page2 + page3 == tokens
    vault.close()


def test_a_faults_patch_keeps_the_fields_it_leaves_out() -> None:
    faults = Faults(latency_ms=5, error_rate=0.2)
    patched = FaultsPatch.model_validate({"outage": True}).apply(faults)
    assert patched == Faults(latency_ms=5, error_rate=0.2, outage=True)


def test_the_token_bucket_admits_its_rate_then_says_how_long_to_wait() -> None:
    bucket = TokenBucket(2)
    assert bucket.take() == 0.0
    assert bucket.take() == 0.0
    wait = bucket.take()
    assert 0 < wait <= 0.5
    assert retry_after_header(wait) == "1"
    assert retry_after_header(1.2) == "2"
    assert TokenBucket(0).take() == 0.0
