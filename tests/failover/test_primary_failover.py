"""A real primary failover: the PostgreSQL primary's host crashes (``ha-cluster.sh kill-primary node``: SIGKILL
of its pg_auto_failover keeper and every postgres process) while cards are created at a steady rate and the
worker is mid-refill (TOME issued a batch it has journaled). The monitor promotes the synchronous standby; the
service and the worker, given a multi-host URL with ``target_session_attrs=read-write``, find it by themselves.

Checked afterwards (tests/chaos/invariants.py where it fits):

- every card answered 201 exists (none lost: the standby was synchronous), no pair on two cards;
- every token TOME NS1 issued is in the pool or on a card exactly once, nothing left in the journal;
- no request hung (the client's timeout is above the service's bound; timeouts counted, must be 0), every
  failure a clean 503 problem response;
- the same service and worker processes recover (no restart): cards succeed after, the worker finishes a
  refill on the new primary; the old primary, started again, rejoins as the standby.

The number of 503s is measured, not asserted: retries of transactions that hit a lost connection (src/tokenpool/db)
lower it. One ``failover:`` line per run is printed in the terminal summary.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from typing import Any

import pytest

from tests.chaos.invariants import check_calls, check_ledger, check_no_pair_on_two_cards
from tests.chaos.load import LoadPlan, LoadRun
from tests.chaos.report import ScenarioResult
from tests.chaos.scenario import first_success_after, run_with_fault
from tests.chaos.stack import Stack, wait_for

pytestmark = pytest.mark.failover

POOL = "default"
RATE_PER_S = 30.0
CONCURRENCY = 6
LOAD_S = 20.0
WORKER_AT_S = 1.0
# Every TOME call of the worker takes this long until the kill: its refill runs for seconds, so the kill lands
# mid-refill (right after a batch's tokens were journaled).
SLOW_TOME_MS = 300
BATCH_ISSUED = "refill.batch_issued"
EVENT_TIMEOUT_S = 30.0
PROMOTION_TIMEOUT_S = 60.0
RECOVERY_TIMEOUT_S = 60.0
REJOIN_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
LATENCY_MARGIN_S = 1.5  # a loaded 2-core CI box, as in tests/chaos
RECOVERED_TAIL = 20  # the last cards of the load: all must succeed (the same processes serve again)


def _journal_open(stack: Stack) -> int:
    batches, pending = stack.sql("SELECT (SELECT count(*) FROM refill_batches WHERE state <> 'done'),"
                                 " (SELECT count(*) FROM refill_pending_tokens)")[0]
    return int(batches) + int(pending)


def _runs_of(stack: Stack, pid: int) -> list[tuple[str, str]]:
    """(trigger, outcome) of every refill run of process ``pid`` (holder = host:pid:uuid), oldest first."""
    rows = stack.sql("SELECT trigger, outcome FROM refill_runs WHERE holder LIKE %s ORDER BY started_at", f"%:{pid}:%")
    return [(str(t), str(o)) for t, o in rows]


def _error_window(cards: list[Any], after: float) -> tuple[float | None, float | None]:
    """(first failed card's start -> end of the first 201 card started after it, in s; that first failure's
    start, s after ``after``). (None, None) when no card failed."""
    failed = sorted((c for c in cards if not c.ok and c.ended >= after), key=lambda c: c.started)
    if not failed:
        return None, None
    first = failed[0].started
    ok_after = [c.ended for c in cards if c.ok and c.started >= first]
    return (round(min(ok_after) - first, 2) if ok_after else None), round(first - after, 2)


async def test_killing_the_primary_under_card_load_and_a_refill_loses_nothing(
    make_ha_stack, ha_cluster, failover_lines, failover_report
):
    # A fifth of the calls detokenize fresh cards: each read is a row of the hash-chained audit, checked after.
    plan = LoadPlan(duration_s=LOAD_S, rate_per_s=RATE_PER_S, concurrency=CONCURRENCY, card_share=0.8,
                    detok_known_share=0.2)
    initial = int(plan.rate_per_s * plan.duration_s) + 200  # the pool alone serves every card of the load
    # Forecast off: the target is this number; the pool stays below the low watermark (50 %) until the worker's
    # refill lands, so the worker refills as soon as it starts.
    stack = make_ha_stack(refill_target=2 * initial + 400, refill_forecast_max_factor=1.0,
                          refill_low_watermark_ratio=0.5, refill_batch_size=50, worker_poll_s=0.2)
    result = ScenarioResult("kill -9 the PostgreSQL primary (host crash)", "failover")
    code = stack.refill("--pool", POOL, "--count", str(initial))
    assert code == 0, f"initial refill exited {code}: {stack.log('refill-foreground').read_text()[-2000:]}"
    api = stack.start_api()
    key = stack.api_key()
    normal_tome = stack.tome.faults()
    load = LoadRun(plan, [api.url], key)
    state: dict[str, Any] = {}

    def fault(timeline):
        timeline.sleep_until(WORKER_AT_S)
        stack.tome.set_faults(latency_ms=SLOW_TOME_MS, jitter_ms=0)
        worker = state["worker"] = stack.start("worker", "worker")

        def batch_issued() -> bool:
            assert worker.poll() is None, f"the worker exited ({worker.returncode}) before it issued a batch"
            return BATCH_ISSUED in stack.events("worker")

        wait_for(batch_issued, EVENT_TIMEOUT_S, interval_s=0.02, what=f"the worker's first {BATCH_ISSUED}")
        state["journal_at_kill"] = _journal_open(stack)
        timeline.mark("kill")
        state["old_primary"] = ha_cluster.run("kill-primary", "node")
        timeline.mark("killed")
        state["killed_wall"] = time.time()  # compared with refill_runs' timestamps (same machine, same clock)
        stack.tome.set_faults(latency_ms=normal_tome["latency_ms"], jitter_ms=normal_tome["jitter_ms"])

        def promoted() -> bool:
            try:
                state["new_primary"] = ha_cluster.primary()
            except RuntimeError:  # the monitor is mid-transition
                return False
            return state["new_primary"] not in ("", state["old_primary"])

        wait_for(promoted, PROMOTION_TIMEOUT_S, interval_s=0.1, what="the standby's promotion")
        timeline.mark("promoted")

    timeline = await run_with_fault(load, fault)
    killed, promoted_at = timeline.events["killed"], timeline.events["promoted"]
    worker = state["worker"]

    # The same worker finishes the interrupted refill on the new primary (its journal, then a run that succeeds).
    def worker_recovered() -> bool:
        assert worker.poll() is None, f"the worker exited ({worker.returncode})"
        succeeded = any(outcome == "succeeded" for _, outcome in _runs_of(stack, worker.pid))
        return succeeded and _journal_open(stack) == 0

    wait_for(worker_recovered, RECOVERY_TIMEOUT_S, interval_s=0.1, what="the worker's refill on the new primary")
    runs = _runs_of(stack, worker.pid)
    finished = stack.sql("SELECT min(finished_at) FROM refill_runs WHERE holder LIKE %s AND outcome = 'succeeded'",
                         f"%:{worker.pid}:%")[0][0]
    worker_done_after_kill = round(finished.timestamp() - state["killed_wall"], 1)
    worker.send_signal(signal.SIGTERM)  # before the ledger check: a refill in flight would show unloaded tokens
    worker_stop = worker.wait(timeout=STOP_TIMEOUT_S)

    # The old primary's host comes back: its keeper rejoins it as the standby (pg_rewind if needed).
    rejoin_started = time.monotonic()
    try:
        ha_cluster.run("start-node", state["old_primary"], timeout_s=30.0)
        ha_cluster.run("wait-healthy", str(int(REJOIN_TIMEOUT_S)), timeout_s=REJOIN_TIMEOUT_S + 10)
        rejoin_error = ""
    except RuntimeError as error:
        rejoin_error = str(error)[-500:]
    rejoin_s = round(time.monotonic() - rejoin_started, 1)

    cards = [c for c in load.calls if c.kind == "card"]
    window_s, first_failure_s = _error_window(cards, killed)
    statuses = Counter(c.status if c.status is not None else (c.error or "no answer") for c in cards)
    n503 = statuses.pop(503, 0)
    statuses.pop(201, None)
    first_card_s = first_success_after(load.calls, killed)
    stored = int(stack.sql("SELECT count(*) FROM cards")[0][0])
    created = sum(c.ok for c in cards)

    result.fault_s = round(promoted_at - killed, 2)
    result.recovery_s = first_card_s
    result.recovery_meaning = "primary killed until the first 201 card (on the new primary)"
    result.notes["timeline s"] = timeline.relative()
    result.notes["journal rows open at the kill"] = state["journal_at_kill"]
    result.notes["worker's runs (trigger, outcome)"] = runs
    check_calls(load.calls, result, request_timeout_s=plan.request_timeout_s)
    check_no_pair_on_two_cards(stack, load.calls, result)
    check_ledger(stack, result)
    result.check("the worker was mid-refill at the kill (journal open)", state["journal_at_kill"] > 0,
                 f"{state['journal_at_kill']} open journal rows")
    result.check("the service recovered without a restart (cards succeed after the failover)",
                 api.process.poll() is None and first_card_s is not None
                 and all(c.ok for c in cards[-RECOVERED_TAIL:]),
                 f"first 201 {first_card_s} s after the kill; last {RECOVERED_TAIL} cards "
                 f"{sum(c.ok for c in cards[-RECOVERED_TAIL:])} ok")
    result.check("the worker recovered without a restart (a refill succeeded on the new primary)",
                 any(outcome == "succeeded" for _, outcome in runs) and worker_stop == 0,
                 f"runs {runs}; exit on SIGTERM {worker_stop}")
    failed_calls = [c for c in load.calls if not c.ok]
    slowest_failure = max((c.elapsed for c in failed_calls), default=0.0)
    bound_s = stack.settings.service_db_timeout_s + LATENCY_MARGIN_S
    result.check("every failure answered within the service's database bound", slowest_failure <= bound_s,
                 f"{len(failed_calls)} failed, slowest {slowest_failure:.2f} s (bound {bound_s:.1f} s with margin)")
    audit = stack.cli("audit", "verify", "--json")
    verified = json.loads(audit.stdout or b"{}")
    result.check("the audit's hash chain verifies after the failover (`tokenpool audit verify`)",
                 audit.returncode == 0 and bool(verified.get("ok", audit.returncode == 0)),
                 f"exit {audit.returncode}: {audit.stdout.decode()[-300:]} {audit.stderr.decode()[-300:]}")
    result.notes["audit verify"] = verified
    result.check("the old primary, started again, rejoined as the standby (one primary, one secondary)",
                 not rejoin_error, f"{state['old_primary']} in {rejoin_s} s {rejoin_error}")
    listening = stack.events(api.log.stem).count("api_key_listener.listening")
    result.check("the API key listener listens again on the new primary (revocations keep reaching the API)",
                 listening >= 2, f"api_key_listener.listening x {listening}")
    detok_503 = sum(c.status == 503 for c in load.calls if c.kind != "card")

    failed = [c.name for c in result.failed_checks]
    others = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str)) or "none"
    line = (
        f"failover: error window {window_s if window_s is not None else 0} s"
        f" (first failing card started {first_failure_s if first_failure_s is None else f'{first_failure_s:+.2f}'}"
        f" s from the kill), 503s {n503} (+ {detok_503} detokenize), other non-201 {others},"
        f" kill->promoted {result.fault_s} s, kill->first card on the new primary {first_card_s} s,"
        f" cards created {created} (stored {stored}) of {len(cards)}, timeouts {result.timeouts},"
        f" slowest {(result.max_ms or 0) / 1000:.2f} s, worker's refill done {worker_done_after_kill} s after the kill,"
        f" old primary rejoined in {rejoin_s} s;"
        f" invariants {'all ok' if not failed else 'FAILED: ' + '; '.join(failed)} ({len(result.checks)} checks)"
    )
    failover_lines.append(line)
    result.notes["failover"] = line.removeprefix("failover: ")
    failover_report.add(result)
    print(line)
    assert not result.failed_checks, [(c.name, c.detail) for c in result.failed_checks]
