"""AWS Lambda handler for an EventBridge schedule: ``tokenpool.entrypoints.lambda_refill.handler``.

Why a module-level event loop: psycopg's async pool and httpx's client are bound to the loop that
created them. ``asyncio.run`` makes a new loop per call, which would force a new database connection
and TOME connection pool on every invocation. One loop per container, kept across warm invocations
(Lambda freezes the process between them), lets the pool and the client be reused; the pool checks
each connection before handing it out, since a frozen container's connection may have been dropped.

The event: the EventBridge scheduled event (``detail`` is ``{}``): every registered program is refilled,
one after the other, until the invocation's deadline approaches (the programs not started by then are
listed as ``skipped``; the next invocation starts over). A rule with a constant input may name one program,
``{"pool": "...", "count": N}`` at the top level or in ``detail`` (``count`` only with ``pool``); an
unregistered one fails the invocation (:class:`tokenpool.programs.UnknownProgram`). Logs are JSON lines on
stderr; metrics are EMF lines on stdout (CloudWatch Logs turns them into metrics), per program.

The return value: for a named program its run's summary (as ``tokenpool refill --json``) with its health;
for every program ``{"outcome", "added", "tome_requests", "programs": [summary, ...], "skipped": [...]}``,
whose outcome is the worst of the runs (failed, lease_lost, stopped, skipped_lease_held, succeeded; a
program skipped for the deadline counts as stopped).

A deployment may run the Lambda and no worker, so each invocation also does the worker's other duties
for each program, best effort (a failure is logged, never fails the invocation): it quarantines lapsed
reservations before the refill, and after it checks the pool's health and alerts on a change
(``TOKENPOOL_ALERT_SNS_TOPIC_ARN`` / ``TOKENPOOL_ALERT_WEBHOOK_URL``), e.g. a refill that could not fill.
A delivery that failed is tried again by the next invocation; each delivery is counted as EMF
(``tokenpool_pool_alerts`` by pool, channel and outcome), the Lambda having no scrape endpoint.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from tokenpool import bootstrap
from tokenpool.aws.emf import emit
from tokenpool.monitoring.alerts import Alerter, Delivery
from tokenpool.monitoring.health import check_pool_health
from tokenpool.observability.logging import configure_logging, get_logger
from tokenpool.pool.model import PairStatus
from tokenpool.programs import UnknownProgram
from tokenpool.refill.job import RefillDeps, refill_pool
from tokenpool.refill.model import Outcome, RefillResult, Trigger, worst_outcome
from tokenpool.refill.reporting import alert_documents, emf_documents
from tokenpool.settings import Settings, get_settings
from tokenpool.tome.client import TomeClient

log = get_logger(__name__)

# Stop starting new batches this long before Lambda's own timeout, so the run ends recorded and
# its lease released instead of being frozen mid-batch (which is safe, but leaves the lease to lapse).
DEADLINE_MARGIN_S = 10.0
# The health check after the run must end this long before Lambda's timeout.
HEALTH_CHECK_MARGIN_S = 2.0

_loop: asyncio.AbstractEventLoop | None = None
_resources: tuple[RefillDeps, TomeClient] | None = None
_alerter: Alerter | None = None
_logging_configured = False


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _logging_configured
    settings = get_settings()
    if not _logging_configured:
        configure_logging(settings.log_level, json=True)
        _logging_configured = True
    request_id = str(getattr(context, "aws_request_id", "") or "")
    structlog.contextvars.clear_contextvars()
    # The request id as the correlation id: it is what CloudWatch shows for the invocation.
    structlog.contextvars.bind_contextvars(correlation_id=request_id or None)
    raw_detail = event.get("detail")
    detail: dict[str, Any] = raw_detail if isinstance(raw_detail, dict) else {}
    named = event.get("pool") or detail.get("pool")
    pool = str(named) if named else None
    raw_count = event.get("count", detail.get("count"))
    count = int(raw_count) if raw_count is not None else None
    log.info("lambda.invoked", pool=pool or "every registered program", count=count, source=event.get("source"),
             detail_type=event.get("detail-type"), scheduled_at=event.get("time"), resources=event.get("resources"))
    if count is not None and pool is None:
        log.error("lambda.refused", reason="count without pool")
        raise ValueError("the event's count adds exactly N pairs to one program: name it with pool")

    loop = _event_loop()
    deps = loop.run_until_complete(_deps(settings))
    # Each invocation: a database restored from a backup and not fenced raises RestoreFenceRequired (the
    # invocation fails with its one line) before anything is loaded (docs/runbook.md, Restore from a backup).
    bootstrap.advance_restore_epoch(settings)
    stop = asyncio.Event()
    remaining_ms = _remaining_ms(context)
    timer = None
    if remaining_ms is not None:
        timer = loop.call_later(max(0.0, remaining_ms / 1000 - DEADLINE_MARGIN_S), stop.set)
    try:
        loop.run_until_complete(_expire_lapsed_leases(deps))
        if pool is not None:
            return _refill_one(loop, deps, settings, context, pool, count, stop)
        names = [program.name for program in loop.run_until_complete(deps.programs.registered())]
        summaries: list[dict[str, Any]] = []
        skipped: list[str] = []
        for name in names:
            if stop.is_set():
                skipped.append(name)
                continue
            try:
                summaries.append(_refill_one(loop, deps, settings, context, name, None, stop))
            except UnknownProgram:  # removed since the list was read
                continue
    finally:
        if timer is not None:
            timer.cancel()
    if skipped:
        log.warning("lambda.programs_skipped", programs=skipped, reason="the invocation's deadline is near")
    outcomes = [Outcome(summary["outcome"]) for summary in summaries] + [Outcome.STOPPED] * bool(skipped)
    return {
        "outcome": worst_outcome(outcomes).value,
        "added": sum(summary["added"] for summary in summaries),
        "tome_requests": sum(summary["tome_requests"] for summary in summaries),
        "programs": summaries,
        "skipped": skipped,
    }


def _refill_one(loop: asyncio.AbstractEventLoop, deps: RefillDeps, settings: Settings, context: Any, pool: str,
                count: int | None, stop: asyncio.Event) -> dict[str, Any]:
    """One program's run, its metrics and its health: the summary of a run."""
    result: RefillResult = loop.run_until_complete(
        refill_pool(deps, pool, count=count, trigger=Trigger.LAMBDA, stop=stop))
    counts = loop.run_until_complete(_counts(deps, pool))
    emit(settings.emf_namespace, emf_documents(result, counts))
    summary = result.as_dict()
    remaining_ms = _remaining_ms(context)
    budget_s = None if remaining_ms is None else remaining_ms / 1000 - HEALTH_CHECK_MARGIN_S
    status, deliveries = loop.run_until_complete(_check_health(deps, settings, pool, budget_s))
    summary["health"] = status
    emit(settings.emf_namespace, alert_documents(deliveries))
    return summary


def _event_loop() -> asyncio.AbstractEventLoop:
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop


async def _deps(settings: Settings) -> RefillDeps:
    global _resources
    if _resources is None:
        _resources = await bootstrap.open_refill_for_lambda(settings)
        log.info("lambda.cold_start_resources_opened")
    return _resources[0]


async def _expire_lapsed_leases(deps: RefillDeps) -> None:
    try:
        expired = await deps.store.expire_leases()
    except Exception as exc:
        log.warning("lambda.expire_leases_failed", error=f"{type(exc).__name__}: {exc}")
        return
    if expired:
        log.info("lambda.leases_expired", count=expired)


async def _check_health(deps: RefillDeps, settings: Settings, pool: str,
                        budget_s: float | None) -> tuple[str | None, list[Delivery]]:
    """The pool's health after the run (OK unless the refill could not fill), alerting on a change, and the
    alert deliveries made.

    Bounded by what is left of the invocation: Lambda killing it mid-send would fail the invocation
    (EventBridge retries it). A delivery cut short that way, or one that failed, is recorded as not
    delivered: the next invocation sends it again.
    """
    global _alerter
    if budget_s is not None and budget_s < 1.0:
        log.warning("lambda.health_check_skipped", pool=pool, reason="the invocation's deadline is too close")
        return None, []
    deliveries: list[Delivery] = []
    try:
        async with asyncio.timeout(budget_s):
            program = await deps.programs.get(pool)
            target = program.target_in(settings) if program is not None else None
            health = await check_pool_health(deps.store, deps.samples, settings, pool, target=target)
            if settings.alert_sns_topic_arn or settings.alert_webhook_url:
                if _alerter is None:
                    _alerter = Alerter(settings)
                deliveries = await _alerter.on_health(deps.samples, health)
    except Exception as exc:
        log.warning("lambda.health_check_failed", pool=pool, error=f"{type(exc).__name__}: {exc}")
        return None, deliveries
    return health.status.value, deliveries


async def _counts(deps: RefillDeps, pool: str) -> dict[str, int] | None:
    try:
        stats = await deps.store.stats(pool)
    except Exception as exc:
        log.warning("lambda.stats_failed", pool=pool, error=str(exc))
        return None
    return {status.value.lower(): stats.count(status) for status in PairStatus}


def _remaining_ms(context: Any) -> float | None:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return float(remaining()) if callable(remaining) else None


async def close_resources() -> None:
    """Closes the cached pool and client (tests; Lambda simply discards the container)."""
    global _resources, _alerter
    if _alerter is not None:
        await _alerter.aclose()
        _alerter = None
    if _resources is not None:
        deps, client = _resources
        _resources = None
        await client.aclose()
        await deps.db.close()
