"""The TOME client's contract mapping, batching, retries and breaker, against httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import structlog

from tokenpool.settings import Settings
from tokenpool.tome.client import TomeClient, parse_retry_after
from tokenpool.tome.contract import (
    TomeBadRequest,
    TomeBadResponse,
    TomeRateLimited,
    TomeUnavailable,
    new_external_ref,
    new_internal_token,
)

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that answers like TOME and records what it was sent."""

    def __init__(self, script: list[Handler | None] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[dict[str, Any]] = []
        self.script = list(script or [])  # per-request overrides; None = answer normally

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        self.bodies.append(body)
        cid = {"X-Correlation-ID": request.headers.get("X-Correlation-ID", "")}
        override = self.script.pop(0) if self.script else None
        if override is not None:
            response = override(request)
            response.headers.update(cid)
            return response
        if request.url.path.endswith("tokens:issue"):
            return httpx.Response(
                200, json={"tokens": [new_internal_token() for _ in range(body["count"])]}, headers=cid
            )
        if request.url.path.endswith("/tokenize"):
            return httpx.Response(200, json={"tokens": [f"ext_{v}" for v in body["values"]]}, headers=cid)
        values = [t.removeprefix("ext_") if t.startswith("ext_") else None for t in body["tokens"]]
        return httpx.Response(200, json={"values": values}, headers=cid)


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def status(code: int, headers: dict[str, str] | None = None, problem_code: str = "x") -> Handler:
    body = {"type": "about:blank", "title": "t", "status": code, "detail": "d", "code": problem_code}
    return lambda _request: httpx.Response(code, json=body, headers=headers or {})


def raw(code: int, content: bytes) -> Handler:
    return lambda _request: httpx.Response(code, content=content, headers={"content-type": "application/json"})


def make_client(recorder: Recorder, sleeps: Sleeps | None = None, **overrides: Any) -> TomeClient:
    defaults: dict[str, Any] = {
        "tome_url": "http://tome.test",
        "tome_max_attempts": 4,
        "tome_backoff_initial_s": 0.1,
        "tome_backoff_max_s": 1.0,
        "tome_total_timeout_s": 30.0,
        "tome_breaker_failure_threshold": 5,
    }
    settings = Settings(**(defaults | overrides))
    return TomeClient(settings, transport=httpx.MockTransport(recorder), sleep=sleeps or Sleeps())


async def test_large_requests_are_split_into_batches_and_answers_keep_their_order() -> None:
    recorder = Recorder()
    client = make_client(recorder, tome_batch_size=3)
    values = [f"v{i}" for i in range(8)]
    assert await client.tokenize("NS2", values) == [f"ext_{v}" for v in values]
    assert [len(b["values"]) for b in recorder.bodies] == [3, 3, 2]
    assert client.requests_made == 3
    assert await client.detokenize("NS2", ["ext_a", "nope"]) == ["a", None]
    assert [r.url.path for r in recorder.requests[-1:]] == ["/v1/namespaces/NS2/detokenize"]


async def test_issue_sends_one_idempotency_key_per_batch_and_reuses_it_on_retry() -> None:
    recorder = Recorder([None, status(503), None])
    client = make_client(recorder, tome_batch_size=4)
    tokens = await client.issue("NS1", 6)
    assert len(tokens) == 6
    assert [b["count"] for b in recorder.bodies] == [4, 2, 2]
    keys = [r.headers["Idempotency-Key"] for r in recorder.requests]
    assert keys[1] == keys[2] != keys[0]
    assert recorder.requests[0].url.path == "/v1/namespaces/NS1/tokens:issue"


async def test_a_callers_idempotency_key_is_sent_as_given_or_suffixed_per_batch() -> None:
    recorder = Recorder()
    client = make_client(recorder, tome_batch_size=4)
    await client.issue("NS1", 4, idempotency_key="batch-7")
    await client.issue("NS1", 9, idempotency_key="batch-8")
    keys = [r.headers["Idempotency-Key"] for r in recorder.requests]
    assert keys == ["batch-7", "batch-8.0", "batch-8.1", "batch-8.2"]


async def test_every_attempt_of_a_call_carries_the_same_correlation_id() -> None:
    recorder = Recorder([status(500), None])
    client = make_client(recorder)
    await client.tokenize("NS2", ["a"], correlation_id="cid-123")
    assert [r.headers["X-Correlation-ID"] for r in recorder.requests] == ["cid-123", "cid-123"]
    with structlog.contextvars.bound_contextvars(correlation_id="bound-cid"):
        await client.tokenize("NS2", ["a"])
    assert recorder.requests[-1].headers["X-Correlation-ID"] == "bound-cid"
    await client.tokenize("NS2", ["a"])
    assert len(recorder.requests[-1].headers["X-Correlation-ID"]) == 32  # generated


@pytest.mark.parametrize("code", [500, 502, 503, 504])
async def test_5xx_answers_are_retried_with_backoff(code: int) -> None:
    recorder = Recorder([status(code), status(code), None])
    sleeps = Sleeps()
    client = make_client(recorder, sleeps)
    assert await client.tokenize("NS2", ["a"]) == ["ext_a"]
    assert client.requests_made == 3
    assert len(sleeps.calls) == 2
    assert all(0 <= s <= 1.0 for s in sleeps.calls)  # full jitter, capped at backoff_max


async def test_timeouts_and_connection_errors_are_retried() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    recorder = Recorder([timeout, refused, None])
    client = make_client(recorder)
    assert await client.detokenize("NS2", ["ext_a"]) == ["a"]
    assert client.requests_made == 3


async def test_retries_stop_after_max_attempts_with_the_last_error() -> None:
    recorder = Recorder([status(503)] * 10)
    client = make_client(recorder, tome_max_attempts=3, tome_breaker_failure_threshold=50)
    with pytest.raises(TomeUnavailable) as caught:
        await client.tokenize("NS2", ["a"])
    assert caught.value.reason == "server_error"
    assert caught.value.status == 503
    assert client.requests_made == 3


@pytest.mark.parametrize(("code", "problem_code"), [(400, "invalid_request"), (413, "batch_too_large"), (404, "x")])
async def test_4xx_other_than_429_is_a_bad_request_never_retried(code: int, problem_code: str) -> None:
    recorder = Recorder([status(code, problem_code=problem_code)])
    client = make_client(recorder)
    with pytest.raises(TomeBadRequest) as caught:
        await client.tokenize("NS2", ["a"])
    assert caught.value.code == problem_code
    assert caught.value.status == code
    assert client.requests_made == 1
    assert client.breaker_state() == "closed"


async def test_429_waits_at_least_its_retry_after() -> None:
    recorder = Recorder([status(429, {"Retry-After": "2"}), None])
    sleeps = Sleeps()
    client = make_client(recorder, sleeps)
    assert await client.tokenize("NS2", ["a"]) == ["ext_a"]
    assert sleeps.calls == [2.0]


async def test_a_retry_after_beyond_the_total_timeout_fails_at_once_as_rate_limited() -> None:
    recorder = Recorder([status(429, {"Retry-After": "60"})])
    sleeps = Sleeps()
    client = make_client(recorder, sleeps, tome_total_timeout_s=5.0)
    with pytest.raises(TomeRateLimited) as caught:
        await client.tokenize("NS2", ["a"])
    assert caught.value.retry_after_s == 60.0
    assert sleeps.calls == []
    assert client.requests_made == 1


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    def parse(value: str | None) -> float | None:
        headers = {} if value is None else {"Retry-After": value}
        return parse_retry_after(httpx.Response(429, headers=headers))

    assert parse("3") == 3.0
    assert parse("0.5") == 0.5
    assert parse(None) is None
    assert parse("soon") is None
    assert parse("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse("99999999") == 3_600.0


@pytest.mark.parametrize(
    ("operation", "handler", "code"),
    [
        ("tokenize", raw(200, b"not json"), "malformed_body"),
        ("tokenize", raw(200, b'{"tokens": "ext_a"}'), "malformed_body"),
        ("tokenize", raw(200, b'{"tokens": [1]}'), "malformed_body"),
        ("tokenize", raw(200, b'{"tokens": [""]}'), "malformed_body"),
        ("tokenize", raw(200, b'{"tokens": [null]}'), "malformed_body"),
        ("tokenize", raw(200, b'{"values": ["ext_a"]}'), "malformed_body"),
        ("tokenize", raw(200, b'{"tokens": []}'), "wrong_item_count"),
        ("tokenize", raw(200, b'{"tokens": ["ext_a", "ext_b"]}'), "wrong_item_count"),
        ("detokenize", raw(200, b'{"values": []}'), "wrong_item_count"),
        ("detokenize", raw(200, b'{"values": [7]}'), "malformed_body"),
        ("issue", raw(200, b'{"tokens": ["4111111111111111", "x"]}'), "wrong_item_count"),
        ("issue", raw(204, b""), None),
    ],
)
async def test_a_malformed_or_short_answer_is_a_bad_response_never_accepted(
    operation: str, handler: Handler, code: str | None
) -> None:
    recorder = Recorder([handler])
    client = make_client(recorder)
    calls = {
        "issue": lambda: client.issue("NS1", 1),
        "tokenize": lambda: client.tokenize("NS2", ["a"]),
        "detokenize": lambda: client.detokenize("NS2", ["ext_a"]),
    }
    with pytest.raises(TomeBadResponse) as caught:
        await calls[operation]()
    assert caught.value.code == code
    assert client.requests_made == 1  # not retried


async def test_the_breaker_opens_on_failures_then_fails_fast_without_sending_anything() -> None:
    recorder = Recorder([status(503)] * 5)
    client = make_client(recorder, tome_max_attempts=3, tome_breaker_failure_threshold=5, tome_breaker_ttl_s=60)
    with pytest.raises(TomeUnavailable):
        await client.tokenize("NS2", ["a"])  # 3 attempts
    with pytest.raises(TomeUnavailable) as caught:
        await client.tokenize("NS2", ["a"])  # 2 attempts, then the breaker opens
    assert caught.value.reason == "breaker_open"
    assert client.requests_made == 5
    assert client.breaker_state() == "open"
    with pytest.raises(TomeUnavailable) as again:
        await client.detokenize("NS2", ["ext_a"])
    assert again.value.reason == "breaker_open"
    assert again.value.retry_after_s is not None
    assert client.requests_made == 5


async def test_empty_requests_send_nothing() -> None:
    recorder = Recorder()
    client = make_client(recorder)
    assert await client.issue("NS1", 0) == []
    assert await client.tokenize("NS2", []) == []
    assert await client.detokenize("NS2", []) == []
    assert client.requests_made == 0


def test_a_client_needs_a_base_url() -> None:
    with pytest.raises(ValueError, match="base URL"):
        TomeClient(Settings(tome_url=None))


async def test_a_token_never_reaches_a_log_line_whole(capsys: pytest.CaptureFixture[str]) -> None:
    from tokenpool.observability.logging import configure_logging

    saved = structlog.get_config()
    configure_logging("INFO", json=True)  # the real processor chain, masking included, writing to capsys
    secret = new_external_ref()
    recorder = Recorder([status(400, problem_code="invalid_request")])
    recorder.script[0] = lambda _r: httpx.Response(
        400, json={"title": "t", "status": 400, "detail": f"bad token {secret}", "code": "invalid_request"}
    )
    client = make_client(recorder)
    try:
        with pytest.raises(TomeBadRequest) as caught:
            await client.detokenize("NS2", [secret])
        logged = capsys.readouterr().err
    finally:
        structlog.configure(**saved)  # the captured stderr closes with this test
    assert "tome.call_failed" in logged
    assert secret not in str(caught.value)
    assert secret not in logged
