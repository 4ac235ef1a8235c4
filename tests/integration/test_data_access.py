"""The data access layer: card creation costs one statement, and rows are read by name, not position."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest

from tests.integration import api_harness
from tests.integration.api_harness import POOL, Api, running_api
from tokenpool.db.queries import load, sql

api = api_harness.api


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every statement any psycopg connection of this process sends, by name (queries.sql) or text; the
    transaction commands (BEGIN, COMMIT, SAVEPOINT...) under their own text."""
    names = {text: name for name, text in load().items()}
    sent: Counter[str] = Counter()
    execute = psycopg.AsyncCursor.execute
    command = psycopg.AsyncConnection._exec_command

    async def counting_execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent[names.get(str(query), str(query)[:40])] += 1
        return await execute(self, query, *args, **kwargs)

    def counting_command(self: Any, statement: Any, *args: Any, **kwargs: Any) -> Any:
        text = statement.decode() if isinstance(statement, bytes) else str(statement)
        sent[text.split()[0].upper()] += 1
        return command(self, statement, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", counting_execute)
    monkeypatch.setattr(psycopg.AsyncConnection, "_exec_command", counting_command)
    return sent


async def test_a_card_from_the_pool_is_one_statement_and_no_transaction_commands(database_url, tome, statements):
    cards = 20
    # Long caches: the API key check and the runtime config stay off the database once warm.
    async with running_api(database_url, tome, service_api_key_cache_ttl_s=600,
                           service_runtime_config_ttl_s=600, vault_refresh_s=600) as running:
        await running.seed(cards + 1)
        headers = await running.headers("cards:write")
        async with running.client() as client:
            warm = await client.post("/v1/cards", json={"program": POOL, "customer_ref": "warm"}, headers=headers)
            assert warm.status_code == 201
            statements.clear()
            for i in range(cards):
                response = await client.post("/v1/cards", json={"program": POOL, "customer_ref": f"c{i}"},
                                             headers={**headers, "Idempotency-Key": f"order-{i}"})
                assert (response.status_code, response.json()["token_source"]) == (201, "pool")
        # Not the card's: the key listener's heartbeat (its own connection) and the once-a-minute last use.
        sent = {name: n for name, n in statements.items() if name not in {"api_keys_heartbeat", "api_key_touch"}}
    assert sent == {"card_create_from_pool": cards}, sent  # sequential orders: a batch of one each


REORDERED = {
    # The columns of each SELECT in reverse order: a store reading by position would misassign every field.
    "card_get": "SELECT p.token_ct, p.pool, c.created_at, c.token_source, c.external_ref, c.customer_ref,"
                " c.program, c.card_id FROM cards c JOIN token_pool p ON p.token_digest = c.token_digest"
                " WHERE c.card_id = %(card_id)s",
    "reservation_state": "SELECT lease_expires_at <= now() AS lapsed, card_ref, status, lease_expires_at,"
                         " external_ref, token_ct, pool, reservation_id FROM token_pool"
                         " WHERE reservation_id = %(reservation_id)s"
                         " AND reserved_by IS NOT DISTINCT FROM %(owner)s::uuid",
    "refill_batches_unfinished": "SELECT created_at, state, count, batch_id FROM refill_batches"
                                 " WHERE pool = %(pool)s AND state <> 'done' AND (origin = 'refill'"
                                 " OR created_at < now() - make_interval(secs => %(service_grace_s)s))"
                                 " ORDER BY created_at",
}


async def test_a_select_whose_columns_are_reordered_reads_the_same_objects(api: Api, monkeypatch):
    await api.seed(3)
    async with api.client() as client:
        card = (await client.post("/v1/cards", json={"program": POOL, "customer_ref": "c"},
                                  headers=await api.headers("cards:write"))).json()
        reservation = (await client.post("/v1/reservations", json={"program": POOL},
                                         headers=await api.headers("reservations:write"))).json()
    batch_id = uuid.uuid4()
    api.sql("INSERT INTO refill_batches (batch_id, pool, count, run_id) VALUES (%s, %s, 7, %s)",
            batch_id, POOL, batch_id)
    reservation_id = uuid.UUID(reservation["reservation_id"])
    [(owner,)] = api.sql("SELECT reserved_by FROM token_pool WHERE reservation_id = %s", reservation_id)
    from tokenpool.db.card_store import CardStore
    from tokenpool.db.journal_store import JournalStore

    async def read() -> tuple[Any, ...]:
        async with api.db.connection() as conn:
            got_card = await CardStore(api.vault).get(conn, uuid.UUID(card["card_id"]))
        await api.store.commit(reservation_id, "card-x", owner=owner)  # the key that reserved it
        committed_again = await api.store.commit(reservation_id, "card-x", owner=owner)  # reads reservation_state
        unfinished = await JournalStore(api.db, api.store, api.vault).unfinished(POOL, 0)
        return got_card, committed_again, unfinished

    as_written = await read()
    for name, reordered in REORDERED.items():
        assert sql(name) != reordered
        monkeypatch.setitem(load(), name, reordered)
    assert await read() == as_written
    got_card, committed, unfinished = as_written
    assert (str(got_card.card_id), got_card.internal_token) == (card["card_id"], card["internal_token"])
    assert committed.internal_token == reservation["internal_token"]
    assert [(b.batch_id, b.count, b.state) for b in unfinished] == [(batch_id, 7, "intent")]


async def test_concurrent_orders_share_statements_and_one_idempotency_key_makes_one_card(api: Api):
    await api.seed(60)
    headers = await api.headers("cards:write")
    async with api.client() as client:
        responses = await asyncio.gather(*(
            client.post("/v1/cards", json={"program": POOL, "customer_ref": f"c{i % 10}"},
                        headers={**headers, "Idempotency-Key": f"order-{i % 10}"})
            for i in range(50)))
    assert sorted({r.status_code for r in responses}) in ([200, 201], [201])
    by_key: dict[str, set[str]] = {}
    for i, response in enumerate(responses):
        by_key.setdefault(f"order-{i % 10}", set()).add(response.json()["card_id"])
    assert all(len(ids) == 1 for ids in by_key.values()), by_key
    assert api.sql("SELECT count(*) FROM cards") == [(10,)]
    assert api.sql("SELECT status, count(*) FROM token_pool GROUP BY 1 ORDER BY 1") == [("AVAILABLE", 50), ("USED", 10)]


async def test_an_order_with_a_value_postgresql_refuses_fails_alone_in_its_batch(api: Api):
    await api.seed(30)
    # The API refuses the characters PostgreSQL cannot store (NUL) before any batch: INVALID_CHARACTERS. A value
    # the database itself refuses is made here by a trigger raising a data exception (SQLSTATE class 22).
    api.sql("""CREATE FUNCTION refuse_value() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN IF NEW.customer_ref = 'refused' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22P05';
               END IF; RETURN NEW; END $$""")
    api.sql("CREATE TRIGGER refuse_value BEFORE INSERT ON cards FOR EACH ROW EXECUTE FUNCTION refuse_value()")
    refs = {3: "a\u0000b", 7: "refused"}
    headers = await api.headers("cards:write")
    async with api.client() as client:
        responses = await asyncio.gather(*(
            client.post("/v1/cards", json={"program": POOL, "customer_ref": refs.get(i, f"c{i}")}, headers=headers)
            for i in range(20)))
    codes = [r.status_code for r in responses]
    assert (codes[3], responses[3].json()["code"]) == (422, "INVALID_CHARACTERS"), responses[3].text
    assert (codes[7], responses[7].json()["code"]) == (422, "INVALID_VALUE"), responses[7].text
    assert [code for i, code in enumerate(codes) if i not in refs] == [201] * 18
    assert api.sql("SELECT count(*) FROM cards") == [(18,)]


async def test_an_unreadable_pair_fails_only_its_own_order_in_a_batch(api: Api):
    pairs = await api.seed(10)
    api.sql("UPDATE token_pool SET token_ct = (SELECT token_ct FROM token_pool WHERE external_ref = %s)"
            " WHERE external_ref = %s", pairs[0].external_ref, pairs[1].external_ref)  # as the owner
    headers = await api.headers("cards:write")
    async with api.client() as client:
        responses = await asyncio.gather(*(
            client.post("/v1/cards", json={"program": POOL, "customer_ref": f"c{i}"}, headers=headers)
            for i in range(10)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] * 9 + [500], [r.text for r in responses if r.status_code != 201]
    assert next(r for r in responses if r.status_code == 500).json()["code"] == "TOKEN_UNREADABLE"
    assert api.sql("SELECT count(*) FROM cards") == [(10,)]  # committed all the same: no card is created twice
