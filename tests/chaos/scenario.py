"""What every scenario does around its fault: start the stack, run load while a fault script runs in a
thread, and time the events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tests.chaos.load import Call, LoadPlan, LoadRun
from tests.chaos.report import ScenarioResult
from tests.chaos.stack import Stack


@dataclass
class Timeline:
    """Monotonic instants of what the fault script did, by name."""

    t0: float = field(default_factory=time.monotonic)
    events: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> float:
        self.events[name] = time.monotonic()
        return self.events[name]

    def sleep_until(self, offset_s: float) -> None:
        time.sleep(max(0.0, self.t0 + offset_s - time.monotonic()))

    def relative(self) -> dict[str, float]:
        return {name: round(at - self.t0, 2) for name, at in self.events.items()}


async def run_with_fault(load: LoadRun, fault: Callable[[Timeline], None]) -> Timeline:
    """Runs the load and, alongside it in a thread, the (blocking) fault script."""
    timeline = Timeline()
    await asyncio.gather(load.run(), asyncio.to_thread(fault, timeline))
    return timeline


def first_success_after(calls: Sequence[Call], instant: float, kind: str = "card") -> float | None:
    """Seconds from ``instant`` to the end of the first successful call of ``kind`` started after it."""
    ends = [c.ended for c in calls if c.kind == kind and c.ok and c.started >= instant]
    return round(min(ends) - instant, 3) if ends else None


def prepared(stack: Stack, result: ScenarioResult, *, apis: int = 1) -> tuple[list[str], str]:
    """Initial refill to the target, ``apis`` API processes, a key. Returns (API URLs, key)."""
    started = time.monotonic()
    code = stack.refill()
    assert code == 0, f"initial refill exited {code}: {stack.log('refill-foreground').read_text()[-2000:]}"
    urls = [stack.start_api().url for _ in range(apis)]
    key = stack.api_key()
    result.notes["pool at start"] = stack.available()
    result.notes["stack ready in s"] = round(time.monotonic() - started, 1)
    return urls, key


def plan_for(profile: object, **overrides: object) -> LoadPlan:
    values = {"duration_s": profile.load_s, "rate_per_s": profile.rate_per_s,  # type: ignore[attr-defined]
              "concurrency": profile.concurrency}  # type: ignore[attr-defined]
    values.update(overrides)
    return LoadPlan(**values)  # type: ignore[arg-type]
