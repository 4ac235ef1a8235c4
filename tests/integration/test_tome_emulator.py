"""The emulator's HTTP contract, spoken to directly over HTTP (no tokenpool client in the way)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.fixtures.tome import TomeEmulator
from tokenpool.tome.contract import is_external_ref, is_internal_token


def new_ns() -> str:
    return f"T{uuid.uuid4().hex[:10]}"


@pytest.fixture
def http(tome: TomeEmulator) -> httpx.Client:
    with httpx.Client(base_url=tome.url, timeout=5) as client:
        yield client  # type: ignore[misc]


def test_the_emulator_serves_its_openapi_with_the_contract_paths(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/namespaces/{ns}/tokens:issue",
        "/v1/namespaces/{ns}/tokenize",
        "/v1/namespaces/{ns}/detokenize",
        "/_admin/faults",
        "/_admin/stats",
        "/_admin/issued",
    ):
        assert path in paths


def test_every_response_echoes_the_correlation_id_or_makes_one(http: httpx.Client, tome: TomeEmulator) -> None:
    ns = new_ns()
    sent = {"X-Correlation-ID": "cid-42"}
    assert (
        http.post(f"/v1/namespaces/{ns}/tokenize", json={"values": ["a"]}, headers=sent).headers["X-Correlation-ID"]
        == "cid-42"
    )
    assert http.post(f"/v1/namespaces/{ns}/tokenize", json={}, headers=sent).headers["X-Correlation-ID"] == "cid-42"
    tome.set_faults(outage=True)
    assert (
        http.post(f"/v1/namespaces/{ns}/detokenize", json={"tokens": ["x"]}, headers=sent).headers["X-Correlation-ID"]
        == "cid-42"
    )
    assert len(http.get("/_admin/faults").headers["X-Correlation-ID"]) == 32


def test_the_three_operations_answer_in_the_documented_formats(http: httpx.Client) -> None:
    ns1, ns2 = new_ns(), new_ns()
    issued = http.post(f"/v1/namespaces/{ns1}/tokens:issue", json={"count": 5}).json()["tokens"]
    assert len(issued) == 5
    assert all(is_internal_token(t) for t in issued)
    refs = http.post(f"/v1/namespaces/{ns2}/tokenize", json={"values": issued}).json()["tokens"]
    assert all(is_external_ref(r) for r in refs)
    again = http.post(f"/v1/namespaces/{ns2}/tokenize", json={"values": issued[::-1]}).json()["tokens"]
    assert again == refs[::-1]
    values = http.post(f"/v1/namespaces/{ns2}/detokenize", json={"tokens": [*refs, "ext_nope"]}).json()["values"]
    assert values == [*issued, None]


def test_an_idempotency_key_replays_the_issue_and_issues_nothing_new(http: httpx.Client, tome: TomeEmulator) -> None:
    ns = new_ns()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = http.post(f"/v1/namespaces/{ns}/tokens:issue", json={"count": 4}, headers=key).json()
    second = http.post(f"/v1/namespaces/{ns}/tokens:issue", json={"count": 4}, headers=key).json()
    assert first == second
    assert tome.issued(ns) == first["tokens"]
    mismatch = http.post(f"/v1/namespaces/{ns}/tokens:issue", json={"count": 3}, headers=key)
    assert mismatch.status_code == 422
    assert mismatch.json()["code"] == "idempotency_key_mismatch"
    assert tome.stats()["idempotent_replays"][ns] == {"issue": 1}


def test_a_batch_over_the_limit_is_a_413_problem_with_a_clear_code(http: httpx.Client, tome: TomeEmulator) -> None:
    ns = new_ns()
    response = http.post(f"/v1/namespaces/{ns}/tokenize", json={"values": [str(i) for i in range(2_501)]})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "batch_too_large"
    assert "2500" in problem["detail"]
    assert set(problem) == {"type", "title", "status", "detail", "code"}
    tome.set_faults(max_batch=10)
    assert http.post(f"/v1/namespaces/{ns}/tokens:issue", json={"count": 11}).status_code == 413
    assert tome.requests(ns, "tokenize") == 1
    assert tome.issued(ns) == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("tokens:issue", {"count": 0}),
        ("tokens:issue", {"count": "3"}),
        ("tokenize", {"values": []}),
        ("tokenize", {"values": [""]}),
        ("detokenize", {"tokens": "ext_a"}),
    ],
)
def test_invalid_requests_are_400_problems_and_still_counted(
    http: httpx.Client, tome: TomeEmulator, path: str, body: dict[str, object]
) -> None:
    ns = new_ns()
    response = http.post(f"/v1/namespaces/{ns}/{path}", json=body)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    operation = {"tokens:issue": "issue"}.get(path, path)
    assert tome.stats()["statuses"][ns][operation] == {"400": 1}


def test_faults_change_at_run_time_and_omitted_fields_keep_their_value(tome: TomeEmulator) -> None:
    tome.set_faults(latency_ms=5, error_rate=0.25)
    faults = tome.set_faults(outage=True)
    assert faults["latency_ms"] == 5
    assert faults["error_rate"] == 0.25
    assert faults["outage"] is True
    assert tome.faults() == faults
    assert set(faults) >= {"latency_ms", "jitter_ms", "rate_limit_rps", "error_rate", "outage", "slow_ms"}
    with pytest.raises(httpx.HTTPStatusError):
        tome.set_faults(error_rate=2)


def test_the_ledger_counts_requests_that_faults_refused(http: httpx.Client, tome: TomeEmulator) -> None:
    ns = new_ns()
    tome.set_faults(outage=True)
    for _ in range(3):
        response = http.post(f"/v1/namespaces/{ns}/tokenize", json={"values": ["a", "b"]})
        assert response.status_code == 503
        assert response.json()["code"] == "outage"
    stats = tome.stats()
    assert stats["requests"][ns] == {"tokenize": 3}
    assert stats["items"][ns] == {"tokenize": 6}
    assert stats["statuses"][ns] == {"tokenize": {"503": 3}}
    assert stats["faults"][ns] == {"tokenize": {"outage": 3}}


def test_the_issued_listing_pages_through_every_issued_token(http: httpx.Client, tome: TomeEmulator) -> None:
    ns = new_ns()
    tokens = http.post(f"/v1/namespaces/{ns}/tokens:issue", json={"count": 25}).json()["tokens"]
    first = http.get("/_admin/issued", params={"ns": ns, "limit": 10}).json()
    assert first["tokens"] == tokens[:10]
    assert first["next_cursor"] is not None
    assert tome.issued(ns, page_size=7) == tokens
    assert http.get("/_admin/issued", params={"ns": ns, "cursor": "abc"}).status_code == 400
