"""tokenpool follows the primary: multi-host URLs, and whole transactions retried after a failure that allows it.

A dead host listed first (a free port nothing listens on) stands for a failed primary; a trigger on
``cards`` injects a real 40001 / 40P01 once, or holds the card statement while the test terminates its
backend (``pg_terminate_backend``: 57P01 on a statement already sent, what a failover does to it).
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from tests.fixtures.tome import free_port
from tests.integration.api_harness import POOL, running_api
from tests.integration.refill_support import refill_deps, refill_settings
from tokenpool.db.database import Database
from tokenpool.observability.metrics import DB_RETRIES
from tokenpool.refill.job import refill_pool
from tokenpool.refill.model import Outcome
from tokenpool.settings import Settings


def dead_host_first(url: str, *, as_url: bool = False) -> str:
    """``url`` with a host nothing listens on before the real one, as a conninfo string or a URL."""
    params = conninfo_to_dict(url)
    host, port, dead = params.get("host", "127.0.0.1"), str(params.get("port", 5432)), free_port()
    if as_url:  # a Unix socket folder (the embedded server) is a host too, percent-encoded in a URL
        user, password = quote(str(params["user"]), safe=""), quote(str(params.get("password", "")), safe="")
        return (f"postgresql://{user}:{password}@127.0.0.1:{dead},{quote(str(host), safe='')}:{port}/"
                f"{params['dbname']}?target_session_attrs=read-write")
    params.update(host=f"127.0.0.1,{host}", port=f"{dead},{port}")
    return make_conninfo(**params)  # type: ignore[arg-type]


@pytest.mark.parametrize("as_url", [False, True], ids=["key-value", "url"])
async def test_database_open_skips_a_dead_first_host(database_url: str, settings: Settings, as_url: bool):
    url = dead_host_first(database_url, as_url=as_url)
    db = await Database.open(url, settings, wait=True, min_size=1, max_size=2)  # as the refill and the CLI open it
    try:
        async with db.connection() as conn:
            row = await (await conn.execute("SELECT current_database(), pg_is_in_recovery()")).fetchone()
        assert row == (conninfo_to_dict(database_url)["dbname"], False)
    finally:
        await db.close()


async def test_the_refill_runs_through_a_url_whose_first_host_is_dead(settings: Settings, database_url: str, tome):
    config = refill_settings(settings, tome, refill_target=15).model_copy(
        update={"database_url": SecretStr(dead_host_first(database_url, as_url=True))})
    async with refill_deps(config) as deps:
        result = await refill_pool(deps, POOL)
    assert (result.outcome, result.added) == (Outcome.SUCCEEDED, 15), result.error


async def test_the_service_creates_a_card_through_a_url_whose_first_host_is_dead(database_url, tome):
    async with running_api(dead_host_first(database_url, as_url=True), tome) as api:
        await api.seed(3)
        async with api.client() as client:
            response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                                         headers=await api.headers("cards:write"))
        assert response.status_code == 201, response.text
        assert api.sql("SELECT count(*) FROM cards") == [(1,)]


def _install_trigger(admin_url: str, body: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE card_fault_seq")
        conn.execute(f"""CREATE FUNCTION card_fault() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
                         BEGIN IF nextval('card_fault_seq') = 1 THEN {body} END IF; RETURN NEW; END $$""")
        conn.execute("CREATE TRIGGER card_fault BEFORE INSERT ON cards FOR EACH ROW EXECUTE FUNCTION card_fault()")


@pytest.mark.parametrize(("sqlstate", "reason"), [("40001", "serialization_failure"), ("40P01", "deadlock")])
async def test_a_card_statement_that_loses_once_is_run_again_and_creates_one_card(
    database_url, admin_database_url, tome, sqlstate, reason
):
    _install_trigger(admin_database_url, f"RAISE EXCEPTION 'injected' USING ERRCODE = '{sqlstate}';")
    before = DB_RETRIES.labels("card", reason)._value.get()
    async with running_api(database_url, tome, admin_database_url=admin_database_url) as api:
        await api.seed(3)
        async with api.client() as client:  # no Idempotency-Key: known not committed, retried all the same
            response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                                         headers=await api.headers("cards:write"))
        assert response.status_code == 201, response.text
        assert api.sql("SELECT count(*) FROM cards") == [(1,)]
        assert api.sql("SELECT status, count(*) FROM token_pool GROUP BY 1 ORDER BY 1") == [
            ("AVAILABLE", 2), ("USED", 1)]
        assert api.sql("SELECT nextval('card_fault_seq')") == [(3,)]  # the trigger ran twice: two attempts
    assert DB_RETRIES.labels("card", reason)._value.get() == before + 1


async def _terminate_the_held_statement(pg_server_url: str, database: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        while True:
            killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                                   "AND wait_event = 'PgSleep'", (database,)).fetchall()
            if killed:
                return
            assert time.monotonic() < deadline, "the card statement never reached the trigger"
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("keyed", [True, False], ids=["idempotency-key", "no-key"])
async def test_a_card_statement_cut_off_mid_flight_is_retried_only_under_an_idempotency_key(
    database_url, admin_database_url, pg_server_url, tome, keyed
):
    _install_trigger(admin_database_url, "PERFORM pg_sleep(4);")

    def retries() -> float:
        return sum(DB_RETRIES.labels("card", reason)._value.get() for reason in ("admin_shutdown", "connection_lost"))

    before = retries()
    async with running_api(database_url, tome, admin_database_url=admin_database_url) as api:
        await api.seed(3)
        extra = {"Idempotency-Key": "order-failover"} if keyed else {}
        headers = await api.headers("cards:write", **extra)
        async with api.client() as client:
            request = asyncio.create_task(client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                                                      headers=headers))
            await _terminate_the_held_statement(pg_server_url, conninfo_to_dict(database_url)["dbname"])
            response = await request
        if keyed:  # ambiguous, but a replay is harmless: run again, and exactly one card
            assert response.status_code in (200, 201), response.text
            assert api.sql("SELECT count(*) FROM cards") == [(1,)]
            assert retries() == before + 1
        else:  # ambiguous and a retry could make a second card: 503, the client decides
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "DATABASE_UNAVAILABLE"
            assert response.headers["Retry-After"]
            assert api.sql("SELECT count(*) FROM cards") == [(0,)]
            assert retries() == before
        # The service goes on: the terminated connection was replaced.
        async with api.client() as client:
            again = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "d"},
                                      headers=await api.headers("cards:write"))
        assert again.status_code == 201, again.text


async def test_connections_to_a_read_only_server_are_replaced_and_never_answer_500(database_url, pg_server_url, tome):
    """A demoted primary: its sessions are read-only (``25006`` on a write). Stood in for by
    ``default_transaction_read_only`` on the test database and its sessions ended, so the pool's new ones
    are read-only, until the setting is reset (the "new primary" is the same server)."""
    name = conninfo_to_dict(database_url)["dbname"]
    async with running_api(database_url, tome, service_db_timeout_s=3.0) as api:
        await api.seed(5)
        headers = await api.headers("cards:write")
        body = {"program": POOL, "customer_ref": "c"}
        async with api.client() as client:
            assert (await client.post("/v1/cards", json=body, headers=headers)).status_code == 201
            with psycopg.connect(pg_server_url, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                              "AND pid <> pg_backend_pid()", (name,))
                read_only_before = DB_RETRIES.labels("card", "read_only")._value.get()
                try:
                    # The first request may meet a terminated connection instead (57P01: ambiguous, no key: 503);
                    # the pool then reconnects, to a read-only server.
                    for _ in range(10):
                        started = time.monotonic()
                        refused = await client.post("/v1/cards", json=body, headers=headers)
                        assert time.monotonic() - started < 3.0 + 0.5  # within the request's bound, retries included
                        assert refused.status_code == 503, refused.text
                        assert refused.json()["code"] == "DATABASE_UNAVAILABLE"
                        if DB_RETRIES.labels("card", "read_only")._value.get() > read_only_before:
                            break
                    assert DB_RETRIES.labels("card", "read_only")._value.get() > read_only_before
                finally:
                    admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
            statuses = []
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline:
                response = await client.post("/v1/cards", json=body, headers=headers)
                statuses.append(response.status_code)
                if response.status_code == 201:
                    break
                await asyncio.sleep(0.2)
        assert statuses[-1] == 201, statuses
        assert set(statuses) <= {201, 503}, statuses
        assert api.sql("SELECT count(*) FROM cards") == [(2,)]
