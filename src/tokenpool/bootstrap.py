"""The composition root: the one place that turns settings into concrete adapters.

Every entry point (CLI, API, worker, Lambda) starts here, so each stays a few lines long.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from tokenpool.aws.secrets import read_database_url
from tokenpool.db import migrate, roles
from tokenpool.db.database import Database, connection_kwargs
from tokenpool.db.embedded import APP_ROLE, embedded_available, start_embedded
from tokenpool.db.journal_store import JournalStore
from tokenpool.db.lease_store import LeaseStore
from tokenpool.db.monitoring_store import MonitoringStore
from tokenpool.db.pool_store import PostgresTokenPool
from tokenpool.db.program_store import ProgramStore, ensure_program
from tokenpool.db.restore_fence import advance_restore_epoch as _advance_restore_epoch
from tokenpool.db.vault_store import Vault, VaultStore, ensure_keys, load_keyring_sync
from tokenpool.observability.logging import get_logger
from tokenpool.refill.job import RefillDeps
from tokenpool.settings import Settings
from tokenpool.tome.client import TomeClient
from tokenpool.vault import key_provider_from_settings

if TYPE_CHECKING:  # fastapi is imported only when the service is built: the CLI starts faster without it
    from fastapi import FastAPI

    from tokenpool.service.unconfigured import MissingSetting


log = get_logger(__name__)


def uses_external_database(settings: Settings) -> bool:
    """Whether the app role's URL is configured (directly or as a secret), rather than the embedded server's."""
    return settings.database_url is not None or bool(settings.database_url_secret_arn)


def database_url(settings: Settings) -> str:
    """The app role's URL (service, worker, refill, Lambda): ``TOKENPOOL_DATABASE_URL``, or the secret
    ``TOKENPOOL_DATABASE_URL_SECRET_ARN`` names (read once per process), or the embedded server's
    ``tokenpool_app`` (the server started if it is not running)."""
    if settings.database_url is not None:
        if settings.database_url_secret_arn:
            raise ValueError("TOKENPOOL_DATABASE_URL and TOKENPOOL_DATABASE_URL_SECRET_ARN are both set: "
                             "set one (which database was meant cannot be guessed)")
        return settings.database_url.get_secret_value()
    if settings.database_url_secret_arn:
        return _secret_database_url(settings.database_url_secret_arn, settings.secrets_endpoint_url,
                                    settings.secrets_timeout_s)
    if settings.database_admin_url is not None:
        raise ValueError("TOKENPOOL_DATABASE_ADMIN_URL is set but not TOKENPOOL_DATABASE_URL (the app role's URL)")
    return start_embedded(settings.home).app_url


@lru_cache(maxsize=4)
def _secret_database_url(secret_arn: str, endpoint_url: str | None, timeout_s: float) -> str:
    # Once per process: a Lambda container reads it at its cold start, a service at start. A rotated
    # password reaches a process when it restarts (a new Lambda container, a new task).
    url = read_database_url(secret_arn, endpoint_url=endpoint_url, timeout_s=timeout_s)
    log.info("db.url_from_secret", secret=secret_arn)
    return url


def app_role(settings: Settings) -> str:
    """The role the grants go to; on the embedded server always its own app role."""
    external = uses_external_database(settings) or settings.database_admin_url is not None
    return settings.database_app_role if external else APP_ROLE


def admin_database_url(settings: Settings) -> str:
    """The owner role's URL (migrations, grants, key rotation, ``db prune``, ``audit verify``):
    ``TOKENPOOL_DATABASE_ADMIN_URL``; without it ``TOKENPOOL_DATABASE_URL`` (one role for everything, with a
    warning); unset both: the embedded server's ``tokenpool_owner``."""
    if settings.database_admin_url is not None:
        return settings.database_admin_url.get_secret_value()
    if uses_external_database(settings):
        log.warning("db.one_role", reason="TOKENPOOL_DATABASE_ADMIN_URL is unset: the schema is managed with "
                    "TOKENPOOL_DATABASE_URL, whose role then owns it; the app role should own nothing "
                    "(docs/security.md, Roles and grants)")
        return database_url(settings)
    return start_embedded(settings.home).owner_url


def upgrade_database(settings: Settings) -> list[migrate.Migration]:
    """As the owner role: pending migrations (one that must encrypt stored tokens gets the vault's keys), the
    vault's first keys, the program ``TOKENPOOL_DEFAULT_POOL`` (so that the quick start and the commands that
    default to it work; one removed on purpose stays removed), then the app role's grants (every time:
    idempotent)."""
    provider = key_provider_from_settings(settings)
    context = migrate.MigrationContext(keyring=lambda conn: load_keyring_sync(conn, provider))
    url = admin_database_url(settings)
    applied = migrate.upgrade(url, context)
    ensure_keys(url, provider)
    if ensure_program(url, settings.default_pool):
        log.info("db.program_registered", program=settings.default_pool, reason="TOKENPOOL_DEFAULT_POOL")
    roles.apply_grants(url, app_role(settings))
    return applied


def advance_restore_epoch(settings: Settings, url: str | None = None) -> int | None:
    """The restore check every process runs at its start (the service and the worker also periodically):
    advances the restore epoch in the database and in ``TOKENPOOL_RESTORE_EPOCH_FILE``; None when that is
    unset (detection off). Raises db.restore_fence.RestoreFenceRequired on a database restored from a backup
    and not fenced yet (`tokenpool db after-restore`)."""
    if settings.restore_epoch_file is None:
        return None
    kwargs = connection_kwargs(settings, "tokenpool-restore-epoch")
    return _advance_restore_epoch(url or database_url(settings), settings.restore_epoch_file, kwargs)


@dataclass(frozen=True, slots=True)
class Backend:
    """The database and everything built on it that the CLI, the refill and the worker use."""

    url: str
    db: Database
    vault_store: VaultStore
    vault: Vault
    store: PostgresTokenPool
    journal: JournalStore
    leases: LeaseStore
    samples: MonitoringStore
    programs: ProgramStore


async def _backend(settings: Settings, url: str, db: Database) -> Backend:
    vault_store = VaultStore(db, key_provider_from_settings(settings))
    vault = await Vault.load(vault_store, refresh_s=settings.vault_refresh_s)
    store = PostgresTokenPool(db, vault)
    return Backend(url, db, vault_store, vault, store, JournalStore(db, store, vault), LeaseStore(db),
                   MonitoringStore(db), ProgramStore(db))


@asynccontextmanager
async def open_database(settings: Settings, *, max_size: int | None = None) -> AsyncIterator[Backend]:
    """The database for a command: waits for it, no time bound but each statement's own."""
    async with open_backend(database_url(settings), settings, max_size=max_size) as backend:
        yield backend


@asynccontextmanager
async def open_admin_database(settings: Settings) -> AsyncIterator[Backend]:
    """The database as its owner, for operator commands (key rotation, re-encryption, retention)."""
    async with open_backend(admin_database_url(settings), settings, min_size=1, max_size=2) as backend:
        yield backend


@asynccontextmanager
async def open_backend(url: str, settings: Settings, *, min_size: int | None = None,
                       max_size: int | None = None) -> AsyncIterator[Backend]:
    """:func:`open_database` on a given URL (tests, benchmarks)."""
    db = await Database.open(url, settings, wait=True, min_size=min_size, max_size=max_size)
    try:
        yield await _backend(settings, url, db)
    finally:
        await db.close()


def create_service_app(settings: Settings) -> FastAPI:
    """The HTTP service (``tokenpool serve``) wired to the configured database and TOME.

    Missing a setting it needs, the service still starts, but only as an app that answers ``/healthz`` and
    says what is missing on ``/readyz`` (503) and everywhere else (service/unconfigured.py): a container
    started without its environment is then alive, never ready, and tells why (and in its log)."""
    missing = missing_service_settings(settings)
    if missing:
        from tokenpool.service.unconfigured import create_unconfigured_app

        log.error("service.not_configured", missing=[m.name for m in missing], reasons=[m.reason for m in missing],
                  effect="/readyz and every route but /healthz answer 503 NOT_CONFIGURED (docs/deploy.md)")
        return create_unconfigured_app(missing)
    from tokenpool.service.app import create_app  # deferred: see TYPE_CHECKING above
    from tokenpool.service.restore_guard import RestoreGuard

    url = database_url(settings)
    guard = None
    if settings.restore_epoch_file is not None:  # opt-in restore detection (docs/runbook.md)
        guard = RestoreGuard(lambda: advance_restore_epoch(settings, url) or 0, settings.restore_epoch_interval_s,
                             settings.service_retry_after_s)
    return create_app(settings, database_url=url, tome_factory=lambda: TomeClient(settings), restore_guard=guard)


def missing_service_settings(settings: Settings) -> list[MissingSetting]:
    """What the service lacks to start: TOME's URL; a database URL unless an embedded server can stand in."""
    from tokenpool.service.unconfigured import MissingSetting

    missing: list[MissingSetting] = []
    if not uses_external_database(settings):  # neither the URL nor the secret holding it
        if settings.database_admin_url is not None:
            missing.append(MissingSetting("TOKENPOOL_DATABASE_URL", "the app role's URL; only "
                                          "TOKENPOOL_DATABASE_ADMIN_URL, the owner's, is set"))
        elif not embedded_available():
            missing.append(MissingSetting("TOKENPOOL_DATABASE_URL", "the app role's PostgreSQL URL; "
                                          "embedded PostgreSQL, tokenpool[embedded], is not installed"))
    if not settings.tome_url:
        missing.append(MissingSetting("TOKENPOOL_TOME_URL", "the TOME base URL"))
    return missing


def refill_deps(settings: Settings, backend: Backend, tome: TomeClient) -> RefillDeps:
    return RefillDeps(settings, backend.db, backend.store, backend.journal, backend.leases, backend.samples, tome,
                      backend.programs)


@asynccontextmanager
async def open_refill(settings: Settings, *, max_size: int = 6) -> AsyncIterator[RefillDeps]:
    """Database + TOME client, for the refill CLI and the worker."""
    if not settings.tome_url:
        raise ValueError("TOKENPOOL_TOME_URL is not set: the refill job needs TOME (or its emulator)")
    # A restored database unfenced: its journal may hold batches loaded and handed out after the backup point.
    await asyncio.to_thread(advance_restore_epoch, settings)
    async with open_database(settings, max_size=max_size) as backend, TomeClient(settings) as client:
        yield refill_deps(settings, backend, client)


async def open_refill_for_lambda(settings: Settings) -> tuple[RefillDeps, TomeClient]:
    """Long-lived resources for a Lambda container (closed only when the container dies).

    The pool checks each connection as it is handed out: between invocations Lambda freezes the
    process for minutes or hours, and a connection the server or a NAT timed out meanwhile must be
    replaced, not used.
    """
    if not settings.tome_url:
        raise ValueError("TOKENPOOL_TOME_URL is not set: the refill job needs TOME")
    url = database_url(settings)
    db = await Database.open(url, settings, wait=True, min_size=1, max_size=3, check_on_checkout=True,
                             name="tokenpool-lambda")
    client = TomeClient(settings)
    return refill_deps(settings, await _backend(settings, url, db), client), client
