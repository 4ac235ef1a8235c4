"""GET /v1/pools/{program}, /metrics, the correlation id, and OpenAPI."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tests.fixtures.database import register_program
from tests.integration import api_harness
from tests.integration.api_harness import POOL, Api

api = api_harness.api  # the fixture: a running service with its own database



async def test_pool_counts_and_health_are_reported(api: Api):
    await api.seed(5)
    async with api.client() as client:
        await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                          headers=await api.headers("cards:write"))
        response = await client.get(f"/v1/pools/{POOL}", headers=await api.headers("pools:read"))
        unknown = await client.get("/v1/pools/never-loaded", headers=await api.headers("pools:read"))
    body = response.json()
    assert {k: body[k] for k in ("pool", "available", "reserved", "used", "expired", "total")} == {
        "pool": POOL, "available": 4, "reserved": 0, "used": 1, "expired": 0, "total": 5}
    assert body["status"] == "CRITICAL", "4 pairs are far below the default refill target"
    assert body["target"] >= 4
    assert (unknown.status_code, unknown.json()["code"]) == (422, "UNKNOWN_PROGRAM")


async def test_a_registered_program_whose_pool_is_still_empty_reads_empty_against_its_own_target(api: Api):
    register_program(api.database_url, "new-program", refill_target=250)
    async with api.client() as client:
        response = await client.get("/v1/pools/new-program", headers=await api.headers("pools:read"))
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["target"], body["total"]) == ("EMPTY", 250, 0)


def _counted() -> tuple[float, ...]:
    samples = [("tokenpool_http_problems_total", {"status": "422", "code": "VALIDATION_ERROR"}),
               ("tokenpool_pool_reservations_total", {"pool": POOL, "outcome": "reserved"}),
               ("tokenpool_pool_commits_total", {"outcome": "committed"}),
               ("tokenpool_pool_pairs_added_total", {"pool": POOL})]
    return tuple(REGISTRY.get_sample_value(name, labels) or 0.0 for name, labels in samples)


async def test_metrics_show_requests_cards_by_source_pool_level_and_tome_calls_avoided(api: Api):
    before = _counted()  # the service runs in this process: its registry is this one
    await api.seed(3)
    async with api.client() as client:
        await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                          headers=await api.headers("cards:write"))
        await client.post("/v1/cards", json={"program": POOL}, headers=await api.headers("cards:write"))
        response = await client.get("/metrics", headers=await api.headers("metrics:read"))
    text = response.text
    assert 'tokenpool_http_problems_total{code="VALIDATION_ERROR",status="422"}' in text
    # One invalid card, one card from the pool, three pairs seeded:
    assert [after - was for after, was in zip(_counted(), before, strict=True)] == [1, 1, 1, 3]
    assert response.status_code == 200
    assert 'tokenpool_http_requests_total{method="POST",route="/v1/cards",status="201"}' in text
    assert "tokenpool_http_request_duration_seconds_bucket" in text
    assert 'tokenpool_cards_created_total{program="default",routed_to="pool",token_source="pool"}' in text
    assert 'tokenpool_pool_pairs{pool="default",status="available"} 2.0' in text
    assert 'tokenpool_tome_calls_avoided_total{operation="issue"}' in text
    # There from the start, whatever their value now: a first 500, /readyz 503 or fallback is an increase.
    for series in ('tokenpool_http_requests_total{method="GET",route="/readyz",status="503"}',
                   'tokenpool_http_requests_total{method="POST",route="/v1/cards",status="500"}',
                   'tokenpool_cards_created_total{program="default",routed_to="pool",token_source="tome"}',
                   'tokenpool_pool_reservations_total{outcome="exhausted",pool="default"}'):
        assert series in text, series


async def test_the_correlation_id_is_echoed_or_generated(api: Api):
    async with api.client() as client:
        echoed = await client.get("/healthz", headers={"X-Correlation-ID": "req-123"})
        generated = await client.get("/healthz")
        pan_like = await client.get("/healthz", headers={"X-Correlation-ID": "4000123412341234"})
        problem = await client.get("/v1/nowhere", headers={"X-Correlation-ID": "req-404"})
    assert echoed.headers["X-Correlation-ID"] == "req-123"
    assert len(generated.headers["X-Correlation-ID"]) == 36
    assert pan_like.headers["X-Correlation-ID"] != "4000123412341234", "a card-number-like id is replaced"
    assert problem.json()["correlation_id"] == "req-404"


async def test_openapi_describes_every_route(api: Api):
    async with api.client() as client:
        schema = (await client.get("/openapi.json")).json()
    assert {"/v1/cards", "/v1/cards/{card_id}", "/v1/detokenize", "/v1/reservations",
            "/v1/reservations/{reservation_id}/commit", "/v1/reservations/{reservation_id}/release",
            "/v1/pools/{program}", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    assert "Problem" in schema["components"]["schemas"]
