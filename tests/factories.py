"""Test data builders."""

from __future__ import annotations

import uuid

from tokenpool.pool.model import TokenPair


def make_pairs(n: int, prefix: str | None = None) -> list[TokenPair]:
    """``n`` distinct synthetic pairs; a fresh prefix per call unless one is given."""
    prefix = prefix or uuid.uuid4().hex[:8]
    return [TokenPair(f"{prefix}{i:08d}", f"ext_{prefix}_{i:08d}") for i in range(n)]
