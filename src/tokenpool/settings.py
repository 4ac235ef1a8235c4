"""Configuration, read from ``TOKENPOOL_*`` environment variables (pydantic-settings).

Every field has a default that runs the whole system on one machine: embedded PostgreSQL under
``TOKENPOOL_HOME`` and a TOME emulator when ``TOKENPOOL_TOME_URL`` is unset.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from limits import parse_many
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

RateLimitStrategy = Literal["fixed-window", "moving-window", "sliding-window-counter"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENPOOL_", extra="ignore")

    # --- PostgreSQL -------------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None, description="PostgreSQL URL of the app role; unset = start an embedded server under home."
    )
    database_admin_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL of the owner role (migrations, grants, `db prune`); unset = database_url.",
    )
    database_read_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL of the app role on a streaming standby: detokenize reads there first (refs it "
        "lacks, e.g. by replication lag, then on database_url; audit rows always go to database_url); unset = "
        "database_url only.",
    )
    database_read_timeout_s: float = Field(
        default=0.5, gt=0, description="Bound on one detokenize lookup on database_read_url; beyond it: the primary."
    )
    database_read_retry_s: float = Field(
        default=5.0, ge=0,
        description="After a failed lookup on database_read_url, detokenize reads the primary alone this long.",
    )
    database_url_secret_arn: str | None = Field(
        default=None,
        description="Secrets Manager secret holding database_url as plain text, read once at start (the refill "
        "Lambda: its environment then holds no password); not together with database_url.",
    )
    secrets_endpoint_url: str | None = Field(default=None, description="Secrets Manager endpoint (tests: moto).")
    secrets_timeout_s: float = Field(
        default=5.0, gt=0, description="Bound on reading the secret: two attempts of half this each."
    )
    database_app_role: str = Field(
        default="tokenpool_app", min_length=1, max_length=63,
        description="The role `db upgrade` grants the service's privileges to (the role of database_url).",
    )
    home: Path = Field(default=Path(".tokenpool"), description="Data folder for embedded services.")
    db_pool_min_size: int = Field(default=2, ge=1)
    db_pool_max_size: int = Field(default=20, ge=1)
    db_connect_timeout_s: float = Field(default=5.0, gt=0)
    db_acquire_timeout_s: float = Field(default=2.0, gt=0, description="Wait for a pooled connection.")
    db_statement_timeout_ms: int = Field(default=5_000, gt=0)
    db_idle_in_transaction_timeout_ms: int = Field(default=10_000, gt=0)
    db_retry_budget_s: float = Field(
        default=2.0, ge=0,
        description="A transaction that failed retryably (failover, deadlock, serialization failure) is run again "
        "only within this long of its first attempt (0: never); below service_db_timeout_s. Then: 503.",
    )

    # --- The pool -----------------------------------------------------------------------------------
    default_pool: str = Field(
        default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="The program (pool) a command uses when it names none; `db upgrade` registers it.",
    )
    lease_seconds: float = Field(default=60.0, gt=0, description="How long a reservation holds a pair.")

    # --- TOME -------------------------------------------------------------------------------------
    tome_url: str | None = Field(default=None, description="TOME base URL; unset = start the emulator.")
    tome_ns1: str = Field(default="NS1", description="NS1 of a program registered without its own (--ns1).")
    tome_ns2: str = Field(default="NS2", description="NS2 of a program registered without its own (--ns2).")
    tome_batch_size: int = Field(default=2_500, ge=1)
    tome_connect_timeout_s: float = Field(default=2.0, gt=0)
    tome_read_timeout_s: float = Field(default=5.0, gt=0)
    tome_total_timeout_s: float = Field(default=15.0, gt=0, description="Bound on one call incl. retries.")
    tome_max_attempts: int = Field(default=4, ge=1)
    tome_backoff_initial_s: float = Field(default=0.1, gt=0)
    tome_backoff_max_s: float = Field(default=2.0, gt=0)
    tome_breaker_failure_threshold: int = Field(default=5, ge=1)
    tome_breaker_ttl_s: float = Field(default=10.0, gt=0, description="Open state length before a probe.")
    tome_keepalive_s: float = Field(
        default=4.0, gt=0,
        description="Idle pooled TOME connections are closed after this; below the server's keep-alive "
        "(uvicorn: 5 s) so the client never sends on a connection the server is closing.",
    )
    tome_max_connections: int = Field(default=20, ge=1)
    tome_write_timeout_s: float = Field(default=5.0, gt=0)
    tome_pool_timeout_s: float = Field(default=2.0, gt=0, description="Wait for a pooled HTTP connection.")
    tome_breaker_failure_rate: float = Field(default=0.5, gt=0, le=1, description="Opens at this failure rate.")
    tome_breaker_slow_call_s: float = Field(default=3.0, gt=0, description="A call slower than this is slow.")
    tome_breaker_slow_call_rate: float = Field(default=0.8, gt=0, le=1, description="Opens at this slow rate.")
    tome_breaker_window_s: float = Field(default=30.0, gt=0, description="Sliding window for the rates.")
    tome_breaker_minimum_calls: int = Field(default=10, ge=1, description="Calls needed before rates count.")
    tome_breaker_half_open_calls: int = Field(default=2, ge=1, description="Probes; this many successes close.")
    tome_ca_bundle: Path | None = Field(
        default=None, description="CA file that TOME's certificate must chain to; unset: the system trust store."
    )
    tome_client_cert: Path | None = Field(default=None, description="Client certificate (PEM) for mutual TLS.")
    tome_client_key: Path | None = Field(default=None, description="Key of tome_client_cert (PEM).")
    tome_bearer_token_file: Path | None = Field(
        default=None,
        description="File holding the bearer token sent to TOME; must not be readable by group or others.",
    )

    # --- Refill -----------------------------------------------------------------------------------
    refill_target: int = Field(
        default=10_000, ge=0,
        description="Available pairs a refill fills up to (at least), for a program registered without its own.",
    )
    refill_batch_size: int = Field(
        default=2_500, ge=1, description="Tokens per TOME issue call (capped at tome_batch_size)."
    )
    refill_interval_s: float = Field(default=3_600.0, gt=0, description="Time between scheduled refills.")
    refill_forecast_window_s: float = Field(
        default=3 * 3_600.0, gt=0, description="Consumption rate is measured over this recent window."
    )
    refill_safety_factor: float = Field(
        default=1.5, ge=1, description="Forecast = consumption rate x refill interval x this factor."
    )
    refill_forecast_max_factor: float = Field(
        default=5.0, ge=1,
        description="The forecast raises the target to at most this many times refill_target (1: never).",
    )
    refill_sample_min_interval_s: float = Field(
        default=60.0, ge=0, description="At most one consumption sample per pool per this many seconds."
    )
    refill_sample_keep_s: float = Field(default=7 * 86_400.0, gt=0, description="Consumption samples kept.")
    refill_tome_max_rps: float = Field(default=5.0, gt=0, description="TOME requests/s a refill may send.")
    refill_tome_max_in_flight: int = Field(default=2, ge=1, description="TOME requests a refill has open at once.")
    refill_lease_ttl_s: float = Field(
        default=60.0, gt=0, description="Refill lease length; renewed every third of it while running."
    )
    refill_idempotency_retention_s: float = Field(
        default=86_400.0, gt=0,
        description="How long TOME keeps an Idempotency-Key; older unissued batches are re-issued with a warning.",
    )
    refill_service_intent_grace_s: float = Field(
        default=300.0, ge=0,
        description="A service TOME-fallback intent is recovered by the refill only after this long "
        "(its request may still store the pair before; requests are bounded by seconds).",
    )
    refill_low_watermark_ratio: float = Field(
        default=0.5, ge=0, le=1, description="Worker refills at once below this share of the target."
    )
    health_low_ratio: float = Field(default=0.20, ge=0, le=1, description="LOW below this share of the target.")
    health_critical_ratio: float = Field(
        default=0.05, ge=0, le=1, description="CRITICAL below this share of the target."
    )
    health_low_hours: float = Field(default=6.0, ge=0, description="LOW when fewer hours left at the current rate.")
    health_critical_hours: float = Field(
        default=1.0, ge=0, description="CRITICAL when fewer hours left at the current rate."
    )
    alert_sns_topic_arn: str | None = Field(default=None, description="SNS topic for pool health alerts.")
    alert_sns_endpoint_url: str | None = Field(default=None, description="SNS endpoint override (tests: moto).")
    alert_aws_region: str | None = Field(default=None, description="Region of the SNS client; unset: boto3's.")
    alert_webhook_url: str | None = Field(default=None, description="URL that receives alerts as JSON POSTs.")
    alert_timeout_s: float = Field(default=5.0, gt=0, description="Bound on one alert delivery.")
    worker_pools: list[str] = Field(
        default_factory=list,
        description="Programs the worker keeps; empty: every registered program (reread at each poll).",
    )
    worker_poll_s: float = Field(default=15.0, gt=0, description="Watermark and health poll interval.")
    worker_janitor_interval_s: float = Field(default=15.0, gt=0, description="How often lapsed leases expire.")
    worker_metrics_port: int = Field(default=9108, ge=0, le=65_535, description="Prometheus port; 0: none.")
    worker_metrics_host: str = Field(
        default="127.0.0.1", min_length=1,
        description="Address the worker's Prometheus port listens on: loopback unless set (it needs no key); "
        "0.0.0.0 for a scraper on another machine, behind a firewall.",
    )
    worker_stop_grace_s: float = Field(
        default=20.0, gt=0, description="On SIGTERM, time for the batches in flight to finish."
    )
    restore_epoch_file: Path | None = Field(
        default=None, description="Opt-in restore detection: a file outside the database holding the restore "
        "epoch (docs/runbook.md, Restore from a backup); every process of one database must share it."
    )
    restore_epoch_interval_s: float = Field(
        default=30.0, gt=0, description="How often the service and the worker advance the restore epoch."
    )
    emf_namespace: str = Field(default="tokenpool", description="CloudWatch namespace of the EMF metrics.")
    emf_interval_s: float = Field(
        default=0.0, ge=0,
        description="The API and the worker print their key figures as CloudWatch EMF lines on stdout this "
        "often (60 on AWS: CloudWatch's standard resolution); 0: never (the Lambda always prints its own).",
    )

    # --- Service ----------------------------------------------------------------------------------
    serve_host: str = Field(
        default="127.0.0.1", min_length=1,
        description="Where `tokenpool serve` listens without --host (the container image sets 0.0.0.0).",
    )
    serve_port: int = Field(default=8000, ge=1, le=65535, description="`tokenpool serve`'s port without --port.")
    pool_traffic_percent: int = Field(
        default=100, ge=0, le=100,
        description="Share of card creations served from the pool (rest: TOME). Default when the"
        " runtime_config table holds no value; `tokenpool config set pool-traffic-percent N` overrides it.",
    )
    service_runtime_config_ttl_s: float = Field(
        default=3.0, gt=0, description="How long a runtime_config value (canary share) is cached."
    )
    service_programs_ttl_s: float = Field(
        default=5.0, gt=0,
        description="How long the registered programs are cached: a removal, or a new target or namespace, "
        "reaches every instance within about this long (a program just added works at once).",
    )
    service_programs_unknown_ttl_s: float = Field(
        default=1.0, ge=0, description="A name found unregistered is refused without rereading for this long.",
    )
    service_programs_miss_reloads_per_s: float = Field(
        default=2.0, gt=0,
        description="Rereads of the programs caused by names not cached, per second at most (bursts of 5): "
        "what a flood of unknown names can cost the database.",
    )
    service_api_key_cache_ttl_s: float = Field(
        default=10.0, ge=0,
        description="How long an API key check is cached while the process hears key revocations (LISTEN/NOTIFY: "
        "a revocation drops the entry at once); 0: no cache.",
    )
    service_api_key_fallback_ttl_s: float = Field(
        default=1.0, gt=0, le=60,
        description="The cache TTL while the revocation listener is down or unconfirmed: the longest a revoked "
        "key keeps working in a process that cannot hear revocations.",
    )
    service_api_key_last_used_interval_s: float = Field(
        default=60.0, gt=0, description="A key's last use is written at most this often per process."
    )
    rate_limit_cards: str = Field(
        default="50/second", description="Card creations per API key (limits notation: N/second, N/minute, N/hour)."
    )
    rate_limit_detokenize_refs: str = Field(
        default="20000/minute", description="External refs detokenized per API key; a request costs its refs."
    )
    rate_limit_strategy: RateLimitStrategy = Field(
        default="fixed-window", description="How the limits library counts (docs/api.md, Limits)."
    )
    rate_limit_storage_url: SecretStr | None = Field(
        default=None,
        description="Shared counters for every process, e.g. redis://host:6379/0 (or async+redis://); "
        "unset: each process counts alone (the effective limit is N processes x the setting).",
    )
    rate_limit_key_prefix: str = Field(
        default="tokenpool", min_length=1, description="Prefix of every key in the shared storage."
    )
    rate_limit_storage_timeout_s: float = Field(
        default=0.25, gt=0, description="Bound on one call to the shared storage; beyond: fail open (see docs)."
    )
    rate_limit_storage_retry_s: float = Field(
        default=5.0, gt=0, description="After the shared storage failed, count in-process this long before retrying it."
    )
    max_open_reservations: int = Field(
        default=100, ge=1, description="Live reservations one API key may hold at once (RESERVED, lease not lapsed)."
    )
    service_db_timeout_s: float = Field(
        default=3.0, gt=0, description="Bound on the database part of one request; beyond it: 503."
    )
    service_readiness_timeout_s: float = Field(default=1.0, gt=0, description="Bound on /readyz's probe.")
    service_keep_alive_s: float = Field(
        default=75.0, gt=0,
        description="Idle HTTP keep-alive. Above the load balancer's idle timeout (AWS ALB: 60 s), so the "
        "balancer closes idle connections, never the service while a request is on its way in.",
    )
    service_retry_after_s: int = Field(default=5, ge=1, description="Retry-After sent with a 503.")
    service_max_body_bytes: int = Field(default=512 * 1024, ge=1024, description="Larger bodies: 413.")
    service_max_detokenize_refs: int = Field(default=1_000, ge=1, le=10_000)
    trusted_proxies: str = Field(
        default="", description="IPs and CIDRs (comma-separated) whose X-Forwarded-For names the client "
        "address in audit rows; any other peer is recorded itself.",
    )

    # --- Vault: the key-encryption key (KEK) wrapping the data and digest keys (tokenpool.vault) ---
    vault_key_provider: Literal["local", "aws-kms"] = Field(
        default="local", description="local: a key file readable by its owner only; aws-kms: a KMS key."
    )
    vault_local_key_file: Path | None = Field(
        default=None, description="The local KEK file, created on first use; unset: home / vault / kek.json."
    )
    vault_kms_key_id: str | None = Field(default=None, description="KMS key id, ARN or alias (aws-kms).")
    vault_kms_region: str | None = Field(default=None, description="KMS region; unset: the ARN's, else boto3's.")
    vault_kms_endpoint_url: str | None = Field(default=None, description="KMS endpoint override (tests: moto).")
    vault_kms_timeout_s: float = Field(
        default=5.0, gt=0, description="Bound on one KMS call: two attempts of half this each (plus backoff)."
    )
    vault_refresh_s: float = Field(
        default=30.0, gt=0,
        description="Each process rereads the wrapped keys this often: new writes move to a rotated data key.",
    )

    # --- Observability ----------------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True

    # --- Retention (`tokenpool db prune` and the worker; see docs/pool.md). token_pool is never pruned:
    # its USED pairs answer detokenize, the others are live or quarantined. Nor is an unfinished batch.
    retention_idempotency_keys_days: float = Field(
        default=7.0, ge=1,
        description="A card's Idempotency-Key is honoured this long (at least 24 h: a client retrying within a day "
        "always gets its first card); a retry with an older key creates a new card.",
    )
    retention_detokenize_audit_days: float = Field(
        default=400.0, ge=366,
        description="Detokenize audit rows kept; PCI DSS 10.5.1 asks for at least 12 months (366 days: leap years).",
    )
    retention_refill_runs_days: float = Field(default=90.0, ge=1, description="Finished refill runs kept.")
    retention_refill_batches_days: float = Field(
        default=90.0, ge=1,
        description="Done refill batches kept (never less than refill_idempotency_retention_s); unfinished: always.",
    )
    retention_chunk_size: int = Field(
        default=5_000, ge=1, le=100_000, description="Rows per DELETE: each chunk is its own short transaction."
    )
    worker_prune_interval_s: float = Field(
        default=86_400.0, gt=0, description="The worker prunes this often, the first time one interval after start."
    )

    @field_validator("rate_limit_cards", "rate_limit_detokenize_refs")
    @classmethod
    def _one_rate_limit(cls, value: str) -> str:
        try:
            items = parse_many(value)
        except ValueError as error:
            raise ValueError(f"{value!r} is no rate limit; write it like 50/second or 20000/minute") from error
        if len(items) != 1 or items[0].amount < 1:
            raise ValueError(f"{value!r}: one limit of at least 1, like 50/second")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
