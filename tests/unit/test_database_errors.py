"""How a database failure is labelled: SERVICE_BUSY (overload, the database answers) or DATABASE_UNAVAILABLE.

The pool here is a stand-in with the three facts the decision reads; the real classification under a
real burst and a real outage is proven in tests/integration/test_api_database_outage.py and the chaos
suite (scenario 3).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from tokenpool.db.database import Database
from tokenpool.db.errors import DatabaseBusy, DatabaseUnavailable

BOUND_S = 2.0


@dataclass
class _Pool:
    in_use: int
    max_size: int
    answered_s_ago: float
    checks: int = 0

    def answered_within(self, seconds: float) -> bool:
        return self.answered_s_ago <= seconds

    async def check(self) -> None:
        self.checks += 1


async def _label(pool: _Pool, error: Exception) -> str:
    database = Database(pool, BOUND_S)  # type: ignore[arg-type]
    with pytest.raises(DatabaseUnavailable) as raised:
        async with database.guard():
            raise error
    return raised.value.code


@pytest.mark.parametrize(
    ("pool", "error", "code"),
    [
        # A burst: every connection at work, others came back a moment ago.
        (_Pool(in_use=10, max_size=10, answered_s_ago=0.1), PoolTimeout("wait"), "SERVICE_BUSY"),
        # Every connection checked out and nothing came back for the whole bound: hung or partitioned.
        (_Pool(in_use=10, max_size=10, answered_s_ago=30.0), PoolTimeout("wait"), "DATABASE_UNAVAILABLE"),
        # Connections left to open, yet none came: the pool cannot connect.
        (_Pool(in_use=2, max_size=10, answered_s_ago=0.1), PoolTimeout("wait"), "DATABASE_UNAVAILABLE"),
        # This request's own statement was slow while the database kept answering others.
        (_Pool(in_use=4, max_size=10, answered_s_ago=0.5), TimeoutError(), "SERVICE_BUSY"),
        (_Pool(in_use=4, max_size=10, answered_s_ago=9.0), TimeoutError(), "DATABASE_UNAVAILABLE"),
        # A broken connection is an outage whatever else is going on.
        (_Pool(in_use=10, max_size=10, answered_s_ago=0.1), psycopg.OperationalError("closed"),
         "DATABASE_UNAVAILABLE"),
    ],
)
async def test_a_failure_is_busy_only_while_the_database_still_answers(pool: _Pool, error: Any, code: str):
    assert await _label(pool, error) == code


async def test_only_a_broken_connection_makes_the_pool_check_its_idle_connections():
    timed_out = _Pool(in_use=2, max_size=10, answered_s_ago=30.0)
    broken = _Pool(in_use=2, max_size=10, answered_s_ago=30.0)
    assert await _label(timed_out, TimeoutError()) == "DATABASE_UNAVAILABLE"
    assert await _label(broken, psycopg.OperationalError("server closed the connection")) == "DATABASE_UNAVAILABLE"
    await asyncio.sleep(0)  # let the scheduled check run
    assert (timed_out.checks, broken.checks) == (0, 1)


def test_service_busy_is_a_database_unavailable_for_every_fallback():
    assert issubclass(DatabaseBusy, DatabaseUnavailable)
