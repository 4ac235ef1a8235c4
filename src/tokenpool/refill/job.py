"""``refill_pool``: the one refill routine behind the CLI, the Lambda handler and the worker.

A run is for one registered program (its pool): it reads the program's refill target and TOME namespaces
when it starts (an unregistered name raises :class:`tokenpool.programs.UnknownProgram`, before any lease or
TOME call). Then: take the pool's lease (or report who holds it) -> finish every batch an earlier run left
unfinished -> decide how many pairs to add (target = max(configured, capped forecast), or exactly --count)
-> issue, record, tokenize and load them batch by batch, within the TOME budget -> record the run.
Crash safety comes from the TOME journal (tokenpool.issuance); see docs/refill.md.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from tokenpool.db.database import Database
from tokenpool.db.journal_store import JournalStore, RunRecord, RunResultRecord, UnfinishedBatch
from tokenpool.db.lease_store import LeaseStore
from tokenpool.db.monitoring_store import MonitoringStore
from tokenpool.db.pool_store import PostgresTokenPool
from tokenpool.db.program_store import ProgramStore
from tokenpool.issuance import TomePairs
from tokenpool.monitoring.consumption import observe
from tokenpool.monitoring.forecast import fill_target
from tokenpool.observability.logging import get_logger
from tokenpool.observability.masking import mask_text
from tokenpool.observability.metrics import (
    POOL_AVAILABLE_BEFORE_REFILL,
    POOL_PAIRS,
    REFILL_DURATION,
    REFILL_LAST_SUCCESS,
    REFILL_PAIRS_ADDED,
    REFILL_RUNS,
    REFILL_TOME_REQUESTS,
)
from tokenpool.pool.model import PairStatus, TokenPair
from tokenpool.programs import UnknownProgram
from tokenpool.refill.budget import BudgetedTome, CountingTome, TomeBudget
from tokenpool.refill.lease import RefillLease, new_holder_id
from tokenpool.refill.model import LeaseHeld, LeaseLost, Outcome, RefillPlan, RefillResult, Trigger
from tokenpool.refill.plan import batch_sizes, pairs_to_add
from tokenpool.settings import Settings

log = get_logger(__name__)

Progress = Callable[[int, int], None]
"""``progress(pairs_loaded_so_far, pairs_planned)``, called after each batch."""


@dataclass(frozen=True, slots=True)
class RefillDeps:
    settings: Settings
    db: Database
    store: PostgresTokenPool
    journal: JournalStore
    leases: LeaseStore
    samples: MonitoringStore
    tome: CountingTome
    programs: ProgramStore


async def refill_pool(
    deps: RefillDeps,
    pool: str,
    *,
    count: int | None = None,
    trigger: Trigger = Trigger.CLI,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
) -> RefillResult:
    """One refill run of the registered program ``pool``. Never raises for a failed run: the result says how
    it ended (a cancellation, e.g. the worker's shutdown, is recorded as ``stopped`` and re-raised). Raises
    :class:`UnknownProgram` when ``pool`` is not a registered program: nothing was done."""
    run = _Run(deps, pool, count, trigger, stop or asyncio.Event(), progress)
    return await run.execute()


class _Run:
    def __init__(self, deps: RefillDeps, pool: str, count: int | None, trigger: Trigger,
                 stop: asyncio.Event, progress: Progress | None) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.pool = pool
        self.explicit_count = count
        self.trigger = trigger
        self.stop = stop
        self.progress = progress
        self.journal = deps.journal
        self.budget = TomeBudget(self.settings.refill_tome_max_rps, self.settings.refill_tome_max_in_flight)
        # The program's own target and namespaces replace these when the run starts (_resolve_program).
        self.configured_target = self.settings.refill_target
        self.pairs = TomePairs(BudgetedTome(deps.tome, self.budget), deps.journal, self.settings.tome_ns1,
                               self.settings.tome_ns2)
        self.result = RefillResult(run_id=uuid.uuid4(), pool=pool, outcome=Outcome.RUNNING)
        self.lease = RefillLease(deps.leases, pool, new_holder_id(), self.settings.refill_lease_ttl_s)
        self.batch_size = min(self.settings.refill_batch_size, self.settings.tome_batch_size)
        self._loaded = 0
        self._planned = 0

    async def execute(self) -> RefillResult:
        started = time.monotonic()
        requests_before = self.deps.tome.requests_made
        try:
            await self._resolve_program()
            log.info("refill.run_started", pool=self.pool, run_id=str(self.result.run_id),
                     trigger=self.trigger.value, holder=self.lease.holder, count=self.explicit_count,
                     configured_target=self.configured_target, namespaces=self.pairs.namespaces)
            async with self.lease.held():
                await self.journal.start_run(self._run_record(Outcome.RUNNING))
                try:
                    await self._work()
                except asyncio.CancelledError:
                    self.result.outcome = Outcome.STOPPED
                    self.result.error = "cancelled (shutdown) while batches were in flight; the next run finishes them"
                    raise
                except LeaseLost as exc:
                    self.result.outcome, self.result.error = Outcome.LEASE_LOST, str(exc)
                except Exception as exc:
                    self.result.outcome, self.result.error = Outcome.FAILED, _reason(exc)
                    log.error("refill.run_failed", pool=self.pool, run_id=str(self.result.run_id),
                              error=self.result.error)
                finally:
                    self.result.tome_requests = self.deps.tome.requests_made - requests_before
                    self.result.duration_s = time.monotonic() - started
                    await asyncio.shield(self._record())
        except LeaseHeld as exc:
            self.result.outcome, self.result.error, self.result.lease_holder = (
                Outcome.SKIPPED_LEASE_HELD, str(exc), exc.holder)
            self.result.duration_s = time.monotonic() - started
            try:
                await self.journal.start_run(self._run_record(Outcome.SKIPPED_LEASE_HELD, str(exc)))
            except Exception as record_error:
                log.warning("refill.run_record_failed", pool=self.pool, error=_reason(record_error))
            self._metrics()
        except UnknownProgram:
            log.error("refill.unknown_program", pool=self.pool)
            raise
        except Exception as exc:
            # The database failed before the run could start (lease or run row): nothing was done, and
            # nothing can be recorded there; the result, the log and the metrics still say why.
            self.result.outcome, self.result.error = Outcome.FAILED, _reason(exc)
            self.result.duration_s = time.monotonic() - started
            log.error("refill.run_failed", pool=self.pool, run_id=str(self.result.run_id), error=self.result.error)
            self._metrics()
        log.info("refill.run_finished", **self.result.as_dict())
        return self.result

    async def _resolve_program(self) -> None:
        program = await self.deps.programs.require(self.pool)
        self.configured_target = program.target_in(self.settings)
        self.pairs = self.pairs.on(program.ns1_in(self.settings), program.ns2_in(self.settings))

    async def _work(self) -> None:
        # 1. Whatever an earlier run left unfinished comes first (it may be most of what we need).
        for batch in await self.journal.unfinished(self.pool, self.settings.refill_service_intent_grace_s):
            self.result.recovered += await self._finish_unfinished(batch)
        self.result.added = self.result.recovered

        # 2. How many to add now.
        plan = await self._plan()
        self.result.plan, self.result.target, self.result.requested = plan, plan.target, plan.count
        self._planned = plan.count
        log.info("refill.plan", pool=self.pool, run_id=str(self.result.run_id), available=plan.available,
                 target=plan.target, configured_target=plan.configured_target, namespaces=self.pairs.namespaces,
                 forecast=plan.forecast, count=plan.count,
                 consumption_per_hour=plan.consumption_per_hour)

        # 3. New batches, a few at a time (more in flight than the TOME budget allows would only queue).
        sizes = batch_sizes(plan.count, self.batch_size)
        window = asyncio.Semaphore(self.settings.refill_tome_max_in_flight)

        async def one(size: int) -> None:
            async with window:
                if self.stop.is_set() or self.lease.lost.is_set():
                    return
                await self._new_batch(size)

        try:
            async with asyncio.TaskGroup() as group:
                for size in sizes:
                    group.create_task(one(size))
        except BaseExceptionGroup as errors:
            # The first failure ends the run (the other batches were cancelled and stay journaled);
            # re-raised bare so that LeaseLost and TOME errors read as themselves.
            raise _first_error(errors) from None
        if self.lease.lost.is_set():
            raise LeaseLost(self.pool, self.lease.holder)
        loaded_new = self.result.added - self.result.recovered
        if loaded_new < plan.count and self.stop.is_set():
            self.result.outcome = Outcome.STOPPED
            self.result.error = f"stop requested after {loaded_new} of {plan.count} pairs"
        else:
            self.result.outcome = Outcome.SUCCEEDED

    def _run_record(self, outcome: Outcome, error: str | None = None) -> RunRecord:
        return RunRecord(self.result.run_id, self.pool, self.trigger.value, self.lease.holder, outcome.value, error)

    async def _plan(self) -> RefillPlan:
        observation = await observe(self.deps.store, self.deps.samples, self.settings, self.pool)
        await self.deps.samples.prune_samples(self.pool, self.settings.refill_sample_keep_s)
        rate = observation.consumption_per_hour
        expected, target = fill_target(rate, self.settings, self.configured_target)
        available = observation.stats.available
        explicit = self.explicit_count is not None
        count = self.explicit_count if self.explicit_count is not None else pairs_to_add(available, target)
        return RefillPlan(available, self.configured_target, expected, rate, count, target, explicit)

    async def _new_batch(self, size: int) -> None:
        batch_id = uuid.uuid4()
        ns1, ns2 = self.pairs.namespaces
        # The journal writes are retried after a failover or deadlock (db/retry.py) within db_retry_budget_s;
        # beyond that the run fails and the next one finishes the batch from the journal.
        await self.deps.db.run_retrying(
            lambda: self.journal.record_intent(batch_id, self.pool, size, self.result.run_id, ns1=ns1, ns2=ns2),
            idempotent=False, name="refill")
        log.info("refill.batch_intent", pool=self.pool, batch_id=str(batch_id), count=size)
        tokens = await self.pairs.issue(batch_id, size, correlation_id=f"refill-{batch_id}")
        await self.deps.db.run_retrying(lambda: self.journal.record_issued(batch_id, tokens), idempotent=False,
                                        name="refill")
        log.info("refill.batch_issued", pool=self.pool, batch_id=str(batch_id), count=len(tokens))
        await self._load(batch_id, await self.pairs.tokenize(tokens))

    async def _finish_unfinished(self, batch: UnfinishedBatch) -> int:
        log.info("refill.batch_recovering", pool=self.pool, batch_id=str(batch.batch_id), state=batch.state,
                 count=batch.count)
        if batch.state == "intent":
            age_s = (datetime.now(UTC) - batch.created_at).total_seconds()
            if age_s > self.settings.refill_idempotency_retention_s:
                # TOME may have forgotten the key: a replay would then issue NEW tokens, and any it
                # issued the first time are lost to us (never loaded, never handed out: no harm to
                # cards, but the ledger will show them unmatched).
                log.warning("refill.intent_older_than_idempotency_retention", pool=self.pool,
                            batch_id=str(batch.batch_id), age_s=round(age_s))
        return await self._load(batch.batch_id, await self.pairs.recover(batch))

    async def _load(self, batch_id: UUID, pairs: list[TokenPair]) -> int:
        # Safe to run twice: a batch its first attempt loaded after all is found done and adds 0.
        added = await self.deps.db.run_retrying(
            lambda: self.journal.load_batch(self.pool, batch_id, self.result.run_id, pairs, self.lease.renew),
            idempotent=True, name="refill")
        self.result.added += added
        self._loaded += len(pairs)
        log.info("refill.batch_loaded", pool=self.pool, batch_id=str(batch_id), added=added)
        if self.progress is not None:
            self.progress(self._loaded, max(self._planned, self._loaded))
        return added

    async def _record(self) -> None:
        try:
            result = self.result
            await self.journal.finish_run(RunResultRecord(
                result.run_id, result.target, result.requested, result.recovered, result.added,
                result.tome_requests, result.outcome.value, result.error))
        except Exception as exc:  # the run's outcome is still returned and logged
            log.error("refill.run_record_failed", pool=self.pool, run_id=str(self.result.run_id), error=str(exc))
        self._metrics()
        try:
            stats = await self.deps.store.stats(self.pool)
            for status in PairStatus:
                POOL_PAIRS.labels(self.pool, status.value.lower()).set(stats.count(status))
        except Exception as exc:
            log.warning("refill.stats_failed", pool=self.pool, error=str(exc))

    def _metrics(self) -> None:
        REFILL_RUNS.labels(self.pool, self.result.outcome.value).inc()
        REFILL_DURATION.labels(self.pool).observe(self.result.duration_s)
        REFILL_PAIRS_ADDED.labels(self.pool).inc(self.result.added)
        REFILL_TOME_REQUESTS.labels(self.pool).inc(self.result.tome_requests)
        if self.result.plan is not None:
            POOL_AVAILABLE_BEFORE_REFILL.labels(self.pool).set(self.result.plan.available)
        if self.result.outcome is Outcome.SUCCEEDED:
            REFILL_LAST_SUCCESS.labels(self.pool).set(time.time())


def _first_error(errors: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = errors
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _reason(exc: BaseException) -> str:
    """A clear, masked one-line reason for refill_runs.error and the logs."""
    reason = getattr(exc, "reason", None)
    detail = f"{type(exc).__name__}: {exc}" + (f" (reason: {reason})" if reason else "")
    return mask_text(detail)
