"""``rollout``: raise one program's pool traffic step by step (10 % -> 50 % -> 100 %), holding each step
while its gates hold, and set it back to 0 % the moment one breaks.

The loop is I/O-free: what it reads and writes goes through :class:`RolloutPorts` (the CLI wires the
database and the API's metrics), and time through an injected ``sleep`` and ``clock``, so a test drives a
whole rollout with holds of a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from tokenpool.observability.logging import get_logger
from tokenpool.rollout.gates import GateLimits, TrafficFigures, broken_gates

log = get_logger("tokenpool.rollout")


class MetricsUnavailable(Exception):
    """The traffic figures could not be read (every gate but the pool's is then unknown)."""


class RolloutPorts(Protocol):
    async def figures(self) -> TrafficFigures: ...  # raises MetricsUnavailable
    async def pool_status(self) -> str: ...
    async def set_percent(self, percent: int) -> None: ...


class Outcome(StrEnum):
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    program: str
    steps: tuple[int, ...]
    hold_s: float
    baseline_s: float
    check_every_s: float
    limits: GateLimits = field(default_factory=GateLimits)
    # Consecutive unreadable metrics tolerated (a scrape lost to a deploy) before the step counts as broken.
    max_metrics_failures: int = 3


@dataclass
class RolloutResult:
    outcome: Outcome
    percent: int  # the program's share when the rollout ended
    steps_done: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why it rolled back


def parse_steps(text: str) -> tuple[int, ...]:
    """``"10,50,100"`` -> (10, 50, 100): rising shares within 1..100; ValueError otherwise."""
    try:
        steps = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"steps must be whole percentages separated by commas, not {text!r}") from None
    if not steps or any(not 1 <= step <= 100 for step in steps) or list(steps) != sorted(set(steps)):
        raise ValueError(f"steps must rise within 1..100 (e.g. 10,50,100), not {text!r}")
    return steps


async def rollout(plan: RolloutPlan, ports: RolloutPorts, *,
                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                  clock: Callable[[], float] = time.monotonic,
                  report: Callable[[str], None] = lambda line: None) -> RolloutResult:
    """Runs the plan; every step and the outcome are logged (``rollout.*``) and reported as one line."""
    def say(event: str, line: str, **fields: object) -> None:
        log.info(event, program=plan.program, **fields)
        report(line)

    start = await ports.figures()
    say("rollout.baseline", f"measuring the baseline for {plan.baseline_s:g} s", baseline_s=plan.baseline_s)
    await sleep(plan.baseline_s)
    baseline = (await ports.figures()).since(start)
    say("rollout.baseline_measured", f"baseline: {baseline.error_rate:.2%} server errors of "
        f"{baseline.requests:.0f} requests, {baseline.fallback_rate:.2%} fallbacks",
        requests=baseline.requests, error_rate=baseline.error_rate, fallback_rate=baseline.fallback_rate)
    result = RolloutResult(Outcome.COMPLETED, percent=-1)
    for step in plan.steps:
        await ports.set_percent(step)
        result.percent = step
        say("rollout.step", f"step {step}%: holding {plan.hold_s:g} s", percent=step, hold_s=plan.hold_s)
        reasons = await _hold(plan, ports, baseline, sleep, clock)
        if reasons:
            await ports.set_percent(0)
            result.outcome, result.percent, result.reasons = Outcome.ROLLED_BACK, 0, reasons
            log.warning("rollout.rolled_back", program=plan.program, at_percent=step, reasons=reasons)
            report(f"rolled back to 0% at step {step}%: {'; '.join(reasons)}")
            return result
        result.steps_done.append(step)
        say("rollout.step_held", f"step {step}% held", percent=step)
    say("rollout.completed", f"rollout completed at {result.percent}%", percent=result.percent)
    return result


async def _hold(plan: RolloutPlan, ports: RolloutPorts, baseline: TrafficFigures,
                sleep: Callable[[float], Awaitable[None]], clock: Callable[[], float]) -> list[str]:
    """Watches one step for ``hold_s``; the broken gates (empty: it held)."""
    step_start = await ports.figures()
    deadline = clock() + plan.hold_s
    failures = 0
    while True:
        await sleep(max(0.0, min(plan.check_every_s, deadline - clock())))
        try:
            window = (await ports.figures()).since(step_start)
            failures = 0
        except MetricsUnavailable as error:
            failures += 1
            log.warning("rollout.metrics_unavailable", program=plan.program, error=str(error), failures=failures)
            if failures >= plan.max_metrics_failures:
                return [f"metrics unreadable {failures} times in a row: {error}"]
            window = None
        status = await ports.pool_status()
        broken = broken_gates(baseline, window or TrafficFigures(), status, plan.limits)
        if broken:
            return broken
        if clock() >= deadline:
            return []
