"""Per-request context (correlation id, one JSON log line, the HTTP metrics) and the body size limit.

A pure ASGI middleware rather than Starlette's BaseHTTPMiddleware: it runs in the request's own task,
so the correlation id bound here (contextvar + structlog contextvars) is visible to the handler, to
every log line it writes and to the TOME client, which forwards it as ``X-Correlation-ID``.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenpool.observability.logging import get_logger
from tokenpool.observability.masking import mask_text
from tokenpool.observability.metrics import HTTP_LATENCY, HTTP_REQUESTS
from tokenpool.service.correlation import CORRELATION_HEADER, choose_correlation_id, set_correlation_id
from tokenpool.service.problems import problem_response

log = get_logger("tokenpool.service.http")

UNMATCHED_ROUTE = "unmatched"  # one label for every path no route matched: bounded metric cardinality


def route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation_id = choose_correlation_id(Headers(scope=scope).get(CORRELATION_HEADER))
        set_correlation_id(correlation_id)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception escaping here becomes a 500 problem
        started_response = False

        async def send_with_context(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                headers = MutableHeaders(scope=message)
                if CORRELATION_HEADER not in headers:
                    headers.append(CORRELATION_HEADER, correlation_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        except Exception as error:
            # Answered here, not by Starlette's outermost handler: that one re-raises after answering, and
            # uvicorn then closes the connection, so a client's next request on it (keep-alive) is reset.
            if started_response:
                raise
            log.error("unhandled.error", error_type=type(error).__name__, error=mask_text(str(error))[:300])
            await problem_response(500, "INTERNAL_ERROR", "An unexpected error occurred; quote the correlation id.")(
                scope, receive, send_with_context)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(route, method, str(status)).inc()
            HTTP_LATENCY.labels(route, method).observe(elapsed)
            # The route template, never the path: a path could carry a value a client should not send.
            log.info("http.request", method=method, route=route, status=status,
                     duration_ms=round(elapsed * 1000, 2))


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with a 413 problem.

    Why not FastAPI's own ``max_body_size``: when Content-Length is over the limit it replaces
    whatever response the app sends with a plain-text 413, and every error here is problem+json.
    A declared length over the limit is refused before the body is read; a chunked body is counted
    as it arrives, and the HTTPException raised mid-read reaches the problem handlers.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = problem_response(413, "BODY_TOO_LARGE", self._detail())
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, counting_receive, send)

    def _detail(self) -> str:
        return f"The request body is larger than {self.max_bytes} bytes."
