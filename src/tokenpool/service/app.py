"""The FastAPI application factory.

``create_app(settings, database_url=..., tome_factory=...)`` builds an app whose lifespan opens the
database pool (without waiting for the database) and the TOME client, and closes both. Tests build
it with their own database URL and emulator URL; ``tokenpool.bootstrap.create_service_app`` builds
it from settings for ``tokenpool serve``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tokenpool.pool.errors import LeaseExpired, PoolError, ReservationConflict, UnknownReservation
from tokenpool.service.database import DatabaseUnavailable, ServiceDatabase
from tokenpool.service.middleware import BodyLimitMiddleware, RequestContextMiddleware
from tokenpool.service.problems import install_problem_handlers, problem_response
from tokenpool.service.routes import cards, detokenize, operations, reservations
from tokenpool.service.state import build_components
from tokenpool.service.tome_port import TomePort
from tokenpool.settings import Settings

TomeFactory = Callable[[], AbstractAsyncContextManager[TomePort]]

_POOL_ERROR_STATUS: dict[type[PoolError], int] = {
    UnknownReservation: 404, LeaseExpired: 410, ReservationConflict: 409,
}


def create_app(settings: Settings, *, database_url: str, tome_factory: TomeFactory) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = await ServiceDatabase.open(database_url, settings)
        try:
            async with tome_factory() as tome:
                app.state.components = build_components(settings, db, tome)
                yield
        finally:
            await db.close()

    app = FastAPI(
        title="tokenpool",
        summary="Cards with token pairs from a prefetched pool; detokenize from the database.",
        version="1.0",
        lifespan=lifespan,
    )
    install_problem_handlers(app, max_refs=settings.service_max_detokenize_refs)

    async def on_database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DatabaseUnavailable)  # or ServiceBusy: overload, the database is up
        return problem_response(
            503, exc.code, exc.detail, headers={"Retry-After": str(settings.service_retry_after_s)},
        )

    async def on_pool_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PoolError)
        status = _POOL_ERROR_STATUS.get(type(exc), 409)
        return problem_response(status, exc.code, str(exc))

    app.add_exception_handler(DatabaseUnavailable, on_database_unavailable)
    app.add_exception_handler(PoolError, on_pool_error)
    # Added last = outermost: the correlation id is set before the body limit can answer.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.service_max_body_bytes)
    app.add_middleware(RequestContextMiddleware)
    for module in (cards, detokenize, reservations, operations):
        app.include_router(module.router)
    _add_problem_schema(app)
    return app


def _add_problem_schema(app: FastAPI) -> None:
    """Adds the Problem schema the routes' error responses refer to."""
    original = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Problem"] = {
            "type": "object",
            "required": ["type", "title", "status", "detail", "code", "correlation_id"],
            "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}, "code": {"type": "string"}, "correlation_id": {"type": "string"},
            },
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
