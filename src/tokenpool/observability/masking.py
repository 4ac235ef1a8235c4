"""Masking of token values before they reach a log line (PCI DSS 3.4.1 / 3.5.1).

A token is shown as its first 4 and last 4 characters; anything shorter than 12 characters is
hidden entirely, so that no masked form ever reveals more than half of a value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_KEEP = 4
_MIN_LEN_TO_SHOW_ENDS = 12

# Keys whose values are always token-like, whatever their shape.
SENSITIVE_KEYS = frozenset(
    {
        "token",
        "tokens",
        "internal_token",
        "internal_tokens",
        "external_ref",
        "external_refs",
        "value",
        "values",
        "api_key",
        "authorization",
    }
)

# Identifiers we mint ourselves (UUIDs, timestamps): never token values, and needed whole to trace a request.
SAFE_KEYS = frozenset(
    {"timestamp", "level", "logger", "correlation_id", "reservation_id", "card_id", "batch_id", "run_id"}
)

# Long digit runs (PAN- or token-shaped) and long opaque identifiers found inside free text.
_DIGITS = re.compile(r"\b\d{12,19}\b")
_OPAQUE = re.compile(r"\b[A-Za-z0-9_\-]{20,}\b")


def mask_token(value: str) -> str:
    """``4000123412341234`` -> ``4000********1234``."""
    if len(value) < _MIN_LEN_TO_SHOW_ENDS:
        return "*" * len(value)
    return value[:_KEEP] + "*" * (len(value) - 2 * _KEEP) + value[-_KEEP:]


def mask_to_last_four(value: str) -> str:
    """``4000123412341234`` -> ``************1234`` (same length), the form shown to people (PCI DSS 3.4.1)."""
    if len(value) < _MIN_LEN_TO_SHOW_ENDS:
        return "*" * len(value)
    return "*" * (len(value) - _KEEP) + value[-_KEEP:]


def mask_text(text: str) -> str:
    """Masks token-shaped runs inside free text (exception messages, URLs)."""
    text = _DIGITS.sub(lambda m: mask_token(m.group(0)), text)
    return _OPAQUE.sub(lambda m: mask_token(m.group(0)), text)


def mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_token(value)
    if isinstance(value, Mapping):
        return {k: mask_value(v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, bytes | bytearray):
        return [mask_value(v) for v in value]
    return value


def mask_event(event: dict[str, Any]) -> dict[str, Any]:
    """Masks a structured log event: sensitive keys wholly, other strings by pattern."""
    masked: dict[str, Any] = {}
    for key, value in event.items():
        if key.lower() in SAFE_KEYS:
            masked[key] = value
        elif key.lower() in SENSITIVE_KEYS:
            masked[key] = mask_value(value)
        elif isinstance(value, str):
            masked[key] = mask_text(value)
        else:
            masked[key] = value
    return masked
