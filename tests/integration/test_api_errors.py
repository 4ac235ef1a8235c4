"""Bad input of every kind is a 4xx problem+json, never a 500."""

from __future__ import annotations

import json
import random
import uuid

import pytest

from tests.integration import api_harness
from tests.integration.api_harness import POOL, Api

ENDPOINTS = [
    ("POST", "/v1/cards"),
    ("POST", "/v1/detokenize"),
    ("POST", "/v1/reservations"),
    ("POST", f"/v1/reservations/{uuid.uuid4()}/commit"),
]

BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("truncated json", b'{"program": ', "application/json"),
    ("not json", b"program=default", "application/json"),
    ("empty", b"", "application/json"),
    ("array", b"[]", "application/json"),
    ("string", b'"default"', "application/json"),
    ("null", b"null", "application/json"),
    ("number", b"123", "application/json"),
    ("wrong types", b'{"program": 1, "customer_ref": [], "external_refs": "x", "card_ref": {}}', "application/json"),
    ("unknown field", b'{"program": "default", "customer_ref": "c", "external_refs": ["e"], "card_ref": "c",'
                      b' "surprise": 1}', "application/json"),
    ("nan", b'{"program": NaN, "customer_ref": NaN, "external_refs": [NaN], "card_ref": NaN}', "application/json"),
    ("invalid utf-8", b'{"program": "\xff\xfe"}', "application/json"),
    ("deep nesting", b"[" * 50_000 + b"]" * 50_000, "application/json"),
    ("text/plain", b'{"program": "default"}', "text/plain"),
    ("long strings", json.dumps({"program": "p" * 5000, "customer_ref": "c" * 5000, "external_refs": ["e" * 5000],
                                 "card_ref": "c" * 5000}).encode(), "application/json"),
    ("bad program", b'{"program": "../etc", "customer_ref": "c"}', "application/json"),
    ("empty refs", b'{"external_refs": []}', "application/json"),
]

api = api_harness.api  # the fixture: a running service with its own database



JSON = {"Content-Type": "application/json"}


def _assert_problem(response, allowed=range(400, 500)) -> None:
    assert response.status_code in allowed, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "code", "correlation_id"} <= set(body)
    assert body["status"] == response.status_code
    assert body["correlation_id"] == response.headers["X-Correlation-ID"]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS, ids=[p for _, p in ENDPOINTS])
async def test_bad_bodies_are_4xx_problems(api: Api, method, path):
    headers = await api.headers()
    async with api.client() as client:
        for _name, content, content_type in BAD_BODIES:
            response = await client.request(method, path, content=content,
                                            headers={**headers, "Content-Type": content_type})
            _assert_problem(response)


@pytest.mark.parametrize(("method", "path"), ENDPOINTS, ids=[p for _, p in ENDPOINTS])
async def test_random_json_values_never_cause_a_500(api: Api, method, path):
    rng = random.Random(f"{path}-fuzz")  # seeded: the same cases every run
    headers = await api.headers()
    fields = ["program", "customer_ref", "external_refs", "card_ref", "", "x" * 40]
    async with api.client() as client:
        for _ in range(40):
            body = {rng.choice(fields): _random_json(rng, 3) for _ in range(rng.randint(0, 4))}
            response = await client.request(method, path, json=body, headers=headers)
            if response.status_code >= 400:
                _assert_problem(response, allowed=[*range(400, 500), 503])
            assert response.status_code < 500 or response.status_code == 503


def _random_json(rng: random.Random, depth: int) -> object:
    kind = rng.randrange(8 if depth > 0 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, 1.5, 1e308])
    if kind == 3:
        return rng.choice(["", POOL, "ext_" + "a" * 26, "\u0000", "é" * 3, "x" * 300, "'; DROP TABLE cards; --"])
    if kind == 4:
        return [POOL] * rng.randint(0, 3)
    if kind == 5:
        return "default"
    if kind == 6:
        return [_random_json(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {str(rng.randint(0, 9)): _random_json(rng, depth - 1) for _ in range(rng.randint(0, 3))}


async def test_an_oversize_body_is_a_413_problem(api: Api):
    big = json.dumps({"external_refs": ["e" * 200] * 5_000}).encode()  # > 512 KiB
    async with api.client() as client:
        response = await client.post("/v1/detokenize", content=big,
                                     headers=await api.headers("tokens:detokenize", **JSON))
    _assert_problem(response, allowed=[413])
    assert response.json()["code"] == "BODY_TOO_LARGE"


async def test_unknown_paths_and_wrong_methods_are_problems(api: Api):
    async with api.client() as client:
        missing = await client.get("/v1/nothing-here")
        wrong_method = await client.get("/v1/detokenize")
        delete = await client.delete("/v1/cards")
    _assert_problem(missing, allowed=[404])
    _assert_problem(wrong_method, allowed=[405])
    _assert_problem(delete, allowed=[405])
    assert (missing.json()["code"], wrong_method.json()["code"]) == ("NOT_FOUND", "METHOD_NOT_ALLOWED")


async def test_malformed_json_has_its_own_code(api: Api):
    async with api.client() as client:
        response = await client.post("/v1/cards", content=b'{"program":', headers=await api.headers(
            "cards:write", **{"Content-Type": "application/json"}))
    assert (response.status_code, response.json()["code"]) == (400, "MALFORMED_JSON")


async def test_validation_problems_never_echo_the_input(api: Api):
    secret = "4000123412341234"
    async with api.client() as client:
        response = await client.post("/v1/detokenize", json={"external_refs": [secret], "oops": secret},
                                     headers=await api.headers("tokens:detokenize"))
    assert response.status_code == 422
    assert secret not in response.text


async def test_a_chunked_body_over_the_limit_is_a_413_problem(api: Api):
    async def chunks():
        for _ in range(600):
            yield b"x" * 1024

    async with api.client() as client:
        response = await client.post("/v1/detokenize", content=chunks(),
                                     headers=await api.headers("tokens:detokenize", **JSON))
    assert "content-length" not in response.request.headers
    _assert_problem(response, allowed=[413])
