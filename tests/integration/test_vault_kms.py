"""AWS KMS as the key-encryption key (tokenpool.vault.AwsKmsKeyProvider), against moto's server process."""

from __future__ import annotations

import time
from typing import Any

import boto3
import pytest

from tests.fixtures.tome import free_port
from tokenpool.settings import Settings
from tokenpool.vault import AwsKmsKeyProvider, KeyProviderError, key_provider_from_settings

REGION = "us-east-1"


@pytest.fixture
def kms(moto_server: str) -> Any:
    return boto3.client("kms", endpoint_url=moto_server, region_name=REGION)


def new_key(kms: Any) -> str:
    return str(kms.create_key(Description="tokenpool vault test")["KeyMetadata"]["Arn"])


def provider(moto_server: str, key_id: str, timeout_s: float = 5.0) -> AwsKmsKeyProvider:
    return AwsKmsKeyProvider(key_id, region=REGION, endpoint_url=moto_server, timeout_s=timeout_s)


def test_a_generated_key_unwraps_and_rewraps(moto_server: str, kms: Any) -> None:
    key_id = new_key(kms)
    kek = provider(moto_server, key_id)
    assert kek.kek_id == key_id
    plaintext, wrapped = kek.generate_key()
    assert len(plaintext) == 32
    assert plaintext not in wrapped
    assert kek.unwrap(wrapped) == plaintext
    rewrapped = kek.rewrap(wrapped)
    assert rewrapped != wrapped
    assert kek.unwrap(rewrapped) == plaintext


def test_an_on_demand_rotation_keeps_old_wrapped_keys_readable(moto_server: str, kms: Any) -> None:
    key_id = new_key(kms)
    kek = provider(moto_server, key_id)
    plaintext, wrapped = kek.generate_key()
    assert kek.rotate_kek() == key_id
    assert [r["RotationType"] for r in kms.list_key_rotations(KeyId=key_id)["Rotations"]] == ["ON_DEMAND"]
    assert kek.unwrap(kek.rewrap(wrapped)) == plaintext


def test_rewrap_moves_a_wrapped_key_to_a_new_kms_key(moto_server: str, kms: Any) -> None:
    old, new = provider(moto_server, new_key(kms)), provider(moto_server, new_key(kms))
    plaintext, wrapped = old.generate_key()
    moved = new.rewrap(wrapped)
    assert new.unwrap(moved) == plaintext
    with pytest.raises(KeyProviderError, match="Decrypt"):
        new.unwrap(wrapped)  # Decrypt names the configured key: a blob of another key is refused
    with pytest.raises(KeyProviderError):
        old.unwrap(moved)


def test_the_settings_choose_kms(moto_server: str, kms: Any) -> None:
    key_id = new_key(kms)
    settings = Settings(
        vault_key_provider="aws-kms", vault_kms_key_id=key_id, vault_kms_endpoint_url=moto_server,
        vault_kms_region=REGION, vault_kms_timeout_s=2.0,
    )
    kek = key_provider_from_settings(settings)
    assert isinstance(kek, AwsKmsKeyProvider)
    plaintext, wrapped = kek.generate_key()
    assert kek.unwrap(wrapped) == plaintext


def test_an_unknown_key_id_is_a_key_provider_error(moto_server: str, kms: Any) -> None:
    kek = provider(moto_server, "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000")
    started = time.monotonic()
    with pytest.raises(KeyProviderError, match=r"GenerateDataKey.*NotFoundException"):
        kek.generate_key()
    assert time.monotonic() - started < 5.0


def test_an_unreachable_endpoint_fails_within_the_timeout(moto_server: str) -> None:
    kek = AwsKmsKeyProvider("alias/tokenpool", region=REGION, endpoint_url=f"http://127.0.0.1:{free_port()}",
                            timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(KeyProviderError, match="GenerateDataKey"):
        kek.generate_key()
    # Two attempts of half the timeout each, and at most about a second of backoff between them.
    assert time.monotonic() - started < 1.0 + 1.5


def test_an_endpoint_that_never_answers_fails_within_the_timeout(moto_server: str, silent_endpoint: str) -> None:
    kek = AwsKmsKeyProvider("alias/tokenpool", region=REGION, endpoint_url=silent_endpoint, timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(KeyProviderError, match="Decrypt"):
        kek.unwrap(b"\x01" * 64)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 1.0 + 1.5
