"""Pool health: OK / LOW / CRITICAL / EMPTY from the available count, the target and the hours left.

Thresholds (settings, see docs/refill.md):

* EMPTY     no pair available;
* CRITICAL  available < ``health_critical_ratio`` x target, or < ``health_critical_hours`` left;
* LOW       available < ``health_low_ratio`` x target, or < ``health_low_hours`` left;
* OK        otherwise.

"Hours left" is available / consumption rate; with no measurable consumption it is unbounded
(reported as None) and only the share of the target counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tokenpool.db.monitoring_store import MonitoringStore
from tokenpool.db.pool_store import PostgresTokenPool
from tokenpool.monitoring.consumption import observe
from tokenpool.monitoring.forecast import fill_target
from tokenpool.observability.metrics import POOL_HEALTH, POOL_HOURS_LEFT, POOL_PAIRS
from tokenpool.pool.model import PairStatus, PoolStats
from tokenpool.settings import Settings


class HealthStatus(StrEnum):
    OK = "OK"
    LOW = "LOW"
    CRITICAL = "CRITICAL"
    EMPTY = "EMPTY"

    @property
    def severity(self) -> int:
        return list(HealthStatus).index(self)

    @property
    def exit_code(self) -> int:
        """``tokenpool health``: 0 OK, 1 LOW, 2 CRITICAL or EMPTY."""
        return min(self.severity, 2)


@dataclass(frozen=True, slots=True)
class Thresholds:
    low_ratio: float
    critical_ratio: float
    low_hours: float
    critical_hours: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(settings.health_low_ratio, settings.health_critical_ratio,
                   settings.health_low_hours, settings.health_critical_hours)


def hours_left(available: int, rate_per_hour: float | None) -> float | None:
    if not rate_per_hour:
        return None
    return available / rate_per_hour


def classify(available: int, target: int, rate_per_hour: float | None, thresholds: Thresholds) -> HealthStatus:
    if available <= 0:
        return HealthStatus.EMPTY
    left = hours_left(available, rate_per_hour)
    if available < thresholds.critical_ratio * target or (left is not None and left < thresholds.critical_hours):
        return HealthStatus.CRITICAL
    if available < thresholds.low_ratio * target or (left is not None and left < thresholds.low_hours):
        return HealthStatus.LOW
    return HealthStatus.OK


@dataclass(frozen=True, slots=True)
class PoolHealth:
    pool: str
    status: HealthStatus
    target: int
    counts: dict[str, int]
    consumption_per_hour: float | None
    hours_left: float | None

    @property
    def available(self) -> int:
        return self.counts.get("available", 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "status": self.status.value,
            "target": self.target,
            **self.counts,
            "consumption_per_hour": None if self.consumption_per_hour is None else round(self.consumption_per_hour, 1),
            "hours_left": None if self.hours_left is None else round(self.hours_left, 2),
        }


def assess(stats: PoolStats, rate: float | None, settings: Settings,
           configured_target: int | None = None) -> PoolHealth:
    """The health of a pool from its counts and consumption rate, read elsewhere (no I/O, no sample recorded)."""
    _forecast, target = fill_target(rate, settings, configured_target)
    status = classify(stats.available, target, rate, Thresholds.from_settings(settings))
    counts = {s.value.lower(): stats.count(s) for s in PairStatus} | {"total": stats.total}
    return PoolHealth(stats.pool, status, target, counts, rate, hours_left(stats.available, rate))


async def check_pool_health(store: PostgresTokenPool, samples: MonitoringStore, settings: Settings,
                            pool: str, *, publish: bool = True, target: int | None = None) -> PoolHealth:
    """Reads the cheap counters (and records a consumption sample); never scans token_pool.

    ``target``: the program's refill target (None: ``settings.refill_target``).

    ``publish`` sets the process's health gauges. The API answers ``GET /v1/pools/{p}`` with
    ``publish=False``: it checks on demand, not on a schedule, and a gauge it set once would be scraped
    unchanged for the life of the process (a CRITICAL long gone, still alerting).
    """
    observation = await observe(store, samples, settings, pool)
    stats = observation.stats
    rate = observation.consumption_per_hour
    health = assess(stats, rate, settings, target)
    if not publish:
        return health
    for pair_status in PairStatus:
        POOL_PAIRS.labels(pool, pair_status.value.lower()).set(stats.count(pair_status))
    POOL_HEALTH.labels(pool).set(health.status.severity)
    # No measurable consumption: unbounded. Leaving the last value would keep a stale "2 h left" (and an
    # alert on it) after consumption stopped.
    POOL_HOURS_LEFT.labels(pool).set(math.inf if health.hours_left is None else health.hours_left)
    return health
