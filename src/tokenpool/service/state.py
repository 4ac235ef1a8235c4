"""The service's components, built once per app in its lifespan and reached from handlers."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from tokenpool.db.audit_store import AuditStore
from tokenpool.db.card_store import CardStore
from tokenpool.db.database import Database
from tokenpool.db.journal_store import JournalStore
from tokenpool.db.monitoring_store import MonitoringStore
from tokenpool.db.pool_store import PostgresTokenPool
from tokenpool.db.program_store import ProgramStore
from tokenpool.db.token_lookup_store import TokenLookupStore
from tokenpool.db.vault_store import Vault
from tokenpool.issuance import TomePairs
from tokenpool.programs import ProgramCatalog
from tokenpool.service.auth import ApiKeys
from tokenpool.service.cards import CardService
from tokenpool.service.client_address import ClientAddresses, parse_trusted_proxies
from tokenpool.service.detokenize import DetokenizeService
from tokenpool.service.rate_limits import RateLimits
from tokenpool.service.reservations import ReservationService
from tokenpool.service.runtime_config import RuntimeConfig
from tokenpool.service.token_read_audit import TokenReadAudit
from tokenpool.service.tome_port import TomePort
from tokenpool.settings import Settings


@dataclass(frozen=True, slots=True)
class Components:
    settings: Settings
    db: Database
    vault: Vault
    store: PostgresTokenPool
    samples: MonitoringStore
    tome: TomePort
    programs: ProgramCatalog
    api_keys: ApiKeys
    rate_limits: RateLimits
    runtime_config: RuntimeConfig
    cards: CardService
    detokenize: DetokenizeService
    reservations: ReservationService
    token_reads: TokenReadAudit
    client_addresses: ClientAddresses


def build_components(settings: Settings, db: Database, vault: Vault, tome: TomePort, *,
                     read_db: Database | None = None) -> Components:
    """``read_db``: the pool on ``database_read_url`` (a standby) that detokenize reads first, or None."""
    store = PostgresTokenPool(db, vault)
    journal = JournalStore(db, store, vault)
    pairs = TomePairs(tome, journal, settings.tome_ns1, settings.tome_ns2)  # each request: its program's (on)
    programs = ProgramCatalog(
        ProgramStore(db).registered, ttl_s=settings.service_programs_ttl_s,
        unknown_ttl_s=settings.service_programs_unknown_ttl_s,
        miss_reloads_per_s=settings.service_programs_miss_reloads_per_s,
    )
    runtime_config = RuntimeConfig(
        db, default_percent=settings.pool_traffic_percent, ttl_s=settings.service_runtime_config_ttl_s
    )
    audit = AuditStore()
    return Components(
        settings=settings,
        db=db,
        vault=vault,
        store=store,
        samples=MonitoringStore(db),
        tome=tome,
        programs=programs,
        api_keys=ApiKeys(db, cache_ttl_s=settings.service_api_key_cache_ttl_s,
                         fallback_ttl_s=settings.service_api_key_fallback_ttl_s,
                         last_used_interval_s=settings.service_api_key_last_used_interval_s),
        rate_limits=RateLimits.from_settings(settings),
        runtime_config=runtime_config,
        cards=CardService(db, store, CardStore(vault), pairs, vault, runtime_config, settings, programs),
        detokenize=DetokenizeService(db, TokenLookupStore(vault), audit, vault, tome, settings, programs,
                                     replica=read_db),
        reservations=ReservationService(db, store, pairs, settings, programs),
        token_reads=TokenReadAudit(db, audit, vault.hexdigest),
        client_addresses=ClientAddresses(parse_trusted_proxies(settings.trusted_proxies)),
    )


def components(request: Request) -> Components:
    found: Components = request.app.state.components
    return found
