"""Field encryption and keyed digests: AES-256-GCM data keys and an HMAC key, wrapped by a key-encryption key.

No database here: ``tokenpool.db.vault_store`` keeps the wrapped keys and builds the :class:`Keyring`.
"""

from tokenpool.vault.aws_kms import AwsKmsKeyProvider
from tokenpool.vault.errors import CiphertextRejected, KeyProviderError, UnknownKeyVersion, VaultError
from tokenpool.vault.keyring import DataKey, Keyring, associated_data
from tokenpool.vault.local_kek import LocalKeyProvider
from tokenpool.vault.providers import KeyProvider, key_provider_from_settings

__all__ = [
    "AwsKmsKeyProvider",
    "CiphertextRejected",
    "DataKey",
    "KeyProvider",
    "KeyProviderError",
    "Keyring",
    "LocalKeyProvider",
    "UnknownKeyVersion",
    "VaultError",
    "associated_data",
    "key_provider_from_settings",
]
