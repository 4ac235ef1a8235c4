"""Restoring a backup never hands out a pair twice: the restore fence and the restore epoch.

The fence (``tokenpool db after-restore``, as the owner role) quarantines every pair a card may have taken
after the backup point: each AVAILABLE or RESERVED pair becomes EXPIRED, marked with the fence's id; the
refill's unfinished batches are closed (their tokens may have been loaded and handed out already). The
refill then fills the pool with new pairs.

The restore epoch (opt-in, ``TOKENPOOL_RESTORE_EPOCH_FILE``) detects a restore: a counter kept both in the
database and in a file outside it. Each process advances it (database first, then the file) at its start and,
for the service and the worker, every ``TOKENPOOL_RESTORE_EPOCH_INTERVAL_S``. A database restored from a
backup carries the epoch of its backup point, older than the file's as soon as one advance happened after
that point: the database function then refuses to advance it and the process refuses to work
(:class:`RestoreFenceRequired`) until the fence sets the database's epoch past the file's. What it cannot
detect is in docs/runbook.md (Restore from a backup).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from tokenpool.db.hosts import connect_primary, primary_url
from tokenpool.db.queries import sql
from tokenpool.observability.logging import get_logger

log = get_logger("tokenpool.db.restore_fence")

RESTORE_FENCE_REQUIRED = "RESTORE_FENCE_REQUIRED"


class RestoreFenceRequired(Exception):
    """The database was restored from a backup (or the epoch file is gone): run ``tokenpool db after-restore``."""


class EpochFile:
    """The restore epoch kept outside the database: a small JSON file, only ever moved forward.

    Writes are atomic (a new file renamed over the old one) and serialised by a lock on ``<file>.lock``, so
    processes sharing it (one host, or a shared volume with working ``flock``) never move it back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> int | None:
        """The epoch; None when the file does not exist."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return int(json.loads(text)["epoch"])

    def advance_to(self, epoch: int) -> int:
        """Sets the file to ``epoch`` unless it holds a later one; returns what it holds."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.read()
            if current is not None and current >= epoch:
                return current
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with open(temporary, "w", encoding="utf-8") as out:
                json.dump({"epoch": epoch, "written_at": datetime.now().astimezone().isoformat()}, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
            with contextlib.suppress(OSError):  # the rename's durability: best effort on odd file systems
                directory = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
            return epoch


def advance_restore_epoch(url: str, path: Path, connect_kwargs: dict[str, Any] | None = None) -> int:
    """One step of the restore epoch, as any role (the app role may): the database's, then the file's.

    Raises :class:`RestoreFenceRequired` when the database's epoch is older than the file's (restored from a
    backup), or when the file is missing while the database has advanced before (the file was lost: nothing
    can tell a restore apart then). psycopg's errors pass through (database unreachable)."""
    epoch_file = EpochFile(path)
    known = epoch_file.read()
    kwargs = {"autocommit": True, **(connect_kwargs or {})}
    with psycopg.connect(primary_url(url), **kwargs) as conn:
        row = conn.execute(sql("restore_epoch_read")).fetchone()
        current = int(row[0]) if row else 0
        if known is None and current > 0:
            raise RestoreFenceRequired(
                f"the restore epoch file {path} is missing but the database's restore epoch is {current}: a "
                "restore cannot be ruled out; run `tokenpool db after-restore` (docs/runbook.md, Restore from a "
                "backup)")
        advanced = conn.execute(sql("restore_epoch_advance"), {"known": known or 0}).fetchone()
    if advanced is None or advanced[0] is None:
        raise RestoreFenceRequired(
            f"the database was restored from a backup (its restore epoch {current} is older than {known} in {path}):"
            " run `tokenpool db after-restore` before anything hands out pairs (docs/runbook.md, Restore from a "
            "backup)")
    return epoch_file.advance_to(int(advanced[0]))


@dataclass(frozen=True, slots=True)
class FenceResult:
    fence_id: int
    fenced_at: datetime
    already_done: bool
    available: int = 0
    reserved: int = 0
    refill_batches: int = 0
    epoch: int | None = None
    system_identifier: str | None = None
    timeline_id: int | None = None

    @property
    def quarantined(self) -> int:
        return self.available + self.reserved


def fence(url: str, epoch_path: Path | None = None, *, force: bool = False) -> FenceResult:
    """As the owner role, in one transaction: quarantine every AVAILABLE and RESERVED pair (EXPIRED, with the
    fence's id), close the refill's unfinished batches, record the fence, and set the restore epoch past both
    the database's and the file's (then the file). A fence recorded since the server started is this
    restore's: without ``force`` it is reported, not repeated."""
    epoch_file = EpochFile(epoch_path) if epoch_path is not None else None
    known = (epoch_file.read() if epoch_file is not None else None) or 0
    conn = connect_primary(url, autocommit=True)
    with conn, conn.transaction():
        conn.execute(sql("restore_fence_lock"))
        if not force:
            done = conn.execute(sql("restore_fence_latest_here")).fetchone()
            if done is not None:
                return FenceResult(int(done[0]), done[1], already_done=True, available=int(done[3]))
        system_identifier: str | None = None
        timeline_id: int | None = None
        try:
            with conn.transaction():
                identity = conn.execute(sql("restore_fence_system_identifier")).fetchone()
                if identity is not None:
                    system_identifier, timeline_id = identity[0], identity[1]
        except psycopg.errors.InsufficientPrivilege:
            log.info("db.restore_fence_no_pg_control", reason="the role may not read pg_control")
        row = conn.execute(sql("restore_epoch_read")).fetchone()
        epoch = max(int(row[0]) if row else 0, known) + 1
        conn.execute(sql("restore_fence_set_epoch"), {"epoch": epoch})
        inserted = conn.execute(sql("restore_fence_insert"), {
            "operator": _operator(), "system_identifier": system_identifier, "timeline_id": timeline_id,
            "epoch": epoch}).fetchone()
        assert inserted is not None
        fence_id, fenced_at = int(inserted[0]), inserted[1]
        quarantine = sql("restore_fence_quarantine")
        available = conn.execute(quarantine, {"fence_id": fence_id, "status": "AVAILABLE"}).rowcount
        reserved = conn.execute(quarantine, {"fence_id": fence_id, "status": "RESERVED"}).rowcount
        closed = conn.execute(sql("restore_fence_close_batches")).fetchone()
        batches = int(closed[0]) if closed else 0
        conn.execute(sql("restore_fence_record_counts"), {"fence_id": fence_id, "available": available,
                                                          "reserved": reserved, "batches": batches})
    if epoch_file is not None:  # after the commit: a database ahead of the file is never taken for a restore
        epoch_file.advance_to(epoch)
    log.warning("db.restore_fenced", fence_id=fence_id, available=available, reserved=reserved,
                refill_batches=batches, epoch=epoch, system_identifier=system_identifier, timeline_id=timeline_id)
    return FenceResult(fence_id, fenced_at, already_done=False, available=available, reserved=reserved,
                       refill_batches=batches, epoch=epoch, system_identifier=system_identifier,
                       timeline_id=timeline_id)


def _operator() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container)
        return None
