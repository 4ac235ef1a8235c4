"""Which key provider the settings choose (tokenpool.vault.key_provider_from_settings); no I/O."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenpool.settings import Settings
from tokenpool.vault import KeyProviderError, LocalKeyProvider, key_provider_from_settings


def test_the_default_is_a_local_key_file_under_home() -> None:
    provider = key_provider_from_settings(Settings(home=Path("/srv/tokenpool"), vault_local_key_file=None))
    assert isinstance(provider, LocalKeyProvider)
    assert provider.path == Path("/srv/tokenpool/vault/kek.json")


def test_a_local_key_file_can_be_named() -> None:
    provider = key_provider_from_settings(Settings(vault_local_key_file=Path("/etc/tokenpool/kek.json")))
    assert isinstance(provider, LocalKeyProvider)
    assert provider.path == Path("/etc/tokenpool/kek.json")


def test_kms_without_a_key_id_says_which_variable_is_missing() -> None:
    with pytest.raises(KeyProviderError, match="TOKENPOOL_VAULT_KMS_KEY_ID"):
        key_provider_from_settings(Settings(vault_key_provider="aws-kms"))


def test_the_provider_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENPOOL_VAULT_KEY_PROVIDER", "aws-kms")
    monkeypatch.setenv("TOKENPOOL_VAULT_KMS_TIMEOUT_S", "2.5")
    settings = Settings()
    assert settings.vault_key_provider == "aws-kms"
    assert settings.vault_kms_timeout_s == 2.5
    monkeypatch.setenv("TOKENPOOL_VAULT_KEY_PROVIDER", "vault")
    with pytest.raises(ValueError, match="vault_key_provider"):
        Settings()
