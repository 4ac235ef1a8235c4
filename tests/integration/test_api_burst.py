"""1,000 concurrent POST /v1/cards over real HTTP: 1,000 cards, 1,000 distinct pairs, no TOME call."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.integration import api_harness
from tests.integration.api_harness import POOL, Api
from tokenpool.pool import PairStatus

CARDS = 1_000
IN_FLIGHT = 100
MAX_ATTEMPTS = 3
# A dropped connection was seen once in four CI runs. Likely cause, fixed since: uvicorn's 5 s keep-alive
# closing a connection the client was reusing (the service now keeps 75 s). A few are still tolerated
# and retried, as a real client would; more would mean a real fault.
MAX_RETRIES_IN_BURST = 5

api = api_harness.api  # the fixture: a running service with its own database



async def test_a_thousand_concurrent_card_creations_use_a_thousand_distinct_pairs_and_never_call_tome(api: Api):
    pairs = await api.seed(CARDS + 200)
    headers = await api.headers("cards:write")
    before = api.tome.stats()["requests"]
    gate = asyncio.Semaphore(IN_FLIGHT)

    retries = 0

    async with api.client(max_connections=IN_FLIGHT) as client:
        async def create(i: int) -> dict[str, str]:
            # Each order carries its own Idempotency-Key, so a connection dropped under the burst is
            # retried the way a real client would: safely (a replay answers 200 with the same card).
            nonlocal retries
            order_headers = {**headers, "Idempotency-Key": f"burst-order-{i}"}
            for attempt in range(MAX_ATTEMPTS):
                try:
                    async with gate:
                        response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": f"c{i}"},
                                                     headers=order_headers)
                    break
                except httpx.TransportError:
                    if attempt == MAX_ATTEMPTS - 1:
                        raise
                    retries += 1
            assert response.status_code in ({201} if attempt == 0 else {200, 201}), response.text
            return response.json()

        started = time.perf_counter()
        cards = await asyncio.wait_for(asyncio.gather(*(create(i) for i in range(CARDS))), timeout=120)
        elapsed = time.perf_counter() - started

    print(f"\n{CARDS} cards over HTTP, {IN_FLIGHT} in flight: {elapsed:.2f} s ({CARDS / elapsed:.0f}/s),"
          f" {retries} transport retries")
    assert retries <= MAX_RETRIES_IN_BURST, f"{retries} dropped connections: not a stray one any more"
    assert api.tome.stats()["requests"] == before, "the burst must not reach TOME"
    assert {c["token_source"] for c in cards} == {"pool"}
    assert len({c["card_id"] for c in cards}) == CARDS
    assert len({c["internal_token"] for c in cards}) == CARDS
    assert len({c["external_ref"] for c in cards}) == CARDS
    loaded = {(p.internal_token, p.external_ref) for p in pairs}
    assert {(c["internal_token"], c["external_ref"]) for c in cards} <= loaded
    stats = await api.store.stats(POOL)
    assert stats.counts == {PairStatus.AVAILABLE: 200, PairStatus.USED: CARDS}
    assert stats == await api.store.exact_stats(POOL)
    # Every used pair names its card, and every card its pair.
    assert api.sql("""SELECT count(*) FROM token_pool t JOIN cards c
                      ON c.token_digest = t.token_digest AND c.external_ref = t.external_ref
                      AND t.card_ref = c.card_id::text WHERE t.status = 'USED'""") == [(CARDS,)]
