"""Reads a secret from AWS Secrets Manager at start (boto3), bounded in time.

The refill Lambda gets the database URL this way (``TOKENPOOL_DATABASE_URL_SECRET_ARN``): the URL never
appears in the function's configuration, where the console, ``GetFunctionConfiguration`` and every
principal allowed to read the function would see it. ECS injects the same secret into the containers'
environment itself (the task definition's ``secrets``), so the API and the worker need no call.

Errors name the secret and AWS's error code, never the value.
"""

from __future__ import annotations

from typing import Any, Final

ATTEMPTS: Final = 2


class SecretError(RuntimeError):
    """The secret could not be read, or does not hold what the caller needs."""


def read_secret_string(secret_id: str, *, region: str | None = None, endpoint_url: str | None = None,
                       timeout_s: float = 5.0) -> str:
    """The ``SecretString`` of the secret's current version (``AWSCURRENT``).

    At most two attempts of half ``timeout_s`` each (botocore's standard retry mode adds a short backoff).
    The region defaults to the ARN's own (``arn:aws:secretsmanager:<region>:...``), else boto3's lookup.
    """
    # Imported here: only processes configured with a secret ARN need boto3 loaded.
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    if not secret_id:
        raise SecretError("no secret id or ARN given")
    parts = secret_id.split(":")
    region = region or (parts[3] if secret_id.startswith("arn:") and len(parts) > 3 and parts[3] else None)
    per_attempt_s = timeout_s / ATTEMPTS
    config = Config(connect_timeout=per_attempt_s, read_timeout=per_attempt_s,
                    retries={"max_attempts": ATTEMPTS, "mode": "standard"})
    client: Any = boto3.client("secretsmanager", region_name=region, endpoint_url=endpoint_url, config=config)
    try:
        response: dict[str, Any] = client.get_secret_value(SecretId=secret_id)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise SecretError(f"Secrets Manager GetSecretValue of {secret_id} failed: {code}") from None
    except BotoCoreError as exc:
        raise SecretError(f"Secrets Manager GetSecretValue of {secret_id} failed: {type(exc).__name__}") from None
    value = response.get("SecretString")
    if not isinstance(value, str) or not value.strip():
        raise SecretError(f"secret {secret_id} has no SecretString (a binary secret, or an empty one)")
    return value.strip()


def read_database_url(secret_id: str, *, region: str | None = None, endpoint_url: str | None = None,
                      timeout_s: float = 5.0) -> str:
    """The app role's connection string, kept as the secret's plain text: a URL
    (``postgresql://user:password@host:5432/db?sslmode=verify-full``) or libpq's ``key=value`` form.

    A JSON secret (the shape RDS gives its own secrets) is refused with a message rather than passed on to
    psycopg, whose error would quote the value.
    """
    value = read_secret_string(secret_id, region=region, endpoint_url=endpoint_url, timeout_s=timeout_s)
    if value.startswith(("postgresql://", "postgres://")):
        return value
    if value.startswith(("{", "[")) or "=" not in value:
        shape = "a JSON document" if value.startswith(("{", "[")) else "neither a URL nor key=value pairs"
        raise SecretError(
            f"secret {secret_id} must hold the app role's PostgreSQL URL as plain text "
            f"(postgresql://...); it holds {shape}"
        )
    return value
