"""Retention (`tokenpool db prune`, the worker) and the oldest-transaction gauge, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
import structlog
from prometheus_client import REGISTRY

import tokenpool.refill.worker as worker_module
from tests.fixtures.database import keyring_of
from tests.integration.refill_support import env_for, refill_deps, refill_settings
from tokenpool.db.database import Database
from tokenpool.db.migrate import available_migrations
from tokenpool.db.queries import sql
from tokenpool.db.retention import oldest_transaction_age_s, prune, publish_oldest_transaction_age
from tokenpool.db.vault_store import pending_token_aad, pool_token_aad
from tokenpool.observability.metrics import DB_OLDEST_TRANSACTION
from tokenpool.refill.worker import RefillWorker

POOL = "default"
OLD = 5  # rows of each kind past their retention (defaults: keys 7 d, audit 400 d, runs and batches 90 d)
PRUNABLE = ("idempotency_keys", "detokenize_audit", "refill_runs", "refill_batches")


def _seed(database_url: str) -> None:
    """OLD rows of each prunable kind past their retention, plus rows that must survive any prune:
    young ones, a crashed run, unfinished batches, a done batch still referenced, and token_pool
    rows of every status, all far older than any retention."""
    ago = "now() - make_interval(days => %s)"
    keyring = keyring_of(database_url)

    def sealed(token: str, ref: str) -> tuple[bytes, bytes, int]:
        return keyring.digest(token), keyring.encrypt(token, pool_token_aad(POOL, ref)), keyring.primary_version

    with psycopg.connect(database_url) as conn:
        api_key_id = conn.execute(
            "INSERT INTO api_keys (name, key_hash, scopes) VALUES ('retention', %s, '{cards:write}') "
            "RETURNING api_key_id", (os.urandom(32),)).fetchone()[0]
        tag = uuid.uuid4().hex[:8]
        for status in ("AVAILABLE", "EXPIRED"):
            conn.execute(f"INSERT INTO token_pool (pool, token_digest, token_ct, key_version, external_ref, status,"
                         f" batch_id, created_at, expired_at)"
                         f" VALUES (%s, %s, %s, %s, %s, %s, %s, {ago}, CASE WHEN %s = 'EXPIRED' THEN {ago} END)",
                         (POOL, *sealed(f"tok-{status}-{tag}", f"ext-{status}-{tag}"), f"ext-{status}-{tag}", status,
                          uuid.uuid4(), 1000, status, 1000))
        conn.execute(f"INSERT INTO token_pool (pool, token_digest, token_ct, key_version, external_ref, status,"
                     f" batch_id, created_at, reservation_id, reserved_at, lease_expires_at)"
                     f" VALUES (%s, %s, %s, %s, %s, 'RESERVED', %s, {ago},"
                     f" gen_random_uuid(), now(), now() + interval '1 minute')",
                     (POOL, *sealed(f"tok-RESERVED-{tag}", f"ext-RESERVED-{tag}"), f"ext-RESERVED-{tag}",
                      uuid.uuid4(), 1000))
        # Idempotency-Keys: OLD of 8 days, 2 of 6 days; each with its card and the card's USED pair.
        for i, days in enumerate([8] * OLD + [6] * 2):
            card_id = uuid.uuid4()
            digest, ciphertext, version = sealed(f"tok-USED-{i}-{tag}", f"ext-USED-{i}-{tag}")
            conn.execute(f"INSERT INTO token_pool (pool, token_digest, token_ct, key_version, external_ref, status,"
                         f" batch_id, created_at, used_at, card_ref)"
                         f" VALUES (%s, %s, %s, %s, %s, 'USED', %s, {ago}, {ago}, %s)",
                         (POOL, digest, ciphertext, version, f"ext-USED-{i}-{tag}", card_id, 1000, 1000,
                          str(card_id)))
            conn.execute(f"INSERT INTO cards (card_id, program, customer_ref, token_digest, external_ref,"
                         f" token_source, created_at) VALUES (%s, %s, %s, %s, %s, 'pool', {ago})",
                         (card_id, POOL, f"customer-{i}", digest, f"ext-USED-{i}-{tag}", days))
            conn.execute(f"INSERT INTO idempotency_keys (api_key_id, idempotency_key, request_hash, card_id,"
                         f" created_at) VALUES (%s, %s, %s, %s, {ago})",
                         (api_key_id, f"key-{i}", os.urandom(32), card_id, days))
        for days in [401] * OLD + [399] * 2:
            conn.execute(f"INSERT INTO detokenize_audit (at, event, api_key_name, correlation_id, outcome, ref_count,"
                         f" from_db, from_tome, unresolved, ref_digests) VALUES ({ago}, 'detokenize', 'retention', %s,"
                         f" 'success', 1, 1, 0, 0, '{{}}')", (days, uuid.uuid4().hex))
        for days in [91] * OLD + [89]:
            conn.execute(f"INSERT INTO refill_runs (run_id, pool, trigger, holder, started_at, finished_at, outcome)"
                         f" VALUES (%s, %s, 'cli', 'test', {ago}, {ago}, 'succeeded')",
                         (uuid.uuid4(), POOL, days, days))
        conn.execute(f"INSERT INTO refill_runs (run_id, pool, trigger, holder, started_at) "
                     f"VALUES (%s, %s, 'cli', 'crashed', {ago})", (uuid.uuid4(), POOL, 400))  # 'running' forever
        for days in [91] * OLD + [89]:
            conn.execute(f"INSERT INTO refill_batches (batch_id, pool, count, run_id, state, created_at, issued_at,"
                         f" done_at, added) VALUES (%s, %s, 10, %s, 'done', {ago}, {ago}, {ago}, 10)",
                         (uuid.uuid4(), POOL, uuid.uuid4(), days, days, days))
        for state in ("intent", "issued", "done"):  # unfinished ones, and a done one still referenced
            batch_id = uuid.uuid4()
            conn.execute(f"INSERT INTO refill_batches (batch_id, pool, count, run_id, state, created_at, done_at)"
                         f" VALUES (%s, %s, 1, %s, %s, {ago}, CASE WHEN %s = 'done' THEN {ago} END)",
                         (batch_id, POOL, uuid.uuid4(), state, 400, state, 400))
            if state != "intent":
                conn.execute("INSERT INTO refill_pending_tokens (batch_id, position, token_ct, key_version) "
                             "VALUES (%s, 1, %s, %s)",
                             (batch_id, keyring.encrypt(f"pending-{state}-{tag}", pending_token_aad(batch_id, 1)),
                              keyring.primary_version))


def _rows(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in (*PRUNABLE, "token_pool", "cards", "refill_pending_tokens")}


def _pool_snapshot(database_url: str) -> list[tuple]:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT * FROM token_pool ORDER BY id").fetchall()


def _pruned(name: str) -> float:
    return REGISTRY.get_sample_value("tokenpool_rows_pruned_total", {"table": name}) or 0.0


@pytest.fixture
def seeded(admin_database_url: str) -> str:
    """The owner's URL of the seeded database: backdated audit rows are beyond the app role's rights, and
    so is reading the audit back. tokenpool's prune itself runs as the app role (pg_pool, settings)."""
    _seed(admin_database_url)
    return admin_database_url


async def test_prune_deletes_rows_past_their_retention_and_keeps_everything_else(seeded, db, settings):
    before = _rows(seeded)
    pool_before = _pool_snapshot(seeded)
    counted_before = {name: _pruned(name) for name in PRUNABLE}

    report = await prune(db, settings)
    again = await prune(db, settings)

    after = _rows(seeded)
    assert report.ok
    assert report.counts == dict.fromkeys(PRUNABLE, OLD)
    assert again.counts == dict.fromkeys(PRUNABLE, 0)
    assert after == {**before, **{name: before[name] - OLD for name in PRUNABLE}}
    # Left: 2 young keys, 2 young audit rows, the young run and the crashed one, the young done batch,
    # the intent, the issued batch and the done batch whose pending token still references it.
    assert {name: after[name] for name in PRUNABLE} == {
        "idempotency_keys": 2, "detokenize_audit": 2, "refill_runs": 2, "refill_batches": 4}
    assert _pool_snapshot(seeded) == pool_before  # every pair, of every status, untouched
    assert {name: _pruned(name) - counted_before[name] for name in PRUNABLE} == dict.fromkeys(PRUNABLE, OLD)
    with psycopg.connect(seeded) as conn:
        states = conn.execute("SELECT state, count(*) FROM refill_batches GROUP BY state ORDER BY state").fetchall()
        crashed = conn.execute("SELECT outcome FROM refill_runs WHERE finished_at IS NULL").fetchall()
    assert states == [("done", 2), ("intent", 1), ("issued", 1)]
    assert crashed == [("running",)]


async def test_a_dry_run_deletes_nothing_and_counts_what_the_prune_then_deletes(seeded, settings):
    before = _rows(seeded)
    # As `tokenpool db prune --dry-run`: the owner role (the app role may not read the audit back).
    owner = await Database.open(seeded, settings, wait=True, min_size=1, max_size=2)
    try:
        dry = await prune(owner, settings, dry_run=True)
        unchanged = _rows(seeded)
        real = await prune(owner, settings)
    finally:
        await owner.close()
    assert unchanged == before
    assert dry.dry_run
    assert all(part.chunks == 0 for part in dry.tables)
    assert dry.counts == real.counts == dict.fromkeys(PRUNABLE, OLD)


async def test_prune_deletes_in_chunks_of_the_configured_size(seeded, db, settings):
    report = await prune(db, settings.model_copy(update={"retention_chunk_size": 2}))
    assert {part.table: (part.rows, part.chunks) for part in report.tables} == dict.fromkeys(PRUNABLE, (OLD, 3))
    assert {name: count for name, count in _rows(seeded).items() if name in PRUNABLE} == {
        "idempotency_keys": 2, "detokenize_audit": 2, "refill_runs": 2, "refill_batches": 4}


async def test_a_table_that_cannot_be_pruned_does_not_keep_the_others_from_their_retention(seeded, db, settings):
    with psycopg.connect(seeded, autocommit=True) as conn:
        conn.execute("ALTER TABLE refill_runs RENAME TO refill_runs_elsewhere")
    report = await prune(db, settings)
    errors = {part.table: part.error for part in report.tables if part.error}
    assert not report.ok
    assert list(errors) == ["refill_runs"]
    assert "UndefinedTable" in errors["refill_runs"]
    assert report.counts == {**dict.fromkeys(PRUNABLE, OLD), "refill_runs": 0}


@pytest.mark.parametrize(
    ("table", "index"),
    [
        ("idempotency_keys", "idempotency_keys_created_idx"),
        ("refill_runs", "refill_runs_finished_idx"),
        ("refill_batches", "refill_batches_done_idx"),
    ],
)
async def test_each_chunk_finds_its_rows_through_the_timestamp_index(admin_database_url, table, index):
    statement = sql(f"retention_delete_{table}")
    if table == "detokenize_audit":  # pruned through the owner's function: the DELETE in its body
        (function,) = [m.sql for m in available_migrations() if "tokenpool_prune_detokenize_audit(" in m.sql]
        start, end = function.index("WITH doomed AS"), function.index("GET DIAGNOSTICS")
        statement = function[start:end].replace("< cutoff", "< %(cutoff)s").replace("max_rows", "%(limit)s")
    async with await psycopg.AsyncConnection.connect(admin_database_url, autocommit=True) as conn:
        await conn.execute("SET enable_seqscan = off")  # the plan must hold for a big table, not this empty one
        cursor = await conn.execute(f"EXPLAIN (FORMAT JSON) {statement}",
                                    {"cutoff": "2020-01-01T00:00:00Z", "limit": 5000})
        plan = (await cursor.fetchone())[0]
    assert f'"Index Name": "{index}"' in json.dumps(plan)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokenpool", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_db_prune_json_counts_on_a_dry_run_then_prunes(seeded, settings):
    env = env_for(settings)
    before = _rows(seeded)
    dry = _cli(["db", "prune", "--dry-run", "--json"], env)
    unchanged = _rows(seeded)
    real = _cli(["db", "prune", "--json"], env)
    assert (dry.returncode, real.returncode) == (0, 0), dry.stderr + real.stderr
    dry_report, real_report = json.loads(dry.stdout), json.loads(real.stdout)
    assert unchanged == before
    assert (dry_report["dry_run"], real_report["dry_run"], real_report["ok"]) == (True, False, True)
    assert {name: part["rows"] for name, part in dry_report["tables"].items()} == dict.fromkeys(PRUNABLE, OLD)
    assert {name: part["rows"] for name, part in real_report["tables"].items()} == dict.fromkeys(PRUNABLE, OLD)
    assert real_report["tables"]["detokenize_audit"]["keep_days"] == 400
    assert {name: count for name, count in _rows(seeded).items() if name in PRUNABLE} == {
        "idempotency_keys": 2, "detokenize_audit": 2, "refill_runs": 2, "refill_batches": 4}


async def test_the_oldest_transaction_gauge_reports_a_transaction_held_open(db, database_url):
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as holder:
        await holder.execute("BEGIN")
        await holder.execute("SELECT 1")
        await asyncio.sleep(1.5)
        age = await publish_oldest_transaction_age(db)
        published = REGISTRY.get_sample_value("tokenpool_db_oldest_transaction_seconds")
        await holder.execute("COMMIT")
    after = await oldest_transaction_age_s(db)
    assert age >= 1.5
    assert published == age
    assert after < 1.0  # the idle pooled connections are in no transaction


async def _until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.05)


async def test_the_worker_prunes_one_interval_after_start_and_again_after_a_failed_prune(
        seeded, settings, tome, monkeypatch):
    interval_s = 1.0
    calls: list[float] = []

    async def failing_once(db, config, *, stop=None):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise psycopg.OperationalError("connection lost")
        return await prune(db, config, stop=stop)

    monkeypatch.setattr(worker_module, "prune", failing_once)
    config = refill_settings(settings, tome, refill_target=10, worker_poll_s=0.1, worker_janitor_interval_s=0.1,
                             worker_prune_interval_s=interval_s)
    with structlog.testing.capture_logs() as logs:
        async with refill_deps(config) as deps:
            worker = RefillWorker(deps, [POOL])
            started = time.monotonic()
            running = asyncio.create_task(worker.run())
            try:
                async def audit_pruned() -> bool:
                    return _rows(seeded)["detokenize_audit"] == 2

                await _until(audit_pruned)
                alive = not running.done()
            finally:
                worker.stop.set()
                await asyncio.wait_for(running, timeout=10)
    assert alive
    assert len(calls) >= 2
    assert calls[0] - started >= interval_s * 0.99  # not at start
    assert calls[1] - calls[0] >= interval_s * 0.99  # retried at the next interval, not at once
    assert [entry["event"] for entry in logs].count("worker.prune_failed") == 1
    assert worker.runs  # the refill carried on


async def test_the_worker_janitor_publishes_the_oldest_transaction_age(settings, database_url, tome):
    config = refill_settings(settings, tome, refill_target=10, worker_poll_s=0.1, worker_janitor_interval_s=0.1)
    DB_OLDEST_TRANSACTION.set(-1)  # whatever an earlier test published
    async with refill_deps(config) as deps, \
            await psycopg.AsyncConnection.connect(database_url, autocommit=True) as holder:
        await holder.execute("BEGIN")
        await holder.execute("SELECT 1")
        worker = RefillWorker(deps, [POOL])
        running = asyncio.create_task(worker.run())
        try:
            async def published_over_a_second() -> bool:
                return (REGISTRY.get_sample_value("tokenpool_db_oldest_transaction_seconds") or 0.0) >= 1.0

            await _until(published_over_a_second)
        finally:
            worker.stop.set()
            await asyncio.wait_for(running, timeout=10)
            await holder.execute("ROLLBACK")
