"""Every token read audited: whole-token card reads, refused attempts, the client address, one chain."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from tests.integration import api_harness
from tests.integration.api_harness import POOL, Api, running_api
from tokenpool.audit.verify import verify_chain
from tokenpool.db.audit_store import AuditChainReader

api = api_harness.api  # the fixture: a running service with its own database

AUDIT_COLUMNS = "event, outcome, reason, api_key_name, client_addr, card_id, ref_count, ref_digests"


def _digest(api: Api, ref: str) -> str:
    return api.vault.hexdigest(ref)


async def _card(api: Api) -> dict:
    await api.seed(1)
    async with api.client() as client:
        response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                                     headers=await api.headers("cards:write"))
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_a_card_read_with_cards_read_only_shows_the_last_four_and_is_not_an_audited_read(api: Api):
    card = await _card(api)
    async with api.client() as client:
        response = await client.get(f"/v1/cards/{card['card_id']}", headers=await api.headers("cards:read"))
    token, shown = card["internal_token"], response.json()["internal_token"]
    assert response.status_code == 200
    assert shown == "*" * (len(token) - 4) + token[-4:]
    assert {**response.json(), "internal_token": token} == card
    assert api.sql("SELECT count(*) FROM detokenize_audit") == [(0,)]


async def test_a_card_read_with_tokens_detokenize_shows_the_whole_token_and_is_audited(api: Api):
    card = await _card(api)
    async with api.client() as client:
        response = await client.get(f"/v1/cards/{card['card_id']}",
                                    headers=await api.headers("cards:read", "tokens:detokenize"))
    assert response.json() == card
    rows = api.sql(f"SELECT {AUDIT_COLUMNS}, correlation_id FROM detokenize_audit")
    assert len(rows) == 1
    *audited, correlation_id = rows[0]
    assert audited == ["card_read", "success", None, audited[3], "127.0.0.1", uuid.UUID(card["card_id"]), 1,
                       [_digest(api, card["external_ref"])]]
    assert audited[3].startswith("test-")
    assert correlation_id == response.headers["X-Correlation-ID"]


async def test_a_whole_token_is_not_shown_when_its_read_cannot_be_audited(api: Api):
    card = await _card(api)
    api.sql("ALTER TABLE detokenize_audit ADD CONSTRAINT no_card_reads CHECK (event <> 'card_read')")
    async with api.client() as client:
        response = await client.get(f"/v1/cards/{card['card_id']}",
                                    headers=await api.headers("cards:read", "tokens:detokenize"))
    assert response.status_code == 500
    assert card["internal_token"] not in response.text


REFUSED = [
    ("no key", None, {"external_refs": ["ext_x"]}, 401, "AUTHENTICATION_REQUIRED", False),
    ("unknown key", "tpk_not_a_key", {"external_refs": ["ext_x"]}, 401, "INVALID_API_KEY", False),
    ("missing scope", ("cards:read",), {"external_refs": ["ext_x"]}, 403, "INSUFFICIENT_SCOPE", True),
    ("invalid body", ("tokens:detokenize",), {"external_refs": "ext_x"}, 422, "VALIDATION_ERROR", True),
]


@pytest.mark.parametrize(("case", "key", "body", "status", "reason", "named"), REFUSED, ids=[r[0] for r in REFUSED])
async def test_a_refused_detokenize_is_audited_with_its_reason_and_origin(api: Api, case, key, body, status, reason,
                                                                           named):
    headers = {}
    if isinstance(key, str):
        headers = {"Authorization": f"Bearer {key}"}
    elif key:
        headers = await api.headers(*key)
    async with api.client() as client:
        response = await client.post("/v1/detokenize", json=body, headers=headers)
    assert (response.status_code, response.json()["code"]) == (status, reason)
    rows = api.sql(f"SELECT {AUDIT_COLUMNS} FROM detokenize_audit")
    assert len(rows) == 1
    event, outcome, recorded_reason, key_name, client_addr, card_id, ref_count, digests = rows[0]
    assert (event, outcome, recorded_reason, client_addr) == ("detokenize", "refused", reason, "127.0.0.1")
    assert (card_id, ref_count, digests) == (None, 0, [])
    assert (key_name is not None) == named


async def test_a_refused_card_read_is_audited_with_the_card_asked_for(api: Api):
    card_id = uuid.uuid4()
    async with api.client() as client:
        anonymous = await client.get(f"/v1/cards/{card_id}")
        unscoped = await client.get("/v1/cards/not-a-uuid", headers=await api.headers("tokens:detokenize"))
    assert (anonymous.status_code, unscoped.status_code) == (401, 403)
    assert api.sql("SELECT event, reason, card_id, api_key_name IS NULL FROM detokenize_audit ORDER BY seq") == [
        ("card_read", "AUTHENTICATION_REQUIRED", card_id, True), ("card_read", "INSUFFICIENT_SCOPE", None, False)]


async def test_refusals_at_routes_that_reveal_no_token_are_not_audited(api: Api):
    async with api.client() as client:
        cards = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"})
        pools = await client.get(f"/v1/pools/{POOL}", headers=await api.headers("cards:read"))
    assert (cards.status_code, pools.status_code) == (401, 403)
    assert api.sql("SELECT count(*) FROM detokenize_audit") == [(0,)]


@pytest.mark.parametrize("forwarded", ["not-an-ip<script>", "1.2.3.4"])
async def test_a_forwarded_address_from_an_untrusted_peer_is_not_recorded(api: Api, forwarded):
    async with api.client() as client:
        await client.post("/v1/detokenize", json={"external_refs": ["ext_x"]},
                          headers=await api.headers("tokens:detokenize", **{"X-Forwarded-For": forwarded}))
        await client.post("/v1/detokenize", json={"external_refs": ["ext_x"]}, headers={"X-Forwarded-For": forwarded})
    assert api.sql("SELECT outcome, client_addr FROM detokenize_audit ORDER BY seq") == [
        ("success", "127.0.0.1"), ("refused", "127.0.0.1")]


async def test_behind_a_trusted_proxy_only_a_valid_forwarded_address_is_recorded(database_url, tome):
    async with running_api(database_url, tome, trusted_proxies="127.0.0.1/32") as trusted:
        headers = await trusted.headers("tokens:detokenize")
        async with trusted.client() as client:
            for forwarded in ("6.6.6.6, 198.51.100.7", "not-an-ip<script>"):
                await client.post("/v1/detokenize", json={"external_refs": ["ext_x"]},
                                  headers={**headers, "X-Forwarded-For": forwarded})
            await client.post("/v1/detokenize", json={"external_refs": ["ext_x"]},
                              headers={"X-Forwarded-For": "2001:db8::7"})
        rows = trusted.sql("SELECT outcome, client_addr FROM detokenize_audit ORDER BY seq")
    assert rows == [("success", "198.51.100.7"), ("success", "127.0.0.1"), ("refused", "2001:db8::7")]


async def test_concurrent_detokenize_requests_make_one_unbroken_chain(api: Api):
    pairs = await api.seed(50)
    headers = await api.headers("tokens:detokenize")
    async with api.client() as client:
        responses = await asyncio.gather(*(
            client.post("/v1/detokenize", json={"external_refs": [p.external_ref]}, headers=headers) for p in pairs))
    assert [r.status_code for r in responses] == [200] * 50
    async with await psycopg.AsyncConnection.connect(api.admin_database_url, autocommit=True) as conn:
        report = await verify_chain(AuditChainReader(conn))
    assert report.ok, report.broken
    assert (report.rows, report.head.seq) == (50, 50)
    recorded = api.sql("SELECT ref_digests[1] FROM detokenize_audit")
    assert sorted(row[0] for row in recorded) == sorted(_digest(api, p.external_ref) for p in pairs)
