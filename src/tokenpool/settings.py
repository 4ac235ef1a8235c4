"""Configuration, read from ``TOKENPOOL_*`` environment variables (pydantic-settings).

Every field has a default that runs the whole system on one machine: embedded PostgreSQL under
``TOKENPOOL_HOME`` and a TOME emulator when ``TOKENPOOL_TOME_URL`` is unset.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENPOOL_", extra="ignore")

    # --- PostgreSQL -------------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None, description="PostgreSQL URL; unset = start an embedded server under home."
    )
    home: Path = Field(default=Path(".tokenpool"), description="Data folder for embedded services.")
    db_pool_min_size: int = Field(default=2, ge=1)
    db_pool_max_size: int = Field(default=20, ge=1)
    db_connect_timeout_s: float = Field(default=5.0, gt=0)
    db_acquire_timeout_s: float = Field(default=2.0, gt=0, description="Wait for a pooled connection.")
    db_statement_timeout_ms: int = Field(default=5_000, gt=0)
    db_idle_in_transaction_timeout_ms: int = Field(default=10_000, gt=0)

    # --- The pool -----------------------------------------------------------------------------------
    default_pool: str = "default"
    lease_seconds: float = Field(default=60.0, gt=0, description="How long a reservation holds a pair.")

    # --- TOME -------------------------------------------------------------------------------------
    tome_url: str | None = Field(default=None, description="TOME base URL; unset = start the emulator.")
    tome_ns1: str = "NS1"
    tome_ns2: str = "NS2"
    tome_batch_size: int = Field(default=2_500, ge=1)
    tome_connect_timeout_s: float = Field(default=2.0, gt=0)
    tome_read_timeout_s: float = Field(default=5.0, gt=0)
    tome_total_timeout_s: float = Field(default=15.0, gt=0, description="Bound on one call incl. retries.")
    tome_max_attempts: int = Field(default=4, ge=1)
    tome_backoff_initial_s: float = Field(default=0.1, gt=0)
    tome_backoff_max_s: float = Field(default=2.0, gt=0)
    tome_breaker_failure_threshold: int = Field(default=5, ge=1)
    tome_breaker_ttl_s: float = Field(default=10.0, gt=0, description="Open state length before a probe.")
    tome_max_connections: int = Field(default=20, ge=1)

    # --- Refill (issue 4: owned by the refill job; add below this line) ---------------------------

    # --- Service (issue 5: owned by the HTTP service; add below this line) -------------------------

    # --- Observability ----------------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
