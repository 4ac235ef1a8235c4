"""Registered card programs: the service refuses unknown ones (no pool, no TOME call), uses each program's
TOME namespaces, detokenizes through every program's NS2; the app role only reads programs; the migration
registers the pools a deployment already has; `db upgrade` registers TOKENPOOL_DEFAULT_POOL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.factories import make_pairs
from tests.fixtures.database import register_program, with_database
from tests.integration import api_harness
from tests.integration.api_harness import Api, running_api
from tokenpool import bootstrap
from tokenpool.db import migrate
from tokenpool.service.state import Components
from tokenpool.settings import Settings

api = api_harness.api  # the fixture: a running service with its own database

PROGRAMS_MIGRATION = 10


def components(api: Api) -> Components:
    found: Components = api.server.app.state.components
    return found


def rows(api: Api, query: str, *params: object) -> list[tuple[object, ...]]:
    return api.sql(query, *params)


async def test_an_unregistered_program_is_refused_everywhere_with_no_pool_and_no_tome_call(api: Api):
    # The pools are empty: before programs were registered, each of these would have gone to TOME and left
    # a pool named "ghost" behind.
    ledger = api.tome.stats()["requests"]
    async with api.client() as client:
        card = await client.post("/v1/cards", json={"program": "ghost", "customer_ref": "c"},
                                 headers=await api.headers("cards:write", **{"Idempotency-Key": "k-1"}))
        reservation = await client.post("/v1/reservations", json={"program": "ghost"},
                                        headers=await api.headers("reservations:write"))
        pool = await client.get("/v1/pools/ghost", headers=await api.headers("pools:read"))

    for response in (card, reservation, pool):
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["code"] == "UNKNOWN_PROGRAM"
        assert body["type"].endswith("/unknown-program")
        assert "ghost" in body["detail"]
        assert body["correlation_id"] == response.headers["x-correlation-id"]
    assert api.tome.stats()["requests"] == ledger, "TOME was called"
    for table in ("token_pool", "token_pool_counts", "refill_batches", "pool_level_samples", "cards"):
        column = "program" if table == "cards" else "pool"
        assert rows(api, f"SELECT count(*) FROM {table} WHERE {column} = 'ghost'") == [(0,)], table
    assert rows(api, "SELECT count(*) FROM idempotency_keys") == [(0,)]


async def test_a_program_registered_while_the_service_runs_works_on_its_first_request(api: Api):
    async with api.client() as client:
        headers = await api.headers("cards:write")
        assert (await client.post("/v1/cards", json={"program": "default", "customer_ref": "c"},
                                  headers=headers)).status_code == 201  # the service has read its programs
        register_program(api.database_url, "fresh")
        card = await client.post("/v1/cards", json={"program": "fresh", "customer_ref": "c"}, headers=headers)
    assert card.status_code == 201, card.text
    assert (card.json()["program"], card.json()["token_source"]) == ("fresh", "tome")


async def test_a_flood_of_made_up_program_names_costs_a_few_reads_not_one_per_request(api: Api):
    catalog = components(api).programs
    async with api.client() as client:
        headers = await api.headers("cards:write")
        await client.post("/v1/cards", json={"program": "default", "customer_ref": "c"}, headers=headers)
        reads = catalog.reads
        started = asyncio.get_running_loop().time()
        responses = await asyncio.gather(*(
            client.post("/v1/cards", json={"program": f"fuzz-{i}", "customer_ref": "c"}, headers=headers)
            for i in range(300)))
        elapsed = asyncio.get_running_loop().time() - started
    assert {response.json()["code"] for response in responses} == {"UNKNOWN_PROGRAM"}
    # A burst of 5 rereads, then 2 per second (and one refresh per TTL).
    assert catalog.reads - reads <= 5 + 2 * elapsed + elapsed / 5 + 2
    assert rows(api, "SELECT count(*) FROM programs WHERE left(name, 5) = 'fuzz-'") == [(0,)]


async def test_the_tome_fallback_of_a_program_uses_its_own_namespaces(api: Api):
    tag = uuid.uuid4().hex[:8]
    ns1, ns2 = f"NS1-gold-{tag}", f"NS2-gold-{tag}"
    register_program(api.database_url, "gold", ns1=ns1, ns2=ns2)
    async with api.client() as client:
        card = (await client.post("/v1/cards", json={"program": "gold", "customer_ref": "c"},
                                  headers=await api.headers("cards:write"))).json()
        reservation = (await client.post("/v1/reservations", json={"program": "gold"},
                                         headers=await api.headers("reservations:write"))).json()
    assert (card["token_source"], reservation["token_source"]) == ("tome", "tome")
    assert sorted(api.tome.issued(ns1)) == sorted([card["internal_token"], reservation["internal_token"]])
    assert api.tome.items(ns2, "tokenize") == 2
    assert rows(api, "SELECT ns1, ns2 FROM refill_batches WHERE pool = 'gold'") == [(ns1, ns2), (ns1, ns2)]


async def test_detokenize_asks_each_programs_ns2_for_what_the_database_does_not_know(api: Api):
    tag = uuid.uuid4().hex[:8]
    ns1, ns2 = f"NS1-silver-{tag}", f"NS2-silver-{tag}"
    register_program(api.database_url, "silver", ns1=ns1, ns2=ns2)
    async with api.client() as client:  # a pair the silver namespaces know and the database does not
        token = (await client.post(f"{api.tome.url}/v1/namespaces/{ns1}/tokens:issue", json={"count": 1})
                 ).json()["tokens"][0]
        ref = (await client.post(f"{api.tome.url}/v1/namespaces/{ns2}/tokenize", json={"values": [token]})
               ).json()["tokens"][0]
        default_before = api.tome.requests("NS2", "detokenize")
        first = await client.post("/v1/detokenize", json={"external_refs": [ref, "ext_unknown"]},
                                  headers=await api.headers("tokens:detokenize"))
        second = await client.post("/v1/detokenize", json={"external_refs": [ref]},
                                   headers=await api.headers("tokens:detokenize"))
    assert [(r["internal_token"], r["source"]) for r in first.json()["results"]] == [(token, "tome"), (None, None)]
    assert first.json()["complete"] is True
    # The default program's NS2 first (both refs), then silver's for what it did not know (both again).
    assert api.tome.requests("NS2", "detokenize") == default_before + 1
    assert api.tome.requests(ns2, "detokenize") == 1
    assert api.tome.items(ns2, "detokenize") == 2
    assert [(r["internal_token"], r["source"]) for r in second.json()["results"]] == [(token, "db")]


async def test_a_removed_program_is_refused_within_the_ttl_and_its_cards_stay_readable(
    database_url, admin_database_url, tome
):
    async with running_api(database_url, tome, admin_database_url=admin_database_url,
                           service_programs_ttl_s=0.2) as api:
        register_program(api.database_url, "retiring")
        await api.seed(2, pool="retiring")
        async with api.client() as client:
            headers = await api.headers()
            card = (await client.post("/v1/cards", json={"program": "retiring", "customer_ref": "c"},
                                      headers=headers)).json()
            async with bootstrap.open_backend(admin_database_url, Settings()) as owner:
                await owner.programs.remove("retiring", force=True)
            await asyncio.sleep(0.5)
            refused = await client.post("/v1/cards", json={"program": "retiring", "customer_ref": "c"},
                                        headers=headers)
            read = await client.get(f"/v1/cards/{card['card_id']}", headers=headers)
            detokenized = await client.post("/v1/detokenize", json={"external_refs": [card["external_ref"]]},
                                            headers=headers)
            metrics = (await client.get("/metrics", headers=headers)).text
    assert (refused.status_code, refused.json()["code"]) == (422, "UNKNOWN_PROGRAM")
    assert (read.status_code, read.json()["program"]) == (200, "retiring")
    assert detokenized.json()["results"][0]["source"] == "db"
    assert 'tokenpool_pool_pairs{pool="retiring"' not in metrics


async def test_pool_gauges_show_registered_programs_only(api: Api):
    await api.seed(2)
    await api.store.add_pairs("leftover", make_pairs(2), uuid.uuid4())  # a pool of an unregistered name
    async with api.client() as client:
        text = (await client.get("/metrics", headers=await api.headers("metrics:read"))).text
    assert 'tokenpool_pool_pairs{pool="default",status="available"} 2.0' in text
    assert 'tokenpool_pool_pairs{pool="leftover"' not in text


def test_the_app_role_reads_programs_and_cannot_write_them(database_url, admin_database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT name FROM programs").fetchall() == [("default",)]
        for statement in ("INSERT INTO programs (name) VALUES ('mine')",
                          "UPDATE programs SET refill_target = 1",
                          "DELETE FROM programs"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(admin_database_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO programs (name) VALUES ('no spaces')")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO programs (name, ns1) VALUES ('ok', 'bad/ns')")


@pytest.fixture
def fresh_database(pg_server_url: str) -> Iterator[str]:
    name = f"tokenpool_programs_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_migration_registers_the_pools_that_hold_pairs_and_parks_fallback_only_ones_at_target_0(
    fresh_database,
):
    migrate.upgrade(fresh_database, target=PROGRAMS_MIGRATION - 1)
    counters = [("live", "AVAILABLE", 5), ("live", "USED", 9), ("fuzz-1", "USED", 1), ("fuzz-2", "EXPIRED", 1),
                ("kept", "USED", 3), ("alerted", "USED", 2), ("spent", "USED", 4), ("bad name!", "AVAILABLE", 1),
                ("emptied", "RESERVED", 0)]
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        for pool, status, n in counters:
            conn.execute("INSERT INTO token_pool_counts (pool, status, shard, n) VALUES (%s, %s, 0, %s)",
                         (pool, status, n))
        conn.execute("INSERT INTO refill_runs (run_id, pool, trigger, holder) VALUES (%s, 'kept', 'cli', 'h')",
                     (uuid.uuid4(),))
        conn.execute("INSERT INTO refill_batches (batch_id, pool, count, run_id, state) "
                     "VALUES (%s, 'spent', 4, %s, 'done')", (uuid.uuid4(), uuid.uuid4()))
        conn.execute("INSERT INTO pool_alert_state (pool, status) VALUES ('alerted', 'EMPTY')")
    assert [m.version for m in migrate.upgrade(fresh_database, target=PROGRAMS_MIGRATION)] == [PROGRAMS_MIGRATION]
    with psycopg.connect(fresh_database) as conn:
        registered = dict(conn.execute("SELECT name, refill_target FROM programs").fetchall())
        namespaces = conn.execute("SELECT DISTINCT ns1, ns2 FROM programs").fetchall()
    assert registered == {"default": None, "live": None, "kept": None, "alerted": None, "spent": None,
                          "fuzz-1": 0, "fuzz-2": 0}
    assert namespaces == [(None, None)]


def test_db_upgrade_registers_the_default_pool_of_the_settings_and_leaves_a_removed_one_removed(
    fresh_database, session_roles
):
    settings = Settings(database_url=fresh_database, database_admin_url=fresh_database,  # type: ignore[arg-type]
                        database_app_role=session_roles.app, default_pool="quickstart")
    bootstrap.upgrade_database(settings)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        assert conn.execute("SELECT name FROM programs ORDER BY name").fetchall() == [("default",), ("quickstart",)]
        conn.execute("UPDATE programs SET removed_at = now() WHERE name = 'quickstart'")
    bootstrap.upgrade_database(settings)
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT removed_at IS NOT NULL FROM programs WHERE name = 'quickstart'").fetchone() == (
            True,)

