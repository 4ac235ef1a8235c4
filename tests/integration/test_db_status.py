"""`tokenpool db status`, the deploy gate: each state of the schema has its exit code (see its --help)."""

from __future__ import annotations

import subprocess
import sys

import psycopg

from tests.integration.refill_support import env_for
from tokenpool.settings import Settings


def db_status(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokenpool", "db", "status"], env={**env, "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=60, check=False)


def test_each_state_of_the_schema_has_its_exit_code(settings: Settings, admin_database_url: str) -> None:
    env = env_for(settings)
    assert db_status(env).returncode == 0

    with psycopg.connect(admin_database_url, autocommit=True) as conn:
        last = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        assert last is not None
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", last)
    pending = db_status(env)
    assert pending.returncode == 1
    assert "pending" in pending.stdout

    with psycopg.connect(admin_database_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    changed = db_status(env)
    assert changed.returncode == 3, "a changed migration wins over a pending one: `db upgrade` cannot fix it"
    assert "changed since applied" in changed.stdout


def test_an_unreachable_database_is_exit_4_in_one_line(settings: Settings) -> None:
    nowhere = "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2"
    env = env_for(settings.model_copy(update={"database_url": None, "database_admin_url": nowhere}))
    done = db_status(env)
    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        next(line for line in done.stderr.splitlines() if "could not be reached" in line)
    ]
