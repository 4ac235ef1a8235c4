"""The long-running refill worker: scheduled refills, low-watermark refills, health alerts, the
reservation lease janitor (which also publishes the oldest open transaction's age) and the daily
retention prune, until asked to stop.

Each poll also publishes when the pool's last refill succeeded (``tokenpool_refill_last_success_timestamp_seconds``)
as ``refill_runs`` records it: a restarted worker shows the true age at once, before its first run, and a run
by the CLI or a Lambda counts as much as the worker's own.

Low watermark by short poll, not LISTEN/NOTIFY: the poll reads the trigger-kept counters (a few dozen
rows) every ``worker_poll_s``, costs nothing measurable, needs no change on the claim path and works
on CockroachDB, which has no LISTEN/NOTIFY. Its delay (one poll interval) is small against the hours
a pool lasts.

Which pools: the programs it was given, or (none given) every registered program, reread at each poll: a
program added while the worker runs is refilled at its next poll, a removed one is dropped (its gauges
with it). A given program that is not (or no longer) registered is skipped with a warning at each poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

from tokenpool.db.retention import prune, publish_oldest_transaction_age
from tokenpool.monitoring.alerts import Alerter, alert_channels
from tokenpool.monitoring.health import check_pool_health
from tokenpool.observability.logging import get_logger
from tokenpool.observability.metrics import DB_OLDEST_TRANSACTION, REFILL_LAST_SUCCESS, forget_pools, initialise_metrics
from tokenpool.programs import Program
from tokenpool.refill.job import RefillDeps, refill_pool
from tokenpool.refill.model import Outcome, Trigger

FIRST_PRUNE_DELAY_S = 900.0

log = get_logger(__name__)

_FIRST_RETRY_S = 5.0


class RefillWorker:
    def __init__(self, deps: RefillDeps, pools: list[str] | None = None, *, alerter: Alerter | None = None,
                 stop: asyncio.Event | None = None) -> None:
        """``pools``: the programs to keep; None or empty: every registered program."""
        self.deps = deps
        self.settings = deps.settings
        self.pools = list(pools) if pools else None
        self.alerter = alerter
        self.stop = stop or asyncio.Event()
        # Per program kept, filled in when the worker first sees it (_track).
        self._next_scheduled: dict[str, float] = {}  # a program seen for the first time is refilled at once
        self._not_before: dict[str, float] = {}  # backoff after a failed run
        self._failures: dict[str, int] = {}
        self.kept: list[str] = []  # the programs of the last poll
        self._polled = False
        self.alert_channels = alert_channels(self.settings) if alerter is not None else ()
        self.runs: list[tuple[str, Trigger, Outcome]] = []  # for observability and tests

    async def run(self) -> None:
        """Returns once ``stop`` is set and the current refill (if any) has finished its batches."""
        log.info("worker.started", pools=self.pools or "every registered program",
                 interval_s=self.settings.refill_interval_s,
                 poll_s=self.settings.worker_poll_s)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._janitor())
            group.create_task(self._refiller())
            group.create_task(self._pruner())
        log.info("worker.stopped")

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)

    async def _janitor(self) -> None:
        while not self.stop.is_set():
            try:
                expired = await self.deps.store.expire_leases()
                if expired:
                    log.info("worker.leases_expired", count=expired)
            except Exception as exc:
                log.warning("worker.janitor_failed", error=f"{type(exc).__name__}: {exc}")
            try:
                await publish_oldest_transaction_age(self.deps.db)
            except Exception as exc:
                DB_OLDEST_TRANSACTION.set(math.nan)  # unknown, not the last value seen
                log.warning("worker.oldest_transaction_failed", error=f"{type(exc).__name__}: {exc}")
            await self._sleep(self.settings.worker_janitor_interval_s)

    async def _pruner(self) -> None:
        # The first prune comes a while after start, not at start: a worker restarted in a loop must not
        # prune in a loop, and a starting worker's first refill gets the database to itself. At most
        # FIRST_PRUNE_DELAY_S, though: a worker redeployed daily would otherwise never reach a 24 h interval.
        delay = min(self.settings.worker_prune_interval_s, FIRST_PRUNE_DELAY_S)
        while not self.stop.is_set():
            await self._sleep(delay)
            delay = self.settings.worker_prune_interval_s
            if self.stop.is_set():
                return
            try:
                await prune(self.deps.db, self.settings, stop=self.stop)
            except Exception as exc:  # the database is down: keep the worker up, prune next interval
                log.warning("worker.prune_failed", error=f"{type(exc).__name__}: {exc}")

    async def _refiller(self) -> None:
        while not self.stop.is_set():
            try:
                programs = await self._programs()
            except Exception as exc:  # the database is down: keep the worker up, try next poll
                log.warning("worker.poll_failed", error=f"{type(exc).__name__}: {exc}")
                programs = None
            if programs is not None:
                self._track(programs)
                for program in programs:
                    if self.stop.is_set():
                        break
                    try:
                        await self._tend(program)
                    except Exception as exc:  # the database is down: keep the worker up, try next poll
                        log.warning("worker.poll_failed", pool=program.name, error=f"{type(exc).__name__}: {exc}")
            await self._sleep(self.settings.worker_poll_s)

    async def _programs(self) -> list[Program]:
        """The programs this poll keeps: the registered ones, or those of them the worker was given."""
        registered = await self.deps.programs.registered()
        if self.pools is None:
            return registered
        by_name = {program.name: program for program in registered}
        if missing := [name for name in self.pools if name not in by_name]:
            log.warning("worker.unknown_programs", programs=missing,
                        reason="not registered (tokenpool program add): not refilled")
        return [by_name[name] for name in self.pools if name in by_name]

    def _track(self, programs: list[Program]) -> None:
        names = [program.name for program in programs]
        now = time.monotonic()
        for name in names:
            if name not in self._next_scheduled:
                if self._polled:  # a program added (or registered again) while the worker runs
                    log.info("worker.program_added", pool=name)
                self._next_scheduled[name] = now
                self._not_before[name] = now
                self._failures[name] = 0
                # Its counters at 0 before its first run, so that run is an increase (alerts read increase()).
                initialise_metrics(pools=[name], refills=True, alert_channels=self.alert_channels)
        if dropped := [name for name in self._next_scheduled if name not in names]:
            log.info("worker.programs_dropped", pools=dropped, reason="no longer registered")
            for name in dropped:
                del self._next_scheduled[name], self._not_before[name], self._failures[name]
            forget_pools(dropped)
        self.kept = names
        self._polled = True

    async def _publish_last_success(self, pool: str) -> None:
        try:
            at = await self.deps.journal.last_success(pool)
        except Exception as exc:  # keep the last value: it is still when the last success was
            log.warning("worker.last_success_unread", pool=pool, error=f"{type(exc).__name__}: {exc}")
            return
        if at is not None:  # no run recorded yet: this worker is about to start one
            REFILL_LAST_SUCCESS.labels(pool).set(at.timestamp())

    async def _tend(self, program: Program) -> None:
        pool = program.name
        health = await check_pool_health(self.deps.store, self.deps.samples, self.settings, pool,
                                          target=program.target_in(self.settings))
        await self._publish_last_success(pool)  # before this poll's run: a restarted worker shows the true age
        if self.alerter is not None:
            await self.alerter.on_health(self.deps.samples, health)
        now = time.monotonic()
        watermark = self.settings.refill_low_watermark_ratio * health.target
        trigger: Trigger | None = None
        if now >= self._next_scheduled[pool]:
            trigger = Trigger.SCHEDULE
        elif health.available < watermark and now >= self._not_before[pool]:
            trigger = Trigger.WATERMARK
        if trigger is None:
            return
        log.info("worker.refill", pool=pool, trigger=trigger.value, available=health.available,
                 watermark=round(watermark))
        result = await refill_pool(self.deps, pool, trigger=trigger, stop=self.stop)
        self.runs.append((pool, trigger, result.outcome))
        if trigger is Trigger.SCHEDULE:
            self._next_scheduled[pool] = now + self.settings.refill_interval_s
        if result.outcome is Outcome.SKIPPED_LEASE_HELD:
            # Another runner holds the lease: alive (the CLI, a Lambda, a second worker), or crashed with a
            # lease not lapsed yet. Try again once it could have lapsed, for a scheduled run too: a worker
            # restarted after a crash then finishes the dead run's journal within one lease TTL, not at the
            # next scheduled run an hour later; and a live holder costs one skipped run per TTL, not per poll.
            retry_at = now + self.settings.refill_lease_ttl_s
            if trigger is Trigger.SCHEDULE:
                self._next_scheduled[pool] = retry_at
            self._not_before[pool] = retry_at
        elif result.outcome in (Outcome.FAILED, Outcome.LEASE_LOST):
            # Back off (5 s, 10 s, ... up to the refill interval) so a TOME outage is not hammered.
            self._failures[pool] += 1
            delay = min(_FIRST_RETRY_S * 2 ** (self._failures[pool] - 1), self.settings.refill_interval_s)
            self._not_before[pool] = time.monotonic() + delay
        else:
            self._failures[pool] = 0
