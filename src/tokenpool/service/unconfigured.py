"""The service started without the configuration it needs: alive, never ready, and saying why.

``tokenpool serve`` with no ``TOKENPOOL_TOME_URL``, or no ``TOKENPOOL_DATABASE_URL`` where no embedded
PostgreSQL can stand in (the container image has none), serves this app instead of exiting:
``GET /healthz`` answers 200 (the process is alive), ``GET /readyz`` and every other route answer a 503
problem ``NOT_CONFIGURED`` that names each missing setting, so a readiness probe keeps the instance out
of rotation and whoever looks at it sees what to set. Nothing here touches a database or TOME.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import FastAPI

from tokenpool.service.middleware import RequestContextMiddleware
from tokenpool.service.problems import ProblemError, install_problem_handlers

NOT_CONFIGURED = "NOT_CONFIGURED"
RETRY_AFTER_S = 30  # a restart with the setting is what fixes it; clients should not hammer meanwhile


@dataclass(frozen=True, slots=True)
class MissingSetting:
    """An environment variable the service needs, and why it is needed or what is wrong with it."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def not_configured_detail(missing: Sequence[MissingSetting]) -> str:
    return "The service is not configured: " + "; ".join(str(m) for m in missing) + ". See docs/deploy.md."


def create_unconfigured_app(missing: Sequence[MissingSetting]) -> FastAPI:
    if not missing:
        raise ValueError("create_unconfigured_app needs at least one missing setting")
    detail = not_configured_detail(missing)
    names = [m.name for m in missing]
    app = FastAPI(title="tokenpool (not configured)", version="1.0", openapi_url=None, docs_url=None,
                  redoc_url=None)
    install_problem_handlers(app, max_refs=0)
    app.add_middleware(RequestContextMiddleware)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive (no dependency is checked)."""
        return {"status": "ok"}

    @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    async def not_configured(path: str) -> None:
        raise ProblemError(503, NOT_CONFIGURED, detail, headers={"Retry-After": str(RETRY_AFTER_S)},
                           extra={"missing": names})

    return app
