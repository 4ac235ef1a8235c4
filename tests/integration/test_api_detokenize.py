"""POST /v1/detokenize: database first, TOME NS2 for the rest (then stored), null for unknown, audited."""

from __future__ import annotations

import hashlib

from tests.integration import api_harness
from tests.integration.api_harness import POOL, Api

api = api_harness.api  # the fixture: a running service with its own database



async def _detokenize(api: Api, refs: list[str]):
    async with api.client() as client:
        return await client.post("/v1/detokenize", json={"external_refs": refs},
                                 headers=await api.headers("tokens:detokenize"))


async def test_refs_of_pool_pairs_are_answered_from_the_database_in_request_order(api: Api):
    pairs = await api.seed(3)
    before = api.tome_requests()
    refs = [pairs[2].external_ref, pairs[0].external_ref, pairs[2].external_ref]
    response = await _detokenize(api, refs)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["complete"] is True
    assert body["results"] == [
        {"external_ref": p.external_ref, "internal_token": p.internal_token, "source": "db"}
        for p in (pairs[2], pairs[0], pairs[2])
    ]
    assert api.tome_requests() == before


async def test_refs_only_tome_knows_are_fetched_in_one_call_then_answered_locally(api: Api):
    async with api.client() as client:  # pairs TOME knows but the database does not (issued elsewhere)
        internal = (await client.post(f"{api.tome.url}/v1/namespaces/NS1/tokens:issue", json={"count": 3})).json()
    tokenized = [await _tokenize(api, token) for token in internal["tokens"]]
    before = api.tome.requests("NS2", "detokenize")

    first = await _detokenize(api, [*tokenized, "ext_unknown"])
    second = await _detokenize(api, tokenized)

    assert [r["source"] for r in first.json()["results"]] == ["tome", "tome", "tome", None]
    assert [r["internal_token"] for r in first.json()["results"]] == [*internal["tokens"], None]
    assert api.tome.requests("NS2", "detokenize") == before + 1, "one batched call for the misses"
    assert [r["source"] for r in second.json()["results"]] == ["db", "db", "db"]
    assert api.tome.requests("NS2", "detokenize") == before + 1


async def _tokenize(api: Api, token: str) -> str:
    async with api.client() as client:
        response = await client.post(f"{api.tome.url}/v1/namespaces/NS2/tokenize", json={"values": [token]})
    return str(response.json()["tokens"][0])


async def test_a_card_made_from_tome_is_detokenized_from_the_database(api: Api):
    async with api.client() as client:
        card = (await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                                  headers=await api.headers("cards:write"))).json()
    assert card["token_source"] == "tome"
    before = api.tome_requests()
    response = await _detokenize(api, [card["external_ref"]])
    assert response.json()["results"] == [
        {"external_ref": card["external_ref"], "internal_token": card["internal_token"], "source": "db"}
    ]
    assert api.tome_requests() == before


async def test_with_tome_down_known_refs_are_answered_and_the_rest_flagged(api: Api):
    pairs = await api.seed(2)
    api.tome.set_faults(outage=True)
    response = await _detokenize(api, [pairs[0].external_ref, "ext_nobody_knows"])
    assert response.status_code == 200
    body = response.json()
    assert body["complete"] is False
    assert body["warnings"][0]["code"] == "TOME_UNAVAILABLE"
    assert body["results"] == [
        {"external_ref": pairs[0].external_ref, "internal_token": pairs[0].internal_token, "source": "db"},
        {"external_ref": "ext_nobody_knows", "internal_token": None, "source": None},
    ]


async def test_with_tome_down_and_nothing_in_the_database_the_answer_is_503(api: Api):
    api.tome.set_faults(outage=True)
    response = await _detokenize(api, ["ext_a", "ext_b"])
    assert response.status_code == 503
    assert response.json()["code"] == "TOME_UNAVAILABLE"
    assert "Retry-After" in response.headers
    assert api.sql("SELECT outcome, ref_count FROM detokenize_audit") == [("failure", 2)]


async def test_every_detokenize_is_audited_with_keyed_digests_of_the_refs_only(api: Api):
    pairs = await api.seed(2)
    refs = [pairs[0].external_ref, pairs[1].external_ref]
    async with api.client() as client:
        response = await client.post("/v1/detokenize", json={"external_refs": refs},
                                     headers=await api.headers("tokens:detokenize", **{"X-Correlation-ID": "audit-1"}))
    assert response.status_code == 200
    rows = api.sql("SELECT a.api_key_name, a.correlation_id, a.event, a.outcome, a.ref_count, a.from_db, "
                   "a.ref_digests, a.ref_hashes, a.client_addr, a.at <= now() FROM detokenize_audit a")
    assert len(rows) == 1
    name, correlation_id, event, outcome, count, from_db, digests, plain_hashes, client_addr, timed = rows[0]
    assert name.startswith("test-")
    assert (correlation_id, event, outcome, count, from_db) == ("audit-1", "detokenize", "success", 2, 2)
    assert (client_addr, timed) == ("127.0.0.1", True)
    assert digests == [api.vault.hexdigest(r) for r in refs]
    assert not set(digests) & {hashlib.sha256(r.encode()).hexdigest() for r in refs}, "keyed, not plain SHA-256"
    assert plain_hashes is None
    dump = str(api.sql("SELECT * FROM detokenize_audit"))
    assert all(r not in dump and p.internal_token not in dump for r, p in zip(refs, pairs, strict=True))


async def test_more_than_a_thousand_refs_is_a_422_with_its_own_code_audited_without_refs(api: Api):
    response = await _detokenize(api, [f"ext_{i}" for i in range(1_001)])
    assert response.status_code == 422
    assert response.json()["code"] == "TOO_MANY_REFS"
    assert api.sql("SELECT outcome, reason, ref_count, ref_digests FROM detokenize_audit") == [
        ("refused", "TOO_MANY_REFS", 0, [])]
