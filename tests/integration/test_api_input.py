"""Control characters in any string of a request: 422 INVALID_CHARACTERS naming the field, nothing written,
the connection still usable. Also the reproducers of what Schemathesis found (tests/fuzz).

All of it over real TCP (uvicorn in a thread, api_harness): the keep-alive behaviour is the server's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration import api_harness
from tests.integration.api_harness import POOL, Api, ThreadedServer

api = api_harness.api  # the fixture: a running service with its own database

# Every kind the API refuses, by name (the ids of failures). Lone surrogates cannot be sent with json=
# (httpx would fail to encode them): see test_lone_surrogates_are_refused_in_every_body_field.
REFUSED = {
    "NUL": "\x00", "SOH": "\x01", "tab": "\t", "LF": "\n", "CR": "\r", "US": "\x1f", "DEL": "\x7f",
    "PAD (C1)": "\x80", "NEL (C1)": "\x85", "APC (C1)": "\x9f",
    "line separator": "\u2028", "paragraph separator": "\u2029",
}
ACCEPTED = ["Zoë", "東京", "😀", "a\u00a0b", "x" * 3, "'; DROP TABLE cards; --", "\u200b"]

RESERVATION = str(uuid.uuid4())
# (method, path, the body around one string, the field the problem names)
BODY_FIELDS: list[tuple[str, str, Callable[[str], dict[str, Any]], str]] = [
    ("POST", "/v1/cards", lambda s: {"program": POOL, "customer_ref": f"a{s}b"}, "customer_ref"),
    ("POST", "/v1/cards", lambda s: {"program": f"a{s}b", "customer_ref": "c"}, "program"),
    ("POST", "/v1/detokenize", lambda s: {"external_refs": ["ext_ok", f"a{s}b"]}, "external_refs[1]"),
    ("POST", "/v1/reservations", lambda s: {"program": f"{s}"}, "program"),
    ("POST", f"/v1/reservations/{RESERVATION}/commit", lambda s: {"card_ref": f"card{s}"}, "card_ref"),
]
FIELD_IDS = [f"{path.split('/')[2]}.{field}" for _m, path, _b, field in BODY_FIELDS]

# Percent-encoded in a path: a C0 control, DEL, a C1 control (UTF-8 C2 85), the line separator (E2 80 A8).
PATH_ENCODINGS = {"NUL": "%00", "SOH": "%01", "tab": "%09", "DEL": "%7F", "NEL (C1)": "%C2%85",
                  "line separator": "%E2%80%A8"}
PATHS = [
    ("GET", "/v1/cards/{}", "card_id"),
    ("POST", "/v1/reservations/{}/commit", "reservation_id"),
    ("POST", "/v1/reservations/{}/release", "reservation_id"),
    ("GET", "/v1/pools/{}", "program"),
]


def _assert_invalid_characters(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, (field, response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "INVALID_CHARACTERS", body
    assert field in body["detail"], body["detail"]
    assert any(e["type"] == "invalid_characters" for e in body["errors"])


@pytest.mark.parametrize(("method", "path", "make_body", "field"), BODY_FIELDS, ids=FIELD_IDS)
async def test_control_characters_in_a_body_field_are_invalid_characters(api: Api, method, path, make_body, field):
    headers = await api.headers()
    async with api.client() as client:
        for name, char in REFUSED.items():
            body = make_body(char)
            # As UTF-8 (httpx's json=: only C0 escaped) and as \uXXXX escapes (json.dumps' default): both refused.
            for content in (json.dumps(body, ensure_ascii=False).encode(), json.dumps(body).encode()):
                response = await client.request(method, path, content=content,
                                                headers={**headers, "Content-Type": "application/json"})
                try:
                    _assert_invalid_characters(response, field)
                except AssertionError as error:
                    raise AssertionError(f"{name}: {error}") from None


@pytest.mark.parametrize(("method", "path", "make_body", "field"), BODY_FIELDS, ids=FIELD_IDS)
async def test_lone_surrogates_are_refused_in_every_body_field(api: Api, method, path, make_body, field):
    # JSON "\ud800" is a lone surrogate once decoded; it has no UTF-8 form. POST /v1/cards, which parses its
    # body itself, used to call it malformed JSON (400); every field now says INVALID_CHARACTERS.
    headers = {**await api.headers(), "Content-Type": "application/json"}
    async with api.client() as client:
        for escape in ("\\ud800", "\\udfff", "x\\udbff"):
            content = json.dumps(make_body("SURROGATE")).replace("SURROGATE", escape).encode()
            _assert_invalid_characters(await client.request(method, path, content=content, headers=headers), field)


async def test_nothing_is_written_for_a_refused_character(api: Api):
    await api.seed(2)
    headers = await api.headers()
    async with api.client() as client:
        for char in ("\x00", "\x85", "\u2028"):
            response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": f"c{char}"},
                                         headers=headers)
            _assert_invalid_characters(response, "customer_ref")
        reserved = await client.post("/v1/reservations", json={"program": POOL}, headers=headers)
        assert reserved.status_code == 201
        commit = await client.post(f"/v1/reservations/{reserved.json()['reservation_id']}/commit",
                                   json={"card_ref": "card\x00"}, headers=headers)
        _assert_invalid_characters(commit, "card_ref")
    assert api.sql("SELECT count(*) FROM cards") == [(0,)]
    assert sorted(api.sql("SELECT status FROM token_pool")) == [("AVAILABLE",), ("RESERVED",)]


async def test_unicode_text_is_accepted(api: Api):
    await api.seed(len(ACCEPTED))
    headers = await api.headers()
    async with api.client() as client:
        for text in ACCEPTED:
            created = await client.post("/v1/cards", json={"program": POOL, "customer_ref": text}, headers=headers)
            assert created.status_code == 201, (text, created.text)
            assert created.json()["customer_ref"] == text
        # An astral character sent as a surrogate pair escape is one character, not a lone surrogate.
        pair = await client.post("/v1/cards", content=b'{"program": "default", "customer_ref": "\\ud83d\\ude00"}',
                                 headers={**headers, "Content-Type": "application/json"})
        assert (pair.status_code, pair.json().get("customer_ref")) == (201, "😀")
        looked_up = await client.post("/v1/detokenize", json={"external_refs": ACCEPTED}, headers=headers)
    assert looked_up.status_code == 200, looked_up.text
    assert [r["internal_token"] for r in looked_up.json()["results"]] == [None] * len(ACCEPTED)


@pytest.mark.parametrize(("method", "template", "field"), PATHS, ids=[p[1] for p in PATHS])
async def test_control_characters_in_a_path_parameter_are_invalid_characters(api: Api, method, template, field):
    headers = await api.headers()
    async with api.client() as client:
        for name, encoded in PATH_ENCODINGS.items():
            body = {"card_ref": "c"} if template.endswith("commit") else None
            response = await client.request(method, template.format(f"a{encoded}b"), json=body, headers=headers)
            try:
                _assert_invalid_characters(response, field)
            except AssertionError as error:
                raise AssertionError(f"{name}: {error}") from None


async def test_path_parameters_are_bounded(api: Api):
    headers = await api.headers()
    async with api.client() as client:
        long_card = await client.get(f"/v1/cards/{'a' * 65}", headers=headers)
        malformed = await client.get("/v1/cards/not-a-uuid", headers=headers)
        long_pool = await client.get(f"/v1/pools/{'p' * 65}", headers=headers)
    assert (long_card.status_code, long_card.json()["code"]) == (422, "VALIDATION_ERROR")
    assert (malformed.status_code, malformed.json()["code"]) == (404, "CARD_NOT_FOUND")  # as documented
    assert (long_pool.status_code, long_pool.json()["code"]) == (422, "VALIDATION_ERROR")


async def test_control_characters_in_the_idempotency_key_are_invalid_characters(api: Api):
    await api.seed(1)
    headers = await api.headers("cards:write")
    body = {"program": POOL, "customer_ref": "c"}
    async with api.client() as client:
        # Header values arrive as Latin-1: 0x85 is the C1 control NEL. (NUL, CR and LF cannot be sent: the
        # HTTP server, h11, refuses such a request itself before the app sees it.)
        for raw in (b"key\x01", b"key\x1f", b"key\x7f", b"key\x85", b"key\x9f", b"key\tkey"):
            response = await client.post("/v1/cards", json=body, headers={**headers, "Idempotency-Key": raw})
            _assert_invalid_characters(response, "Idempotency-Key")
            assert response.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"]
        # Other invalid keys keep their own code: not control characters, just not visible ASCII.
        for raw in (b"key with spaces", "clé".encode("latin-1"), b"k" * 256):
            response = await client.post("/v1/cards", json=body, headers={**headers, "Idempotency-Key": raw})
            assert (response.status_code, response.json()["code"]) == (400, "INVALID_IDEMPOTENCY_KEY")
    assert api.sql("SELECT count(*) FROM cards") == [(0,)]


def _local_port(response: httpx.Response) -> int | None:
    """The client's own port of the connection that carried ``response`` (the same port, the same connection);
    None when the server already closed it."""
    try:
        return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])
    except OSError:
        return None


async def test_the_connection_stays_usable_after_a_refused_character(api: Api):
    await api.seed(2)
    headers = await api.headers()
    async with api.client(max_connections=1) as client:
        first = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "a\x00b"}, headers=headers)
        ports = [_local_port(first)]
        surrogate = await client.post("/v1/cards", content=b'{"program": "default", "customer_ref": "\\ud800"}',
                                      headers={**headers, "Content-Type": "application/json"})
        ports.append(_local_port(surrogate))
        path = await client.get("/v1/cards/a%00b", headers=headers)
        ports.append(_local_port(path))
        then = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "ab"}, headers=headers)
        ports.append(_local_port(then))
    for response in (first, surrogate):
        _assert_invalid_characters(response, "customer_ref")
    _assert_invalid_characters(path, "card_id")
    assert then.status_code == 201, then.text
    assert None not in ports, f"a connection was closed: {ports}"
    assert len(set(ports)) == 1, f"one keep-alive connection, not {ports}"


async def test_an_unexpected_error_is_a_500_problem_that_keeps_the_connection(api: Api):
    # Starlette's outermost handler answers an unexpected exception, then re-raises it, and uvicorn closes the
    # connection: a client's next request on it was reset. The request context middleware answers it now.
    server = ThreadedServer(api.server.settings)

    async def boom() -> None:
        raise RuntimeError("an unexpected bug")

    server.server.config.app.add_api_route("/boom", boom)
    server.start()
    try:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=api_harness.HTTP_TIMEOUT) as client:
            failed = await client.get("/boom")
            ports = [_local_port(failed)]
            then = await client.get("/healthz")
            ports.append(_local_port(then))
    finally:
        server.stop()
    assert failed.status_code == 500
    assert failed.headers["content-type"] == "application/problem+json"
    assert failed.json()["code"] == "INTERNAL_ERROR"
    assert "unexpected bug" not in failed.text
    assert failed.headers.get("connection") != "close"
    assert then.status_code == 200
    assert ports[0] is not None, "the connection was closed after the 500"
    assert ports[0] == ports[1], "the connection was closed after the 500"


# --- What Schemathesis found (tests/fuzz), each kept as a plain test ---------------------------------------

async def test_a_released_reservation_is_gone(api: Api):
    """A commit or release after a release answers 404 (Schemathesis' stateful phase: 'created resource not
    found'; documented: a released reservation no longer exists)."""
    await api.seed(1)
    headers = await api.headers("reservations:write")
    async with api.client() as client:
        reserved = (await client.post("/v1/reservations", json={"program": POOL}, headers=headers)).json()
        path = f"/v1/reservations/{reserved['reservation_id']}"
        released = await client.post(f"{path}/release", headers=headers)
        commit = await client.post(f"{path}/commit", json={"card_ref": "c"}, headers=headers)
        again = await client.post(f"{path}/release", headers=headers)
    assert released.status_code == 200
    assert (commit.status_code, commit.json()["code"]) == (404, "RESERVATION_NOT_FOUND")
    assert (again.status_code, again.json()["code"]) == (404, "RESERVATION_NOT_FOUND")


async def test_more_refs_than_the_limit_are_too_many_refs_and_the_document_says_so(api: Api):
    """Schemathesis sent more refs than the document's maxItems (then 10,000, the model's hard cap) and got a
    413 or a TOO_MANY_REFS it did not expect: the document now states the configured limit."""
    limit = api.server.settings.service_max_detokenize_refs
    async with api.client() as client:
        document = (await client.get("/openapi.json")).json()
        response = await client.post("/v1/detokenize", json={"external_refs": ["e"] * (limit + 1)},
                                     headers=await api.headers("tokens:detokenize"))
    refs = document["components"]["schemas"]["DetokenizeRequest"]["properties"]["external_refs"]
    assert refs["maxItems"] == limit
    assert (response.status_code, response.json()["code"]) == (422, "TOO_MANY_REFS")
