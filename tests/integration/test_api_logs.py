"""The service as deployed (its ASGI entry point under uvicorn, in its own process) never logs a whole token."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.database import register_program
from tests.fixtures.tome import free_port
from tokenpool.pool.synthetic import synthetic_pairs

POOL = "default"


@pytest.fixture
def service_process(database_url: str, tome, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log_path = tmp_path / "service.log"
    env = {
        **os.environ,
        "TOKENPOOL_DATABASE_URL": database_url,
        "TOKENPOOL_TOME_URL": tome.url,
        "TOKENPOOL_LOG_LEVEL": "DEBUG",
        "TOKENPOOL_SERVICE_API_KEY_CACHE_TTL_S": "0",
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", "tokenpool.entrypoints.api:create_app_from_env",
               "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"service did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        yield url, log_path
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_a_log_capture_of_a_busy_service_contains_no_whole_token(service_process, store, api_key_pool,
                                                                        database_url):
    url, log_path = service_process
    register_program(database_url, "elsewhere")
    pairs = synthetic_pairs(20)
    await store.add_pairs(POOL, pairs, uuid.uuid4())
    _, key = await api_key_pool.create("log-test", ["cards:write", "cards:read", "tokens:detokenize",
                                                    "reservations:write", "pools:read"])
    auth = {"Authorization": f"Bearer {key}"}
    secrets: set[str] = {key}
    secrets |= {p.internal_token for p in pairs} | {p.external_ref for p in pairs}

    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        cards = [(await client.post("/v1/cards", json={"program": POOL, "customer_ref": f"c{i}"}, headers=auth)).json()
                 for i in range(3)]
        cards.append((await client.post("/v1/cards", json={"program": "elsewhere", "customer_ref": "t"},
                                         headers=auth)).json())  # empty pool: TOME
        refs = [c["external_ref"] for c in cards] + [pairs[-1].external_ref, "ext_" + "Z" * 26]
        detokenized = await client.post("/v1/detokenize", json={"external_refs": refs}, headers=auth)
        reservation = (await client.post("/v1/reservations", json={"program": POOL}, headers=auth)).json()
        await client.post(f"/v1/reservations/{reservation['reservation_id']}/commit", json={"card_ref": "x"},
                          headers=auth)
        # Errors whose bodies carry tokens: none may be echoed into a log line.
        await client.post("/v1/detokenize", headers=auth,
                          json={"external_refs": [pairs[0].external_ref], "bad": pairs[0].internal_token})
        await client.post("/v1/cards", content=json.dumps({"program": pairs[1].internal_token}), headers=auth)
        await client.get(f"/v1/cards/{pairs[2].internal_token}", headers=auth)
        await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                          headers={"Authorization": f"Bearer {pairs[3].internal_token}"})

    assert detokenized.status_code == 200
    assert cards[-1]["token_source"] == "tome"
    for card in cards:
        secrets |= {card["internal_token"], card["external_ref"]}
    secrets |= {reservation["internal_token"], reservation["external_ref"]}

    await asyncio.sleep(0.2)  # let the last lines reach the file
    log = log_path.read_text()
    lines = [line for line in log.splitlines() if line.startswith("{")]
    assert len(lines) >= 10, log[-2000:]
    assert any('"event": "card.created"' in line for line in lines)
    assert any('"event": "detokenize.done"' in line for line in lines)
    assert all(json.loads(line)["correlation_id"] for line in lines if '"http.request"' in line)
    assert any('"api_key_name": "log-test"' in line for line in lines), "lines name the key (not the key itself)"
    leaked = sorted(secret for secret in secrets if secret in log)
    assert leaked == [], f"whole tokens in the log: {leaked}"


@pytest.fixture
async def api_key_pool(db):
    from tokenpool.service.auth import ApiKeys

    return ApiKeys(db)
