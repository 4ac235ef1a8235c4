"""Schemathesis hooks of tests/fuzz/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import schemathesis

_VISIBLE_ASCII = frozenset(range(0x21, 0x7F))


@schemathesis.hook
def map_case(_context: Any, case: Any) -> Any:
    """An Idempotency-Key of POST /v1/cards is tied to its body.

    Schemathesis draws keys and bodies independently, so the same short key ("0") comes back with other
    bodies, which the API rightly refuses (422 IDEMPOTENCY_KEY_REUSED) and Schemathesis would report as a
    valid request rejected. With a digest of the body appended, the same key and body still replay (200),
    and a key is never reused with another body. Keys that are invalid anyway are left as they are.
    """
    if case.operation.label != "POST /v1/cards" or not case.headers:
        return case
    key = case.headers.get("Idempotency-Key")
    if isinstance(key, str) and 0 < len(key) <= 255 and all(ord(c) in _VISIBLE_ASCII for c in key):
        digest = hashlib.sha256(json.dumps(case.body, sort_keys=True, default=repr).encode()).hexdigest()[:16]
        case.headers["Idempotency-Key"] = f"{key[:238]}.{digest}"
    return case
