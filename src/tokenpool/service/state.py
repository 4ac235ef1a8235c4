"""The service's components, built once per app in its lifespan and reached from handlers."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from tokenpool.db.pool_store import PostgresTokenPool
from tokenpool.service.auth import ApiKeys
from tokenpool.service.cards import CardService
from tokenpool.service.database import ServiceDatabase
from tokenpool.service.detokenize import DetokenizeService
from tokenpool.service.reservations import ReservationService
from tokenpool.service.runtime_config import RuntimeConfig
from tokenpool.service.tome_port import TomePort
from tokenpool.settings import Settings


@dataclass(frozen=True, slots=True)
class Components:
    settings: Settings
    db: ServiceDatabase
    store: PostgresTokenPool
    tome: TomePort
    api_keys: ApiKeys
    runtime_config: RuntimeConfig
    cards: CardService
    detokenize: DetokenizeService
    reservations: ReservationService


def build_components(settings: Settings, db: ServiceDatabase, tome: TomePort) -> Components:
    store = PostgresTokenPool(db.pool)
    runtime_config = RuntimeConfig(
        db, default_percent=settings.pool_traffic_percent, ttl_s=settings.service_runtime_config_ttl_s
    )
    return Components(
        settings=settings,
        db=db,
        store=store,
        tome=tome,
        api_keys=ApiKeys(db.pool, cache_ttl_s=settings.service_api_key_cache_ttl_s),
        runtime_config=runtime_config,
        cards=CardService(db, store, tome, runtime_config, settings),
        detokenize=DetokenizeService(db, tome, settings),
        reservations=ReservationService(db, store, tome, settings),
    )


def components(request: Request) -> Components:
    found: Components = request.app.state.components
    return found
