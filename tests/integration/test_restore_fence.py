"""The restore fence (`tokenpool db after-restore`) and the restore epoch, on the shared test server.

tests/integration/test_restore_from_backup.py restores a real base backup; these cover the rules."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from tokenpool import bootstrap
from tokenpool.db.pool_store import PostgresTokenPool
from tokenpool.db.restore_fence import EpochFile, RestoreFenceRequired, advance_restore_epoch, fence
from tokenpool.pool import PairStatus
from tokenpool.pool.synthetic import synthetic_pairs
from tokenpool.settings import Settings


def run(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params or None)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


async def test_the_fence_quarantines_every_free_and_reserved_pair_once(store: PostgresTokenPool,
                                                                      admin_database_url: str, tmp_path: Path):
    await store.add_pairs("default", synthetic_pairs(5), uuid.uuid4())
    used = await store.reserve("default", 60)
    await store.commit(used.reservation_id, "card-1")
    held = await store.reserve("default", 60)

    result = fence(admin_database_url, tmp_path / "epoch.json")

    assert (result.available, result.reserved, result.already_done) == (3, 1, False)
    stats = await store.exact_stats("default")
    assert (stats.count(PairStatus.AVAILABLE), stats.count(PairStatus.RESERVED)) == (0, 0)
    assert stats.count(PairStatus.USED) == 1
    assert stats.count(PairStatus.EXPIRED) == 4
    assert await store.reserve_many("default", 10, 60) == []
    with pytest.raises(Exception):  # noqa: B017, PT011 (the lapsed reservation cannot be committed)
        await store.commit(held.reservation_id, "card-2")
    assert run(admin_database_url, "SELECT count(*) FROM token_pool WHERE restore_fence_id = %s",
               result.fence_id) == [(4,)]
    assert run(admin_database_url, "SELECT available, reserved, fenced_by, epoch FROM restore_fences") == [
        (3, 1, run(admin_database_url, "SELECT current_user")[0][0], result.epoch)]
    assert EpochFile(tmp_path / "epoch.json").read() == result.epoch

    again = fence(admin_database_url, tmp_path / "epoch.json")  # the same server run: reported, not repeated
    assert again.already_done
    assert again.fence_id == result.fence_id
    assert again.quarantined == 4
    await store.add_pairs("default", synthetic_pairs(2), uuid.uuid4())  # the refill's new pairs stay
    assert (await store.exact_stats("default")).count(PairStatus.AVAILABLE) == 2


def test_the_fence_closes_unfinished_refill_batches_so_their_tokens_are_never_loaded(admin_database_url: str):
    # At the backup point a batch was issued, not loaded yet; after it, it may have been loaded and handed out.
    batch = uuid.uuid4()
    run(admin_database_url, "INSERT INTO refill_batches (batch_id, pool, count, run_id, state, issued_at) "
        "VALUES (%s, 'default', 1, gen_random_uuid(), 'issued', now())", batch)
    run(admin_database_url, "INSERT INTO refill_pending_tokens (batch_id, position, token_ct, key_version) "
        "VALUES (%s, 0, 'x'::bytea, 1)", batch)

    assert fence(admin_database_url).refill_batches == 1

    closed = run(admin_database_url, "SELECT state, added FROM refill_batches WHERE batch_id = %s", batch)
    assert closed == [("done", 0)]
    assert run(admin_database_url, "SELECT count(*) FROM refill_pending_tokens") == [(0,)]


def test_the_app_role_cannot_quarantine_nor_mark_pairs(database_url: str, admin_database_url: str):
    run(admin_database_url, "INSERT INTO token_pool (pool, token_digest, token_ct, key_version, external_ref, "
        "batch_id) VALUES ('default', sha256('t'::bytea), 'x'::bytea, 1, 'ref', gen_random_uuid())")
    with pytest.raises(psycopg.errors.CheckViolation):  # AVAILABLE -> EXPIRED needs a fence's id
        run(admin_database_url, "UPDATE token_pool SET status = 'EXPIRED', expired_at = now()")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        run(database_url, "UPDATE token_pool SET status = 'EXPIRED', restore_fence_id = 1")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        run(database_url, "UPDATE restore_epoch SET epoch = 0")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        run(database_url, "SELECT * FROM restore_fences")


def test_the_restore_epoch_refuses_a_database_older_than_its_file_until_fenced(
        settings: Settings, database_url: str, admin_database_url: str, tmp_path: Path):
    path = tmp_path / "epoch.json"
    settings = settings.model_copy(update={"restore_epoch_file": path})
    assert bootstrap.advance_restore_epoch(settings) == 1  # as the app role; the file is created
    assert bootstrap.advance_restore_epoch(settings) == 2
    assert EpochFile(path).read() == 2
    run(admin_database_url, "UPDATE restore_epoch SET epoch = 1")  # what a restore of an older backup looks like

    for _ in range(3):  # never advanced past the file by itself
        with pytest.raises(RestoreFenceRequired, match="restored from a backup"):
            advance_restore_epoch(database_url, path)
    assert run(admin_database_url, "SELECT epoch FROM restore_epoch") == [(1,)]

    assert fence(admin_database_url, path).epoch == 3
    assert bootstrap.advance_restore_epoch(settings) == 4
    path.unlink()  # the file lost: a restore can no longer be ruled out
    with pytest.raises(RestoreFenceRequired, match="missing"):
        bootstrap.advance_restore_epoch(settings)


def test_the_epoch_file_only_moves_forward(tmp_path: Path):
    epoch_file = EpochFile(tmp_path / "nested" / "epoch.json")
    assert epoch_file.read() is None
    assert epoch_file.advance_to(5) == 5
    assert epoch_file.advance_to(3) == 5
    assert epoch_file.read() == 5
