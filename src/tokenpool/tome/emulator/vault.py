"""The emulator's persistent vault and ledger: one SQLite file that survives a restart.

One connection in WAL mode, guarded by a lock; the app calls these methods from worker threads so a
2,500-item batch never blocks the event loop. ``synchronous=NORMAL`` loses nothing when the process
is killed (only on power loss), which is what the chaos tests do to it. The file is owner-only (0600),
like the folders it creates (0700): it holds every token the emulator issued.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenpool.tome.contract import new_external_ref, new_internal_token

SCHEMA = """
-- Every token ever minted, per namespace. UNIQUE (ns, token) is what guarantees a token is never
-- issued twice: a random collision fails the insert and a new candidate is drawn.
CREATE TABLE IF NOT EXISTS tokens (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    ns         TEXT NOT NULL,
    token      TEXT NOT NULL,
    value      TEXT,                                  -- NULL for issued tokens: they stand for nothing
    kind       TEXT NOT NULL CHECK (kind IN ('issued', 'tokenized')),
    created_at REAL NOT NULL,
    UNIQUE (ns, token)
);
-- Tokenize is deterministic: one token per (namespace, value).
CREATE UNIQUE INDEX IF NOT EXISTS tokens_by_value ON tokens (ns, value) WHERE value IS NOT NULL;
-- Lists issued tokens in issue order for /_admin/issued (cursor = seq).
CREATE INDEX IF NOT EXISTS tokens_issued ON tokens (ns, seq) WHERE kind = 'issued';

-- Answers to issue calls by Idempotency-Key, replayed on a retry.
CREATE TABLE IF NOT EXISTS idempotency (
    ns         TEXT NOT NULL,
    key        TEXT NOT NULL,
    count      INTEGER NOT NULL,
    tokens     TEXT NOT NULL,                         -- JSON array
    created_at REAL NOT NULL,
    PRIMARY KEY (ns, key)
);

-- The ledger: counters by namespace, operation and metric (requests, items, status:NNN, fault:NAME).
CREATE TABLE IF NOT EXISTS ledger (
    ns        TEXT NOT NULL,
    operation TEXT NOT NULL,
    metric    TEXT NOT NULL,
    count     INTEGER NOT NULL,
    PRIMARY KEY (ns, operation, metric)
) WITHOUT ROWID;
"""

_MAX_DRAWS = 100


class IdempotencyMismatch(Exception):
    """The key was used before for a different request."""


@dataclass(frozen=True, slots=True)
class IssueResult:
    tokens: list[str]
    replayed: bool


# SQLite's side files: made with the database file's mode (the unix VFS copies it), tightened here too when
# an older emulator left them open to others.
_SIDE_FILES = ("-wal", "-shm", "-journal")


def _create_private(path: Path) -> None:
    """The vault file owner-only (0600), its missing folders too (0700): the emulator's tokens are the
    same kind of secret as TOME's. An existing file others could read (an older emulator's) is tightened."""
    missing = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for file in (path, *(path.with_name(path.name + suffix) for suffix in _SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)


class Vault:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        _create_private(self.path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- Operations ------------------------------------------------------------------------------------

    def issue(self, ns: str, count: int, idempotency_key: str | None = None) -> IssueResult:
        with self._lock, self._transaction():
            if idempotency_key is not None:
                row = self._conn.execute(
                    "SELECT count, tokens FROM idempotency WHERE ns = ? AND key = ?", (ns, idempotency_key)
                ).fetchone()
                if row is not None:
                    if row[0] != count:
                        raise IdempotencyMismatch(
                            f"Idempotency-Key was first used to issue {row[0]} tokens, not {count}"
                        )
                    return IssueResult(json.loads(row[1]), replayed=True)
            now = time.time()
            tokens = [self._insert_new(ns, None, "issued", now, new_internal_token) for _ in range(count)]
            if idempotency_key is not None:
                self._conn.execute(
                    "INSERT INTO idempotency (ns, key, count, tokens, created_at) VALUES (?, ?, ?, ?, ?)",
                    (ns, idempotency_key, count, json.dumps(tokens), now),
                )
            return IssueResult(tokens, replayed=False)

    def tokenize(self, ns: str, values: Sequence[str]) -> list[str]:
        with self._lock, self._transaction():
            known = self._lookup(ns, "value", "token", values)
            now = time.time()
            for value in values:
                if value not in known:
                    known[value] = self._insert_new(ns, value, "tokenized", now, new_external_ref)
            return [known[value] for value in values]

    def detokenize(self, ns: str, tokens: Sequence[str]) -> list[str | None]:
        with self._lock:
            known = self._lookup(ns, "token", "value", tokens)
        return [known.get(token) for token in tokens]

    def issued(self, ns: str, limit: int, after_seq: int = 0) -> tuple[list[str], int | None]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, token FROM tokens WHERE ns = ? AND kind = 'issued' AND seq > ? ORDER BY seq LIMIT ?",
                (ns, after_seq, limit + 1),
            ).fetchall()
        page = rows[:limit]
        next_seq = page[-1][0] if len(rows) > limit else None
        return [token for _, token in page], next_seq

    # --- Ledger ---------------------------------------------------------------------------------------

    def count(self, ns: str, operation: str, increments: dict[str, int]) -> None:
        with self._lock, self._transaction():
            self._conn.executemany(
                "INSERT INTO ledger (ns, operation, metric, count) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (ns, operation, metric) DO UPDATE SET count = count + excluded.count",
                [(ns, operation, metric, n) for metric, n in increments.items()],
            )

    def ledger(self) -> list[tuple[str, str, str, int]]:
        with self._lock:
            return self._conn.execute("SELECT ns, operation, metric, count FROM ledger ORDER BY 1, 2, 3").fetchall()

    # --- internals -----------------------------------------------------------------------------------

    def _transaction(self) -> sqlite3.Connection:
        # sqlite3.Connection as a context manager commits or rolls back; BEGIN makes it one transaction.
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def _lookup(self, ns: str, key_col: str, out_col: str, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # stays under SQLite's bound-parameter limit
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT {key_col}, {out_col} FROM tokens WHERE ns = ? AND {key_col} IN ({marks})",
                (ns, *chunk),
            ).fetchall()
            found.update({k: v for k, v in rows if v is not None})
        return found

    def _insert_new(self, ns: str, value: str | None, kind: str, now: float, draw: Callable[[], str]) -> str:
        for _ in range(_MAX_DRAWS):
            token = draw()
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO tokens (ns, token, value, kind, created_at) VALUES (?, ?, ?, ?, ?)",
                (ns, token, value, kind, now),
            )
            if cursor.rowcount == 1:
                return token
        raise RuntimeError(f"no free token after {_MAX_DRAWS} draws in namespace {ns}")
