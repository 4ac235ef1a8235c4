"""A throwaway PostgreSQL primary and streaming standby, from the PostgreSQL server binaries.

    with standby_pair() as pair:   # None-safe: find_pg_bin() says first whether the binaries are there
        pair.primary_url, pair.standby_url      # superuser URLs (trust authentication, 127.0.0.1)
        pair.wait_replayed()                    # the standby has replayed everything the primary wrote
        pair.pause_replay(); pair.resume_replay()
        pair.stop_standby()

Both servers live in one temporary folder on free ports; the standby is a ``pg_basebackup -R`` copy of the
primary (physical streaming replication, hot standby). PostgreSQL refuses to run as root: when this
process is root, the binaries run as the ``postgres`` user through ``runuser``. Used by the read-scaling
tests (tests/integration/test_api_detokenize_standby.py) and ``python -m bench.read_replica``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

PG_BIN_ENV = "TOKENPOOL_PG_BIN"
RUN_AS = "postgres"
START_TIMEOUT_S = 60


def find_pg_bin() -> Path | None:
    """The folder of initdb, pg_ctl and pg_basebackup: ``TOKENPOOL_PG_BIN``, else the newest
    /usr/lib/postgresql/*/bin, else the folder of initdb on PATH; None when there is none."""
    candidates: list[Path] = []
    if os.environ.get(PG_BIN_ENV):
        candidates.append(Path(os.environ[PG_BIN_ENV]))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                         if p.parent.name.isdigit() else 0, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if all((folder / tool).exists() for tool in ("initdb", "pg_ctl", "pg_basebackup")):
            return folder
    return None


def missing_reason() -> str | None:
    """Why a pair cannot be started here (for a test's skip), or None."""
    if find_pg_bin() is None:
        return f"no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup); set {PG_BIN_ENV}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"running as root and there is no '{RUN_AS}' user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class StandbyPair:
    folder: Path
    bin: Path
    primary_port: int
    standby_port: int

    @property
    def primary_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.primary_port}/postgres"

    @property
    def standby_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.standby_port}/postgres"

    def on_standby(self, url: str) -> str:
        """``url`` (any role and database of the primary) pointed at the standby."""
        params = conninfo_to_dict(url)
        params["port"] = str(self.standby_port)
        return make_conninfo(**params)  # type: ignore[arg-type]

    def wait_replayed(self, timeout_s: float = 30.0) -> None:
        """Until the standby has replayed the primary's WAL as of now."""
        with psycopg.connect(self.primary_url, autocommit=True) as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + timeout_s
        with psycopg.connect(self.standby_url, autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()
                if row and row[0]:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the standby did not replay up to {target} within {timeout_s} s")
                time.sleep(0.05)

    def pause_replay(self) -> None:
        """The standby keeps receiving WAL but applies none: what it shows stays as of now (lag, made on purpose)."""
        with psycopg.connect(self.standby_url, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        with psycopg.connect(self.standby_url, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")

    def stop_standby(self) -> None:
        _pg_ctl(self.bin, self.folder / "standby", "stop", "-m", "immediate")

    def start_standby(self) -> None:
        _pg_ctl(self.bin, self.folder / "standby", "start", "-l", str(self.folder / "standby.log"))


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *args] if os.geteuid() == 0 else args


def _run(args: list[str]) -> None:
    done = subprocess.run(_as_postgres(args), capture_output=True, text=True, timeout=START_TIMEOUT_S * 2,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")


def _pg_ctl(bin_dir: Path, data: Path, *args: str) -> None:
    _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", str(START_TIMEOUT_S), *args])


@contextmanager
def standby_pair(*, settings: dict[str, str] | None = None) -> Iterator[StandbyPair]:
    """A running primary and streaming standby (``settings``: extra postgresql.conf lines for both); both
    stopped and their folder removed on exit."""
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    bin_dir = find_pg_bin()
    assert bin_dir is not None
    folder = Path(tempfile.mkdtemp(prefix="tokenpool-standby-pair-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam(RUN_AS)
        os.chown(folder, account.pw_uid, account.pw_gid)
    folder.chmod(0o700)
    pair = StandbyPair(folder, bin_dir, free_port(), free_port())
    primary, standby = folder / "primary", folder / "standby"
    started: list[Path] = []
    try:
        _run([str(bin_dir / "initdb"), "-D", str(primary), "-U", "postgres", "--auth=trust", "-E", "UTF8",
              "--locale=C", "--no-sync"])
        conf = {
            "listen_addresses": "'127.0.0.1'", "unix_socket_directories": f"'{folder}'", "port": str(pair.primary_port),
            "wal_level": "replica", "max_wal_senders": "5", "hot_standby": "on", "max_connections": "200",
            "shared_buffers": "'128MB'", **(settings or {}),
        }
        _append_conf(primary, conf)
        _pg_ctl(bin_dir, primary, "start", "-l", str(folder / "primary.log"))
        started.append(primary)
        _run([str(bin_dir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(pair.primary_port), "-U", "postgres",
              "-D", str(standby), "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"])
        _append_conf(standby, {"port": str(pair.standby_port)})
        _pg_ctl(bin_dir, standby, "start", "-l", str(folder / "standby.log"))
        started.append(standby)
        pair.wait_replayed()
        yield pair
    finally:
        for data in reversed(started):
            with suppress(RuntimeError, subprocess.TimeoutExpired):
                _pg_ctl(bin_dir, data, "stop", "-m", "immediate")
        shutil.rmtree(folder, ignore_errors=True)


def _append_conf(data: Path, values: dict[str, str]) -> None:
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\n# tokenpool standby pair\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
