"""The OpenAPI document and the documentation pages, in-process (no database: neither needs the lifespan)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tokenpool.service.app import create_app
from tokenpool.settings import Settings

OPERATION_IDS = {
    ("post", "/v1/cards"): "createCard",
    ("get", "/v1/cards/{card_id}"): "getCard",
    ("post", "/v1/detokenize"): "detokenize",
    ("post", "/v1/reservations"): "createReservation",
    ("post", "/v1/reservations/{reservation_id}/commit"): "commitReservation",
    ("post", "/v1/reservations/{reservation_id}/release"): "releaseReservation",
    ("get", "/v1/pools/{program}"): "getPool",
    ("get", "/healthz"): "getHealth",
    ("get", "/readyz"): "getReadiness",
    ("get", "/metrics"): "getMetrics",
}
PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


@pytest.fixture(scope="module")
def app():
    return create_app(Settings(service_max_detokenize_refs=250), database_url="postgresql://unused",
                      tome_factory=None)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def document(app) -> dict[str, Any]:
    return app.openapi()


def _operations(document: dict[str, Any]):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method, path, operation


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _strings(document: dict[str, Any], schema: dict[str, Any], where: str):
    """Every string schema inside ``schema``, with where it is."""
    schema = _resolve(document, schema)
    if schema.get("type") == "string":
        yield where, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _strings(document, sub, f"{where}.{name}")
    if "items" in schema:
        yield from _strings(document, schema["items"], f"{where}[]")
    for sub in schema.get("anyOf", []) + schema.get("allOf", []) + schema.get("oneOf", []):
        yield from _strings(document, sub, where)


def test_every_operation_has_its_camel_case_operation_id(document):
    found = {(method, path): operation.get("operationId") for method, path, operation in _operations(document)}
    assert found == OPERATION_IDS


def test_every_string_a_request_carries_is_bounded_and_has_a_pattern(document):
    checked = []
    for method, path, operation in _operations(document):
        sources = [(f"{method} {path} {p['in']} {p['name']}", p["schema"]) for p in operation.get("parameters", [])]
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if body:
            sources.append((f"{method} {path} body", body["schema"]))
        for where, schema in sources:
            for string_where, string in _strings(document, schema, where):
                checked.append(string_where)
                assert {"minLength", "maxLength", "pattern"} <= set(string), (string_where, string)
                assert string["minLength"] >= 1, string_where
                assert string["maxLength"] <= 256, string_where
    assert len(checked) == 10, checked  # card_id, reservation_id x2, program x3, customer_ref, refs, card_ref, key
    assert "post /v1/cards header Idempotency-Key" in checked


def test_free_text_excludes_control_characters_in_its_pattern(document):
    customer_ref = document["components"]["schemas"]["CreateCardRequest"]["properties"]["customer_ref"]
    pattern = re.compile(customer_ref["pattern"])
    for char in ("\x00", "\x1f", "\x7f", "\x85", "\x9f", "\u2028", "\u2029"):
        assert not pattern.match(f"a{char}b"), repr(char)
    for text in ("Zoë", "東京", "😀", "a b"):
        assert pattern.match(text)


def test_the_detokenize_limit_is_the_configured_one(document):
    refs = document["components"]["schemas"]["DetokenizeRequest"]["properties"]["external_refs"]
    assert refs["maxItems"] == 250


def test_every_problem_response_is_documented_with_the_problem_schema(document):
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        assert not {"4XX", "5XX", "default"} & set(responses), (method, path)
        for status, response in responses.items():
            if int(status) >= 400:
                assert response["content"] == PROBLEM, (method, path, status)
        if operation.get("security"):
            assert {"401", "403", "500", "503"} <= set(responses), (method, path)
            assert "WWW-Authenticate" in responses["401"]["headers"]
        if "requestBody" in operation:
            assert {"400", "413", "422"} <= set(responses), (method, path)
        if "parameters" in operation:
            assert "422" in responses, (method, path)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    detokenize = document["paths"]["/v1/detokenize"]["post"]["responses"]
    assert "TOO_MANY_REFS" in detokenize["422"]["description"]
    assert "INVALID_CHARACTERS" in detokenize["422"]["description"]
    assert "Retry-After" in detokenize["503"]["headers"]
    cards = document["paths"]["/v1/cards"]["post"]["responses"]
    assert "IDEMPOTENCY_KEY_REUSED" in cards["422"]["description"]
    assert "INVALID_IDEMPOTENCY_KEY" in cards["400"]["description"]
    assert set(document["components"]["schemas"]["Problem"]["required"]) == {
        "type", "title", "status", "detail", "code", "correlation_id"}


def test_links_chain_the_operations(document):
    def links(path: str, method: str, status: str) -> dict[str, str]:
        found = document["paths"][path][method]["responses"][status]["links"]
        return {name: link["operationId"] for name, link in found.items()}

    assert links("/v1/cards", "post", "201") == {"GetCard": "getCard", "Detokenize": "detokenize",
                                                "GetPool": "getPool"}
    assert links("/v1/reservations", "post", "201") == {"CommitReservation": "commitReservation",
                                                       "ReleaseReservation": "releaseReservation"}
    known = set(OPERATION_IDS.values())
    for _method, _path, operation in _operations(document):
        for response in operation["responses"].values():
            for link in response.get("links", {}).values():
                assert link["operationId"] in known


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_documentation_pages_load_everything_from_the_app(app, page):
    """No CDN: every script, style sheet and icon a page names is on this origin, and answers 200."""
    origin = "http://service"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=origin) as client:
        html = await client.get(page)
        assert html.status_code == 200
        references = re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""", html.text)
        urls = {urljoin(origin + page, next(filter(None, groups))) for groups in references}
        assert len(urls) >= 2, urls
        assert "http://" not in html.text.replace(origin, "")
        assert "https://" not in html.text
        for url in urls:
            assert urlsplit(url).netloc == "service", url
            response = await client.get(url)
            assert response.status_code == 200, url
            assert len(response.content) > 0
