"""Pure load maths of the end-to-end benchmark: the diurnal curve, the arrival schedule, percentiles.

No I/O here, so the unit tests pin the shape of "a day in miniature" and the statistics the report
quotes (``tests/unit/test_loadtest_shape.py``).

The curve is a business day: a small night floor plus two smooth humps, the morning one (10:30, the
peak hour) larger than the afternoon one (15:00). With the constants below the busiest hour carries
~3.0x the average hour's cards and the quietest ~0.14x; the whole day is normalised to the requested
number of cards.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

HOURS_PER_DAY = 24
NIGHT_FLOOR = 0.05  # rate at night, relative to the morning hump's height
MORNING_PEAK_H = 10.5
AFTERNOON_PEAK_H = 15.0
AFTERNOON_HEIGHT = 0.8
HUMP_WIDTH_H = 1.6  # standard deviation of each hump
STEPS_PER_HOUR = 60  # integration grid of the schedule: one simulated minute


def relative_rate(hour: float) -> float:
    """Unnormalised card rate at ``hour`` (0..24) of the simulated day."""

    def hump(centre: float) -> float:
        return math.exp(-((hour - centre) ** 2) / (2 * HUMP_WIDTH_H**2))

    return NIGHT_FLOOR + hump(MORNING_PEAK_H) + AFTERNOON_HEIGHT * hump(AFTERNOON_PEAK_H)


def _grid() -> list[float]:
    """Midpoint-rule weights of each simulated minute of the day."""
    return [relative_rate((i + 0.5) / STEPS_PER_HOUR) for i in range(HOURS_PER_DAY * STEPS_PER_HOUR)]


def hourly_cards(total: int) -> list[float]:
    """Expected cards in each of the 24 simulated hours; they sum to ``total``."""
    grid = _grid()
    scale = total / sum(grid)
    return [scale * sum(grid[h * STEPS_PER_HOUR:(h + 1) * STEPS_PER_HOUR]) for h in range(HOURS_PER_DAY)]


def peak_to_average(total: int = 50_000) -> float:
    hours = hourly_cards(total)
    return max(hours) / (sum(hours) / len(hours))


def arrival_offsets(total: int, hour_seconds: float) -> list[float]:
    """When (real seconds after the start) each of ``total`` cards is sent.

    Deterministic inverse of the cumulative curve: card ``i`` goes at the time the day has reached
    ``(i + 0.5) / total`` of its cards, interpolated linearly within a simulated minute. The same
    arguments always give the same schedule, so two runs (direct and pool) see identical traffic.
    """
    if total <= 0:
        return []
    grid = _grid()
    cumulative = [0.0]
    for weight in grid:
        cumulative.append(cumulative[-1] + weight)
    day = cumulative[-1]
    step_s = hour_seconds / STEPS_PER_HOUR
    offsets: list[float] = []
    for i in range(total):
        target = (i + 0.5) / total * day
        step = max(1, bisect_left(cumulative, target))  # cumulative[step - 1] < target <= cumulative[step]
        within = (target - cumulative[step - 1]) / grid[step - 1]
        offsets.append((step - 1 + within) * step_s)
    return offsets


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class WindowStats:
    start_s: float
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


def windowed_percentiles(samples: Sequence[tuple[float, float]], window_s: float) -> list[WindowStats]:
    """``(offset_s, latency_ms)`` samples grouped into windows of ``window_s`` by send time."""
    buckets: dict[int, list[float]] = {}
    for offset, latency in samples:
        buckets.setdefault(int(offset // window_s), []).append(latency)
    return [
        WindowStats(
            index * window_s, len(values), percentile(values, 50), percentile(values, 95), percentile(values, 99)
        )
        for index, values in sorted(buckets.items())
    ]


def peak_rate(per_second_counts: Sequence[float]) -> float:
    """Highest per-second count of a series (0 for an empty one)."""
    return max(per_second_counts, default=0.0)


def reduction(direct: float, pool: float) -> float:
    """Relative cut from ``direct`` to ``pool`` (0.75 = 75 % fewer); nan when direct is 0."""
    return math.nan if direct == 0 else 1 - pool / direct
