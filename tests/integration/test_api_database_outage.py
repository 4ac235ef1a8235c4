"""Database unavailable: requests fail fast with 503, /readyz turns false, and the service recovers alone.

The outage: ``ALTER DATABASE ... ALLOW_CONNECTIONS false`` plus ``pg_terminate_backend`` of its sessions,
so both existing and new connections fail, as when the server goes away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tests.integration.api_harness import POOL, Api, running_api

BOUND_S = 1.5  # service_db_timeout_s in these tests: no request may wait on the database longer
RECOVERY_TIMEOUT_S = 20.0


@contextmanager
def database_down(pg_server_url: str, database_url: str) -> Iterator[None]:
    name = conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


async def _until_a_statement_waits_on_a_lock(database_url: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(database_url, autocommit=True) as conn:
        while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                               "AND datname = current_database()").fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "no statement ever waited on the lock"
            await asyncio.sleep(0.05)


async def _wait_ready(api: Api) -> float:
    started = time.monotonic()
    async with api.client() as client:
        while time.monotonic() - started < RECOVERY_TIMEOUT_S:
            if (await client.get("/readyz")).status_code == 200:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
    raise AssertionError("the service did not become ready again")


async def test_requests_fail_fast_with_503_while_the_database_is_down_and_recover_without_restart(
    database_url, pg_server_url, tome
):
    async with running_api(database_url, tome, service_db_timeout_s=BOUND_S, db_acquire_timeout_s=1.0,
                           service_api_key_cache_ttl_s=60.0) as api:
        await api.seed(10)
        headers = await api.headers("cards:write", "tokens:detokenize")
        body = {"program": POOL, "customer_ref": "c"}
        async with api.client() as client:
            assert (await client.post("/v1/cards", json=body, headers=headers)).status_code == 201

            with database_down(pg_server_url, database_url):
                timings = []
                for path, payload in [("/v1/cards", body), ("/v1/detokenize", {"external_refs": ["ext_a"]})] * 2:
                    started = time.monotonic()
                    response = await client.post(path, json=payload, headers=headers)
                    timings.append(time.monotonic() - started)
                    assert response.status_code == 503, response.text
                    assert response.json()["code"] == "DATABASE_UNAVAILABLE"
                    assert response.headers["Retry-After"]
                started = time.monotonic()
                ready = await client.get("/readyz")
                ready_s = time.monotonic() - started
                health = await client.get("/healthz")

            assert max(timings) < BOUND_S + 0.5, timings
            assert (ready.status_code, ready.json()["database"]) == (503, "unavailable")
            assert ready_s < 1.5
            assert health.status_code == 200

            recovered_s = await _wait_ready(api)
            print(f"\nworst 503 while down: {max(timings):.2f} s; ready again {recovered_s:.2f} s after the outage")
            response = await client.post("/v1/cards", json=body, headers=headers)
            assert response.status_code == 201, response.text
    assert api.sql("SELECT count(*) FROM cards") == [(2,)]


async def test_the_service_starts_while_the_database_is_down_and_serves_once_it_returns(
    database_url, pg_server_url, tome
):
    with database_down(pg_server_url, database_url):
        cm = running_api(database_url, tome, service_db_timeout_s=BOUND_S, db_acquire_timeout_s=1.0)
        api = await cm.__aenter__()
        try:
            async with api.client() as client:
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/readyz")).status_code == 503
        except BaseException:
            await cm.__aexit__(None, None, None)
            raise
    try:
        await _wait_ready(api)
        await api.seed(1)
        async with api.client() as client:
            response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                                         headers=await api.headers("cards:write"))
        assert response.status_code == 201, response.text
    finally:
        await cm.__aexit__(None, None, None)


async def test_an_overloaded_service_answers_service_busy_not_database_unavailable_and_stays_ready(
    database_url, tome
):
    # One connection; a table lock makes the first card hold it; the second waits for the pool in vain.
    async with running_api(database_url, tome, db_pool_min_size=1, db_pool_max_size=1, db_acquire_timeout_s=0.5,
                           service_db_timeout_s=4.0, service_api_key_cache_ttl_s=60.0) as api:
        await api.seed(10)
        headers = await api.headers("cards:write")
        body = {"program": POOL, "customer_ref": "c"}
        async with api.client() as client:
            assert (await client.post("/v1/cards", json=body, headers=headers)).status_code == 201
            with psycopg.connect(api.admin_database_url) as blocker:  # the owner: the app role may not lock it
                blocker.execute("LOCK TABLE token_pool IN ACCESS EXCLUSIVE MODE")
                holding = asyncio.create_task(client.post("/v1/cards", json=body, headers=headers))
                await _until_a_statement_waits_on_a_lock(database_url)  # it holds the only connection now
                busy = await client.post("/v1/cards", json=body, headers=headers)
                ready = await client.get("/readyz")
                blocker.rollback()
            held = await holding
    assert (busy.status_code, busy.json()["code"]) == (503, "SERVICE_BUSY"), busy.text
    assert busy.headers["Retry-After"]
    assert ready.status_code == 200, ready.text  # the database answers: this process is busy, not cut off
    assert held.status_code == 201, held.text
    assert api.sql("SELECT count(*) FROM cards") == [(2,)]
