"""The TOME adapter: the one module that maps the HTTP contract (``docs/tome-api.md``) to Python.

An integrator whose TOME speaks a different dialect rewrites the ``_ContractMapping`` half of this
module (paths, bodies, status codes, body parsing) and keeps the public :class:`TomeClient` API.

Every logical call runs as ``retry(breaker(one HTTP attempt))`` within a total deadline:

* large requests are split into batches of ``tome_batch_size`` and sent one after the other;
* ``issue`` is not idempotent by nature, so each batch carries an ``Idempotency-Key`` generated once
  and reused by its retries: TOME replays the stored answer, never issuing a second set of tokens;
  ``tokenize`` is deterministic and ``detokenize`` read-only, so both are safe to retry as they are;
* the correlation id (argument, else structlog's bound ``correlation_id``, else a new one) is sent
  as ``X-Correlation-ID`` on every attempt of the call.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import ssl
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import structlog
from pydantic import BaseModel, ValidationError
from tenacity import RetryCallState

from tokenpool.credentials import read_bearer_token
from tokenpool.observability.logging import get_logger
from tokenpool.observability.masking import mask_text
from tokenpool.observability.metrics import (
    TOME_BREAKER_STATE,
    TOME_BREAKER_TRANSITIONS,
    TOME_ITEMS,
    TOME_REQUEST_SECONDS,
    TOME_REQUESTS,
    TOME_RETRIES,
    initialise_tome_metrics,
)
from tokenpool.settings import Settings
from tokenpool.tome.contract import (
    CORRELATION_HEADER,
    IDEMPOTENCY_HEADER,
    Operation,
    TokensResponse,
    TomeBadRequest,
    TomeBadResponse,
    TomeError,
    TomeRateLimited,
    TomeUnavailable,
    ValuesResponse,
)
from tokenpool.tome.resilience import (
    BREAKER_STATE_VALUE,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    Clock,
    Outcome,
    RetryConfig,
    Sleep,
    retrying,
)

log = get_logger(__name__)

_Model = TypeVar("_Model", bound=BaseModel)
_MAX_RETRY_AFTER_S = 3_600.0


# --- The contract mapping (rewrite this half for another TOME) ----------------------------------------


class _ContractMapping:
    """Paths, request bodies and response parsing of the TOME HTTP contract."""

    @staticmethod
    def path(operation: Operation, namespace: str) -> str:
        suffix = "tokens:issue" if operation is Operation.ISSUE else operation.value
        return f"/v1/namespaces/{namespace}/{suffix}"

    @staticmethod
    def body(operation: Operation, items: int | Sequence[str]) -> dict[str, Any]:
        if operation is Operation.ISSUE:
            return {"count": items}
        key = "values" if operation is Operation.TOKENIZE else "tokens"
        return {key: list(items)}  # type: ignore[arg-type]

    @classmethod
    def parse(cls, operation: Operation, response: httpx.Response, expected: int) -> list[str | None]:
        """The items of a 2xx answer, or the typed error its status stands for."""
        status = response.status_code
        if status == 429:
            raise TomeRateLimited(
                f"TOME rate limited {operation}", retry_after_s=parse_retry_after(response), code=cls._code(response)
            )
        if status >= 500:
            raise TomeUnavailable(
                f"TOME answered {status} to {operation}", reason="server_error", status=status, code=cls._code(response)
            )
        if 400 <= status < 500:
            code = cls._code(response)
            raise TomeBadRequest(
                f"TOME refused {operation} ({status} {code}): {cls._detail(response)}", code=code, status=status
            )
        if status != 200:
            raise TomeBadResponse(f"TOME answered unexpected status {status} to {operation}", status=status)
        model: type[TokensResponse] | type[ValuesResponse] = (
            ValuesResponse if operation is Operation.DETOKENIZE else TokensResponse
        )
        parsed = cls._model(model, response, operation)
        items: list[str | None] = list(parsed.values if isinstance(parsed, ValuesResponse) else parsed.tokens)
        if len(items) != expected:
            raise TomeBadResponse(
                f"TOME answered {len(items)} items to {operation} of {expected}", code="wrong_item_count", status=status
            )
        return items

    @staticmethod
    def _model(model: type[_Model], response: httpx.Response, operation: Operation) -> _Model:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise TomeBadResponse(
                f"TOME answered a malformed {operation} body: {where}: {first['msg']}",
                code="malformed_body",
                status=response.status_code,
            ) from None

    @staticmethod
    def _problem(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    @classmethod
    def _code(cls, response: httpx.Response) -> str | None:
        code = cls._problem(response).get("code")
        return code if isinstance(code, str) else None

    @classmethod
    def _detail(cls, response: httpx.Response) -> str:
        detail = cls._problem(response).get("detail")
        return mask_text(detail) if isinstance(detail, str) else response.reason_phrase


def parse_retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds (delta-seconds, fractional accepted, or an HTTP date); None if absent."""
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


# --- Transport security ----------------------------------------------------------------------------------


def tome_tls_context(settings: Settings) -> ssl.SSLContext:
    """TLS 1.2+, verifying TOME against ``tome_ca_bundle`` (else the system trust store), presenting
    ``tome_client_cert`` when set (mutual TLS)."""
    cert, key = settings.tome_client_cert, settings.tome_client_key
    if (cert is None) != (key is None):
        raise ValueError("set both TOKENPOOL_TOME_CLIENT_CERT and TOKENPOOL_TOME_CLIENT_KEY, or neither")
    try:
        # With a cafile, only that CA is trusted; without one, the system store (SSL_CERT_FILE / SSL_CERT_DIR).
        context = ssl.create_default_context(cafile=settings.tome_ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"TOKENPOOL_TOME_CA_BUNDLE {settings.tome_ca_bundle}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"TOKENPOOL_TOME_CLIENT_CERT {cert} / TOKENPOOL_TOME_CLIENT_KEY {key}: {exc}") from None
    return context


def _transport_security(settings: Settings, base_url: str) -> tuple[ssl.SSLContext | bool, dict[str, str]]:
    """``verify`` for httpx and the ``Authorization`` header, from the ``tome_*`` TLS and token settings."""
    configured = [
        name
        for name in ("tome_ca_bundle", "tome_client_cert", "tome_client_key", "tome_bearer_token_file")
        if getattr(settings, name) is not None
    ]
    if not base_url.lower().startswith("https://"):
        # A token sent in clear, or a CA that silently verifies nothing, is worse than refusing to start. One
        # exception: a token to a loopback address (`tokenpool run`'s emulator) never leaves the machine, and
        # whoever can read loopback traffic (root) can read the token file too.
        refused = [n for n in configured if n != "tome_bearer_token_file" or not is_loopback_url(base_url)]
        if refused:
            names = ", ".join(f"TOKENPOOL_{name.upper()}" for name in refused)
            raise ValueError(f"{names} set but the TOME URL {base_url} is not https:// (nor, for a token, loopback)")
        return True, _bearer_header(settings)
    return tome_tls_context(settings), _bearer_header(settings)


def _bearer_header(settings: Settings) -> dict[str, str]:
    if settings.tome_bearer_token_file is None:
        return {}
    return {"Authorization": f"Bearer {read_bearer_token(settings.tome_bearer_token_file)}"}


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is a loopback address, 127.0.0.0/8 or ::1 (a literal: a name such as
    ``localhost`` is whatever the resolver says)."""
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- The client ------------------------------------------------------------------------------------------


class TomeClient:
    """Async TOME client: pooled connections, timeouts, batching, retries and a circuit breaker.

    One instance per TOME base URL (the breaker is per instance); share it, and ``aclose()`` it.
    Built from :class:`~tokenpool.settings.Settings` (``tome_*`` fields); ``transport``, ``sleep``
    and ``clock`` are seams for tests. TLS files and the bearer token are read here, once: a rotated
    token or certificate takes effect in clients built after the rotation.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        url = base_url or settings.tome_url
        if not url:
            raise ValueError("TOME base URL missing: set TOKENPOOL_TOME_URL or pass base_url")
        self.base_url = url.rstrip("/")
        verify, auth_headers = _transport_security(settings, self.base_url)
        self.settings = settings
        self.batch_size = settings.tome_batch_size
        self.retry_config = RetryConfig.from_settings(settings)
        self.requests_made = 0
        """HTTP attempts sent to TOME (fail-fast calls refused by the open breaker are not counted)."""
        self._clock = clock
        self._sleep = sleep
        self.breaker = CircuitBreaker(
            self.base_url, BreakerConfig.from_settings(settings), clock=clock, on_state_change=self._on_breaker_change
        )
        TOME_BREAKER_STATE.labels(self.base_url).set(BREAKER_STATE_VALUE[BreakerState.CLOSED])
        initialise_tome_metrics(self.base_url, (settings.tome_ns1, settings.tome_ns2))  # first events count
        self._timeout = httpx.Timeout(
            connect=settings.tome_connect_timeout_s,
            read=settings.tome_read_timeout_s,
            write=settings.tome_write_timeout_s,
            pool=settings.tome_pool_timeout_s,
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            verify=verify,
            timeout=self._timeout,
            limits=httpx.Limits(
                max_connections=settings.tome_max_connections,
                max_keepalive_connections=settings.tome_max_connections,
                keepalive_expiry=settings.tome_keepalive_s,
            ),
            headers={"User-Agent": "tokenpool-tome-client", "Accept": "application/json", **auth_headers},
        )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TomeClient:
        """A client whose settings are ``settings`` with ``tome_*`` overrides (tests: small timeouts)."""
        return cls(settings.model_copy(update=overrides) if overrides else settings)

    # --- Public API ---------------------------------------------------------------------------------

    async def issue(
        self,
        namespace: str,
        count: int,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> list[str]:
        """``count`` new, never-issued tokens from ``namespace`` (NS1). Safe to retry.

        Each batch sends an ``Idempotency-Key`` that its retries reuse. Without ``idempotency_key`` the
        keys are random (safe within this call). With one — e.g. a refill batch id journaled before the
        call — a later call with the same key and ``count`` gets the same tokens back, even after a
        crash: one batch uses the key as given, several use ``{key}.{batch index}``.
        """
        if count < 0:
            raise ValueError("count must be >= 0")
        cid = _correlation_id(correlation_id)
        batches = range(0, count, self.batch_size)
        tokens: list[str] = []
        for index, start in enumerate(batches):
            size = min(self.batch_size, count - start)
            if idempotency_key is None:
                key = uuid.uuid4().hex
            else:
                key = idempotency_key if len(batches) == 1 else f"{idempotency_key}.{index}"
            items = await self._call(Operation.ISSUE, namespace, size, size, cid, idempotency_key=key)
            tokens.extend(_strings(items, Operation.ISSUE))
        return tokens

    async def tokenize(self, namespace: str, values: Sequence[str], *, correlation_id: str | None = None) -> list[str]:
        """Tokens for ``values`` in order (the same value always yields the same token)."""
        cid = _correlation_id(correlation_id)
        tokens: list[str] = []
        for batch in _batches(values, self.batch_size):
            items = await self._call(Operation.TOKENIZE, namespace, batch, len(batch), cid)
            tokens.extend(_strings(items, Operation.TOKENIZE))
        return tokens

    async def detokenize(
        self, namespace: str, tokens: Sequence[str], *, correlation_id: str | None = None
    ) -> list[str | None]:
        """Values for ``tokens`` in order; None where TOME does not know the token."""
        cid = _correlation_id(correlation_id)
        values: list[str | None] = []
        for batch in _batches(tokens, self.batch_size):
            values.extend(await self._call(Operation.DETOKENIZE, namespace, batch, len(batch), cid))
        return values

    def breaker_state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        return self.breaker.state.value

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- One logical call: retry(breaker(attempt)) within a deadline ------------------------------------

    async def _call(
        self,
        operation: Operation,
        namespace: str,
        items: int | Sequence[str],
        expected: int,
        correlation_id: str,
        *,
        idempotency_key: str | None = None,
    ) -> list[str | None]:
        try:
            self.breaker.check()  # fail fast before paying for a retry loop
        except CircuitOpen as exc:
            raise self._fail_fast(operation, namespace, exc) from None
        headers = {CORRELATION_HEADER: correlation_id}
        if idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        path = _ContractMapping.path(operation, namespace)
        body = _ContractMapping.body(operation, items)
        deadline = self._clock() + self.retry_config.total_timeout_s
        retry = retrying(self.retry_config, sleep=self._sleep, before_sleep=self._on_retry(operation, correlation_id))
        try:
            result: list[str | None] = await retry(
                self._attempt, operation, namespace, path, body, headers, expected, deadline
            )
        except TomeUnavailable as exc:
            if exc.reason != "breaker_open":  # fail fast is silent: the breaker logged its opening once
                self._log_failure(operation, namespace, exc, correlation_id)
            raise
        except TomeError as exc:
            self._log_failure(operation, namespace, exc, correlation_id)
            raise
        TOME_ITEMS.labels(namespace, operation.value).inc(expected)
        return result

    @staticmethod
    def _log_failure(operation: Operation, namespace: str, exc: TomeError, correlation_id: str) -> None:
        log.warning(
            "tome.call_failed",
            operation=operation.value,
            namespace=namespace,
            error=type(exc).__name__,
            reason=getattr(exc, "reason", None) or exc.code,
            detail=str(exc),
            correlation_id=correlation_id,
        )

    async def _attempt(
        self,
        operation: Operation,
        namespace: str,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        expected: int,
        deadline: float,
    ) -> list[str | None]:
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise TomeUnavailable(f"TOME {operation} ran out of its total timeout", reason="deadline")
        try:
            permit = self.breaker.acquire()
        except CircuitOpen as exc:
            raise self._fail_fast(operation, namespace, exc) from None
        outcome_label = "ok"
        outcome = Outcome.SUCCESS
        started = time.perf_counter()
        self.requests_made += 1
        try:
            # httpx's read timeout bounds each socket read; asyncio.timeout bounds the whole attempt so a
            # server trickling bytes cannot outlive the call's total deadline.
            async with asyncio.timeout(remaining):
                response = await self._http.post(
                    path, json=body, headers=headers, timeout=self._timeout_within(remaining)
                )
            correlation_id = headers[CORRELATION_HEADER]
            if response.headers.get(CORRELATION_HEADER) != correlation_id:
                log.warning("tome.correlation_id_not_echoed", operation=operation.value, correlation_id=correlation_id)
            return _ContractMapping.parse(operation, response, expected)
        except (httpx.TimeoutException, TimeoutError) as exc:
            outcome, outcome_label = Outcome.FAILURE, "timeout"
            raise TomeUnavailable(f"TOME {operation} timed out ({type(exc).__name__})", reason="timeout") from exc
        except httpx.TransportError as exc:
            outcome, outcome_label = Outcome.FAILURE, "connection_error"
            raise TomeUnavailable(
                f"TOME {operation} connection failed: {mask_text(str(exc)) or type(exc).__name__}",
                reason="connection_error",
            ) from exc
        except TomeRateLimited:
            outcome, outcome_label = Outcome.IGNORED, "rate_limited"  # TOME is up and pushing back
            raise
        except TomeBadRequest:
            outcome_label = "bad_request"  # TOME answered correctly: a success for its health
            raise
        except TomeUnavailable:
            outcome, outcome_label = Outcome.FAILURE, "server_error"
            raise
        except TomeBadResponse:
            outcome, outcome_label = Outcome.FAILURE, "bad_response"
            raise
        except BaseException:  # cancellation: says nothing about TOME's health
            outcome, outcome_label = Outcome.IGNORED, "cancelled"
            raise
        finally:
            self.breaker.record(permit, outcome)
            TOME_REQUESTS.labels(namespace, operation.value, outcome_label).inc()
            TOME_REQUEST_SECONDS.labels(namespace, operation.value).observe(time.perf_counter() - started)

    def _fail_fast(self, operation: Operation, namespace: str, exc: CircuitOpen) -> TomeUnavailable:
        TOME_REQUESTS.labels(namespace, operation.value, "breaker_open").inc()
        return TomeUnavailable(
            f"TOME circuit breaker is open ({self.base_url})", reason="breaker_open", retry_after_s=exc.retry_after_s
        )

    def _timeout_within(self, remaining: float) -> httpx.Timeout:
        return httpx.Timeout(
            connect=min(self.settings.tome_connect_timeout_s, remaining),
            read=min(self.settings.tome_read_timeout_s, remaining),
            write=min(self.settings.tome_write_timeout_s, remaining),
            pool=min(self.settings.tome_pool_timeout_s, remaining),
        )

    def _on_retry(self, operation: Operation, correlation_id: str) -> Any:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            reason = getattr(exc, "reason", None) or ("rate_limited" if isinstance(exc, TomeRateLimited) else "other")
            TOME_RETRIES.labels(operation.value, reason).inc()
            log.info(
                "tome.retry",
                operation=operation.value,
                attempt=state.attempt_number,
                sleep_s=round(state.upcoming_sleep, 3),
                reason=reason,
                correlation_id=correlation_id,
            )

        return before_sleep

    def _on_breaker_change(self, name: str, old: BreakerState, new: BreakerState) -> None:
        TOME_BREAKER_STATE.labels(name).set(BREAKER_STATE_VALUE[new])
        TOME_BREAKER_TRANSITIONS.labels(name, new.value).inc()
        log.warning("tome.breaker_state", target=name, old=old.value, new=new.value, **self.breaker.stats())


def _correlation_id(explicit: str | None) -> str:
    if explicit:
        return explicit
    bound = structlog.contextvars.get_contextvars().get("correlation_id")
    return str(bound) if bound else uuid.uuid4().hex


def _batches(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def _strings(items: list[str | None], operation: Operation) -> list[str]:
    if any(item is None for item in items):
        raise TomeBadResponse(f"TOME answered null tokens to {operation}", code="null_token")
    return [item for item in items if item is not None]
