"""The pool's level and consumption rate, from the cheap counters (never a scan of token_pool).

Each observation stores a sample of ``consumed`` = reserved + used + expired (at most one per
``refill_sample_min_interval_s``); the rate is the difference between the oldest sample of the
forecast window and the newest one.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenpool.db.monitoring_store import MonitoringStore
from tokenpool.db.pool_store import PostgresTokenPool
from tokenpool.monitoring.forecast import consumption_per_hour
from tokenpool.pool.model import PairStatus, PoolStats
from tokenpool.settings import Settings


@dataclass(frozen=True, slots=True)
class Observation:
    stats: PoolStats
    consumption_per_hour: float | None  # None: fewer than two samples far enough apart


def consumed(stats: PoolStats) -> int:
    return sum(stats.count(status) for status in (PairStatus.RESERVED, PairStatus.USED, PairStatus.EXPIRED))


async def observe(store: PostgresTokenPool, samples: MonitoringStore, settings: Settings, pool: str) -> Observation:
    stats = await store.stats(pool)
    await samples.sample(pool, consumed(stats), stats.available, settings.refill_sample_min_interval_s)
    span = await samples.sample_span(pool, settings.refill_forecast_window_s)
    return Observation(stats, consumption_per_hour(span))
