"""The FastAPI application factory, and the one mapping from domain errors to problem responses.

``create_app(settings, database_url=..., tome_factory=...)`` builds an app whose lifespan opens the
database pool (without waiting for the database), the vault (its keys load on first use) and the TOME
client, and closes them. Tests build it with their own database URL and emulator URL;
``tokenpool.bootstrap.create_service_app`` builds it from settings for ``tokenpool serve``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from tokenpool.aws.emf_reporter import SERVICE_FIGURES, emf_reporting
from tokenpool.cards.errors import CardError, IdempotencyKeyInUse, IdempotencyKeyReused, TemporarilyUnavailable
from tokenpool.db.api_key_listener import KeyChangeListener
from tokenpool.db.database import Database
from tokenpool.db.errors import DatabaseError, DatabaseUnavailable, InvalidValue
from tokenpool.db.vault_store import Vault, VaultStore
from tokenpool.observability.logging import get_logger
from tokenpool.observability.masking import mask_text
from tokenpool.observability.metrics import RATE_LIMITED, initialise_metrics
from tokenpool.pool.errors import (
    LeaseExpired,
    PoolError,
    ReservationConflict,
    TooManyOpenReservations,
    UnknownReservation,
)
from tokenpool.programs import ProgramError, UnknownProgram
from tokenpool.service.middleware import BodyLimitMiddleware, RequestContextMiddleware
from tokenpool.service.problems import PROBLEM_SCHEMA, install_problem_handlers, problem_response
from tokenpool.service.restore_guard import RestoreGuard, RestoreGuardMiddleware, running
from tokenpool.service.routes import cards, detokenize, operations, reservations
from tokenpool.service.schemas import CreateCardRequest
from tokenpool.service.state import build_components
from tokenpool.service.token_read_audit import install_refusal_audit
from tokenpool.service.tome_port import TomePort
from tokenpool.settings import Settings
from tokenpool.vault import KeyProvider, KeyProviderError, VaultError, key_provider_from_settings

TomeFactory = Callable[[], AbstractAsyncContextManager[TomePort]]

log = get_logger("tokenpool.service")

DOCS_ASSETS = "/docs/assets"

# Every domain error the services raise, and the HTTP status it answers with. Each error carries its
# stable ``code`` (docs/api.md); the status is the HTTP layer's business alone.
_STATUS: dict[type[Exception], int] = {
    UnknownReservation: 404, LeaseExpired: 410, ReservationConflict: 409, TooManyOpenReservations: 429, PoolError: 409,
    IdempotencyKeyInUse: 409, IdempotencyKeyReused: 422, TemporarilyUnavailable: 503,
    InvalidValue: 422, UnknownProgram: 422,
}


def create_app(settings: Settings, *, database_url: str, tome_factory: TomeFactory,
               key_provider: KeyProvider | None = None, restore_guard: RestoreGuard | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # At 0 before the first request: a first 500 or fallback is then an increase. The pools the database
        # knows join at each scrape (routes/operations.py).
        initialise_metrics(pools=[settings.default_pool], cards=True, http_routes=_route_methods(app))
        db = await Database.open(database_url, settings, name="tokenpool-service",
                                 bound_s=settings.service_db_timeout_s)
        read_db: Database | None = None
        try:
            if settings.database_read_url is not None:  # a standby for detokenize's reads (service/detokenize.py)
                read_db = await Database.open(settings.database_read_url.get_secret_value(), settings,
                                              name="tokenpool-service-read", bound_s=settings.database_read_timeout_s)
            provider = key_provider or key_provider_from_settings(settings)
            vault = Vault.unloaded(VaultStore(db, provider), refresh_s=settings.vault_refresh_s)
            async with (tome_factory() as tome, emf_reporting(settings, SERVICE_FIGURES, process="api"),
                        running(restore_guard)):
                components = build_components(settings, db, vault, tome, read_db=read_db)
                # Revocations reach this process's key cache through LISTEN/NOTIFY (service/auth.py).
                listener = KeyChangeListener(database_url, settings, components.api_keys.forget,
                                             heartbeat_s=settings.service_api_key_fallback_ttl_s / 4)
                components.api_keys.listen(listener)
                if settings.service_api_key_cache_ttl_s > 0:
                    listener.start()
                app.state.components = components
                try:
                    yield
                finally:
                    await listener.close()
                    await components.api_keys.close()
                    await components.rate_limits.close()
        finally:
            if read_db is not None:
                await read_db.close()
            await db.close()

    # /docs (Swagger UI) and /redoc load their scripts and styles from this app (/docs/assets, files of the
    # fastapi-offline package), never from a CDN: they work without internet access.
    app = FastAPIOffline(
        title="tokenpool",
        summary="Cards with token pairs from a prefetched pool; detokenize from the database.",
        version="1.0",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
    )
    install_problem_handlers(app, max_refs=settings.service_max_detokenize_refs)
    install_refusal_audit(app)
    retry_after = {"Retry-After": str(settings.service_retry_after_s)}

    async def on_database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DatabaseUnavailable)  # or DatabaseBusy: overload, the database is up
        return problem_response(503, exc.code, exc.detail, headers=retry_after)

    async def on_domain_error(_request: Request, exc: Exception) -> JSONResponse:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 500)
        if status >= 500:
            log.error("unhandled.error", error_type=type(exc).__name__, error=mask_text(str(exc))[:300])
        code = getattr(exc, "code", "INTERNAL_ERROR")
        detail = getattr(exc, "detail", None) or str(exc)
        headers = None
        if isinstance(exc, TemporarilyUnavailable):
            headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        elif isinstance(exc, TooManyOpenReservations):
            RATE_LIMITED.labels("open_reservations").inc()
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
        return problem_response(status, code, detail, headers=headers)

    async def on_vault_error(_request: Request, exc: Exception) -> JSONResponse:
        log.error("vault.error", error_type=type(exc).__name__, error=mask_text(str(exc))[:300])
        if isinstance(exc, KeyProviderError):  # the key service is unreachable: try again later
            return problem_response(503, "VAULT_UNAVAILABLE", "The token vault's keys are unavailable; retry later.",
                                    headers=retry_after)
        # A stored token that fails to decrypt (moved, tampered, unknown key): never answer with a wrong
        # token; this is an integrity alarm for the operator.
        return problem_response(500, "TOKEN_UNREADABLE", "A stored token failed its integrity check; "
                                "quote the correlation id.")

    app.add_exception_handler(DatabaseUnavailable, on_database_unavailable)
    for kind in (PoolError, CardError, DatabaseError, ProgramError):
        app.add_exception_handler(kind, on_domain_error)
    app.add_exception_handler(VaultError, on_vault_error)
    if restore_guard is not None:  # a restored database unfenced: 503 before any route runs
        app.add_middleware(RestoreGuardMiddleware, guard=restore_guard)
    # Added last = outermost: the correlation id is set before the body limit can answer.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.service_max_body_bytes)
    app.add_middleware(RequestContextMiddleware)
    for module in (cards, detokenize, reservations, operations):
        app.include_router(module.router)
    _complete_openapi(app, max_refs=settings.service_max_detokenize_refs)
    return app


def _route_methods(app: FastAPI) -> list[tuple[str, str]]:
    """Every (route template, method) of the API, as the request metrics label them. From the OpenAPI
    document (built once, ~30 ms, and cached for GET /openapi.json): the public way to list included routes."""
    paths: dict[str, dict[str, object]] = app.openapi()["paths"]
    return [(path, method.upper()) for path, operations in paths.items() for method in operations]


def _complete_openapi(app: FastAPI, *, max_refs: int) -> None:
    """Adds the schemas the routes refer to but FastAPI does not see (Problem, a hand-parsed body), and the
    configured detokenize limit (the model's own bound is a hard cap)."""
    original = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        # The body of POST /v1/cards, which that route parses itself (routes/cards.py).
        components["CreateCardRequest"] = CreateCardRequest.model_json_schema(
            ref_template="#/components/schemas/{model}")
        components["Problem"] = PROBLEM_SCHEMA
        components["DetokenizeRequest"]["properties"]["external_refs"]["maxItems"] = max_refs
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
