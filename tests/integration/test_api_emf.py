"""`tokenpool serve` with TOKENPOOL_EMF_INTERVAL_S: its figures reach stdout as EMF lines, none lost."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from tests.emf import emf_lines, metric_values, validate_emf
from tests.integration.api_harness import POOL, running_api

NAMESPACE = "tokenpool-api-emf-test"


async def test_the_api_prints_cards_by_source_latency_and_tome_calls_avoided(
    database_url, admin_database_url, tome, capsys
):
    async with running_api(database_url, tome, admin_database_url=admin_database_url, emf_interval_s=0.2,
                           emf_namespace=NAMESPACE) as api:
        await api.seed(3)
        async with api.client() as client:
            for _ in range(2):
                response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                                             headers=await api.headers("cards:write"))
                assert response.status_code == 201
        await asyncio.sleep(0.5)  # at least one periodic report while running
    # Stopped: the lifespan printed the last partial interval too.
    documents = [document for document in emf_lines(capsys.readouterr().out)
                 if document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == NAMESPACE]
    assert documents
    for document in documents:
        validate_emf(document)
        assert document["process"] == "api"

    cards = metric_values(documents, "tokenpool_cards_created", program=POOL, token_source="pool", routed_to="pool")
    # Increases add up to the counter: the first report counts from the process start, the last one to the stop.
    assert sum(cards) == REGISTRY.get_sample_value("tokenpool_cards_created_total",
                                                   {"program": POOL, "token_source": "pool", "routed_to": "pool"})
    assert len(cards) >= 2
    assert sum(cards) >= 2
    where = {"route": "/v1/cards", "method": "POST"}
    assert sum(metric_values(documents, "tokenpool_http_request_duration_seconds_count", **where)) >= 2
    assert all(value > 0 for value in metric_values(documents, "tokenpool_http_request_duration_seconds_p99",
                                                    **where))
    assert metric_values(documents, "tokenpool_http_request_duration_seconds_p99", **where)
    assert sum(metric_values(documents, "tokenpool_tome_calls_avoided", operation="issue")) >= 2
    assert not any(document.get("route") == "/readyz" for document in documents)
