"""Per-key limits over HTTP: card rate, detokenized refs, open reservations; shared through Redis, or not."""

from __future__ import annotations

import asyncio
import time
import uuid

from prometheus_client import REGISTRY

from tests.fixtures.redis import shared_limits
from tests.integration import api_harness
from tests.integration.api_harness import POOL, Api, running_api
from tokenpool.pool import PairStatus

api = api_harness.api  # a running service with its own database (default limits)
shared_limits = shared_limits  # Redis settings with a prefix of this test's own

CARD = {"program": POOL, "customer_ref": "c"}


async def _headers(api: Api, *scopes: str) -> dict[str, str]:
    """A key of its own (api.headers() reuses one key per scope set)."""
    _principal, key = await api.keys.create(f"limits-{uuid.uuid4().hex[:8]}", list(scopes))
    return {"Authorization": f"Bearer {key}"}


def _retry_after(response) -> int:
    return int(response.headers["Retry-After"])


async def test_a_key_past_its_card_rate_gets_429_with_retry_after_and_other_keys_do_not(database_url, tome):
    async with running_api(database_url, tome, rate_limit_cards="3/minute") as limited:
        await limited.seed(10)
        first, second = await _headers(limited, "cards:write"), await _headers(limited, "cards:write")
        async with limited.client() as client:
            answers = [await client.post("/v1/cards", json=CARD, headers=first) for _ in range(4)]
            other = await client.post("/v1/cards", json=CARD, headers=second)
        used = (await limited.store.stats(POOL)).counts[PairStatus.USED]
    assert [a.status_code for a in answers] == [201, 201, 201, 429]
    refused = answers[-1]
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "RATE_LIMITED"
    assert 1 <= _retry_after(refused) <= 60  # the fixed window frees within its minute
    assert other.status_code == 201, "the limit is per key"
    assert used == 4, "the refused one took no pair"


async def test_detokenize_counts_each_ref_and_a_refused_read_is_audited(database_url, tome):
    async with running_api(database_url, tome, rate_limit_detokenize_refs="10/minute") as limited:
        pairs = await limited.seed(12)
        refs = [p.external_ref for p in pairs]
        headers = await _headers(limited, "tokens:detokenize")
        async with limited.client() as client:
            async def detokenize(n: int):
                return await client.post("/v1/detokenize", json={"external_refs": refs[:n]}, headers=headers)

            six = await detokenize(6)
            five = await detokenize(5)  # 6 + 5 > 10: refused whole, nothing counted
            four = await detokenize(4)  # 6 + 4 = 10: fits exactly
            one_more = await detokenize(1)
            too_big = await detokenize(11)  # never fits, whatever the window holds
    assert [r.status_code for r in (six, five, four, one_more, too_big)] == [200, 429, 200, 429, 429]
    assert {r.json()["code"] for r in (five, one_more, too_big)} == {"RATE_LIMITED"}
    assert "smaller requests" in too_big.json()["detail"]
    assert all(_retry_after(r) >= 1 for r in (five, one_more, too_big))
    audit = limited.sql("SELECT outcome, reason FROM detokenize_audit ORDER BY seq")
    assert audit.count(("refused", "RATE_LIMITED")) == 3, audit


async def test_a_key_holds_at_most_its_open_reservations_and_a_lapsed_lease_frees_a_slot(database_url, tome):
    async with running_api(database_url, tome, max_open_reservations=2, lease_seconds=1.5) as limited:
        await limited.seed(10)
        mine, other = await _headers(limited, "reservations:write"), await _headers(limited, "reservations:write")
        async with limited.client() as client:
            async def reserve(headers):
                return await client.post("/v1/reservations", json={"program": POOL}, headers=headers)

            held = [await reserve(mine), await reserve(mine)]
            refused = await reserve(mine)
            others = await reserve(other)
            released = await client.post(f"/v1/reservations/{held[0].json()['reservation_id']}/release",
                                         headers=mine)
            after_release = await reserve(mine)
            full_again = await reserve(mine)
            await asyncio.sleep(1.6)  # both leases lapse; the janitor has not swept them: they no longer count
            after_lapse = await reserve(mine)
    assert [r.status_code for r in held] == [201, 201]
    assert (refused.status_code, refused.json()["code"]) == (429, "TOO_MANY_OPEN_RESERVATIONS")
    assert 1 <= _retry_after(refused) <= 2, "until the key's first lease lapses"
    assert others.status_code == 201, "the cap is per key"
    assert released.status_code == 200
    assert after_release.status_code == 201
    assert full_again.status_code == 429
    assert after_lapse.status_code == 201


async def test_without_shared_storage_each_process_counts_alone(database_url, tome):
    """No Redis: N processes let a key do N times its limit (docs/api.md says so)."""
    async with running_api(database_url, tome, rate_limit_cards="2/minute") as one, \
            running_api(database_url, tome, rate_limit_cards="2/minute") as two:
        await one.seed(10)
        headers = await _headers(one, "cards:write")
        async with one.client() as a, two.client() as b:
            through_one = [(await a.post("/v1/cards", json=CARD, headers=headers)).status_code for _ in range(3)]
            through_two = [(await b.post("/v1/cards", json=CARD, headers=headers)).status_code for _ in range(3)]
    assert through_one == [201, 201, 429]
    assert through_two == [201, 201, 429]


async def test_two_processes_share_one_limit_through_redis(database_url, tome, shared_limits):
    """Two services, each with its own limiter and Redis client, count in the same Redis."""
    settings = {**shared_limits, "rate_limit_cards": "4/minute", "rate_limit_detokenize_refs": "6/minute"}
    async with running_api(database_url, tome, **settings) as one, running_api(database_url, tome, **settings) as two:
        pairs = await one.seed(10)
        cards = await _headers(one, "cards:write")
        reads = await _headers(one, "tokens:detokenize")
        refs = {"external_refs": [p.external_ref for p in pairs[:3]]}
        async with one.client() as a, two.client() as b:
            statuses = []
            for client in (a, b, a, b, a, b):
                statuses.append((await client.post("/v1/cards", json=CARD, headers=cards)).status_code)
            read_statuses = [(await c.post("/v1/detokenize", json=refs, headers=reads)).status_code
                             for c in (a, b, a)]
    assert statuses == [201, 201, 201, 201, 429, 429]
    assert read_statuses == [200, 200, 429]


async def test_an_unreachable_redis_fails_open_to_counting_in_each_process(database_url, tome):
    errors = REGISTRY.get_sample_value("tokenpool_rate_limit_storage_errors_total") or 0.0
    async with running_api(database_url, tome, rate_limit_cards="3/minute",
                           rate_limit_storage_url="redis://127.0.0.1:1/0",  # nothing listens there
                           rate_limit_storage_timeout_s=0.5) as limited:
        await limited.seed(10)
        headers = await _headers(limited, "cards:write")
        async with limited.client() as client:
            started = time.monotonic()
            statuses = [(await client.post("/v1/cards", json=CARD, headers=headers)).status_code for _ in range(4)]
            elapsed = time.monotonic() - started
    assert statuses == [201, 201, 201, 429], "cards still issued, and the limit still holds, per process"
    assert elapsed < 3.0, "a Redis outage is not paid on every request"
    assert (REGISTRY.get_sample_value("tokenpool_rate_limit_storage_errors_total") or 0.0) > errors
