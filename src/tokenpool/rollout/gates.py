"""The gates a canary step must hold: no rise in server errors, no rise in TOME fallbacks, a pool not LOW.

Pure: figures in, broken gates out. The figures are cumulative counters (summed over every scraped API
instance), so a window is the difference of two readings; a counter that went down (an instance restarted
between readings) counts from zero, as Prometheus' ``increase()`` does.

Why compare with a baseline rather than with zero: a service with a background 0.01 % of 5xx would never
pass a zero-tolerance gate, and the rollout asks "did this step make it worse?". The baseline is the window
just before the first step, at the traffic share the program had then.
"""

from __future__ import annotations

from dataclasses import dataclass

# Pool health states that stop a rollout: the pool cannot carry more traffic than it has.
_UNHEALTHY = frozenset({"LOW", "CRITICAL", "EMPTY"})


@dataclass(frozen=True, slots=True)
class TrafficFigures:
    """Counter readings (or, from :meth:`since`, increases over a window)."""

    requests: float = 0.0  # every HTTP request the API answered
    server_errors: float = 0.0  # of those, the 5xx
    routed_to_pool: float = 0.0  # the program's cards the canary sent to the pool
    fallbacks: float = 0.0  # of those, cards that got a TOME pair: the pool was empty or unreachable

    def since(self, earlier: TrafficFigures) -> TrafficFigures:
        def increase(now: float, then: float) -> float:
            return now - then if now >= then else now  # reset: the instance restarted in between

        return TrafficFigures(
            increase(self.requests, earlier.requests), increase(self.server_errors, earlier.server_errors),
            increase(self.routed_to_pool, earlier.routed_to_pool), increase(self.fallbacks, earlier.fallbacks),
        )

    @property
    def error_rate(self) -> float:
        return self.server_errors / self.requests if self.requests else 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.routed_to_pool if self.routed_to_pool else 0.0


@dataclass(frozen=True, slots=True)
class GateLimits:
    max_error_rate_rise: float = 0.001  # the 5xx share may exceed the baseline's by 0.1 percentage point
    max_fallback_rate_rise: float = 0.01  # the share of pool-routed cards that fell back to TOME: 1 point


def broken_gates(baseline: TrafficFigures, window: TrafficFigures, pool_status: str,
                 limits: GateLimits) -> list[str]:
    """The gates ``window`` (a step's increases) breaks against ``baseline`` (the increases before the
    rollout); empty when the step may go on."""
    broken = []
    if window.server_errors and window.error_rate > baseline.error_rate + limits.max_error_rate_rise:
        broken.append(f"server errors rose: {window.error_rate:.2%} of {window.requests:.0f} requests "
                      f"(baseline {baseline.error_rate:.2%})")
    if window.fallbacks and window.fallback_rate > baseline.fallback_rate + limits.max_fallback_rate_rise:
        broken.append(f"TOME fallbacks rose: {window.fallback_rate:.2%} of {window.routed_to_pool:.0f} pool-routed "
                      f"cards (baseline {baseline.fallback_rate:.2%})")
    if pool_status in _UNHEALTHY:
        broken.append(f"pool is {pool_status}")
    return broken


def traffic_figures(samples: list[tuple[str, dict[str, str], float]], program: str) -> TrafficFigures:
    """The figures of ``program`` from Prometheus samples (name, labels, value), summed over instances."""
    figures = {"requests": 0.0, "server_errors": 0.0, "routed_to_pool": 0.0, "fallbacks": 0.0}
    for name, labels, value in samples:
        if name == "tokenpool_http_requests_total":
            figures["requests"] += value
            if labels.get("status", "").startswith("5"):
                figures["server_errors"] += value
        elif (name == "tokenpool_cards_created_total" and labels.get("program") == program
              and labels.get("routed_to") == "pool"):
            figures["routed_to_pool"] += value
            if labels.get("token_source") == "tome":
                figures["fallbacks"] += value
    return TrafficFigures(**figures)
