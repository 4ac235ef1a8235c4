"""The audit hash chain on a real PostgreSQL: the trigger, the migration of old rows, the prune, the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict

import psycopg
import pytest

from tests.audit_samples import SAMPLE, SAMPLE_ROW_HASH
from tests.fixtures.database import with_database
from tests.integration.refill_support import env_for
from tokenpool.audit.chain import ChainLink, ChainReport
from tokenpool.audit.verify import verify_chain
from tokenpool.db import migrate, retention
from tokenpool.db.audit_store import AuditChainReader, AuditEntry, AuditStore
from tokenpool.db.database import Database
from tokenpool.settings import Settings

CHAIN_MIGRATION = 9
ENTRIES = [
    AuditEntry("detokenize", "success", "c-1", "127.0.0.1", "cardsvc", ref_digests=("a" * 64, "b" * 64), from_db=2),
    AuditEntry("detokenize", "partial", "c-2", None, "cardsvc-ü", ref_digests=("",), from_db=0, unresolved=1),
    AuditEntry("card_read", "success", "c-3", "2001:db8::1", "ops", card_id=uuid.uuid4(), ref_digests=("c" * 64,)),
    AuditEntry("card_read", "refused", "c-4", "10.0.0.1", None, reason="AUTHENTICATION_REQUIRED"),
    AuditEntry("detokenize", "refused", "c-5", "10.0.0.1", "reader", reason="INSUFFICIENT_SCOPE"),
    AuditEntry("detokenize", "failure", "c-6", "10.0.0.2", "cardsvc", reason="TOME_UNAVAILABLE", ref_digests=("d",)),
]


@pytest.fixture
def owner_url(admin_database_url: str) -> str:
    """This module acts as the tables' owner: it forges rows and reads the chain back."""
    return admin_database_url


@pytest.fixture
async def pool(owner_url: str, settings: Settings) -> AsyncIterator[Database]:
    db = await Database.open(owner_url, settings, wait=True, min_size=1, max_size=4)
    yield db
    await db.close()


async def _write(pool: Database, entries: list[AuditEntry]) -> None:
    async with pool.connection() as conn:
        for entry in entries:
            await AuditStore().record(conn, entry)


async def _verify(pool: Database, anchor: ChainLink | None = None, page_size: int = 5_000) -> ChainReport:
    async with pool.connection() as conn:
        return await verify_chain(AuditChainReader(conn), anchor=anchor, page_size=page_size)


def _owner(owner_url: str, statement: str, *params: object) -> list[tuple]:
    """As the tables' owner: what an intruder with the owner's rights (or a careless admin) could do."""
    with psycopg.connect(owner_url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def _cli(settings: Settings, *args: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "tokenpool", "audit", "verify", "--json", *args],
                          env=env_for(settings), capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def _insert_aged(owner_url: str, days: list[int]) -> None:
    for age in days:
        _owner(owner_url, "INSERT INTO detokenize_audit (at, event, outcome, api_key_name, correlation_id, "
               "ref_digests) VALUES (now() - make_interval(days => %s), 'detokenize', 'success', 'old', %s, '{}')",
               age, f"aged-{age}")


async def test_the_trigger_hashes_a_row_exactly_as_python_does(owner_url):
    # The pinned sample of tests/unit/test_audit_chain.py, through the SQL function the trigger calls.
    values = {key: value for key, value in asdict(SAMPLE).items() if key != "row_hash"}
    values |= {"at": SAMPLE.at.isoformat(), "card_id": str(SAMPLE.card_id), "prev_hash": "\\x" + SAMPLE.prev_hash.hex()}
    rows = _owner(owner_url, "SELECT encode(tokenpool_detokenize_audit_row_hash("
                  "jsonb_populate_record(NULL::detokenize_audit, %s::jsonb)), 'hex')", json.dumps(values))
    assert rows == [(SAMPLE_ROW_HASH,)]


async def test_rows_of_every_kind_are_sealed_in_order_and_verify(pool):
    await _write(pool, ENTRIES * 3)
    report = await _verify(pool, page_size=4)  # several pages
    assert report.ok, report.broken
    assert (report.rows, report.start.seq, report.head.seq) == (18, 0, 18)


async def test_values_a_writer_sends_for_the_chain_columns_are_overwritten(owner_url, pool):
    await _write(pool, ENTRIES[:2])
    _owner(owner_url, "INSERT INTO detokenize_audit (event, outcome, correlation_id, ref_digests, seq, prev_hash,"
           " row_hash) VALUES ('detokenize', 'success', 'forged', '{}', 1, '\\x00', '\\x00')")
    assert _owner(owner_url, "SELECT seq FROM detokenize_audit WHERE correlation_id = 'forged'") == [(3,)]
    assert (await _verify(pool)).ok


async def test_new_rows_cannot_carry_plain_ref_hashes(owner_url):
    with pytest.raises(psycopg.errors.CheckViolation, match="ref_digests"):
        _owner(owner_url, "INSERT INTO detokenize_audit (event, outcome, correlation_id, ref_hashes)"
               " VALUES ('detokenize', 'success', 'legacy', '{}')")


@pytest.fixture
def unmigrated_url(pg_server_url: str) -> Iterator[str]:
    name = f"tokenpool_audit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_the_migration_chains_the_rows_written_before_it_as_legacy_plain_hashes(unmigrated_url):
    migrate.upgrade(unmigrated_url, target=CHAIN_MIGRATION - 1)
    with psycopg.connect(unmigrated_url, autocommit=True) as conn:
        for i in range(7):
            conn.execute("INSERT INTO detokenize_audit (at, api_key_name, correlation_id, client_addr, outcome, "
                         "ref_count, from_db, from_tome, unresolved, ref_hashes) VALUES "
                         "(now() - make_interval(secs => %s), 'legacy', %s, '127.0.0.1', 'success', 1, 1, 0, 0, %s)",
                         (7 - i + 0.123456, f"legacy-{i}", [f"{i:064x}"]))
    assert [m.version for m in migrate.upgrade(unmigrated_url, target=CHAIN_MIGRATION)] == [CHAIN_MIGRATION]
    migrate.upgrade(unmigrated_url)  # and the later ones, as a deployment would

    settings = Settings(owner_url=unmigrated_url)  # type: ignore[arg-type]
    pool = await Database.open(unmigrated_url, settings, wait=True, min_size=1, max_size=2)
    try:
        await _write(pool, ENTRIES[:2])
        report = await _verify(pool)
    finally:
        await pool.close()
    assert report.ok, report.broken
    assert report.rows == 9
    rows = _owner(unmigrated_url, "SELECT seq, event, ref_hashes IS NOT NULL, ref_digests IS NULL "
                  "FROM detokenize_audit ORDER BY id")
    assert [row[0] for row in rows] == list(range(1, 10))
    assert rows[:7] == [(i, "detokenize", True, True) for i in range(1, 8)]
    assert rows[7:] == [(8, "detokenize", False, False), (9, "detokenize", False, False)]


async def test_verify_names_a_deleted_row_and_exits_1(owner_url, settings, pool):
    await _write(pool, ENTRIES)
    intact_code, intact = await asyncio.to_thread(_cli, settings)
    _owner(owner_url, "DELETE FROM detokenize_audit WHERE seq = 3")
    code, report = await asyncio.to_thread(_cli, settings)
    assert (intact_code, intact["ok"], intact["rows"], intact["head"]["seq"]) == (0, True, 6, 6)
    assert (code, report["ok"]) == (1, False)
    assert (report["broken"]["kind"], report["broken"]["seq"]) == ("deleted", 3)


async def test_verify_names_a_changed_row_and_exits_1(owner_url, settings, pool):
    await _write(pool, ENTRIES)
    _owner(owner_url, "UPDATE detokenize_audit SET api_key_name = 'someone-else' WHERE seq = 4")
    code, report = await asyncio.to_thread(_cli, settings)
    assert (code, report["broken"]["kind"], report["broken"]["seq"]) == (1, "changed", 4)


async def test_verify_names_a_row_resealed_after_a_change_as_a_broken_link(owner_url, pool):
    await _write(pool, ENTRIES)
    _owner(owner_url, "UPDATE detokenize_audit SET outcome = 'success', reason = NULL WHERE seq = 5")
    _owner(owner_url, "UPDATE detokenize_audit SET row_hash = tokenpool_detokenize_audit_row_hash(detokenize_audit)"
           " WHERE seq = 5")
    report = await _verify(pool)
    assert report.broken is not None
    assert (report.broken.kind, report.broken.seq) == ("relinked", 6)


async def test_verify_passes_after_a_prune_and_the_chain_starts_at_the_watermark(owner_url, settings, pool):
    _insert_aged(owner_url, [401, 401, 401])
    await _write(pool, ENTRIES[:2])
    before = await _verify(pool)
    pruned = _owner(owner_url, "SELECT tokenpool_prune_detokenize_audit(now() - interval '400 days', 2)")
    pruned += _owner(owner_url, "SELECT tokenpool_prune_detokenize_audit(now() - interval '400 days', 2)")
    code, report = await asyncio.to_thread(_cli, settings, "--anchor", str(before.head))
    assert pruned == [(2,), (1,)]
    assert (code, report["ok"], report["rows"], report["start"]["seq"]) == (0, True, 2, 3)
    assert report["head"] == {"seq": 5, "hash": before.head.hash.hex()}


async def test_an_anchor_exposes_a_rewrite_that_verifies_on_its_own(owner_url, settings, pool):
    await _write(pool, ENTRIES)
    anchor = (await _verify(pool)).head
    # Someone with the owner's rights deletes a row and rebuilds the whole chain around the gap.
    _owner(owner_url, "DELETE FROM detokenize_audit WHERE seq = 2")
    _owner(owner_url, "CREATE TEMP TABLE kept AS SELECT * FROM detokenize_audit; "
           "DELETE FROM detokenize_audit; UPDATE detokenize_audit_head SET seq = 0, hash = pruned_hash; "
           "INSERT INTO detokenize_audit (event, outcome, reason, api_key_name, correlation_id, client_addr, card_id,"
           " ref_count, from_db, from_tome, unresolved, ref_digests) SELECT event, outcome, reason, api_key_name,"
           " correlation_id, client_addr, card_id, ref_count, from_db, from_tome, unresolved, ref_digests"
           " FROM kept ORDER BY seq")
    plain_code, plain = await asyncio.to_thread(_cli, settings)
    code, report = await asyncio.to_thread(_cli, settings, "--anchor", str(anchor))
    assert (plain_code, plain["ok"], plain["rows"]) == (0, True, 5)
    assert (code, report["broken"]["kind"]) == (1, "anchor")


async def test_a_malformed_anchor_is_a_usage_error(settings):
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "tokenpool", "audit", "verify", "--anchor", "7:xyz"],
        env=env_for(settings), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "SEQ:HASH" in done.stderr


async def test_the_prune_keeps_366_days_whatever_it_is_asked(owner_url):
    _insert_aged(owner_url, [370])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="366 days"):
        _owner(owner_url, "SELECT tokenpool_prune_detokenize_audit(now() - interval '365 days', 100)")
    assert _owner(owner_url, "SELECT count(*) FROM detokenize_audit") == [(1,)]


async def test_the_prune_stops_at_the_first_younger_row_in_chain_order(owner_url, pool):
    # `at` may run out of seq order; the chain loses only its oldest end
    _insert_aged(owner_url, [401, 10, 401])
    pruned = _owner(owner_url, "SELECT tokenpool_prune_detokenize_audit(now() - interval '400 days', 100)")
    assert pruned == [(1,)]
    assert _owner(owner_url, "SELECT seq FROM detokenize_audit ORDER BY seq") == [(2,), (3,)]
    assert (await _verify(pool)).ok


async def test_the_prune_refuses_to_destroy_a_broken_stretch(owner_url, pool):
    _insert_aged(owner_url, [401, 401, 401])
    _owner(owner_url, "UPDATE detokenize_audit SET api_key_name = 'someone-else' WHERE seq = 2")
    with pytest.raises(psycopg.errors.DataCorrupted, match="seq 2"):
        _owner(owner_url, "SELECT tokenpool_prune_detokenize_audit(now() - interval '400 days', 100)")
    assert _owner(owner_url, "SELECT count(*), max(pruned_seq) FROM detokenize_audit, detokenize_audit_head") == [
        (3, 0)]


async def test_the_app_role_writes_audit_rows_with_no_right_on_the_head_or_the_prune(
    database_url, owner_url, pool
):
    with psycopg.connect(database_url) as conn:  # the app role
        conn.execute("INSERT INTO detokenize_audit (event, outcome, correlation_id, ref_digests)"
                     " VALUES ('detokenize', 'success', 'as-app', '{}')")
        conn.commit()
        for statement in ("SELECT * FROM detokenize_audit_head", "UPDATE detokenize_audit_head SET seq = 0",
                          "SELECT * FROM detokenize_audit", "DELETE FROM detokenize_audit",
                          "UPDATE detokenize_audit SET outcome = 'failure'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
    assert _owner(owner_url, "SELECT seq FROM detokenize_audit WHERE correlation_id = 'as-app'") == [(1,)]
    assert (await _verify(pool)).ok


async def test_db_prune_moves_the_watermark_with_the_rows_so_the_chain_still_verifies(owner_url, settings, pool):
    _insert_aged(owner_url, [402, 401, 401, 401, 399])
    report = await retention.prune(pool, settings.model_copy(update={"retention_chunk_size": 2}))
    audit = next(part for part in report.tables if part.table == "detokenize_audit")
    verified = await _verify(pool)
    assert (audit.rows, audit.chunks, audit.error) == (4, 3, None)
    assert verified.ok, verified.broken
    assert (verified.rows, verified.start.seq, verified.head.seq) == (1, 4, 5)
