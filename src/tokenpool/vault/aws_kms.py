"""Key-encryption key in AWS KMS: KMS generates, wraps and unwraps data keys; the KEK never leaves KMS.

Every call is bounded: connect and read timeouts of half ``timeout_s`` per attempt and at most two
attempts (botocore's standard retry mode, which may sleep up to about a second between them).
"""

from __future__ import annotations

from typing import Any, Final

from tokenpool.vault.errors import KeyProviderError

ATTEMPTS: Final = 2


class AwsKmsKeyProvider:
    """Data keys wrapped by one KMS key (id, ARN or alias); ``kek_id`` is that identifier as configured."""

    def __init__(self, key_id: str, *, region: str | None = None, endpoint_url: str | None = None,
                 timeout_s: float = 5.0) -> None:
        # boto3 is imported here: every process imports the vault, only KMS users need boto3.
        import boto3
        from botocore.config import Config

        if not key_id:
            raise KeyProviderError("AwsKmsKeyProvider needs a KMS key id, ARN or alias")
        self._key_id = key_id
        # An ARN names its region (arn:aws:kms:<region>:...); otherwise boto3's own lookup decides.
        parts = key_id.split(":")
        region = region or (parts[3] if key_id.startswith("arn:") and len(parts) > 3 and parts[3] else None)
        per_attempt_s = timeout_s / ATTEMPTS
        config = Config(
            connect_timeout=per_attempt_s, read_timeout=per_attempt_s,
            retries={"max_attempts": ATTEMPTS, "mode": "standard"},
        )
        self._client: Any = boto3.client("kms", region_name=region, endpoint_url=endpoint_url, config=config)

    def __repr__(self) -> str:
        return f"AwsKmsKeyProvider(key_id={self._key_id!r})"

    @property
    def kek_id(self) -> str:
        return self._key_id

    def generate_key(self) -> tuple[bytes, bytes]:
        response = self._call("GenerateDataKey", self._client.generate_data_key, KeyId=self._key_id,
                              KeySpec="AES_256")
        return bytes(response["Plaintext"]), bytes(response["CiphertextBlob"])

    def unwrap(self, wrapped: bytes) -> bytes:
        # Naming the key makes KMS refuse a blob wrapped by any other key (AWS's advice for Decrypt): a key
        # still wrapped by a previous KMS key must be rewrapped before services run with the new key id.
        response = self._call("Decrypt", self._client.decrypt, CiphertextBlob=wrapped, KeyId=self._key_id)
        return bytes(response["Plaintext"])

    def rewrap(self, wrapped: bytes) -> bytes:
        """Re-encrypts inside KMS under the configured key (the newest key material, or a new key id)."""
        response = self._call("ReEncrypt", self._client.re_encrypt, CiphertextBlob=wrapped,
                              DestinationKeyId=self._key_id)
        return bytes(response["CiphertextBlob"])

    def rotate_kek(self) -> str:
        """On-demand rotation of the key material; the key id stays, KMS keeps old material for Decrypt."""
        rotate = getattr(self._client, "rotate_key_on_demand", None)
        if rotate is None:
            raise KeyProviderError(
                "this botocore has no RotateKeyOnDemand. KMS rotates key material itself: enable automatic "
                f"rotation on {self._key_id}. To move wrapped keys to another KMS key, set "
                "TOKENPOOL_VAULT_KMS_KEY_ID to it and rewrap."
            )
        self._call("RotateKeyOnDemand", rotate, KeyId=self._key_id)
        return self._key_id

    def _call(self, operation: str, method: Any, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response: dict[str, Any] = method(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise KeyProviderError(
                f"KMS {operation} with key {self._key_id} failed: {error.get('Code', '?')}: {error.get('Message', '')}"
            ) from None
        except BotoCoreError as exc:
            raise KeyProviderError(f"KMS {operation} with key {self._key_id} failed: {exc}") from None
        return response
