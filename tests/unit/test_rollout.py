"""The canary rollout's steps and gates, driven with scripted figures (no I/O: tokenpool.rollout is pure)."""

from __future__ import annotations

import pytest

from tokenpool.durations import parse_duration
from tokenpool.rollout import (
    GateLimits,
    MetricsUnavailable,
    Outcome,
    RolloutPlan,
    TrafficFigures,
    broken_gates,
    parse_steps,
    rollout,
    traffic_figures,
)


class ScriptedPorts:
    """Counters that grow by ``per_read`` at each reading, the pool's status, the shares set."""

    def __init__(self, per_read: TrafficFigures, status: str = "OK", *, fail_reads: set[int] | None = None,
                 after: int | None = None, then: TrafficFigures | None = None) -> None:
        self.per_read, self.status, self.fail_reads = per_read, status, fail_reads or set()
        self.after, self.then = after, then
        self.reads = 0
        self.total = TrafficFigures()
        self.percents: list[int] = []

    async def figures(self) -> TrafficFigures:
        self.reads += 1
        if self.reads in self.fail_reads:
            raise MetricsUnavailable("connection refused")
        step = self.then if self.after is not None and self.reads > self.after and self.then else self.per_read
        self.total = TrafficFigures(*(a + b for a, b in zip(
            (self.total.requests, self.total.server_errors, self.total.routed_to_pool, self.total.fallbacks),
            (step.requests, step.server_errors, step.routed_to_pool, step.fallbacks), strict=True)))
        return self.total

    async def pool_status(self) -> str:
        return self.status

    async def set_percent(self, percent: int) -> None:
        self.percents.append(percent)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


PLAN = RolloutPlan("gold", (10, 50, 100), hold_s=60, baseline_s=30, check_every_s=10)
HEALTHY = TrafficFigures(requests=1000, server_errors=1, routed_to_pool=100, fallbacks=0)


async def _run(ports: ScriptedPorts, plan: RolloutPlan = PLAN) -> tuple[object, list[str]]:
    clock, lines = FakeClock(), []
    result = await rollout(plan, ports, sleep=clock.sleep, clock=clock, report=lines.append)
    return result, lines


async def test_a_healthy_rollout_sets_every_step_in_turn_and_ends_at_the_last():
    ports = ScriptedPorts(HEALTHY)
    result, lines = await _run(ports)
    assert result.outcome is Outcome.COMPLETED
    assert result.percent == 100
    assert result.steps_done == [10, 50, 100]
    assert ports.percents == [10, 50, 100]
    assert [line for line in lines if "held" in line] == ["step 10% held", "step 50% held", "step 100% held"]
    assert ports.reads >= 2 + 3 * (1 + 6)  # the baseline, then each hold checked every 10 s for 60 s


async def test_a_rise_in_server_errors_rolls_back_to_zero_at_that_step():
    # The 50 % step (reads after the baseline and the 10 % hold) doubles the 5xx share.
    ports = ScriptedPorts(HEALTHY, after=9, then=TrafficFigures(1000, 30, 100, 0))
    result, lines = await _run(ports)
    assert result.outcome is Outcome.ROLLED_BACK
    assert result.percent == 0
    assert ports.percents == [10, 50, 0]
    assert result.steps_done == [10]
    assert "server errors rose" in result.reasons[0]
    assert lines[-1].startswith("rolled back to 0% at step 50%")


async def test_cards_routed_to_the_pool_falling_back_to_tome_roll_back():
    ports = ScriptedPorts(HEALTHY, after=3, then=TrafficFigures(1000, 1, 100, 5))
    result, _ = await _run(ports)
    assert (result.outcome, ports.percents) == (Outcome.ROLLED_BACK, [10, 0])
    assert "TOME fallbacks rose: 5.00% of 100" in result.reasons[0]


async def test_a_low_pool_rolls_back_at_the_first_check():
    ports = ScriptedPorts(HEALTHY, status="LOW")
    result, _ = await _run(ports)
    assert (result.outcome, ports.percents, result.reasons) == (Outcome.ROLLED_BACK, [10, 0], ["pool is LOW"])


async def test_one_unreadable_scrape_is_tolerated_three_in_a_row_roll_back():
    once = ScriptedPorts(HEALTHY, fail_reads={5})
    assert (await _run(once))[0].outcome is Outcome.COMPLETED
    thrice = ScriptedPorts(HEALTHY, fail_reads={5, 6, 7})
    result, _ = await _run(thrice)
    assert result.outcome is Outcome.ROLLED_BACK
    assert "metrics unreadable 3 times" in result.reasons[0]


def test_the_gates_compare_with_the_baseline_not_with_zero():
    baseline = TrafficFigures(10_000, 10, 1000, 0)  # 0.1 % of 5xx before the rollout
    same = TrafficFigures(1000, 1, 100, 0)
    assert broken_gates(baseline, same, "OK", GateLimits()) == []
    worse = TrafficFigures(1000, 3, 100, 0)  # 0.3 %: more than 0.1 point above
    assert broken_gates(baseline, worse, "OK", GateLimits())[0].startswith("server errors rose")
    assert broken_gates(baseline, worse, "OK", GateLimits(max_error_rate_rise=0.01)) == []


def test_a_counter_that_went_down_counts_from_zero_like_increase():
    before, after = TrafficFigures(500, 5, 50, 1), TrafficFigures(20, 0, 3, 0)  # an instance restarted
    assert after.since(before) == TrafficFigures(20, 0, 3, 0)


def test_figures_are_summed_over_instances_for_one_program():
    samples = [
        ("tokenpool_http_requests_total", {"route": "/v1/cards", "method": "POST", "status": "201"}, 90.0),
        ("tokenpool_http_requests_total", {"route": "/v1/cards", "method": "POST", "status": "503"}, 2.0),
        ("tokenpool_http_requests_total", {"route": "/v1/cards", "method": "POST", "status": "201"}, 8.0),
        ("tokenpool_cards_created_total", {"program": "gold", "token_source": "pool", "routed_to": "pool"}, 40.0),
        ("tokenpool_cards_created_total", {"program": "gold", "token_source": "tome", "routed_to": "pool"}, 1.0),
        ("tokenpool_cards_created_total", {"program": "gold", "token_source": "tome", "routed_to": "tome"}, 50.0),
        ("tokenpool_cards_created_total", {"program": "silver", "token_source": "tome", "routed_to": "pool"}, 9.0),
    ]
    assert traffic_figures(samples, "gold") == TrafficFigures(100, 2, 41, 1)


@pytest.mark.parametrize(("text", "steps"), [("10,50,100", (10, 50, 100)), ("5", (5,)), ("1, 100", (1, 100))])
def test_steps_rise_within_one_to_a_hundred(text, steps):
    assert parse_steps(text) == steps


@pytest.mark.parametrize("text", ["", "50,10", "0,10", "10,10", "10,101", "ten"])
def test_bad_steps_are_refused(text):
    with pytest.raises(ValueError, match="steps"):
        parse_steps(text)


@pytest.mark.parametrize(("text", "seconds"), [("2h", 7200), ("1d12h", 129_600), ("0.5s", 0.5), ("90m", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "2x", "1h1h", "-1h", "1 h"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match=r"duration|unit"):
        parse_duration(text)
