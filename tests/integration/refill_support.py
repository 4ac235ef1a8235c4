"""Helpers shared by the refill, worker, health and Lambda tests (not a test module)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from tests.fixtures.database import pool_pairs
from tests.fixtures.tome import FAST_TOME_SETTINGS, TomeEmulator
from tokenpool import bootstrap
from tokenpool.refill.job import RefillDeps
from tokenpool.settings import Settings

# Small, fast runs: a few batches of 10, a lease short enough to lapse within a test, a budget that
# does not slow the tests down unless a test wants it to.
FAST_REFILL_SETTINGS: dict[str, Any] = {
    "refill_target": 40,
    "refill_batch_size": 10,
    "refill_tome_max_rps": 1_000.0,
    "refill_tome_max_in_flight": 2,
    "refill_lease_ttl_s": 2.0,
    "refill_sample_min_interval_s": 0.0,
}


def refill_settings(settings: Settings, tome: TomeEmulator, **overrides: Any) -> Settings:
    """The test database + the emulator, with namespaces of their own so the emulator's ledger of
    issued tokens holds exactly this test's tokens."""
    tag = uuid.uuid4().hex[:10]
    update = {"tome_url": tome.url, "tome_ns1": f"NS1-{tag}", "tome_ns2": f"NS2-{tag}",
              **FAST_TOME_SETTINGS, **FAST_REFILL_SETTINGS, **overrides}
    return settings.model_copy(update=update)


@asynccontextmanager
async def refill_deps(settings: Settings) -> AsyncIterator[RefillDeps]:
    async with bootstrap.open_refill(settings) as deps:
        yield deps


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a child ``tokenpool`` process with these settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOKENPOOL_")}
    for name, value in settings.model_dump(exclude_defaults=True).items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"TOKENPOOL_{name.upper()}"] = str(value)
    env["TOKENPOOL_LOG_JSON"] = "true"
    env.update(extra)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tokenpool.entrypoints.cli_refill", *args]


def pool_tokens(database_url: str, pool: str) -> list[str]:
    """The internal tokens of ``pool``'s pairs, decrypted."""
    return list(pool_pairs(database_url, pool).values())


def journal_leftovers(database_url: str, pool: str) -> tuple[int, int]:
    """(unfinished batches, pending tokens) of ``pool``."""
    with psycopg.connect(database_url) as conn:
        batches = conn.execute(
            "SELECT count(*) FROM refill_batches WHERE pool = %s AND state <> 'done'", (pool,)
        ).fetchone()
        pending = conn.execute(
            "SELECT count(*) FROM refill_pending_tokens p JOIN refill_batches b USING (batch_id) WHERE b.pool = %s",
            (pool,),
        ).fetchone()
    assert batches is not None
    assert pending is not None
    return int(batches[0]), int(pending[0])
