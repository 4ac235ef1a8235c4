"""The end-to-end harness's pure parts: the request mix and the TOME rate series."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
from bench.e2e import day_events, tome_series
from bench.load_driver import Recent, Sample, TomeDetokenize, run_schedule, tome_by_operation


def test_the_day_mixes_one_detokenize_and_one_read_per_four_cards() -> None:
    kinds = Counter(kind for _offset, kind in day_events(4_000, 1.0))
    assert kinds == {"card": 4_000, "detokenize": 1_000, "read": 1_000}


def test_the_tome_ledger_is_summed_per_operation_over_namespaces() -> None:
    stats = {"requests": {"NS1": {"issue": 3}, "NS2": {"tokenize": 3, "detokenize": 2}}}
    assert tome_by_operation(stats) == {"issue": 3, "tokenize": 3, "detokenize": 2}


def test_the_tome_rate_skips_samples_whose_ledger_read_failed() -> None:
    samples = [
        Sample(0.0, {"issue": 10}, 100, 1.0),
        Sample(1.0, {}, 100, 1.0),  # the ledger did not answer
        Sample(2.0, {"issue": 20, "tokenize": 10}, 90, 1.0),
    ]
    ((t, rate),) = tome_series(samples)
    assert t == 2.0
    assert rate == pytest.approx(10.0)


def _recording_client(base_url: str, seen: list[tuple[str, str, object]]) -> httpx.AsyncClient:
    """A client whose every request is recorded and answered in memory (no I/O)."""

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.url.host, request.url.path, body))
        if request.url.path.endswith("/detokenize") and isinstance(body, dict) and "tokens" in body:
            return httpx.Response(200, json={"values": [f"value-of-{t}" for t in body["tokens"]]})
        return httpx.Response(200, json={"values": []})

    return httpx.AsyncClient(base_url=base_url, transport=httpx.MockTransport(answer))


async def test_the_baseline_detokenize_is_one_ns2_call_to_tome_not_a_service_request() -> None:
    seen: list[tuple[str, str, object]] = []
    recent = Recent()
    recent.cards.extend((f"card-{i}", f"ref-{i}") for i in range(7))
    async with _recording_client("http://service", seen) as service, _recording_client("http://tome", seen) as tome:
        outcomes = await run_schedule(
            service, [(0.0, "detokenize"), (0.0, "detokenize")], max_in_flight=4, recent=recent,
            tome=TomeDetokenize(tome, "NS2"),
        )
    assert [(o.kind, o.status) for o in outcomes] == [("detokenize", 200)] * 2
    assert seen == [("tome", "/v1/namespaces/NS2/detokenize", {"tokens": [f"ref-{i}" for i in range(2, 7)]})] * 2


async def test_without_the_baseline_detokenize_goes_to_the_service() -> None:
    seen: list[tuple[str, str, object]] = []
    recent = Recent()
    recent.cards.append(("card-0", "ref-0"))
    async with _recording_client("http://service", seen) as service:
        await run_schedule(service, [(0.0, "detokenize")], max_in_flight=4, recent=recent)
    assert seen == [("service", "/v1/detokenize", {"external_refs": ["ref-0"]})]
