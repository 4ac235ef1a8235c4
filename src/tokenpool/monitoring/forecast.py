"""The consumption rate and the fill target it forecasts. Pure functions."""

from __future__ import annotations

import math

from tokenpool.pool.model import SampleSpan
from tokenpool.settings import Settings


def consumption_per_hour(span: SampleSpan | None, *, min_span_s: float = 1.0) -> float | None:
    """Pairs consumed per hour between the two samples; None when they are too close to tell.

    ``consumed`` (reserved + used + expired) can step back when a reservation is released; a
    negative difference is read as no consumption, never as a negative rate.
    """
    if span is None or span.seconds < min_span_s:
        return None
    return max(0, span.last_consumed - span.first_consumed) * 3600.0 / span.seconds


def forecast(rate_per_hour: float | None, interval_s: float, safety_factor: float) -> int:
    """Pairs expected to go before the next scheduled refill, with headroom."""
    if not rate_per_hour:
        return 0
    return math.ceil(rate_per_hour * interval_s / 3600.0 * safety_factor)


def capped_target(configured: int, expected: int, max_factor: float) -> int:
    """The fill target: the configured one, raised by the forecast to at most ``max_factor`` x configured.

    The cap exists because a rate measured over a short span (a burst right after a quiet spell) can
    forecast tens of thousands of pairs for an hour that will not come; one refill then spends TOME on
    pairs nobody needs for days. A configured target of 0 therefore also disables the forecast.
    """
    return max(configured, min(expected, math.floor(configured * max_factor)))


def fill_target(rate_per_hour: float | None, settings: Settings, configured: int | None = None) -> tuple[int, int]:
    """(forecast, target) for a pool consumed at ``rate_per_hour``: what the refill plans and health reads.

    ``configured``: the program's refill target (None: ``settings.refill_target``)."""
    expected = forecast(rate_per_hour, settings.refill_interval_s, settings.refill_safety_factor)
    base = settings.refill_target if configured is None else configured
    return expected, capped_target(base, expected, settings.refill_forecast_max_factor)
