"""Vault errors. Messages name key versions, files and KMS keys, never key material or plaintext."""

from __future__ import annotations


class VaultError(Exception):
    """Base of every vault failure."""


class UnknownKeyVersion(VaultError):
    """A ciphertext names a data-key version this keyring does not hold (reload the keys, or it was retired)."""

    def __init__(self, version: int) -> None:
        super().__init__(f"no data key version {version} in this keyring")
        self.version = version


class CiphertextRejected(VaultError):
    """Authentication failed: another row's associated data, a changed byte, a wrong key or a malformed blob."""


class KeyProviderError(VaultError):
    """The key-encryption key cannot be read or used (key file missing or too open, KMS refused or unreachable)."""
