"""Problem responses, exercised in-process on a minimal app (no network, no database)."""

import httpx
from fastapi import FastAPI

from tokenpool.service.middleware import BodyLimitMiddleware, RequestContextMiddleware
from tokenpool.service.problems import ProblemError, install_problem_handlers
from tokenpool.service.schemas import CreateCardRequest, DetokenizeRequest


def _app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app, max_refs=1000)
    app.add_middleware(BodyLimitMiddleware, max_bytes=2048)
    app.add_middleware(RequestContextMiddleware)

    @app.post("/cards")
    async def cards(body: CreateCardRequest) -> dict[str, str]:
        return {"ok": body.program}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, int]:
        return {"n": len(body.external_refs)}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("4000123412341234 leaked?")

    @app.get("/problem")
    async def problem() -> None:
        raise ProblemError(409, "SOME_CONFLICT", "explained", headers={"X-Extra": "1"})

    return app


def _client(app: FastAPI | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app or _app(), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://service")


def _problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["correlation_id"] == response.headers["X-Correlation-ID"]
    assert body["type"].endswith(code.lower().replace("_", "-"))
    return body


async def test_an_unexpected_error_is_a_500_problem_that_reveals_nothing():
    client = _client()
    body = _problem(await client.get("/boom"), 500, "INTERNAL_ERROR")
    assert "4000" not in str(body)


async def test_a_raised_problem_keeps_its_status_code_and_headers():
    client = _client()
    response = await client.get("/problem")
    _problem(response, 409, "SOME_CONFLICT")
    assert response.headers["X-Extra"] == "1"


async def test_unknown_fields_and_wrong_types_are_validation_errors():
    client = _client()
    response = await client.post("/cards", json={"program": "p", "customer_ref": "c", "x": 1})
    body = _problem(response, 422, "VALIDATION_ERROR")
    assert body["errors"][0]["loc"] == ["body", "x"]
    _problem(await client.post("/cards", json={"program": 7, "customer_ref": "c"}), 422, "VALIDATION_ERROR")


async def test_malformed_json_is_a_400():
    client = _client()
    response = await client.post("/cards", content=b"{", headers={"Content-Type": "application/json"})
    _problem(response, 400, "MALFORMED_JSON")


async def test_too_many_refs_has_its_own_code_and_a_big_body_is_a_413():
    client = _client()
    _problem(await client.post("/detokenize", json={"external_refs": ["e"] * 10_001}), 413, "BODY_TOO_LARGE")
    small = _client(_app_with_big_limit())
    _problem(await small.post("/detokenize", json={"external_refs": ["e"] * 10_001}), 422, "TOO_MANY_REFS")


def _app_with_big_limit() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app, max_refs=1000)
    app.add_middleware(RequestContextMiddleware)

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, int]:
        return {"n": len(body.external_refs)}

    return app


async def test_not_found_and_method_not_allowed_are_problems():
    client = _client()
    _problem(await client.get("/nowhere"), 404, "NOT_FOUND")
    _problem(await client.get("/cards"), 405, "METHOD_NOT_ALLOWED")
