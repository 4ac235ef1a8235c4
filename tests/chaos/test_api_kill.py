"""Scenario 2: kill -9 one of two API processes (same database) under load, then restart it.

The load client sends each order to the processes in turn and, when one is gone, sends the same
order (same Idempotency-Key) to the other: no order may fail, none may make two cards, no card a
client was given may be missing.
"""

from __future__ import annotations

from tests.chaos.invariants import check_calls, check_ledger, check_no_pair_on_two_cards
from tests.chaos.load import LoadRun
from tests.chaos.report import ScenarioResult
from tests.chaos.scenario import first_success_after, plan_for, prepared, run_with_fault
from tests.chaos.stack import wait_for


async def test_killing_one_api_process_under_load_loses_no_card_and_duplicates_no_pair(
    make_stack, profile, chaos_report
):
    plan = plan_for(profile, card_share=0.8, detok_known_share=0.2)
    stack = make_stack(refill_target=int(plan.rate_per_s * plan.duration_s * 1.2) + 200)
    result = ScenarioResult("kill -9 one of two API processes", profile.mode)
    urls, key = prepared(stack, result, apis=2)
    victim = stack.apis[0]
    load = LoadRun(plan, urls, key)

    def fault(timeline):
        timeline.sleep_until(profile.fault_at_s)
        stack.kill(victim.process)
        timeline.mark("killed")
        timeline.sleep_until(profile.fault_at_s + min(profile.fault_s, 10.0))
        timeline.mark("restarting")
        stack.start_api(victim.port)
        timeline.mark("ready")

    timeline = await run_with_fault(load, fault)
    restarted = stack.apis[-1]
    wait_for(lambda: stack.readyz(restarted)["http_status"] == 200, 10.0, what="restarted API ready")
    after = await LoadRun(plan_for(profile, duration_s=1.0, max_requests=5), [restarted.url], key).run()

    result.fault_s = timeline.events["restarting"] - timeline.events["killed"]
    result.recovery_s = timeline.events["ready"] - timeline.events["restarting"]
    result.recovery_meaning = "restart of the killed process until its /healthz answers (the other served meanwhile)"
    result.failovers = load.failovers
    result.notes["timeline s"] = timeline.relative()
    result.notes["first card after the kill, s"] = first_success_after(load.calls, timeline.events["killed"])
    result.check("the restarted process serves cards", [c.status for c in after.calls] == [201] * len(after.calls)
                 and len(after.calls) == 5, str([c.status for c in after.calls]))
    check_calls(load.calls, result, request_timeout_s=plan.request_timeout_s)
    calls = load.calls + after.calls
    check_no_pair_on_two_cards(stack, calls, result)
    orders = {c.order_key for c in calls if c.kind == "card" and c.ok}
    stored = stack.sql("SELECT count(*) FROM cards")[0][0]
    result.check("one card per order (Idempotency-Key across failover)", stored == len(orders),
                 f"{len(orders)} orders answered, {stored} cards stored")
    result.check("the killed process was failed over", load.failovers > 0, f"{load.failovers} failovers")
    check_ledger(stack, result)
    chaos_report.add(result)
    assert not result.failed_checks, result.failed_checks
