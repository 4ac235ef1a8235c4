"""Retention without a database: the policy, its limits, the chunk loop and the statements' shape."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from tokenpool.db.queries import load
from tokenpool.db.retention import PruneReport, TablePrune, delete_in_chunks, retention_policy
from tokenpool.settings import Settings


def test_the_default_policy_keeps_keys_a_week_audit_over_a_year_and_refill_history_a_quarter():
    assert retention_policy(Settings()) == {
        "idempotency_keys": timedelta(days=7),
        "detokenize_audit": timedelta(days=400),
        "refill_runs": timedelta(days=90),
        "refill_batches": timedelta(days=90),
    }


def test_done_batches_are_kept_at_least_as_long_as_tome_may_replay_their_key():
    settings = Settings(refill_idempotency_retention_s=120 * 86_400)
    assert retention_policy(settings)["refill_batches"] == timedelta(days=120)


@pytest.mark.parametrize(
    "setting",
    [
        {"retention_idempotency_keys_days": 0.5},  # shorter than the 24 h a client may retry within
        {"retention_detokenize_audit_days": 365},  # PCI DSS 10.5.1: at least 12 months
        {"retention_chunk_size": 0},
        {"worker_prune_interval_s": 0},
    ],
)
def test_settings_refuse_a_retention_below_its_floor(setting):
    with pytest.raises(ValidationError):
        Settings(**setting)


def test_retention_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("TOKENPOOL_RETENTION_IDEMPOTENCY_KEYS_DAYS", "14")
    monkeypatch.setenv("TOKENPOOL_WORKER_PRUNE_INTERVAL_S", "3600")
    settings = Settings()
    assert (settings.retention_idempotency_keys_days, settings.worker_prune_interval_s) == (14, 3600)


def _deleter(chunks: list[int]):
    remaining = iter(chunks)

    async def delete_chunk() -> int:
        return next(remaining)  # StopIteration: the loop asked for more chunks than it should

    return delete_chunk


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([2, 2, 1], (5, 3)),  # a short chunk ends the loop
        ([2, 2, 0], (4, 3)),  # a full last chunk needs one more, empty, to know it was the last
        ([0], (0, 1)),
    ],
)
async def test_delete_in_chunks_repeats_until_a_chunk_comes_back_short(chunks, expected):
    delete_chunk = _deleter(chunks)
    assert await delete_in_chunks(delete_chunk, 2) == expected


async def test_delete_in_chunks_stops_between_chunks_when_asked():
    stop = asyncio.Event()

    async def delete_chunk() -> int:
        stop.set()  # e.g. SIGTERM while this chunk runs
        return 2

    assert await delete_in_chunks(delete_chunk, 2, stop) == (2, 1)


def test_every_table_has_a_bounded_delete_and_a_count_and_none_touches_token_pool():
    queries = load()
    for table in retention_policy(Settings()):
        delete, count = queries[f"retention_delete_{table}"], queries[f"retention_count_{table}"]
        assert "%(cutoff)s" in count
        if table == "detokenize_audit":  # a function: it moves the hash chain's watermark with the rows
            assert "tokenpool_prune_detokenize_audit(%(cutoff)s::timestamptz, %(limit)s::integer)" in delete
            continue
        assert f"DELETE FROM {table}" in delete
        assert "LIMIT %(limit)s" in delete
        assert "SKIP LOCKED" in delete
        assert "%(cutoff)s" in delete
    retention_sql = " ".join(body for name, body in queries.items() if name.startswith("retention_"))
    assert "token_pool" not in retention_sql


def test_only_done_batches_and_finished_runs_can_match():
    queries = load()
    assert "b.state = 'done'" in queries["retention_delete_refill_batches"]
    assert "finished_at < %(cutoff)s" in queries["retention_delete_refill_runs"]


def test_a_report_is_ok_only_when_no_table_failed_and_reads_as_json():
    cutoff = datetime(2026, 1, 1, tzinfo=UTC)
    report = PruneReport(False, (TablePrune("refill_runs", timedelta(days=90), cutoff, rows=3, chunks=1),
                                 TablePrune("detokenize_audit", timedelta(days=400), cutoff, error="boom")))
    assert not report.ok
    assert report.counts == {"refill_runs": 3, "detokenize_audit": 0}
    assert report.as_dict()["tables"]["refill_runs"] == {
        "rows": 3, "chunks": 1, "keep_days": 90.0, "cutoff": "2026-01-01T00:00:00+00:00", "error": None}
