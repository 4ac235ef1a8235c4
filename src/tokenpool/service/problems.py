"""RFC 9457 problem details: every 4xx/5xx of the API is ``application/problem+json``.

Each problem has a stable machine-readable ``code`` (the table in docs/api.md), a human ``detail``
and the request's ``correlation_id``. Handlers here turn every error the framework or the service
raises, including ones nobody anticipated, into such a body, so no client ever sees a bare 500.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenpool.observability.logging import get_logger
from tokenpool.observability.metrics import HTTP_PROBLEMS
from tokenpool.service.correlation import current_correlation_id
from tokenpool.service.text import INVALID_CHARACTERS, INVALID_CHARACTERS_ERROR, MESSAGE

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "https://tokenpool.dev/problems/"

log = get_logger("tokenpool.service")

_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    409: "Conflict", 410: "Gone", 413: "Content Too Large", 415: "Unsupported Media Type",
    422: "Unprocessable Content", 429: "Too Many Requests", 500: "Internal Server Error",
    503: "Service Unavailable",
}

# Framework statuses without a more specific code.
_HTTP_CODES = {
    400: "BAD_REQUEST", 401: "AUTHENTICATION_REQUIRED", 403: "INSUFFICIENT_SCOPE", 404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED", 413: "BODY_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE",
}


# The body of every problem response, as the OpenAPI document declares it (components/schemas/Problem).
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; `code` is stable (docs/api.md).",
    "required": ["type", "title", "status", "detail", "code", "correlation_id"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "code": {"type": "string"}, "correlation_id": {"type": "string"},
        "errors": {
            "type": "array", "description": "Validation problems: where and what, never the input.",
            "items": {"type": "object", "required": ["loc", "msg", "type"], "properties": {
                "loc": {"type": "array", "items": {"type": "string"}},
                "msg": {"type": "string"}, "type": {"type": "string"}}},
        },
    },
}


class ProblemError(Exception):
    """Raised anywhere in the service; rendered as a problem response by the handler below."""

    def __init__(
        self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}


def problem_response(
    status: int, code: str, detail: str, *, headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    HTTP_PROBLEMS.labels(str(status), code).inc()
    correlation_id = current_correlation_id()
    body: dict[str, Any] = {
        "type": TYPE_BASE + code.lower().replace("_", "-"),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        "correlation_id": correlation_id,
    }
    body.update(extra or {})
    all_headers = {"X-Correlation-ID": correlation_id, **(headers or {})}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=all_headers)


def unavailable(code: str, detail: str, retry_after_s: float) -> ProblemError:
    return ProblemError(503, code, detail, headers={"Retry-After": str(max(1, round(retry_after_s)))})


def _validation_problem(error: RequestValidationError, max_refs: int) -> JSONResponse:
    errors = error.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem_response(400, "MALFORMED_JSON", "The request body is not valid JSON.")
    for e in errors:
        if e.get("type") == "too_long" and tuple(e.get("loc", ()))[-1:] == ("external_refs",):
            return problem_response(
                422, "TOO_MANY_REFS", f"At most {max_refs} external_refs per request."
            )
    # Only field locations and messages: echoing the input could put a token into a response or a log.
    details = [
        {"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in errors
    ]
    refused = [e for e in errors if e.get("type") == INVALID_CHARACTERS_ERROR]
    if refused:
        return invalid_characters([field_name(e.get("loc", ())) for e in refused], details)
    summary = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5])
    return problem_response(422, "VALIDATION_ERROR", summary or "Invalid request.", extra={"errors": details})


def field_name(loc: Any) -> str:
    """``("body", "external_refs", 3)`` -> ``external_refs[3]``; ``("path", "card_id")`` -> ``card_id``."""
    parts = [part for part in loc if part not in ("body", "path", "query", "header")]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def invalid_characters(fields: list[str], details: list[dict[str, Any]]) -> JSONResponse:
    """422 INVALID_CHARACTERS naming the fields (service/text.py: which characters, and why)."""
    named = ", ".join(dict.fromkeys(fields[:5])) + (", ..." if len(fields) > 5 else "")
    return problem_response(422, INVALID_CHARACTERS, invalid_characters_detail(named), extra={"errors": details})


def invalid_characters_detail(named: str) -> str:
    return f"Invalid characters in {named}: {MESSAGE[0].lower()}{MESSAGE[1:]}."


def install_problem_handlers(app: FastAPI, *, max_refs: int) -> None:
    async def on_problem(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProblemError)
        return problem_response(exc.status, exc.code, exc.detail, headers=exc.headers, extra=exc.extra)

    async def on_validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation_problem(exc, max_refs)

    async def on_http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "Error")
        return problem_response(exc.status_code, code, detail, headers=dict(exc.headers or {}))

    async def on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled.error", error_type=type(exc).__name__, error=str(exc))
        return problem_response(500, "INTERNAL_ERROR", "An unexpected error occurred; quote the correlation id.")

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
