"""The TOME emulator: a FastAPI app serving the contract of ``docs/tome-api.md`` over a SQLite vault.

Per call, in this order: count it in the ledger (always, whatever follows), then outage (503),
rate limit (429 + Retry-After), latency + jitter, injected error (500/503, nothing done), batch
limit (413), the operation itself, the slow answer (work done, answer late) and last the
corruption fault. ``/_admin/*`` is never faulted.
"""

from __future__ import annotations

import asyncio
import hmac
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenpool.observability.logging import get_logger
from tokenpool.tome.contract import (
    CORRELATION_HEADER,
    IDEMPOTENCY_HEADER,
    NAMESPACE_PATTERN,
    PROBLEM_CONTENT_TYPE,
    DetokenizeRequest,
    IssueRequest,
    Operation,
    Problem,
    TokenizeRequest,
    TokensResponse,
    ValuesResponse,
)
from tokenpool.tome.emulator.faults import Faults, FaultsPatch, TokenBucket, retry_after_header
from tokenpool.tome.emulator.vault import IdempotencyMismatch, Vault

log = get_logger(__name__)

Namespace = Annotated[str, Path(pattern=NAMESPACE_PATTERN, description="Namespace, e.g. NS1 or NS2.")]


class ProblemError(Exception):
    def __init__(self, status: int, code: str, title: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.problem = Problem(type=f"urn:tome:problem:{code}", title=title, status=status, detail=detail, code=code)
        self.headers = headers or {}


def problem_response(error: ProblemError) -> JSONResponse:
    return JSONResponse(
        error.problem.model_dump(),
        status_code=error.problem.status,
        headers=error.headers,
        media_type=PROBLEM_CONTENT_TYPE,
    )


@dataclass
class EmulatorState:
    vault: Vault
    faults: Faults = field(default_factory=Faults)
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(0))
    rng: random.Random = field(default_factory=random.Random)

    def set_faults(self, faults: Faults) -> None:
        if faults.rate_limit_rps != self.bucket.rate:
            self.bucket = TokenBucket(faults.rate_limit_rps)
        self.faults = faults


def create_app(vault: Vault, faults: Faults | None = None, *, bearer_token: str | None = None) -> FastAPI:
    state = EmulatorState(vault)
    state.set_faults(faults or Faults())
    app = FastAPI(
        title="TOME emulator",
        version="1",
        description="Tokenization service emulator with fault injection and a ledger. See docs/tome-api.md.",
    )
    app.state.emulator = state

    if bearer_token is not None:
        expected = bearer_token.encode()

        # Every path, /_admin/* and /openapi.json included: another local user who finds the port learns
        # nothing, not even that an emulator answers. Registered before the correlation middleware, so it
        # runs inside it: a 401 echoes the id too.
        @app.middleware("http")
        async def require_bearer(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), expected):
                return await call_next(request)
            response = problem_response(
                ProblemError(401, "unauthorized", "Unauthorized", "a valid Authorization: Bearer token is required")
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response

    @app.middleware("http")
    async def correlation_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        cid = request.headers.get(CORRELATION_HEADER) or uuid.uuid4().hex
        response = await call_next(request)
        response.headers[CORRELATION_HEADER] = cid
        return response

    @app.exception_handler(ProblemError)
    async def on_problem(_request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        operation = _operation_of(request.url.path)
        namespace = request.path_params.get("ns")
        if operation is not None and isinstance(namespace, str):
            await _count(state, namespace, operation, {"requests": 1, "items": 0, "status:400": 1})
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"])
        return problem_response(ProblemError(400, "invalid_request", "Invalid request", f"{where}: {first['msg']}"))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem_response(ProblemError(exc.status_code, code, str(exc.detail), str(exc.detail)))

    # --- The contract ---------------------------------------------------------------------------------

    @app.post("/v1/namespaces/{ns}/tokens:issue", response_model=TokensResponse, tags=["tokens"])
    async def issue(
        ns: Namespace,
        body: IssueRequest,
        idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER, max_length=255)] = None,
    ) -> Any:
        """Issue ``count`` new, never-before-issued tokens. A repeated ``Idempotency-Key`` replays the answer."""

        async def run() -> list[str]:
            try:
                result = await run_in_threadpool(state.vault.issue, ns, body.count, idempotency_key)
            except IdempotencyMismatch as exc:
                raise ProblemError(422, "idempotency_key_mismatch", "Idempotency-Key reused", str(exc)) from None
            if result.replayed:
                await _count(state, ns, Operation.ISSUE, {"idempotent_replays": 1})
            return result.tokens

        return {"tokens": await _serve(state, ns, Operation.ISSUE, body.count, run)}

    @app.post("/v1/namespaces/{ns}/tokenize", response_model=TokensResponse, tags=["tokens"])
    async def tokenize(ns: Namespace, body: TokenizeRequest) -> Any:
        """Tokens for ``values``, in order; the same value always gets the same token."""

        async def run() -> list[str]:
            return await run_in_threadpool(state.vault.tokenize, ns, body.values)

        return {"tokens": await _serve(state, ns, Operation.TOKENIZE, len(body.values), run)}

    @app.post("/v1/namespaces/{ns}/detokenize", response_model=ValuesResponse, tags=["tokens"])
    async def detokenize(ns: Namespace, body: DetokenizeRequest) -> Any:
        """Values for ``tokens``, in order; ``null`` for a token the namespace does not know."""

        async def run() -> list[str | None]:
            return await run_in_threadpool(state.vault.detokenize, ns, body.tokens)

        return {"values": await _serve(state, ns, Operation.DETOKENIZE, len(body.tokens), run)}

    # --- Admin (never faulted) ---------------------------------------------------------------------------

    @app.get("/_admin/faults", response_model=Faults, tags=["admin"])
    async def get_faults() -> Faults:
        return state.faults

    @app.put("/_admin/faults", response_model=Faults, tags=["admin"])
    async def put_faults(patch: FaultsPatch) -> Faults:
        """Change any fault; fields left out keep their value. Answers every field."""
        state.set_faults(patch.apply(state.faults))
        log.info("tome_emulator.faults", **state.faults.model_dump())
        return state.faults

    @app.get("/_admin/stats", tags=["admin"])
    async def stats() -> dict[str, Any]:
        """The ledger: requests and items by namespace and operation, plus statuses and faults."""
        rows = await run_in_threadpool(state.vault.ledger)
        out: dict[str, Any] = {"requests": {}, "items": {}, "statuses": {}, "faults": {}, "idempotent_replays": {}}
        for ns, operation, metric, count in rows:
            kind, _, detail = metric.partition(":")
            if kind in ("requests", "items", "idempotent_replays"):
                out[kind].setdefault(ns, {})[operation] = count
            elif kind == "status":
                out["statuses"].setdefault(ns, {}).setdefault(operation, {})[detail] = count
            elif kind == "fault":
                out["faults"].setdefault(ns, {}).setdefault(operation, {})[detail] = count
        return out

    @app.get("/_admin/issued", tags=["admin"])
    async def issued(
        ns: Annotated[str, Query(pattern=NAMESPACE_PATTERN)],
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1_000,
        cursor: Annotated[str | None, Query()] = None,
    ) -> dict[str, Any]:
        """Every token ever issued on ``ns``, in issue order; follow ``next_cursor`` until it is null."""
        if cursor is not None and not cursor.isdigit():
            raise ProblemError(400, "invalid_cursor", "Invalid cursor", "cursor must come from next_cursor")
        tokens, next_seq = await run_in_threadpool(state.vault.issued, ns, limit, int(cursor or 0))
        return {"tokens": tokens, "next_cursor": None if next_seq is None else str(next_seq)}

    @app.get("/_admin/health", tags=["admin"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def _count(state: EmulatorState, ns: str, operation: str, increments: dict[str, int]) -> None:
    await run_in_threadpool(state.vault.count, ns, operation, increments)


async def _serve(
    state: EmulatorState,
    ns: str,
    operation: Operation,
    items: int,
    run: Callable[[], Awaitable[list[Any]]],
) -> list[Any]:
    """Ledger, faults, limit, operation, corruption — see the module docstring for why in this order."""
    status = 500
    fault: str | None = None
    try:
        await _count(state, ns, operation, {"requests": 1, "items": items})
        faults = state.faults
        if faults.outage:
            fault = "outage"
            raise ProblemError(503, "outage", "Service unavailable", "TOME is down (injected outage)")
        wait = state.bucket.take()
        if wait > 0:
            fault = "rate_limited"
            raise ProblemError(
                429,
                "rate_limited",
                "Too many requests",
                f"over {faults.rate_limit_rps:g} requests/s",
                headers={"Retry-After": retry_after_header(wait)},
            )
        delay_ms = faults.latency_ms + state.rng.uniform(0, faults.jitter_ms)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        if faults.error_rate > 0 and state.rng.random() < faults.error_rate:
            fault = "error"
            code = state.rng.choice((500, 503))
            raise ProblemError(code, "injected_error", "Internal error", f"injected {code} (error_rate)")
        if items > faults.max_batch:
            raise ProblemError(
                413,
                "batch_too_large",
                "Batch too large",
                f"{items} items in one request; the limit is {faults.max_batch}: split the request",
            )
        result = await run()
        if faults.slow_ms > 0:
            # After the work, not before: a client that gives up may still have had its request carried
            # out — the case an issue retry's Idempotency-Key exists for.
            fault = "slow"
            await asyncio.sleep(faults.slow_ms / 1000)
        if faults.corrupt_rate > 0 and result and state.rng.random() < faults.corrupt_rate:
            fault = "corrupt"
            result = result[:-1]
        status = 200
        return result
    except ProblemError as exc:
        status = exc.problem.status
        raise
    finally:
        increments = {f"status:{status}": 1}
        if fault is not None:
            increments[f"fault:{fault}"] = 1
        await _count(state, ns, operation, increments)


def _operation_of(path: str) -> Operation | None:
    for operation, suffix in ((Operation.ISSUE, "/tokens:issue"), (Operation.TOKENIZE, "/tokenize")):
        if path.endswith(suffix):
            return operation
    return Operation.DETOKENIZE if path.endswith("/detokenize") else None
