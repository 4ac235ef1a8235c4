"""The hot statements keep using their indexes (EXPLAIN), so the pool stays fast as it grows."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from tests.factories import make_pairs
from tokenpool.db.queries import sql


def _plan_nodes(plan: dict) -> list[dict]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


async def explain(database_url: str, query: str, params: dict) -> list[dict]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        # Force a generic view: the plan must be good for a big table, not only for this small one.
        await conn.execute("SET enable_seqscan = off")
        await conn.execute("BEGIN")
        cursor = await conn.execute(f"EXPLAIN (FORMAT JSON) {sql(query)}", params)
        plan = (await cursor.fetchone())[0]
        await conn.execute("ROLLBACK")
    document = plan if isinstance(plan, list) else json.loads(plan)
    return _plan_nodes(document[0]["Plan"])


@pytest.fixture
async def loaded(store, database_url):
    await store.add_pairs("default", make_pairs(2_000), uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("ANALYZE token_pool")
    return database_url


@pytest.mark.parametrize(
    ("query", "params", "index"),
    [
        ("reserve", {"pool": "default", "n": 1, "start": 0, "lease_seconds": 30, "owners": [None],
                     "max_open": None}, "token_pool_claim_idx"),
        # The per-key cap counts a key's open reservations on the partial index of RESERVED rows.
        ("reserve", {"pool": "default", "n": 2, "start": 0, "lease_seconds": 30, "owners": [uuid.uuid4()] * 2,
                     "max_open": 100}, "token_pool_owner_idx"),
        ("reserve", {"pool": "default", "n": 2, "start": 0, "lease_seconds": 30, "owners": [uuid.uuid4()] * 2,
                     "max_open": 100}, "token_pool_claim_idx"),
        ("expire_leases", {"limit": 100}, "token_pool_lease_idx"),
        ("lookup", {"external_refs": ["ext_a", "ext_b"]}, "token_pool_external_ref_key"),
        ("commit", {"reservation_id": uuid.uuid4(), "card_ref": "c", "owner": uuid.uuid4()},
         "token_pool_reservation_idx"),
        ("release", {"reservation_id": uuid.uuid4(), "owner": None}, "token_pool_reservation_idx"),
    ],
)
async def test_hot_statements_use_their_index(loaded, query, params, index):
    nodes = await explain(loaded, query, params)
    assert index in {node.get("Index Name") for node in nodes}
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "token_pool"]
