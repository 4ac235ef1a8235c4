"""Durations as operators type them: ``2h``, ``90m``, ``30d``, ``1d12h``, ``0.5s``."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
EXPECTED = "a duration like 30d, 12h, 90m, 45s, 2w or 1d12h (units s, m, h, d, w)"


def parse_duration(text: str) -> float:
    """Seconds of ``text``: numbers each followed by a unit (s, m, h, d, w), each unit at most once, no sign or
    spaces inside. ValueError saying what is expected otherwise (a bare number is refused: minutes or
    seconds?)."""
    cleaned = text.strip().lower()
    if not cleaned or _PART.sub("", cleaned):
        raise ValueError(f"{text!r} is not {EXPECTED}")
    parts = _PART.findall(cleaned)
    units = [unit for _number, unit in parts]
    if len(set(units)) != len(units):
        raise ValueError(f"{text!r} names a unit twice; expected {EXPECTED}")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
