"""Versioned migrations: numbered files in ``migrations/``, applied once each, in order.

A migration is SQL (``NNNN_name.sql``) or, where the change needs the application (encrypting rows:
the keys never reach SQL), Python (``NNNN_name.py`` with ``upgrade(conn, context)``). Each runs in its
own transaction together with the row that records it, so a failed migration leaves nothing behind.
Concurrent upgrades serialise on a lock of ``schema_migrations``. The checksum ignores SQL comment
lines: rewording a comment does not make an applied migration look changed.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from typing import TYPE_CHECKING, Protocol

import psycopg

from tokenpool.db.hosts import connect_primary, primary_url

if TYPE_CHECKING:
    from tokenpool.vault import Keyring

_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sql|py)$")


# Checksums databases recorded for migrations whose comments were reworded later (they recorded the
# whole text then): the SQL is the same, so these still match.
_REWORDED: dict[int, frozenset[str]] = {2: frozenset({"d105634bc33d320a"}), 3: frozenset({"1e8ed28787c2a3f4"})}


@dataclass(frozen=True, slots=True)
class MigrationContext:
    """What a Python migration may need besides the connection. ``keyring(conn)`` loads (or creates)
    the vault's keys; None when the caller has no key provider (then a migration that must encrypt
    rows fails with a clear message)."""

    keyring: Callable[[psycopg.Connection], Keyring] | None = None


class PythonMigration(Protocol):
    def upgrade(self, conn: psycopg.Connection, context: MigrationContext) -> None: ...

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    int         PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str = field(repr=False)  # the file's text (SQL, or the Python module's source)
    kind: str = "sql"

    @property
    def checksum(self) -> str:
        lines = self.sql.splitlines()
        if self.kind == "sql":
            lines = [line for line in lines if not line.lstrip().startswith("--")]
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]

    @property
    def full_text_checksum(self) -> str:
        """How databases migrated before comments were ignored recorded it."""
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    def apply(self, conn: psycopg.Connection, context: MigrationContext) -> None:
        if self.kind == "sql":
            conn.execute(self.sql.encode())
            return
        module: PythonMigration = importlib.import_module(f"tokenpool.db.migrations.{self.version:04d}_{self.name}")
        module.upgrade(conn, context)


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    version: int
    name: str
    applied_at: datetime | None
    checksum_matches: bool

    @property
    def applied(self) -> bool:
        return self.applied_at is not None


def available_migrations() -> list[Migration]:
    found = []
    for entry in files("tokenpool.db").joinpath("migrations").iterdir():
        match = _FILENAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8"),
                                   match.group(3)))
    return sorted(found, key=lambda m: m.version)


def _applied(conn: psycopg.Connection) -> dict[int, tuple[str, datetime]]:
    rows = conn.execute("SELECT version, checksum, applied_at FROM schema_migrations").fetchall()
    return {version: (checksum, applied_at) for version, checksum, applied_at in rows}


def upgrade(url: str, context: MigrationContext | None = None, *, target: int | None = None) -> list[Migration]:
    """Applies every pending migration (up to ``target``); returns those it applied (none when up to date)."""
    context = context or MigrationContext()
    applied_now: list[Migration] = []
    with psycopg.connect(primary_url(url), autocommit=True) as conn:
        conn.execute(_CREATE_LEDGER)
        for migration in available_migrations():
            if target is not None and migration.version > target:
                break
            with conn.transaction():
                conn.execute("LOCK TABLE schema_migrations IN SHARE ROW EXCLUSIVE MODE")
                if migration.version in _applied(conn):
                    continue
                migration.apply(conn, context)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
                applied_now.append(migration)
    return applied_now


def status(url: str) -> list[MigrationStatus]:
    """Every known migration, applied or not; DatabaseUnavailable when the database cannot be reached."""
    conn = connect_primary(url, autocommit=True)
    with conn:
        conn.execute(_CREATE_LEDGER)
        applied = _applied(conn)
    result = []
    for migration in available_migrations():
        checksum, applied_at = applied.get(migration.version, (migration.checksum, None))
        matches = checksum in {migration.checksum, migration.full_text_checksum, *_REWORDED.get(migration.version, ())}
        result.append(MigrationStatus(migration.version, migration.name, applied_at, matches))
    return result
