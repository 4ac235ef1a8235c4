"""Scenario 1w: kill -9 the refill worker mid-refill while cards are being created, then start another.

``tokenpool worker`` refills at start. With TOME slowed, its run is killed right after a batch's tokens
were journaled (TOME issued them, the pool does not hold them yet). A new worker process is started at
once: it must leave the dead runner's lease alone until it lapses (``refill_lease_ttl_s``), then finish
the dead run's batches and fill the pool to its target, while cards keep coming from the pool. The
lease is longer than the suite's (6 s, not 2 s) so that the new process, up in 1-2 s, finds it held.

A new worker that finds the lease still held tries again one lease TTL later (scheduled and watermark
runs alike); the journal is finished once the dead runner's lease has lapsed.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime
from typing import Any
from uuid import UUID

from tests.chaos.invariants import check_calls, check_ledger, check_no_pair_on_two_cards
from tests.chaos.load import LoadRun, summarize
from tests.chaos.report import ScenarioResult
from tests.chaos.scenario import first_success_after, plan_for, run_with_fault
from tests.chaos.stack import Stack, wait_for

POOL = "default"
KILL_AFTER_EVENT = "refill.batch_issued"
# Every TOME call of the doomed worker takes this long: its refill of a dozen batches runs for seconds,
# and a batch stays issued-but-unloaded this long after its tokens are journaled (the kill lands there).
SLOW_TOME_MS = 400
EVENT_TIMEOUT_S = 30.0
RECOVERY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0  # above worker_stop_grace_s (20 s): the batches in flight may finish first
# A new worker process makes its first refill attempt 1-2 s after its start (more on a loaded box); with
# the suite's 2 s lease it often arrives after the lapse and the wait would go untested.
LEASE_TTL_S = 6.0

RUN_COLUMNS = ("run_id", "trigger", "holder", "outcome", "started_at", "finished_at", "target", "requested",
               "recovered", "added")


def _prepared(stack: Stack, result: ScenarioResult, initial: int) -> tuple[list[str], str]:
    """``initial`` pairs (below the target, unlike ``scenario.prepared``), one API process, a key."""
    started = time.monotonic()
    code = stack.refill("--pool", "default", "--count", str(initial))
    assert code == 0, f"initial refill exited {code}: {stack.log('refill-foreground').read_text()[-2000:]}"
    url = stack.start_api().url
    key = stack.api_key()
    result.notes["pool at start"] = stack.available()
    result.notes["stack ready in s"] = round(time.monotonic() - started, 1)
    return [url], key


def _journal_at_kill(stack: Stack) -> dict[str, Any]:
    """What the dead worker left: unfinished batches, pending tokens, its lease (all frozen now)."""
    batches = stack.sql("SELECT batch_id, state, count FROM refill_batches WHERE pool = %s AND state <> 'done'",
                        POOL)
    pending = stack.sql("SELECT count(*) FROM refill_pending_tokens")[0][0]
    lease = stack.sql("SELECT holder, expires_at FROM refill_leases WHERE pool = %s", POOL)
    return {"batches": {row[0]: (row[1], row[2]) for row in batches}, "pending": int(pending),
            "lease": lease[0] if lease else None, "db_now": stack.sql("SELECT now()")[0][0]}


def _unfinished(stack: Stack, batch_ids: list[UUID]) -> int:
    return int(stack.sql("SELECT count(*) FROM refill_batches WHERE batch_id = ANY(%s) AND state <> 'done'",
                         batch_ids)[0][0])


def _finished_by(stack: Stack, batch_ids: list[UUID]) -> set[UUID]:
    return {row[0] for row in stack.sql("SELECT DISTINCT done_by FROM refill_batches WHERE batch_id = ANY(%s)",
                                        batch_ids)}


def _run(stack: Stack, run_id: UUID) -> dict[str, Any]:
    row = stack.sql(f"SELECT {', '.join(RUN_COLUMNS)} FROM refill_runs WHERE run_id = %s", run_id)[0]
    return dict(zip(RUN_COLUMNS, row, strict=True))


def _runs_of(stack: Stack, pid: int) -> list[tuple[str, str, datetime]]:
    """(trigger, outcome, started_at) of every run of the process ``pid`` (holder = host:pid:uuid)."""
    rows = stack.sql("SELECT trigger, outcome, started_at FROM refill_runs WHERE holder LIKE %s ORDER BY started_at",
                     f"%:{pid}:%")
    return [(str(r[0]), str(r[1]), r[2]) for r in rows]


def _in_a_row(items: list[tuple[str, str]]) -> list[str]:
    """``[a, a, b]`` -> ``["a x 2", "b x 1"]``: a worker retrying every poll makes long runs of one item."""
    grouped: list[tuple[tuple[str, str], int]] = []
    for item in items:
        if grouped and grouped[-1][0] == item:
            grouped[-1] = (item, grouped[-1][1] + 1)
        else:
            grouped.append((item, 1))
    return [f"{trigger} {outcome} x {n}" for (trigger, outcome), n in grouped]


def _pid_of(holder: str) -> int:
    return int(holder.rsplit(":", 2)[1])


async def test_killing_the_worker_mid_refill_under_card_load_loses_no_token(make_stack, profile, chaos_report):
    plan = plan_for(profile)
    cards = int(plan.rate_per_s * plan.duration_s)
    initial = cards + 200  # the pool alone serves every card of the load, whatever the workers do
    # Forecast off (factor 1): the target is this number. Twice the initial pool and more keeps the pool
    # below the low watermark (50 %) until the worker's refill lands.
    target = 2 * initial + 400
    stack = make_stack(refill_target=target, refill_forecast_max_factor=1.0, refill_low_watermark_ratio=0.5,
                       worker_poll_s=0.2, refill_lease_ttl_s=LEASE_TTL_S)
    result = ScenarioResult("kill -9 the worker mid-refill", profile.mode)
    urls, key = _prepared(stack, result, initial)
    normal_tome = stack.tome.faults()
    load = LoadRun(plan, urls, key)
    at_kill: dict[str, Any] = {}
    workers: dict[str, Any] = {}

    def fault(timeline):
        timeline.sleep_until(profile.fault_at_s)
        stack.tome.set_faults(latency_ms=SLOW_TOME_MS, jitter_ms=0)
        victim = workers["victim"] = stack.start("worker-victim", "worker")
        timeline.mark("worker_started")

        def batch_issued() -> bool:
            assert victim.poll() is None, f"the worker exited ({victim.returncode}) before it issued a batch"
            return KILL_AFTER_EVENT in stack.events("worker-victim")

        wait_for(batch_issued, EVENT_TIMEOUT_S, interval_s=0.02, what=f"the worker's first {KILL_AFTER_EVENT}")
        stack.kill(victim)
        timeline.mark("killed")
        at_kill.update(_journal_at_kill(stack))
        stack.tome.set_faults(latency_ms=normal_tome["latency_ms"], jitter_ms=normal_tome["jitter_ms"])
        workers["restarted"] = stack.start("worker-restarted", "worker")
        timeline.mark("restarted")
        left = list(at_kill["batches"])
        assert left, "the worker was not mid-refill when killed: nothing left in the journal"
        wait_for(lambda: _unfinished(stack, left) == 0, RECOVERY_TIMEOUT_S, interval_s=0.05,
                 what="the dead worker's batches finished")
        timeline.mark("journal_finished")
        finishers = _finished_by(stack, left)
        assert len(finishers) == 1, f"the dead worker's batches were finished by several runs: {finishers}"
        recovering = at_kill["recovering_run"] = finishers.pop()
        wait_for(lambda: _run(stack, recovering)["finished_at"] is not None, RECOVERY_TIMEOUT_S, interval_s=0.05,
                 what="the recovering run finished")
        timeline.mark("recovered")

    timeline = await run_with_fault(load, fault)
    restarted = workers["restarted"]
    # Stopped before the checks: a worker mid-refill would show issued tokens that are not loaded yet.
    restarted.send_signal(signal.SIGTERM)
    stop_code = restarted.wait(timeout=STOP_TIMEOUT_S)

    killed, recovered = timeline.events["killed"], timeline.events["recovered"]
    result.fault_s = killed - timeline.events["worker_started"]
    result.recovery_s = recovered - killed
    result.recovery_meaning = (
        "kill until the new worker's run that finished the dead worker's batches had also filled the pool to "
        f"its target (includes starting the new process and the dead runner's lease, TTL "
        f"{stack.settings.refill_lease_ttl_s:.0f} s, lapsing)")
    result.notes["timeline s"] = timeline.relative()
    victim_events = stack.events("worker-victim")
    result.notes["killed after"] = (f"{victim_events.count(KILL_AFTER_EVENT)} x {KILL_AFTER_EVENT},"
                                    f" {victim_events.count('refill.batch_loaded')} x refill.batch_loaded")
    batches = at_kill["batches"]
    states = [state for state, _ in batches.values()]
    result.notes["journal at the kill"] = {state: states.count(state) for state in sorted(set(states))} | {
        "pending tokens": at_kill["pending"]}
    result.check("the worker was killed mid-refill (issued tokens not loaded yet)",
                 "issued" in states and at_kill["pending"] > 0,
                 f"batches {result.notes['journal at the kill']}")

    run = _run(stack, at_kill["recovering_run"])
    runs = _runs_of(stack, restarted.pid)
    result.notes["new worker's runs (trigger, outcome) x times"] = _in_a_row([(t, o) for t, o, _ in runs])
    result.notes["new worker's first attempt, s after the kill"] = (
        round((runs[0][2] - at_kill["db_now"]).total_seconds(), 2) if runs else None)
    lease = at_kill["lease"]
    assert lease is not None, "the dead worker held no lease"
    holder, expires_at = lease
    result.notes["dead runner's lease left at the kill, s"] = round((expires_at - at_kill["db_now"]).total_seconds(), 2)
    skipped = [started for _, outcome, started in runs if outcome == "skipped_lease_held"]
    result.check("the new worker found the dead runner's lease held", bool(skipped) and skipped[0] < expires_at,
                 f"{len(skipped)} runs skipped (lease held), the first "
                 f"{(skipped[0] - at_kill['db_now']).total_seconds():.2f} s after the kill" if skipped else "none")
    result.check("the new worker took the lease only once the dead runner's had lapsed",
                 _pid_of(holder) == workers["victim"].pid and _pid_of(run["holder"]) == restarted.pid
                 and run["started_at"] >= expires_at,
                 f"recovering run started {(run['started_at'] - expires_at).total_seconds():.2f} s after the dead"
                 f" lease's expiry")
    expected = sum(count for _, count in batches.values())
    result.check("the new worker finished the dead worker's batches",
                 run["recovered"] == expected,
                 f"{len(batches)} batches, {expected} pairs left; recovered {run['recovered']} ({run['trigger']})")
    result.check("the new worker filled the pool to its target",
                 run["outcome"] == "succeeded" and run["target"] == target
                 and run["added"] - run["recovered"] == run["requested"],
                 f"{run['outcome']}: target {run['target']}, requested {run['requested']},"
                 f" added {run['added'] - run['recovered']} new + {run['recovered']} recovered")
    result.notes["journal finished, s after the kill"] = round(timeline.events["journal_finished"] - killed, 2)
    result.notes["first card after the kill, s"] = first_success_after(load.calls, killed)
    # Where card latency went: while the new worker loaded its pairs, or elsewhere (the box has 2 cores).
    refilling = (timeline.events["journal_finished"], recovered)
    inside = [c for c in load.calls if refilling[0] <= c.started <= refilling[1]]
    outside = [c for c in load.calls if not refilling[0] <= c.started <= refilling[1]]
    result.notes["card p99 / max ms while the new worker refilled, else"] = [
        f"{summarize(calls).p99_ms or 0:.0f} / {summarize(calls).max_ms or 0:.0f}" for calls in (inside, outside)]

    check_calls(load.calls, result, request_timeout_s=plan.request_timeout_s)
    during = sum(c.ok for c in load.calls if c.kind == "card" and killed <= c.started <= recovered)
    result.check("cards kept flowing (none failed, some made between the kill and the recovery)",
                 all(c.ok for c in load.calls) and during > 0,
                 f"{result.succeeded}/{result.requests} ok; {during} made between the kill and the recovery")
    result.check("the new worker stopped cleanly on SIGTERM", stop_code == 0, f"exit code {stop_code}")
    result.notes["pool at the end"] = stack.available()
    check_no_pair_on_two_cards(stack, load.calls, result)
    check_ledger(stack, result)
    chaos_report.add(result)
    assert not result.failed_checks, result.failed_checks
