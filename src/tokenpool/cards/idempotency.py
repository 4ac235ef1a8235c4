"""Idempotency keys of card creation: which keys are acceptable, and the fingerprint of a request.

A retry must carry the same key *and* the same request; the fingerprint tells a retry from a
different request that reuses a key (which is refused rather than silently answered with the
first card).
"""

from __future__ import annotations

import hashlib
import json
import re

MAX_KEY_LENGTH = 255
# Visible ASCII only: a key is stored and compared byte for byte, and must survive any HTTP stack.
_KEY = re.compile(rf"^[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}$")


def is_valid_key(key: str) -> bool:
    return bool(_KEY.match(key))


def request_fingerprint(fields: dict[str, object]) -> bytes:
    """SHA-256 of the request's fields in canonical JSON: key order and whitespace do not matter."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).digest()
