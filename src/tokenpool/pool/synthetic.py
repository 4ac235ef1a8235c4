"""Synthetic token pairs for development and benchmarks; never for a real card program."""

from __future__ import annotations

import secrets

from tokenpool.pool.model import TokenPair

SYNTHETIC_PREFIX = "99"  # internal tokens of synthetic pairs start with 99; external refs with syn_


def luhn_check_digit(digits: str) -> str:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:  # every second digit from the right, counting the check digit to come
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def is_luhn_valid(number: str) -> bool:
    return number.isdigit() and luhn_check_digit(number[:-1]) == number[-1]


def synthetic_pairs(count: int) -> list[TokenPair]:
    pairs = []
    for _ in range(count):
        body = SYNTHETIC_PREFIX + "".join(secrets.choice("0123456789") for _ in range(13))
        pairs.append(TokenPair(body + luhn_check_digit(body), "syn_" + secrets.token_hex(13)))
    return pairs
