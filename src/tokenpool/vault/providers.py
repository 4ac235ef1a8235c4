"""The key-encryption key (KEK) port, and the provider the settings choose."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from tokenpool.vault.aws_kms import AwsKmsKeyProvider
from tokenpool.vault.errors import KeyProviderError
from tokenpool.vault.local_kek import LocalKeyProvider

if TYPE_CHECKING:
    from tokenpool.settings import Settings


class KeyProvider(Protocol):
    """Wraps and unwraps data keys and the digest key; the database only ever holds wrapped keys."""

    @property
    def kek_id(self) -> str:
        """The current KEK, stored beside each wrapped key."""
        ...

    def generate_key(self) -> tuple[bytes, bytes]:
        """A new 32-byte key: (plaintext, wrapped with the current KEK)."""
        ...

    def unwrap(self, wrapped: bytes) -> bytes:
        """The plaintext key, with whichever KEK version wrapped it."""
        ...

    def rewrap(self, wrapped: bytes) -> bytes:
        """The same key wrapped with the current KEK; the plaintext never leaves the provider's call."""
        ...

    def rotate_kek(self) -> str:
        """Makes a new KEK version current and returns its kek_id; older versions still unwrap."""
        ...


def key_provider_from_settings(settings: Settings) -> KeyProvider:
    if settings.vault_key_provider == "aws-kms":
        if not settings.vault_kms_key_id:
            raise KeyProviderError(
                "TOKENPOOL_VAULT_KEY_PROVIDER=aws-kms needs TOKENPOOL_VAULT_KMS_KEY_ID (a KMS key id, ARN or alias)"
            )
        return AwsKmsKeyProvider(
            settings.vault_kms_key_id, region=settings.vault_kms_region,
            endpoint_url=settings.vault_kms_endpoint_url, timeout_s=settings.vault_kms_timeout_s,
        )
    return LocalKeyProvider(settings.vault_local_key_file or settings.home / "vault" / "kek.json")
