"""The canary rollout of one program's pool traffic: steps, gates, and the loop that advances or rolls back."""

from tokenpool.rollout.gates import GateLimits, TrafficFigures, broken_gates, traffic_figures
from tokenpool.rollout.runner import (
    MetricsUnavailable,
    Outcome,
    RolloutPlan,
    RolloutPorts,
    RolloutResult,
    parse_steps,
    rollout,
)

__all__ = [
    "GateLimits", "MetricsUnavailable", "Outcome", "RolloutPlan", "RolloutPorts", "RolloutResult",
    "TrafficFigures", "broken_gates", "parse_steps", "rollout", "traffic_figures",
]
