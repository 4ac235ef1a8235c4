"""Scenario 5: TOME slow (answers later than the client's read timeout), then TOME rate-limited.

Cards keep coming from the pool with their usual latency. Calls that need TOME (detokenize of refs
the database does not know) are bounded by the client's total timeout whatever TOME does, and the
breaker sheds them once TOME is slow, so requests do not pile up behind it: TOME sees fewer requests
than the calls that wanted it, and latency is back to normal as soon as TOME is.
"""

from __future__ import annotations

import statistics
from collections import Counter

from tests.chaos.invariants import check_calls, check_ledger, check_no_pair_on_two_cards
from tests.chaos.load import LoadRun
from tests.chaos.report import ScenarioResult
from tests.chaos.scenario import first_success_after, plan_for, prepared, run_with_fault

SLOW_MS = 3_000  # well above the read timeout below
TOME = {"tome_read_timeout_s": 1.0, "tome_total_timeout_s": 2.5, "tome_max_attempts": 3,
        "tome_breaker_slow_call_s": 0.8, "tome_breaker_ttl_s": 2.0}
LATENCY_MARGIN_S = 2.0  # a loaded 2-core box
CARD_P99_BOUND_S = 1.5


def _ns2_requests(stack) -> int:
    return sum(stack.tome.stats()["requests"].get(stack.settings.tome_ns2, {}).values())


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


async def test_a_slow_then_rate_limited_tome_causes_no_pile_up_and_cards_keep_flowing(
    make_stack, profile, chaos_report
):
    phase_s = profile.fault_s
    plan = plan_for(profile, duration_s=profile.fault_at_s + 2 * phase_s + 5.0, card_share=0.6,
                    detok_known_share=0.2, detok_unknown_share=0.2)
    stack = make_stack(refill_target=int(plan.rate_per_s * plan.duration_s) + 200, **TOME)
    result = ScenarioResult("TOME slow, then rate-limited", profile.mode)
    urls, key = prepared(stack, result)
    load = LoadRun(plan, urls, key)
    tome_requests: dict[str, int] = {}

    def fault(timeline):
        timeline.sleep_until(profile.fault_at_s)
        tome_requests["before_slow"] = _ns2_requests(stack)
        stack.tome.set_faults(slow_ms=SLOW_MS)
        timeline.mark("slow")
        timeline.sleep_until(profile.fault_at_s + phase_s)
        stack.tome.set_faults(slow_ms=0, rate_limit_rps=2)
        tome_requests["after_slow"] = _ns2_requests(stack)
        timeline.mark("rate_limited")
        timeline.sleep_until(profile.fault_at_s + 2 * phase_s)
        stack.tome.set_faults(rate_limit_rps=0)
        timeline.mark("normal")

    timeline = await run_with_fault(load, fault)
    slow, limited, normal = (timeline.events[n] for n in ("slow", "rate_limited", "normal"))
    result.fault_s = normal - slow
    result.recovery_s = first_success_after(load.calls, normal, kind="detok_unknown")
    result.recovery_meaning = "TOME back to normal until the first detokenize that needs TOME answers 200"
    result.notes["timeline s"] = timeline.relative()

    check_calls(load.calls, result, request_timeout_s=plan.request_timeout_s)
    cards = [c for c in load.calls if c.kind == "card"]
    before = [c.elapsed for c in cards if c.started < slow]
    degraded = [c.elapsed for c in cards if slow <= c.started < normal]
    result.notes["card p50 ms before / while TOME degraded"] = (
        round(statistics.median(before) * 1000), round(statistics.median(degraded) * 1000))
    result.check("cards still served from the pool", all(c.ok for c in cards),
                 f"{sum(c.ok for c in cards)}/{len(cards)}")
    result.check("card latency unaffected", _p99(degraded) <= CARD_P99_BOUND_S,
                 f"p99 {_p99(degraded) * 1000:.0f} ms while degraded (bound {CARD_P99_BOUND_S * 1000:.0f} ms)")

    bound_s = stack.settings.tome_total_timeout_s + LATENCY_MARGIN_S
    for phase, start, end in (("slow", slow, limited), ("rate-limited", limited, normal)):
        needing = [c for c in load.calls if c.kind == "detok_unknown" and start <= c.started < end]
        worst = max((c.elapsed for c in needing), default=0.0)
        outcomes = Counter(str(c.status) if c.ok else f"{c.status} {c.code}" for c in needing)
        result.notes[f"TOME-needing calls while {phase}"] = dict(outcomes)
        result.check(f"bounded latency while TOME is {phase}", bool(needing) and worst <= bound_s,
                     f"{len(needing)} calls, slowest {worst:.2f} s (bound {bound_s:.1f} s)")
    slow_calls = sum(1 for c in load.calls if c.kind == "detok_unknown" and slow <= c.started < limited)
    sent = tome_requests["after_slow"] - tome_requests["before_slow"]
    result.notes["TOME NS2 requests / TOME-needing calls while slow"] = f"{sent} / {slow_calls}"
    result.check("no pile-up: the breaker sheds calls while TOME is slow",
                 sent <= slow_calls * stack.settings.tome_max_attempts and sent < max(slow_calls, 1) * 2,
                 f"TOME received {sent} requests for {slow_calls} calls")
    result.check("TOME-needing calls succeed again afterwards", result.recovery_s is not None,
                 f"first 200 {result.recovery_s} s after TOME was normal")
    check_no_pair_on_two_cards(stack, load.calls, result)
    check_ledger(stack, result)
    chaos_report.add(result)
    assert not result.failed_checks, result.failed_checks
