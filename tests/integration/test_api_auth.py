"""API keys: 401 without a valid key, 403 without the scope, revocation, and the open probes."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.integration import api_harness
from tests.integration.api_harness import POOL, Api

PROTECTED = [
    ("POST", "/v1/cards", {"program": POOL, "customer_ref": "c"}, "cards:write"),
    ("GET", f"/v1/cards/{uuid.uuid4()}", None, "cards:read"),
    ("POST", "/v1/detokenize", {"external_refs": ["ext_x"]}, "tokens:detokenize"),
    ("POST", "/v1/reservations", {"program": POOL}, "reservations:write"),
    ("POST", f"/v1/reservations/{uuid.uuid4()}/commit", {"card_ref": "c"}, "reservations:write"),
    ("POST", f"/v1/reservations/{uuid.uuid4()}/release", None, "reservations:write"),
    ("GET", f"/v1/pools/{POOL}", None, "pools:read"),
    ("GET", "/metrics", None, "metrics:read"),
]

api = api_harness.api  # the fixture: a running service with its own database



@pytest.mark.parametrize(("method", "path", "body", "scope"), PROTECTED, ids=[p[1] for p in PROTECTED])
async def test_every_protected_route_wants_a_valid_key_with_its_scope(api: Api, method, path, body, scope):
    others = [s for s in ("cards:write", "cards:read", "tokens:detokenize", "reservations:write", "pools:read",
                          "metrics:read") if s != scope]
    async with api.client() as client:
        missing = await client.request(method, path, json=body)
        wrong = await client.request(method, path, json=body, headers={"Authorization": "Bearer tpk_not_a_key"})
        basic = await client.request(method, path, json=body, headers={"Authorization": "Basic dXNlcjpwdw=="})
        unscoped = await client.request(method, path, json=body, headers=await api.headers(*others))
        allowed = await client.request(method, path, json=body, headers=await api.headers(scope))
    assert (missing.status_code, missing.json()["code"]) == (401, "AUTHENTICATION_REQUIRED")
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert (wrong.status_code, wrong.json()["code"]) == (401, "INVALID_API_KEY")
    assert basic.status_code == 401
    assert (unscoped.status_code, unscoped.json()["code"]) == (403, "INSUFFICIENT_SCOPE")
    assert allowed.status_code not in (401, 403)


async def test_a_revoked_key_stops_working_within_the_cache_ttl(api: Api):
    await api.seed(5)
    _principal, key = await api.keys.create("soon-revoked", ["cards:write"])
    headers = {"Authorization": f"Bearer {key}"}
    body = {"program": POOL, "customer_ref": "c"}
    async with api.client() as client:
        assert (await client.post("/v1/cards", json=body, headers=headers)).status_code == 201
        assert await api.keys.revoke("soon-revoked")
        await asyncio.sleep(0.3)  # the harness caches key checks for 0.2 s
        response = await client.post("/v1/cards", json=body, headers=headers)
    assert (response.status_code, response.json()["code"]) == (401, "INVALID_API_KEY")


async def test_keys_are_stored_as_sha256_digests_only(api: Api):
    key = await api.key("cards:read")
    rows = api.sql("SELECT key_hash FROM api_keys")
    assert key.startswith("tpk_")
    assert len(key) >= 40
    assert all(len(bytes(row[0])) == 32 for row in rows)
    assert key not in str(api.sql("SELECT * FROM api_keys"))


async def test_health_and_readiness_need_no_key(api: Api):
    async with api.client() as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok", "tome_breaker": "closed"}
