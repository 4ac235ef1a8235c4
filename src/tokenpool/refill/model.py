"""What a refill run decides and reports: outcomes, results, errors. No I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any
from uuid import UUID


class Outcome(StrEnum):
    """How a run ended; stored in ``refill_runs.outcome`` and used as the metrics label."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED_LEASE_HELD = "skipped_lease_held"
    STOPPED = "stopped"  # asked to stop (SIGTERM) before the target was reached; nothing half-done
    LEASE_LOST = "lease_lost"  # another runner took the lease (ours lapsed): we stopped loading


# From best to worst; anything else (a run still RUNNING) is worse than all of them.
_SEVERITY = [Outcome.SUCCEEDED, Outcome.SKIPPED_LEASE_HELD, Outcome.STOPPED, Outcome.LEASE_LOST, Outcome.FAILED]


def worst_outcome(outcomes: list[Outcome]) -> Outcome:
    """The outcome of several runs (one per program): the worst of theirs (none: succeeded)."""
    return max(outcomes, key=lambda outcome: _SEVERITY.index(outcome) if outcome in _SEVERITY else len(_SEVERITY),
               default=Outcome.SUCCEEDED)


class Trigger(StrEnum):
    CLI = "cli"
    LAMBDA = "lambda"
    SCHEDULE = "worker:schedule"
    WATERMARK = "worker:watermark"


@dataclass(frozen=True, slots=True)
class RefillPlan:
    """How many pairs to add and why."""

    available: int
    configured_target: int
    forecast: int  # pairs expected to be consumed before the next refill, with the safety factor
    consumption_per_hour: float | None  # None: not enough samples yet
    count: int  # pairs this run adds (target - available, or exactly --count)
    target: int  # max(configured, forecast capped at refill_forecast_max_factor x configured)
    explicit: bool = False  # --count N was given


@dataclass(slots=True)
class RefillResult:
    """The JSON summary of a run (CLI --json, the Lambda's return value)."""

    run_id: UUID
    pool: str
    outcome: Outcome
    target: int | None = None
    requested: int = 0
    recovered: int = 0
    added: int = 0
    tome_requests: int = 0
    duration_s: float = 0.0
    error: str | None = None
    lease_holder: str | None = None
    plan: RefillPlan | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["run_id"] = str(self.run_id)
        out["outcome"] = self.outcome.value
        out["duration_s"] = round(self.duration_s, 3)
        out.pop("plan")
        if self.plan is not None:
            out["available_before"] = self.plan.available
            out["forecast"] = self.plan.forecast
            out["consumption_per_hour"] = self.plan.consumption_per_hour
        return out


class RefillError(Exception):
    """Base of the refill job's own errors."""


class LeaseHeld(RefillError):
    """Another runner holds the pool's refill lease."""

    def __init__(self, pool: str, holder: str, expires_at: object) -> None:
        super().__init__(f"refill lease of pool {pool!r} is held by {holder} until {expires_at}")
        self.pool = pool
        self.holder = holder
        self.expires_at = expires_at


class LeaseLost(RefillError):
    """Our lease was taken over (it lapsed while we were stalled): stop loading at once."""

    def __init__(self, pool: str, holder: str) -> None:
        super().__init__(f"refill lease of pool {pool!r} is no longer held by {holder}")
