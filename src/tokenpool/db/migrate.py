"""Versioned migrations: numbered ``.sql`` files in ``migrations/``, applied once each, in order.

Each file runs in its own transaction together with the row that records it, so a failed migration
leaves nothing behind. Concurrent upgrades serialise on a lock of ``schema_migrations``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files

import psycopg

_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

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
    sql: str = field(repr=False)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]


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
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def _applied(conn: psycopg.Connection) -> dict[int, tuple[str, datetime]]:
    rows = conn.execute("SELECT version, checksum, applied_at FROM schema_migrations").fetchall()
    return {version: (checksum, applied_at) for version, checksum, applied_at in rows}


def upgrade(url: str) -> list[Migration]:
    """Applies every pending migration; returns those it applied (none when up to date)."""
    applied_now: list[Migration] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_CREATE_LEDGER)
        for migration in available_migrations():
            with conn.transaction():
                conn.execute("LOCK TABLE schema_migrations IN SHARE ROW EXCLUSIVE MODE")
                if migration.version in _applied(conn):
                    continue
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
                applied_now.append(migration)
    return applied_now


def status(url: str) -> list[MigrationStatus]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_CREATE_LEDGER)
        applied = _applied(conn)
    result = []
    for migration in available_migrations():
        checksum, applied_at = applied.get(migration.version, (migration.checksum, None))
        result.append(
            MigrationStatus(migration.version, migration.name, applied_at, checksum == migration.checksum)
        )
    return result
