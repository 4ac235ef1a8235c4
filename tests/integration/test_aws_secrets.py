"""The database URL read from Secrets Manager (TOKENPOOL_DATABASE_URL_SECRET_ARN), against moto's server."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from tokenpool import bootstrap
from tokenpool.aws.secrets import SecretError, read_database_url
from tokenpool.settings import Settings

REGION = "us-east-1"
URL = "postgresql://tokenpool_app:s3cret-Pa55@db.internal:5432/tokenpool?sslmode=verify-full"


@pytest.fixture
def secrets(moto_server: str) -> Any:
    return boto3.client("secretsmanager", endpoint_url=moto_server, region_name=REGION)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    bootstrap._secret_database_url.cache_clear()
    yield
    bootstrap._secret_database_url.cache_clear()


def new_secret(secrets: Any, value: str) -> str:
    return str(secrets.create_secret(Name=f"tokenpool/{uuid.uuid4().hex}", SecretString=value)["ARN"])


def test_the_database_url_is_read_from_the_secret_named_in_the_settings(moto_server: str, secrets: Any) -> None:
    arn = new_secret(secrets, URL + "\n")  # a trailing newline from `aws secretsmanager ... file://` is dropped
    settings = Settings(database_url_secret_arn=arn, secrets_endpoint_url=moto_server)
    assert bootstrap.uses_external_database(settings)
    assert bootstrap.database_url(settings) == URL
    # Also the owner's URL when no admin URL is set (one role for everything, as with TOKENPOOL_DATABASE_URL).
    assert bootstrap.admin_database_url(settings) == URL


def test_the_secret_is_read_once_per_process(moto_server: str, secrets: Any, monkeypatch) -> None:
    arn = new_secret(secrets, URL)
    settings = Settings(database_url_secret_arn=arn, secrets_endpoint_url=moto_server)
    assert bootstrap.database_url(settings) == URL
    calls: list[str] = []
    monkeypatch.setattr(bootstrap, "read_database_url", lambda *args, **kwargs: calls.append("read") or "other")
    assert bootstrap.database_url(settings) == URL
    assert calls == []


def test_the_region_comes_from_the_arn(moto_server: str, monkeypatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    eu = boto3.client("secretsmanager", endpoint_url=moto_server, region_name="eu-west-1")
    arn = str(eu.create_secret(Name=f"tokenpool/{uuid.uuid4().hex}", SecretString=URL)["ARN"])
    assert ":eu-west-1:" in arn
    assert read_database_url(arn, endpoint_url=moto_server) == URL


def test_a_json_secret_is_refused_without_showing_its_value(moto_server: str, secrets: Any) -> None:
    arn = new_secret(secrets, '{"username": "tokenpool_app", "password": "s3cret-Pa55", "host": "db"}')
    with pytest.raises(SecretError, match="plain text") as raised:
        read_database_url(arn, endpoint_url=moto_server)
    assert "s3cret" not in str(raised.value)
    assert "JSON" in str(raised.value)


def test_a_missing_secret_names_the_secret_and_aws_error_code(moto_server: str) -> None:
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:tokenpool/missing-AbCdEf"
    with pytest.raises(SecretError, match=r"missing-AbCdEf failed: ResourceNotFoundException"):
        read_database_url(arn, endpoint_url=moto_server)


def test_the_url_and_the_secret_together_are_refused(moto_server: str, secrets: Any) -> None:
    settings = Settings(database_url=URL, database_url_secret_arn=new_secret(secrets, URL),
                        secrets_endpoint_url=moto_server)
    with pytest.raises(ValueError, match="both set"):
        bootstrap.database_url(settings)


def test_an_endpoint_that_never_answers_fails_within_the_timeout(moto_server: str, silent_endpoint: str) -> None:
    # A cold start must not hang on Secrets Manager until Lambda's own timeout: it fails, and is retried.
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:tokenpool/db-AbCdEf"
    started = time.monotonic()
    with pytest.raises(SecretError, match="GetSecretValue"):
        read_database_url(arn, endpoint_url=silent_endpoint, timeout_s=1.0)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 1.0 + 1.5


def test_libpq_key_value_form_is_accepted_and_anything_else_refused(moto_server: str, secrets: Any) -> None:
    conninfo = "host=db.internal port=5432 dbname=tokenpool user=tokenpool_app password=s3cret-Pa55"
    assert read_database_url(new_secret(secrets, conninfo), endpoint_url=moto_server) == conninfo
    with pytest.raises(SecretError, match="neither a URL nor key=value") as raised:
        read_database_url(new_secret(secrets, "s3cret-Pa55"), endpoint_url=moto_server)
    assert "s3cret" not in str(raised.value)
