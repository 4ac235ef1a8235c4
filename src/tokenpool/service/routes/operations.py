"""Operations: /healthz, /readyz, /metrics and GET /v1/pools/{program}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tokenpool.db.errors import DatabaseUnavailable
from tokenpool.db.program_store import ProgramStore
from tokenpool.monitoring.health import check_pool_health
from tokenpool.observability.logging import get_logger
from tokenpool.observability.metrics import POOL_PAIRS, forget_pools, initialise_metrics
from tokenpool.pool.model import PairStatus, PoolStats
from tokenpool.service.auth import METRICS_READ, POOLS_READ, Principal
from tokenpool.service.problems import ProblemError
from tokenpool.service.routes.docs import AUTHENTICATED, UNKNOWN_PROGRAM, ProgramName, problems
from tokenpool.service.schemas import HealthResponse, PoolResponse, ReadinessResponse
from tokenpool.service.security import require
from tokenpool.service.state import Components, components

router = APIRouter(tags=["operations"])
log = get_logger("tokenpool.service.operations")


def _publish(stats: PoolStats) -> None:
    for status in PairStatus:
        POOL_PAIRS.labels(stats.pool, status.value.lower()).set(stats.count(status))


@router.get("/healthz", operation_id="getHealth")
async def healthz() -> HealthResponse:
    """The process is alive (no dependency is checked)."""
    return HealthResponse(status="ok")


@router.get("/readyz", operation_id="getReadiness", responses=problems(503, details={
    503: "`DATABASE_UNAVAILABLE`: the database did not answer in time (the problem adds `database` and "
         "`tome_breaker`)."}))
async def readyz(request: Request) -> ReadinessResponse:
    """Ready when the database answers within a short timeout; reports TOME's breaker state."""
    found = components(request)
    breaker = found.tome.breaker_state()
    if not await found.db.ping(found.settings.service_readiness_timeout_s):
        raise ProblemError(
            503, "DATABASE_UNAVAILABLE", "The database did not answer in time.",
            headers={"Retry-After": str(found.settings.service_retry_after_s)},
            extra={"database": "unavailable", "tome_breaker": breaker},
        )
    return ReadinessResponse(status="ready", database="ok", tome_breaker=breaker)


@router.get("/metrics", response_class=Response, operation_id="getMetrics", responses={
    200: {"description": "Prometheus text exposition.",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
    **problems(*AUTHENTICATED, details={403: "The scope needed: `metrics:read`."})})
async def metrics(request: Request, _principal: Annotated[Principal, Depends(require(METRICS_READ))]) -> Response:
    """Prometheus exposition; needs a key with scope metrics:read (scrape with a bearer token)."""
    await _refresh_pool_gauges(components(request))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/pools/{program}", response_model=PoolResponse, tags=["pools"], operation_id="getPool",
            responses=problems(*AUTHENTICATED, 422, details={
                403: "The scope needed: `pools:read`.", 422: UNKNOWN_PROGRAM}))
async def pool(
    program: ProgramName,
    request: Request,
    _principal: Annotated[Principal, Depends(require(POOLS_READ))],
) -> PoolResponse:
    """Counts by status (cheap: trigger-kept counters) and health, as `tokenpool health` computes them, against
    the program's own refill target. A registered program whose pool is still empty is EMPTY; an unregistered
    one is refused (422 UNKNOWN_PROGRAM)."""
    found = components(request)
    registered = await found.programs.require(program)
    async with found.db.guard():
        health = await check_pool_health(found.store, found.samples, found.settings, program, publish=False,
                                          target=registered.target_in(found.settings))
    return PoolResponse.model_validate(health.as_dict())


async def _refresh_pool_gauges(found: Components) -> None:
    """The pool gauges of the registered programs (and of none other: a program removed since the last
    scrape loses its series)."""
    try:
        async with found.db.guard(found.settings.service_readiness_timeout_s):
            names = [program.name for program in await found.programs.registered()]
            initialise_metrics(pools=names, cards=True)  # a program's first fallback is then an increase
            counts = await ProgramStore(found.db).pair_counts()  # every program's, in one statement
            for name in names:
                _publish(counts.get(name) or PoolStats(name, {}))
    except DatabaseUnavailable:
        log.warning("metrics.pool_gauges_stale")  # the scrape still returns every other metric
        return
    forget_pools(set(_PUBLISHED) - set(names))
    _PUBLISHED.clear()
    _PUBLISHED.update(names)


_PUBLISHED: set[str] = set()  # pools whose gauges this process publishes
