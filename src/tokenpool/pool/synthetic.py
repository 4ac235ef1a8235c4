"""Synthetic token pairs for development and benchmarks; never for a real card program."""

from __future__ import annotations

import secrets

from tokenpool.pool.luhn import luhn_check_digit
from tokenpool.pool.model import TokenPair

SYNTHETIC_PREFIX = "99"  # internal tokens of synthetic pairs start with 99; external refs with syn_


def synthetic_pairs(count: int) -> list[TokenPair]:
    pairs = []
    for _ in range(count):
        body = SYNTHETIC_PREFIX + "".join(secrets.choice("0123456789") for _ in range(13))
        pairs.append(TokenPair(body + luhn_check_digit(body), "syn_" + secrets.token_hex(13)))
    return pairs
