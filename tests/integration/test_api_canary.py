"""Canary routing: the pool's share of card creations, changed at run time without a restart."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from tests.integration import api_harness
from tests.integration.api_harness import POOL, Api
from tokenpool.service.runtime_config import POOL_TRAFFIC_PERCENT_KEY, write

api = api_harness.api  # the fixture: a running service with its own database



async def _cards(api: Api, n: int) -> list[str]:
    headers = await api.headers("cards:write")
    async with api.client() as client:
        responses = await asyncio.gather(*(
            client.post("/v1/cards", json={"program": POOL, "customer_ref": f"c{i}"}, headers=headers)
            for i in range(n)))
    assert [r.status_code for r in responses] == [201] * n, [r.text for r in responses if r.status_code != 201]
    return [r.json()["token_source"] for r in responses]


async def _set_percent(api: Api, percent: int | None) -> None:
    await write(api.db, POOL_TRAFFIC_PERCENT_KEY, percent)
    await asyncio.sleep(0.3)  # past the harness's 0.2 s cache
    await _cards(api, 1)  # the first request after expiry still sees the old value and refreshes it
    await asyncio.sleep(0.1)


async def test_the_traffic_share_routes_exactly_that_share_of_cards_to_the_pool(api: Api):
    await api.seed(200)
    assert set(await _cards(api, 10)) == {"pool"}  # default 100 %

    await _set_percent(api, 90)
    at_90 = await _cards(api, 50)
    await _set_percent(api, 10)
    at_10 = await _cards(api, 50)
    await _set_percent(api, None)  # back to the environment default
    after = await _cards(api, 10)

    assert at_90.count("tome") == 5, "canary at 90 %: 10 % of cards straight from TOME"
    assert at_10.count("pool") == 5, "canary at 10 %: 10 % of cards from the pool"
    assert set(after) == {"pool"}


async def test_at_zero_percent_the_pool_is_not_used_even_when_tome_is_down(api: Api):
    await api.seed(10)
    await _set_percent(api, 0)
    api.tome.set_faults(outage=True)
    async with api.client() as client:
        response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                                     headers=await api.headers("cards:write"))
    assert (response.status_code, response.json()["code"]) == (503, "TOME_UNAVAILABLE")


async def test_a_card_routed_to_tome_falls_back_to_the_pool_when_tome_is_down(api: Api):
    await api.seed(10)
    await _set_percent(api, 50)
    api.tome.set_faults(outage=True)
    sources = await _cards(api, 6)
    assert set(sources) == {"pool"}


def _cards_created(token_source: str, routed_to: str) -> float:
    return REGISTRY.get_sample_value("tokenpool_cards_created_total", {
        "program": POOL, "token_source": token_source, "routed_to": routed_to}) or 0.0


async def test_cards_the_canary_sends_to_tome_are_told_apart_from_fallbacks_of_an_empty_pool(api: Api):
    # TokenpoolCardsFallingBackToTome counts routed_to="pool" with token_source="tome" only: a canary step
    # or `config unset` moves cards to routed_to="tome" and must not look like an empty pool.
    await api.seed(20)
    keys = [(source, routed) for source in ("pool", "tome") for routed in ("pool", "tome")]

    def counted() -> dict[tuple[str, str], float]:
        return {key: _cards_created(*key) for key in keys}

    before = counted()
    await _set_percent(api, 50)
    canary = await _cards(api, 10)
    await _set_percent(api, None)  # `tokenpool config unset`: the default, 100 %
    after_canary = counted()
    drained = await _cards(api, 15)  # more than the pool has left
    after_drain = counted()

    canary_delta = {key: after_canary[key] - before[key] for key in keys}
    assert canary.count("tome") == 5
    assert canary_delta[("tome", "pool")] == 0, "no fallback while the pool has pairs"
    assert canary_delta[("tome", "tome")] >= 5
    drain_delta = {key: after_drain[key] - after_canary[key] for key in keys}
    assert drain_delta[("tome", "pool")] == drained.count("tome") > 0, "each TOME card once the pool was empty"
    assert drain_delta[("tome", "tome")] == 0
    assert drain_delta[("pool", "tome")] == 0  # TOME is up: no card routed to TOME came from the pool
