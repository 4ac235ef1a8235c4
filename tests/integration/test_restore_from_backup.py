"""Restoring a physical backup never hands out a pair twice: a real PostgreSQL 15 server of the test's own,
a real base backup (pg_basebackup), cards made after it, the restore into a new data folder, the detection
(the restore epoch) and the fence (`tokenpool db after-restore`).

Needs the PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) in TOKENPOOL_TEST_PG_BIN, default
/usr/lib/postgresql/15/bin; run as root, the server runs as the OS user ``postgres`` (runuser).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from tests.fixtures.tome import free_port
from tests.integration.refill_support import env_for
from tokenpool import bootstrap
from tokenpool.db import migrate, roles
from tokenpool.db.restore_fence import RestoreFenceRequired
from tokenpool.db.vault_store import ensure_keys
from tokenpool.pool import PairStatus
from tokenpool.pool.synthetic import synthetic_pairs
from tokenpool.settings import Settings
from tokenpool.vault import key_provider_from_settings

PG_BIN = Path(os.environ.get("TOKENPOOL_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
_NEEDED = ("initdb", "pg_ctl", "pg_basebackup")


def _server_user() -> str | None:
    """The OS user the server runs as: this one, or ``postgres`` when this is root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "missing"
    return "postgres"


_missing = [name for name in _NEEDED if not (PG_BIN / name).exists()]
pytestmark = [
    pytest.mark.skipif(bool(_missing), reason=f"PostgreSQL server binaries missing in {PG_BIN}: {', '.join(_missing)} "
                       "(set TOKENPOOL_TEST_PG_BIN)"),
    pytest.mark.skipif(_server_user() == "missing", reason="run as root, and no OS user 'postgres' to run the server"),
]


class Server:
    """A throwaway PostgreSQL server: one data folder at a time, on one port, trust authentication."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.user = _server_user()

    def run(self, *args: str) -> None:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def own(self, path: Path) -> None:
        if self.user is not None:
            shutil.chown(path, self.user, self.user)

    def initdb(self, data: Path) -> None:
        data.mkdir(mode=0o700)
        self.own(data)
        self.run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions")

    def start(self, data: Path) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.folder}"
                   " -c wal_level=replica -c max_wal_senders=4 -c fsync=off")
        self.run("pg_ctl", "-D", str(data), "-o", options, "-l", str(self.folder / f"{data.name}.log"), "-w", "start")

    def stop(self, data: Path) -> None:
        self.run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")

    def base_backup(self, into: Path) -> None:
        self.run("pg_basebackup", "-D", str(into), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                 "-X", "stream", "-c", "fast")

    def url(self, user: str = "postgres", password: str | None = None, dbname: str = "postgres") -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"


@pytest.fixture
def server() -> Iterator[Server]:
    folder = Path(tempfile.mkdtemp(prefix="tokenpool-restore-"))
    folder.chmod(0o755)
    created = Server(folder)
    created.own(folder)
    running: list[Path] = []
    created.start = _tracking(created.start, running)  # type: ignore[method-assign]
    created.stop = _untracking(created.stop, running)  # type: ignore[method-assign]
    try:
        yield created
    finally:
        for data in running:
            subprocess.run(["runuser", "-u", created.user, "--", str(PG_BIN / "pg_ctl"), "-D", str(data), "-m",
                            "immediate", "stop"] if created.user else
                           [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _tracking(start, running):  # type: ignore[no-untyped-def]
    def wrapped(data: Path) -> None:
        start(data)
        running.append(data)
    return wrapped


def _untracking(stop, running):  # type: ignore[no-untyped-def]
    def wrapped(data: Path) -> None:
        stop(data)
        running.remove(data)
    return wrapped


def _tokenpool(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``tokenpool`` command, as an operator or a scheduler runs it, with these settings."""
    return subprocess.run([sys.executable, "-m", "tokenpool", *args], env=env_for(settings), capture_output=True,
                          text=True, timeout=120, check=False)


def _statuses(owner_url: str, refs: set[str]) -> dict[str, str]:
    with psycopg.connect(owner_url) as conn:
        rows = conn.execute("SELECT external_ref, status FROM token_pool WHERE external_ref = ANY(%s)",
                            (list(refs),)).fetchall()
    return dict(rows)


async def test_a_restored_backup_hands_out_no_pair_used_after_its_backup_point(server: Server, tome_settings: Settings):
    # A server of its own, migrated as production is: an owner role and an app role with db/grants.sql.
    first = server.folder / "data-original"
    server.initdb(first)
    server.start(first)
    owner, app, database = "tokenpool_owner", "tokenpool_app", "tokenpool"
    passwords = {owner: secrets.token_urlsafe(16), app: secrets.token_urlsafe(16)}
    with psycopg.connect(server.url(), autocommit=True) as conn:
        for role, password in passwords.items():
            roles.create_login_role(conn, role, password)
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(owner)))
    owner_url, app_url = server.url(owner, passwords[owner], database), server.url(app, passwords[app], database)
    settings = Settings(**{
        **tome_settings.model_dump(exclude_defaults=True), "home": server.folder / "home", "database_url": app_url,
        "database_admin_url": owner_url, "database_app_role": app,
        "restore_epoch_file": server.folder / "outside" / "restore-epoch.json"})
    migrate.upgrade(owner_url)
    ensure_keys(owner_url, key_provider_from_settings(settings))
    roles.apply_grants(owner_url, app)

    async with bootstrap.open_backend(app_url, settings, max_size=2) as backend:
        store = backend.store
        await store.add_pairs("default", synthetic_pairs(20), uuid.uuid4())
        assert bootstrap.advance_restore_epoch(settings) == 1  # a process started (service, refill, worker)
        held = await store.reserve_many("default", 2, 600)  # reservations open at the backup point

        server.base_backup(server.folder / "backup")

        # After the backup point: cards take 5 more pairs and the 2 held ones; the service's epoch advances.
        after_backup = {r.external_ref: r.internal_token for r in held}
        for reservation in [*held, *await store.reserve_many("default", 5, 600)]:
            await store.commit(reservation.reservation_id, f"card-{reservation.external_ref}")
            after_backup[reservation.external_ref] = reservation.internal_token
        assert len(after_backup) == 7
        assert bootstrap.advance_restore_epoch(settings) == 2
    server.stop(first)

    # The restore: the backup into a new data folder, started (crash recovery from its backup_label).
    restored = server.folder / "data-restored"
    shutil.copytree(server.folder / "backup", restored)
    for path in [restored, *restored.rglob("*")]:
        server.own(path)
    restored.chmod(0o700)
    server.start(restored)

    # The hazard: the post-backup card pairs are free or held again in the restored database.
    assert set(_statuses(owner_url, set(after_backup)).values()) == {"AVAILABLE", "RESERVED"}

    # Detection on: every process refuses before the fence. The refill (CLI), the service (/readyz 503).
    with pytest.raises(RestoreFenceRequired, match="restored from a backup"):
        bootstrap.advance_restore_epoch(settings)
    refill = _tokenpool(settings, "refill", "--pool", "default", "--count", "5")
    assert refill.returncode == 5, refill.stderr
    assert "refused: the database was restored from a backup" in " ".join(refill.stderr.split())
    with TestClient(bootstrap.create_service_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["code"] == "RESTORE_FENCE_REQUIRED"
        assert client.get("/healthz").status_code == 200

    # The fence, as the operator runs it: before starting anything.
    fenced = _tokenpool(settings, "db", "after-restore")
    assert fenced.returncode == 0, fenced.stderr
    assert "quarantined 20 pairs (18 available, 2 reserved)" in " ".join(fenced.stdout.split())
    again = _tokenpool(settings, "db", "after-restore")
    assert again.returncode == 0
    assert "restore fence already done" in " ".join(again.stdout.split())

    # Nothing the restore brought back is claimable; the refill refills with new TOME pairs.
    assert set(_statuses(owner_url, set(after_backup)).values()) == {"EXPIRED"}
    refill = _tokenpool(settings, "refill", "--pool", "default", "--count", "5")
    assert refill.returncode == 0, refill.stderr
    async with bootstrap.open_backend(app_url, settings, max_size=2) as backend:
        claimable = await backend.store.reserve_many("default", 1000, 600)
        assert len(claimable) == 5
        assert not {r.external_ref for r in claimable} & set(after_backup)
        assert not {r.internal_token for r in claimable} & set(after_backup.values())
        stats = await backend.store.exact_stats("default")
        assert stats.count(PairStatus.EXPIRED) == 20
        assert stats.count(PairStatus.USED) == 0
    with TestClient(bootstrap.create_service_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
