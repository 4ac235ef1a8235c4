"""The TOME client against a real emulator process: round trip, restart, retries, breaker, timeouts."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable

import pytest

from tests.fixtures.tome import TomeEmulator
from tokenpool.tome.client import TomeClient
from tokenpool.tome.contract import (
    TomeBadRequest,
    TomeBadResponse,
    TomeRateLimited,
    TomeUnavailable,
    is_external_ref,
    is_internal_token,
)

MakeClient = Callable[..., TomeClient]
TIMEOUT_MARGIN_S = 0.35  # scheduling and connection set-up on a loaded CI box


def new_ns() -> str:
    return f"T{uuid.uuid4().hex[:10]}"


async def test_round_trip_issue_on_ns1_tokenize_on_ns2_detokenize_back(
    tome: TomeEmulator, make_tome_client: MakeClient
) -> None:
    ns1, ns2 = new_ns(), new_ns()
    client = make_tome_client(tome_ns1=ns1, tome_ns2=ns2)
    internal = await client.issue(ns1, 50, idempotency_key=str(uuid.uuid4()))
    external = await client.tokenize(ns2, internal)
    assert all(is_internal_token(t) for t in internal)
    assert all(is_external_ref(r) for r in external)
    assert len(set(internal)) == len(set(external)) == 50
    assert await client.detokenize(ns2, external) == internal
    assert await client.tokenize(ns2, internal) == external  # deterministic: a retry is safe
    assert tome.issued(ns1) == internal
    assert client.requests_made == 4
    assert tome.requests(ns1, "issue") + tome.requests(ns2, "tokenize") + tome.requests(ns2, "detokenize") == 4


async def test_a_restart_keeps_the_vault_and_the_same_client_carries_on(
    tome: TomeEmulator, make_tome_client: MakeClient
) -> None:
    ns1, ns2 = new_ns(), new_ns()
    client = make_tome_client()
    internal = await client.issue(ns1, 20)
    external = await client.tokenize(ns2, internal)
    tome.restart()  # SIGKILL: no graceful shutdown to flush anything
    assert await client.detokenize(ns2, external) == internal  # stale pooled connection: retried
    assert await client.tokenize(ns2, internal) == external
    assert tome.issued(ns1) == internal
    more = await client.issue(ns1, 5)
    assert not set(more) & set(internal)


async def test_a_killed_emulator_is_a_connection_error_not_a_hang(
    tome: TomeEmulator, make_tome_client: MakeClient
) -> None:
    client = make_tome_client(tome_max_attempts=2)
    tome.kill()
    started = time.perf_counter()
    with pytest.raises(TomeUnavailable) as caught:
        await client.tokenize(new_ns(), ["a"])
    assert caught.value.reason == "connection_error"
    assert time.perf_counter() - started < 1.0
    tome.start()
    assert len(await client.tokenize(new_ns(), ["a"])) == 1


async def test_large_requests_go_in_batches_of_the_limit(tome: TomeEmulator, make_tome_client: MakeClient) -> None:
    ns = new_ns()
    client = make_tome_client()
    values = [f"value-{i}" for i in range(6_000)]
    tokens = await client.tokenize(ns, values)
    assert len(set(tokens)) == 6_000
    assert tome.requests(ns, "tokenize") == 3
    assert tome.items(ns, "tokenize") == 6_000
    tome.set_faults(max_batch=100)
    with pytest.raises(TomeBadRequest) as caught:
        await client.tokenize(ns, values[:101])
    assert caught.value.code == "batch_too_large"
    assert client.requests_made == 4  # a 4xx is never retried


async def test_calls_succeed_under_an_error_rate_and_the_ledger_shows_the_retries(
    tome: TomeEmulator, make_tome_client: MakeClient
) -> None:
    ns1, ns2 = new_ns(), new_ns()
    # The breaker must not trip on a 30% error rate: that is what the retries are for.
    client = make_tome_client(tome_max_attempts=10, tome_breaker_failure_threshold=50, tome_breaker_failure_rate=1.0)
    tome.set_faults(error_rate=0.3)
    internal: list[str] = []
    for _ in range(20):
        internal.extend(await client.issue(ns1, 5))
    external = [(await client.tokenize(ns2, [token]))[0] for token in internal[:20]]
    stats = tome.stats()
    sent = stats["requests"][ns1]["issue"] + stats["requests"][ns2]["tokenize"]
    errors = sum(stats["faults"][ns]["issue" if ns == ns1 else "tokenize"].get("error", 0) for ns in (ns1, ns2))
    print(f"\n40 logical calls under error_rate=0.3: {sent} requests, {errors} injected errors retried")
    assert sent == client.requests_made == 40 + errors
    assert errors > 0
    assert set(stats["statuses"][ns1]["issue"]) <= {"200", "500", "503"}
    assert stats["statuses"][ns1]["issue"]["200"] == 20
    assert tome.issued(ns1) == internal  # no token issued twice, none lost
    assert await client.detokenize(ns2, external) == internal[:20]


async def test_a_lost_issue_answer_is_replayed_on_retry_not_issued_twice(
    tome: TomeEmulator, make_tome_client: MakeClient
) -> None:
    ns = new_ns()
    client = make_tome_client(tome_read_timeout_s=0.4, tome_backoff_initial_s=0.3, tome_backoff_max_s=0.3)
    tome.set_faults(slow_ms=1_500)  # the emulator issues, then answers late: the first attempt times out
    call = asyncio.create_task(client.issue(ns, 3))
    await asyncio.sleep(0.2)
    tome.set_faults(slow_ms=0)
    tokens = await call
    assert client.requests_made >= 2
    assert tome.issued(ns) == tokens  # the retry got the first attempt's tokens back
    assert tome.stats()["idempotent_replays"][ns] == {"issue": client.requests_made - 1}


async def test_a_rerun_with_the_callers_key_gets_the_same_tokens_from_another_client(
    tome: TomeEmulator, make_tome_client: MakeClient
) -> None:
    ns = new_ns()
    first = await make_tome_client().issue(ns, 7, idempotency_key="refill-batch-1")
    tome.restart()  # e.g. the refill job crashed before journaling, and TOME restarted too
    again = await make_tome_client().issue(ns, 7, idempotency_key="refill-batch-1")
    assert again == first
    assert tome.issued(ns) == first


async def test_429_is_retried_after_its_retry_after(tome: TomeEmulator, make_tome_client: MakeClient) -> None:
    ns = new_ns()
    client = make_tome_client(tome_max_attempts=5, tome_total_timeout_s=10)
    tome.set_faults(rate_limit_rps=2)
    started = time.perf_counter()
    for index in range(4):
        await client.tokenize(ns, [f"v{index}"])
    elapsed = time.perf_counter() - started
    statuses = tome.stats()["statuses"][ns]["tokenize"]
    limited = statuses.get("429", 0)
    assert limited >= 1
    assert statuses["200"] == 4
    assert elapsed >= limited * 1.0  # Retry-After: 1 honoured each time
    assert client.requests_made == 4 + limited


async def test_a_retry_after_beyond_the_budget_surfaces_as_rate_limited(
    tome: TomeEmulator, make_tome_client: MakeClient
) -> None:
    ns = new_ns()
    client = make_tome_client(tome_total_timeout_s=0.5)
    tome.set_faults(rate_limit_rps=0.2)  # a token every 5 s: Retry-After 5
    await client.tokenize(ns, ["a"])
    started = time.perf_counter()
    with pytest.raises(TomeRateLimited) as caught:
        await client.tokenize(ns, ["b"])
    assert caught.value.retry_after_s is not None
    assert caught.value.retry_after_s >= 4
    assert time.perf_counter() - started < 0.5


async def test_the_breaker_opens_during_an_outage_fails_fast_then_half_opens_and_closes(
    tome: TomeEmulator, make_tome_client: MakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = new_ns()
    ttl = 1.0
    client = make_tome_client(tome_max_attempts=3, tome_breaker_failure_threshold=5, tome_breaker_ttl_s=ttl)
    await client.tokenize(ns, ["warm-up"])  # a pooled connection, as in steady state
    tome.set_faults(outage=True)

    with pytest.raises(TomeUnavailable) as first:
        await client.tokenize(ns, ["a"])  # 3 attempts, 3 failures
    assert first.value.reason == "server_error"
    with pytest.raises(TomeUnavailable) as second:
        await client.tokenize(ns, ["a"])  # 2 more failures open it; the 3rd attempt fails fast
    assert second.value.reason == "breaker_open"
    opened_at = time.monotonic()
    assert client.breaker_state() == "open"
    assert tome.requests(ns, "tokenize") == 1 + 5  # opened within the configured 5 failures

    durations: list[float] = []
    for _ in range(1_000):
        started = time.perf_counter()
        with pytest.raises(TomeUnavailable):
            await client.tokenize(ns, ["a"])
        durations.append(time.perf_counter() - started)
    assert time.monotonic() - opened_at < ttl, "measurement must finish while the breaker is open"
    assert tome.requests(ns, "tokenize") == 6  # fail fast: nothing reached TOME
    median_us = statistics.median(durations) * 1e6
    p99_us = sorted(durations)[989] * 1e6
    with capsys.disabled():
        print(f"\nTOME breaker fail-fast: median {median_us:.0f} µs, p99 {p99_us:.0f} µs over 1,000 calls")
    assert median_us < 2_000

    tome.set_faults(outage=False)
    await asyncio.sleep(max(0.0, opened_at + ttl - time.monotonic()) + 0.05)
    assert client.breaker_state() == "half_open"
    await client.tokenize(ns, ["a"])  # probe 1 of 2
    assert client.breaker_state() == "half_open"
    await client.tokenize(ns, ["b"])  # probe 2: closes
    assert client.breaker_state() == "closed"


async def test_a_response_slower_than_the_timeout_fails_within_the_timeout(
    tome: TomeEmulator, make_tome_client: MakeClient
) -> None:
    client = make_tome_client(tome_read_timeout_s=0.3, tome_max_attempts=1)
    tome.set_faults(slow_ms=3_000)
    started = time.perf_counter()
    with pytest.raises(TomeUnavailable) as caught:
        await client.tokenize(new_ns(), ["a"])
    elapsed = time.perf_counter() - started
    print(f"\nslow answer, read timeout 0.3 s, 1 attempt: failed after {elapsed:.3f} s")
    assert caught.value.reason == "timeout"
    assert 0.3 <= elapsed < 0.3 + TIMEOUT_MARGIN_S


async def test_retries_of_slow_responses_stop_at_the_total_timeout(
    tome: TomeEmulator, make_tome_client: MakeClient
) -> None:
    client = make_tome_client(
        tome_read_timeout_s=0.3, tome_max_attempts=20, tome_total_timeout_s=1.0, tome_breaker_failure_threshold=50
    )
    tome.set_faults(slow_ms=3_000)
    started = time.perf_counter()
    with pytest.raises(TomeUnavailable) as caught:
        await client.detokenize(new_ns(), ["ext_a"])
    elapsed = time.perf_counter() - started
    print(f"\nslow answers, total timeout 1.0 s: {client.requests_made} attempts, failed after {elapsed:.3f} s")
    assert caught.value.reason in {"timeout", "deadline"}
    assert client.requests_made >= 3
    assert elapsed < 1.0 + TIMEOUT_MARGIN_S


async def test_a_short_answer_is_reported_as_a_bad_response(tome: TomeEmulator, make_tome_client: MakeClient) -> None:
    ns = new_ns()
    client = make_tome_client()
    tome.set_faults(corrupt_rate=1.0)
    with pytest.raises(TomeBadResponse) as caught:
        await client.tokenize(ns, ["a", "b", "c"])
    assert caught.value.code == "wrong_item_count"
    assert client.requests_made == 1
    assert tome.stats()["faults"][ns]["tokenize"] == {"corrupt": 1}
