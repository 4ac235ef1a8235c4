"""The characters no string of a request may hold, as a validator and as the pattern the OpenAPI document states.

Refused, in every string a request carries (body fields, path parameters, the Idempotency-Key header):

* C0 controls ``U+0000-U+001F``: NUL cannot be stored in PostgreSQL text at all, and the others (tab and
  newline included) have no place in an identifier; they forge log lines and break CSV exports.
* DEL ``U+007F`` and the C1 controls ``U+0080-U+009F`` (``U+0085`` is a line break to some parsers).
* The line and paragraph separators ``U+2028`` and ``U+2029``: line breaks to JavaScript and to editors.
* Lone surrogates ``U+D800-U+DFFF``: JSON ``"\\ud800"`` decodes to one in Python, and it has no UTF-8 form
  (PostgreSQL, logs and responses could not encode it). A pair of surrogate escapes is one character
  outside the Basic Multilingual Plane and is accepted.

Everything else Unicode is accepted where a field takes free text (accents, CJK, emoji). A request with
such a character answers ``422 INVALID_CHARACTERS`` naming the field, before any database work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

# The pydantic error type of a refused character; problems.py answers it with the code below.
INVALID_CHARACTERS_ERROR = "invalid_characters"
INVALID_CHARACTERS = "INVALID_CHARACTERS"
MESSAGE = "Control characters, line or paragraph separators and lone surrogates are not allowed"

_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# The same rule as a JSON Schema pattern (ECMA-262 and Python's re alike: \uXXXX escapes only), without the
# surrogates: a regex engine working on code points (Rust's, Go's) cannot express them and drops the whole
# pattern. A lone surrogate is no Unicode text at all, so a JSON string holding one is no valid string anyway
# (RFC 8259, section 8.2); the validator refuses it all the same.
TEXT_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f\u2028\u2029]*$"


def has_forbidden_characters(value: str) -> bool:
    return _FORBIDDEN.search(value) is not None


def _check(value: Any) -> Any:
    if isinstance(value, str) and _FORBIDDEN.search(value):
        raise PydanticCustomError(INVALID_CHARACTERS_ERROR, MESSAGE)
    return value  # not a string: the type check that follows refuses it


@dataclass(frozen=True, slots=True)
class PlainText:
    """``Annotated[str, ..., PlainText()]``: refuses the characters above (before length and pattern checks,
    so a NUL is INVALID_CHARACTERS whatever else is wrong) and states :data:`TEXT_PATTERN` in the JSON schema
    unless the type has a pattern of its own (one that already excludes them)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(_check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault("pattern", TEXT_PATTERN)
        return json_schema
