"""POST /v1/cards and GET /v1/cards/{id}: from the pool, from TOME, idempotent, all or nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from tests.integration import api_harness
from tests.integration.api_harness import POOL, Api
from tokenpool import bootstrap
from tokenpool.pool import PairStatus
from tokenpool.refill.job import refill_pool
from tokenpool.settings import Settings
from tokenpool.tome.client import TomeClient

api = api_harness.api  # the fixture: a running service with its own database



async def test_a_card_takes_its_pair_from_the_pool_without_calling_tome(api: Api):
    pairs = await api.seed(5)
    before = api.tome_requests()
    async with api.client() as client:
        response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "cust-1"},
                                     headers=await api.headers("cards:write"))
    assert response.status_code == 201, response.text
    card = response.json()
    assert card["token_source"] == "pool"
    assert (card["internal_token"], card["external_ref"]) in {(p.internal_token, p.external_ref) for p in pairs}
    assert response.headers["Location"] == f"/v1/cards/{card['card_id']}"
    assert api.tome_requests() == before
    assert api.sql("SELECT status, card_ref FROM token_pool WHERE external_ref = %s", card["external_ref"]) == [
        ("USED", card["card_id"])
    ]
    stats = await api.store.stats(POOL)
    assert stats.counts == {PairStatus.AVAILABLE: 4, PairStatus.USED: 1}


async def test_a_card_can_be_read_back_with_cards_read(api: Api):
    await api.seed(1)
    async with api.client() as client:
        created = (await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                                     headers=await api.headers("cards:write"))).json()
        response = await client.get(f"/v1/cards/{created['card_id']}", headers=await api.headers("cards:read"))
        missing = await client.get(f"/v1/cards/{uuid.uuid4()}", headers=await api.headers("cards:read"))
        malformed = await client.get("/v1/cards/not-a-uuid", headers=await api.headers("cards:read"))
    assert response.status_code == 200
    token = created["internal_token"]
    assert response.json() == {**created, "internal_token": "*" * (len(token) - 4) + token[-4:]}  # masked
    assert missing.status_code == 404
    assert missing.json()["code"] == "CARD_NOT_FOUND"
    assert malformed.status_code == 404


async def test_an_empty_pool_falls_back_to_tome_and_records_the_pair_as_used(api: Api):
    async with api.client() as client:
        response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                                     headers=await api.headers("cards:write"))
    assert response.status_code == 201, response.text
    card = response.json()
    assert card["token_source"] == "tome"
    assert card["internal_token"] in api.tome.issued("NS1")
    assert api.sql("SELECT status, card_ref FROM token_pool WHERE external_ref = %s", card["external_ref"]) == [
        ("USED", card["card_id"])
    ]


async def test_a_retry_with_the_same_idempotency_key_returns_the_same_card_and_uses_no_second_pair(api: Api):
    await api.seed(5)
    headers = await api.headers("cards:write", **{"Idempotency-Key": "order-42"})
    body = {"program": POOL, "customer_ref": "cust-42"}
    async with api.client() as client:
        first = await client.post("/v1/cards", json=body, headers=headers)
        again = await client.post("/v1/cards", json={"customer_ref": "cust-42", "program": POOL}, headers=headers)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert (await api.store.stats(POOL)).counts == {PairStatus.AVAILABLE: 4, PairStatus.USED: 1}


async def test_the_same_idempotency_key_with_another_body_is_refused(api: Api):
    await api.seed(5)
    headers = await api.headers("cards:write", **{"Idempotency-Key": "order-43"})
    async with api.client() as client:
        await client.post("/v1/cards", json={"program": POOL, "customer_ref": "a"}, headers=headers)
        response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "b"}, headers=headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert api.sql("SELECT count(*) FROM cards") == [(1,)]


async def test_idempotency_keys_are_per_api_key(api: Api):
    await api.seed(5)
    _, other_key = await api.keys.create("other-client", ["cards:write"])
    body = {"program": POOL, "customer_ref": "a"}
    async with api.client() as client:
        mine = await client.post("/v1/cards", json=body, headers=await api.headers(
            "cards:write", **{"Idempotency-Key": "k1"}))
        theirs = await client.post("/v1/cards", json=body, headers={
            "Authorization": f"Bearer {other_key}", "Idempotency-Key": "k1"})
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["card_id"] != theirs.json()["card_id"]


async def test_concurrent_retries_of_one_key_create_one_card_from_one_pair(api: Api):
    await api.seed(100)
    headers = await api.headers("cards:write", **{"Idempotency-Key": "burst-key"})
    body = {"program": POOL, "customer_ref": "cust"}
    async with api.client() as client:
        responses = await asyncio.gather(*(client.post("/v1/cards", json=body, headers=headers) for _ in range(30)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 29 + [201], [r.text for r in responses if r.status_code not in (200, 201)]
    assert len({r.json()["card_id"] for r in responses}) == 1
    assert api.sql("SELECT count(*) FROM cards") == [(1,)]
    assert (await api.store.stats(POOL)).counts == {PairStatus.AVAILABLE: 99, PairStatus.USED: 1}


async def test_concurrent_retries_through_tome_create_one_card_and_pool_the_spare_pairs(api: Api):
    headers = await api.headers("cards:write", **{"Idempotency-Key": "tome-key"})
    body = {"program": POOL, "customer_ref": "cust"}
    async with api.client() as client:
        responses = await asyncio.gather(*(client.post("/v1/cards", json=body, headers=headers) for _ in range(5)))
    assert sorted(r.status_code for r in responses).count(201) == 1
    assert len({r.json()["card_id"] for r in responses}) == 1
    assert api.sql("SELECT count(*) FROM cards") == [(1,)]
    stats = await api.store.stats(POOL)
    assert stats.count(PairStatus.USED) == 1
    # Requests that lost the race after TOME answered put their unused pair into the pool.
    assert stats.count(PairStatus.RESERVED) == 0
    assert stats.total == 1 + stats.available


async def test_an_invalid_idempotency_key_is_a_400(api: Api):
    async with api.client() as client:
        response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                                     headers=await api.headers("cards:write", **{"Idempotency-Key": "x" * 300}))
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_IDEMPOTENCY_KEY"


async def test_a_failing_card_insert_leaves_the_pair_available(api: Api):
    await api.seed(3)
    # Make the card insert itself fail, after the pair was reserved in the same transaction.
    api.sql("""CREATE FUNCTION refuse_card() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN IF NEW.customer_ref = 'boom' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$""")
    api.sql("CREATE TRIGGER refuse_card BEFORE INSERT ON cards FOR EACH ROW EXECUTE FUNCTION refuse_card()")
    async with api.client() as client:
        response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "boom"},
                                     headers=await api.headers("cards:write"))
    assert response.status_code == 500
    assert response.json()["code"] == "INTERNAL_ERROR"
    assert (await api.store.exact_stats(POOL)).counts == {PairStatus.AVAILABLE: 3}
    assert api.sql("SELECT count(*) FROM cards") == [(0,)]


async def test_an_empty_pool_and_tome_down_is_a_clean_503_that_writes_nothing(api: Api):
    api.tome.set_faults(outage=True)
    async with api.client() as client:
        response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                                     headers=await api.headers("cards:write"))
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["code"] == "POOL_EXHAUSTED_TOME_UNAVAILABLE"
    assert api.sql("SELECT (SELECT count(*) FROM cards), (SELECT count(*) FROM token_pool)") == [(0, 0)]


async def test_a_tome_outage_does_not_stop_card_creation_from_a_full_pool(api: Api):
    await api.seed(20)
    api.tome.set_faults(outage=True)
    async with api.client() as client:
        responses = [await client.post("/v1/cards", json={"program": POOL, "customer_ref": f"c{i}"},
                                       headers=await api.headers("cards:write")) for i in range(10)]
    assert [r.status_code for r in responses] == [201] * 10
    assert {r.json()["token_source"] for r in responses} == {"pool"}


async def test_a_token_tome_issued_for_a_card_that_then_failed_is_recovered_by_the_next_refill(api: Api):
    issued_before = set(api.tome.issued("NS1"))
    api.tome.set_faults(corrupt_rate=1.0)  # TOME issues the token, then its answer loses it
    async with api.client() as client:
        response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                                     headers=await api.headers("cards:write"))
    assert response.status_code == 503
    assert response.json()["code"] == "POOL_EXHAUSTED_TOME_UNAVAILABLE"
    unseen = set(api.tome.issued("NS1")) - issued_before
    assert len(unseen) == 1, "TOME issued a token the service never saw"
    assert api.sql("SELECT count(*) FROM token_pool") == [(0,)]
    assert api.sql("SELECT count(*) FROM refill_batches WHERE origin = 'service' AND state = 'intent'") == [(1,)]

    api.tome.reset_faults()
    settings = Settings(database_url=api.database_url, tome_url=api.tome.url,  # type: ignore[arg-type]
                        refill_service_intent_grace_s=0)
    async with bootstrap.open_refill(settings) as deps:
        result = await refill_pool(deps, POOL, count=1)
    assert result.recovered == 1
    (token,) = unseen
    assert await api.status_of_token(token) == "AVAILABLE"
    assert api.sql("SELECT count(*) FROM refill_batches WHERE state <> 'done'") == [(0,)]


async def test_a_young_tome_fallback_intent_is_left_to_its_request_by_the_refill(api: Api):
    api.tome.set_faults(corrupt_rate=1.0)
    async with api.client() as client:
        await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                          headers=await api.headers("cards:write"))
    api.tome.reset_faults()
    settings = Settings(database_url=api.database_url, tome_url=api.tome.url)  # type: ignore[arg-type]
    async with bootstrap.open_refill(settings) as deps:
        result = await refill_pool(deps, POOL, count=1)
    assert result.recovered == 0
    assert api.sql("SELECT count(*) FROM refill_batches WHERE origin = 'service' AND state = 'intent'") == [(1,)]


class _RefillOvertakes:
    """The service's TOME client, except that between TOME's answer and the store, a refill recovers the
    request's intent (grace 0): what happens when a request outlives ``refill_service_intent_grace_s``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client = TomeClient(settings)
        self.overtaken = 0

    async def __aenter__(self) -> _RefillOvertakes:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def issue(self, namespace: str, count: int, *, idempotency_key: str,
                    correlation_id: str | None = None) -> list[str]:
        return await self._client.issue(namespace, count, idempotency_key=idempotency_key,
                                        correlation_id=correlation_id)

    async def tokenize(self, namespace: str, values: Sequence[str]) -> list[str]:
        refs = await self._client.tokenize(namespace, values)
        if self.overtaken == 0:
            self.overtaken += 1
            refill = self._settings.model_copy(update={"refill_service_intent_grace_s": 0})
            async with bootstrap.open_refill(refill) as deps:
                result = await refill_pool(deps, POOL, count=0)
            assert result.recovered == 1
        return refs

    async def detokenize(self, namespace: str, tokens: Sequence[str]) -> list[str | None]:
        return await self._client.detokenize(namespace, tokens)

    def breaker_state(self) -> str:
        return self._client.breaker_state()


async def test_a_request_whose_tome_pair_the_refill_recovered_first_answers_503_and_stores_nothing(
    database_url, tome
):
    async with api_harness.running_api(database_url, tome, tome_factory=_RefillOvertakes) as api, \
            api.client() as client:
        headers = await api.headers("cards:write", **{"Idempotency-Key": "slow-order"})
        body = {"program": POOL, "customer_ref": "c"}
        late = await client.post("/v1/cards", json=body, headers=headers)
        assert api.sql("SELECT status, card_ref FROM token_pool") == [("AVAILABLE", None)]
        retried = await client.post("/v1/cards", json=body, headers=headers)
    assert (late.status_code, late.json()["code"]) == (503, "TOME_PAIR_RECLAIMED"), late.text
    assert late.headers["Retry-After"]
    assert (retried.status_code, retried.json()["token_source"]) == (201, "pool"), retried.text
    assert api.sql("SELECT count(*) FROM cards") == [(1,)]
    assert api.sql("SELECT count(*) FROM refill_batches WHERE state <> 'done'") == [(0,)]
