"""How many pairs a refill adds and in which batches. Pure functions (the target comes from
:mod:`tokenpool.monitoring.forecast`)."""

from __future__ import annotations


def pairs_to_add(available: int, target: int) -> int:
    return max(0, target - available)


def batch_sizes(count: int, batch_size: int) -> list[int]:
    """``count`` split into batches of at most ``batch_size`` (the last one smaller)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    full, rest = divmod(max(0, count), batch_size)
    return [batch_size] * full + ([rest] if rest else [])
