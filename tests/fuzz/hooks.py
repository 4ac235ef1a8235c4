"""Schemathesis hooks of tests/fuzz/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import schemathesis

_VISIBLE_ASCII = frozenset(range(0x21, 0x7F))
_PROGRAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The programs the test registers (test_schemathesis.py): a valid name is one of these.
REGISTERED_PROGRAMS = ("default", "fuzz-gold")


def _registered(name: Any) -> Any:
    """A well-formed program name becomes a registered one (chosen by the name, so a case replays the same);
    anything else is left for the API to refuse."""
    if isinstance(name, str) and name not in REGISTERED_PROGRAMS and _PROGRAM_NAME.fullmatch(name):
        return REGISTERED_PROGRAMS[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(REGISTERED_PROGRAMS)]
    return name


def _on_registered_programs(case: Any) -> None:
    """Programs are registered (an unknown one is 422 UNKNOWN_PROGRAM, as documented and tested in
    tests/integration/test_programs.py); the schema can only say what a name looks like, so Schemathesis
    draws made-up names that are schema-valid, and would report their 422 as a valid request rejected.
    A well-formed name is therefore mapped to a registered program; a malformed one still reaches the API."""
    if isinstance(case.body, dict) and "program" in case.body:
        case.body["program"] = _registered(case.body["program"])
    if case.path_parameters and "program" in case.path_parameters:
        case.path_parameters["program"] = _registered(case.path_parameters["program"])


@schemathesis.hook
def map_case(_context: Any, case: Any) -> Any:
    """An Idempotency-Key of POST /v1/cards is tied to its body.

    Schemathesis draws keys and bodies independently, so the same short key ("0") comes back with other
    bodies, which the API rightly refuses (422 IDEMPOTENCY_KEY_REUSED) and Schemathesis would report as a
    valid request rejected. With a digest of the body appended, the same key and body still replay (200),
    and a key is never reused with another body. Keys that are invalid anyway are left as they are.
    """
    _on_registered_programs(case)
    if case.operation.label != "POST /v1/cards" or not case.headers:
        return case
    key = case.headers.get("Idempotency-Key")
    if isinstance(key, str) and 0 < len(key) <= 255 and all(ord(c) in _VISIBLE_ASCII for c in key):
        digest = hashlib.sha256(json.dumps(case.body, sort_keys=True, default=repr).encode()).hexdigest()[:16]
        if not key.endswith(f".{digest}"):  # a case mapped twice keeps one digest
            case.headers["Idempotency-Key"] = f"{key[:238]}.{digest}"
    return case
