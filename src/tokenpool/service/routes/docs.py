"""OpenAPI descriptions shared by the routes."""

from __future__ import annotations

from typing import Any

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}

PROBLEMS: dict[int | str, dict[str, Any]] = {
    "4XX": {"description": "A problem (RFC 9457) with a stable `code`; see docs/api.md.", "content": _PROBLEM},
    "5XX": {"description": "A problem; 503 carries Retry-After.", "content": _PROBLEM},
}
