"""Scenario 1: kill -9 a refill mid-run while cards are being created, then run it again.

The refill is killed right after it journaled a batch's tokens (TOME has issued them, the pool does
not hold them yet: the moment a lost token would be made). Cards keep coming from the pool meanwhile;
the restarted refill (once the dead runner's lease lapsed) finishes the journal. The crash points
themselves are covered one by one in tests/integration/test_refill_crash.py; this adds the load.
"""

from __future__ import annotations

import time

from tests.chaos.invariants import check_calls, check_ledger, check_no_pair_on_two_cards
from tests.chaos.load import LoadRun
from tests.chaos.report import ScenarioResult
from tests.chaos.scenario import plan_for, prepared, run_with_fault

KILL_AFTER_EVENT = "refill.batch_issued"
RESTART_TIMEOUT_S = 60.0


async def test_killing_the_refill_mid_run_under_card_load_loses_no_token(make_stack, profile, chaos_report):
    plan = plan_for(profile)
    cards = int(plan.rate_per_s * plan.duration_s)
    # Slow TOME a little and keep batches small, so the run is still going when it is killed.
    stack = make_stack(refill_target=cards + 300, refill_batch_size=50)
    result = ScenarioResult("kill -9 the refill mid-run", profile.mode)
    urls, key = prepared(stack, result)
    stack.tome.set_faults(latency_ms=40, jitter_ms=20)
    load = LoadRun(plan, urls, key)
    restarts: list[int] = []

    def fault(timeline):
        timeline.sleep_until(profile.fault_at_s)
        refill = stack.start("refill-victim", "refill", "--json", "--pool", "default", "--count", str(cards * 2))
        timeline.mark("refill_started")
        deadline = time.monotonic() + 30
        while stack.events("refill-victim").count(KILL_AFTER_EVENT) < 2:
            assert refill.poll() is None, "the refill finished before it could be killed"
            assert time.monotonic() < deadline, "the refill never journaled two batches"
            time.sleep(0.02)
        stack.kill(refill)
        timeline.mark("killed")
        # The restart: `tokenpool refill` again until the dead runner's lease has lapsed (exit 3 meanwhile).
        while True:
            code = stack.refill()
            restarts.append(code)
            if code != 3 or time.monotonic() - timeline.events["killed"] > RESTART_TIMEOUT_S:
                break
            time.sleep(0.3)
        timeline.mark("recovered")

    timeline = await run_with_fault(load, fault)
    result.fault_s = timeline.events["killed"] - timeline.events["refill_started"]
    result.recovery_s = timeline.events["recovered"] - timeline.events["killed"]
    result.recovery_meaning = ("kill until the restarted refill finished the journal (includes waiting "
                               f"{stack.settings.refill_lease_ttl_s:.0f} s for the dead runner's lease to lapse)")
    result.notes["timeline s"] = timeline.relative()
    result.notes["restart exit codes"] = restarts
    result.notes["killed after"] = f"{stack.events('refill-victim').count(KILL_AFTER_EVENT)} x {KILL_AFTER_EVENT}"
    check_calls(load.calls, result, request_timeout_s=plan.request_timeout_s)
    result.check("no card creation failed (served from the pool throughout)",
                 all(c.ok for c in load.calls), f"{result.succeeded}/{result.requests}")
    result.check("the restarted refill succeeded", restarts[-1:] == [0], f"exit codes {restarts}")
    recovered = stack.sql("SELECT coalesce(sum(recovered), 0) FROM refill_runs WHERE outcome = 'succeeded'")[0][0]
    result.notes["pairs the restarted refill recovered from the journal"] = int(recovered)
    check_no_pair_on_two_cards(stack, load.calls, result)
    check_ledger(stack, result)
    chaos_report.add(result)
    assert not result.failed_checks, result.failed_checks
