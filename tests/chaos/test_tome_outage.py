"""Scenario 4: TOME goes down under load while the pool holds pairs.

Cards and detokenize of pooled refs never call TOME, so none of them may fail. Detokenize of refs
the database does not know must ask TOME: those fail with a clean ``503 TOME_UNAVAILABLE``, open the
circuit breaker (``/readyz`` reports it), and succeed again once TOME is back.
"""

from __future__ import annotations

import time

from tests.chaos.invariants import check_calls, check_ledger, check_no_pair_on_two_cards
from tests.chaos.load import LoadRun
from tests.chaos.report import ScenarioResult
from tests.chaos.scenario import first_success_after, plan_for, prepared, run_with_fault

READYZ_POLL_S = 0.2


def _tome_requests(stack, ns: str) -> int:
    return sum(stack.tome.stats()["requests"].get(ns, {}).values())


async def test_a_tome_outage_fails_no_card_and_no_pooled_detokenize(make_stack, profile, chaos_report):
    plan = plan_for(profile, duration_s=profile.load_s + profile.fault_s, card_share=0.6, detok_known_share=0.3,
                    detok_unknown_share=0.1)
    stack = make_stack(refill_target=int(plan.rate_per_s * plan.duration_s) + 200, tome_breaker_ttl_s=3.0)
    result = ScenarioResult("TOME outage", profile.mode)
    urls, key = prepared(stack, result)
    api = stack.apis[0]
    load = LoadRun(plan, urls, key)
    breaker_states: list[str] = []
    ns1_before = _tome_requests(stack, stack.ns1)

    def fault(timeline):
        timeline.sleep_until(profile.fault_at_s)
        stack.tome.set_faults(outage=True)
        timeline.mark("tome_down")
        while time.monotonic() < timeline.t0 + profile.fault_at_s + profile.fault_s:
            breaker_states.append(stack.readyz(api).get("tome_breaker", "?"))
            time.sleep(READYZ_POLL_S)
        stack.tome.set_faults(outage=False)
        timeline.mark("tome_up")

    timeline = await run_with_fault(load, fault)
    down, up = timeline.events["tome_down"], timeline.events["tome_up"]
    result.fault_s = up - down
    result.recovery_s = first_success_after(load.calls, up, kind="detok_unknown")
    result.recovery_meaning = "TOME back until the first detokenize that needs TOME answers 200"
    result.notes["timeline s"] = timeline.relative()
    result.notes["breaker states seen on /readyz"] = sorted(set(breaker_states))
    during = [c for c in load.calls if down <= c.started < up]
    unknown_during = [c for c in during if c.kind == "detok_unknown"]
    result.notes["calls during the outage by kind"] = {
        kind: sum(c.kind == kind for c in during) for kind in ("card", "detok_known", "detok_unknown")}

    check_calls(load.calls, result, request_timeout_s=plan.request_timeout_s)
    cards = [c for c in load.calls if c.kind == "card"]
    result.check("zero failed card creations (the pool has pairs)", all(c.ok for c in cards),
                 f"{sum(c.ok for c in cards)}/{len(cards)}")
    known = [c for c in load.calls if c.kind == "detok_known"]
    complete = [c for c in known if c.ok and c.body and c.body.get("complete") is True]
    result.check("detokenize of pooled refs unaffected", len(complete) == len(known),
                 f"{len(complete)}/{len(known)} complete 200s")
    result.check("the breaker opened and /readyz reported it", "open" in breaker_states,
                 f"states seen: {sorted(set(breaker_states))}")
    codes = {c.code for c in unknown_during if not c.ok}
    result.check("detokenize that needs TOME fails with 503 TOME_UNAVAILABLE", codes == {"TOME_UNAVAILABLE"},
                 f"{len(unknown_during)} during the outage; codes {sorted(map(str, codes))}")
    result.check("TOME recovered for the calls that need it", result.recovery_s is not None,
                 f"first 200 {result.recovery_s} s after TOME came back")
    ns1_calls = _tome_requests(stack, stack.ns1) - ns1_before
    result.check("no TOME NS1 call on the card path", ns1_calls == 0, f"{ns1_calls} NS1 requests during the load")
    check_no_pair_on_two_cards(stack, load.calls, result)
    check_ledger(stack, result)
    chaos_report.add(result)
    assert not result.failed_checks, result.failed_checks
