"""Fixtures of the failover suite: a real HA PostgreSQL cluster (pg_auto_failover: monitor + primary +
synchronous standby on loopback, ``ha-cluster.sh`` next to this file), tokenpool's database on it, and the
chaos suite's stack (real service and worker processes) pointed at it through a multi-host URL.

The cluster is the session's own: a fresh temporary folder (``tokenpool-pgaf-<pid>-*``) and three free ports,
so two runs on one machine do not collide; folders of runs that died are stopped and removed. The Debian
packages are installed when missing and we are root; otherwise the tests skip, saying why.

Every ``failover:`` line a test records is printed in the terminal summary (plain ``pytest`` output).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

# The chaos suite's TOME emulator fixtures and process settings (imported: pytest registers them here too).
from tests.chaos.conftest import CHAOS_SETTINGS, chaos_tome, tome_for_chaos  # noqa: F401
from tests.chaos.report import ChaosReport
from tests.chaos.stack import Stack, running_stack
from tests.fixtures.database import SessionRoles, _pid_alive
from tests.fixtures.tome import TomeEmulator
from tokenpool import bootstrap
from tokenpool.settings import Settings

HA_SCRIPT = Path(__file__).with_name("ha-cluster.sh")
PACKAGES = ("pg-auto-failover-cli", "postgresql-15-auto-failover")
PGAF_EXTENSION = Path("/usr/share/postgresql/15/extension/pgautofailover.control")
BASE_PREFIX = "tokenpool-pgaf"
START_TIMEOUT_S = 120.0
DATABASE = "app"  # the database pg_auto_failover creates on the data nodes (PGAF_DB)


def _packages_present() -> bool:
    return shutil.which("pg_autoctl") is not None and PGAF_EXTENSION.exists() and shutil.which("psql") is not None


def _ensure_packages() -> str | None:
    """None when pg_auto_failover is usable, else why not (the skip reason)."""
    if _packages_present():
        return None
    if os.geteuid() != 0:
        return f"pg_auto_failover is not installed and we are not root: apt-get install {' '.join(PACKAGES)}"
    if shutil.which("apt-get") is None:
        return f"pg_auto_failover is not installed and there is no apt-get ({' '.join(PACKAGES)})"
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300",
               "-o", "Acquire::Retries=3", *PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(install, env=env, capture_output=True, check=False, timeout=600)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=300"], env=env, capture_output=True,
                       check=False, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, check=False, timeout=600)
    if done.returncode != 0 or not _packages_present():
        return f"could not install {' '.join(PACKAGES)}: {done.stderr.decode(errors='replace')[-300:]}"
    return None


def _free_port_triple() -> int:
    """A port P with P, P+1, P+2 free on 127.0.0.1 (monitor, node1, node2)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 40_000)
        sockets: list[socket.socket] = []
        try:
            for port in (base, base + 1, base + 2):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no three consecutive free ports")


@dataclass
class HaCluster:
    """One pg_auto_failover formation driven through ``ha-cluster.sh``."""

    base: Path
    port: int  # the monitor's; node1 = port + 1, node2 = port + 2
    started_in_s: float = 0.0

    @property
    def node_ports(self) -> tuple[int, int]:
        return self.port + 1, self.port + 2

    def run(self, *args: str, timeout_s: float = 60.0) -> str:
        env = {**os.environ, "PGAF_BASE": str(self.base), "PGAF_PORT": str(self.port), "PGAF_TUNE": "fast"}
        done = subprocess.run([str(HA_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ha-cluster.sh {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
        return done.stdout.strip()

    def url(self, user: str, database: str = DATABASE, password: str | None = None) -> str:
        """A multi-host URL: libpq tries both data nodes and keeps the one that accepts writes."""
        auth = quote(user) + (f":{quote(password, safe='')}" if password else "")
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.node_ports)
        return f"postgresql://{auth}@{hosts}/{database}?target_session_attrs=read-write&connect_timeout=2"

    def primary(self) -> str:
        return self.run("primary", timeout_s=15.0)

    def logs(self) -> str:
        parts = []
        for log in sorted((self.base / "logs").glob("*.log")):
            with contextlib.suppress(OSError):
                parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}")
        return "\n".join(parts)


def _remove_stale_clusters() -> None:
    for stale in Path(tempfile.gettempdir()).glob(f"{BASE_PREFIX}-*"):
        pid = stale.name.split("-")[2] if stale.name.count("-") >= 3 else ""
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(Exception):
                HaCluster(stale, 1).run("destroy", timeout_s=60.0)
            shutil.rmtree(stale, ignore_errors=True)


@pytest.fixture(scope="session")
def ha_cluster() -> Iterator[HaCluster]:
    reason = _ensure_packages()
    if reason:
        pytest.skip(reason)
    _remove_stale_clusters()
    base = Path(tempfile.mkdtemp(prefix=f"{BASE_PREFIX}-{os.getpid()}-"))
    os.chmod(base, 0o755)  # ha-cluster.sh hands it to the postgres user when we are root
    cluster = HaCluster(base, _free_port_triple())
    try:
        started = time.monotonic()
        try:
            cluster.run("start", timeout_s=START_TIMEOUT_S)
        except RuntimeError as error:
            raise RuntimeError(f"{error}\n{cluster.logs()}") from error
        cluster.started_in_s = round(time.monotonic() - started, 1)
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.run("stop", timeout_s=120.0)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class HaDatabase:
    cluster: HaCluster
    roles: SessionRoles
    name: str

    def app_url(self) -> str:
        return self.cluster.url(self.roles.app, self.name, self.roles.passwords[self.roles.app])

    def owner_url(self) -> str:
        return self.cluster.url(self.roles.owner, self.name, self.roles.passwords[self.roles.owner])


@pytest.fixture
def ha_database(ha_cluster: HaCluster) -> Iterator[HaDatabase]:
    """A database of its own on the cluster, as ``tokenpool db upgrade`` makes it: an owner role that migrates
    it and an app role with only the grants (roles and data reach the standby by replication)."""
    roles = SessionRoles(ha_cluster.url("postgres"))
    roles.create()
    database = HaDatabase(ha_cluster, roles, f"tokenpool_{uuid.uuid4().hex[:10]}")
    roles.create_database(database.name)
    yield database
    with contextlib.suppress(Exception):
        roles.drop()


@pytest.fixture
def make_ha_stack(ha_database: HaDatabase, tome_for_chaos: TomeEmulator, tmp_path: Path) -> Iterator[Any]:  # noqa: F811
    """``make_ha_stack(**settings) -> Stack``: the chaos stack on the HA database (migrated, keys, grants), TOME
    namespaces of its own, no process yet. Every process gets the multi-host URL."""
    contexts: list[Any] = []

    def make(**overrides: Any) -> Stack:
        tag = uuid.uuid4().hex[:10]
        database_url = ha_database.app_url()
        settings = Settings(database_url=database_url, database_admin_url=ha_database.owner_url(),  # type: ignore[arg-type]
                            database_app_role=ha_database.roles.app, tome_url=tome_for_chaos.url,
                            tome_ns1=f"NS1-{tag}", tome_ns2=f"NS2-{tag}", **{**CHAOS_SETTINGS, **overrides})
        bootstrap.upgrade_database(settings)
        context = running_stack(settings, database_url, tome_for_chaos, tmp_path / f"stack-{tag}")
        contexts.append(context)
        return context.__enter__()

    yield make
    for context in reversed(contexts):
        context.__exit__(None, None, None)


_LINES_KEY = pytest.StashKey[list[str]]()
_REPORT_KEY = pytest.StashKey[ChaosReport]()


@pytest.fixture
def failover_lines(request: pytest.FixtureRequest) -> list[str]:
    """Append a ``failover: ...`` line; the terminal summary prints them all."""
    return request.config.stash.setdefault(_LINES_KEY, [])


@pytest.fixture(scope="session")
def failover_report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ChaosReport:
    """Every check and note of each run, as the chaos suite writes them (``<basetemp>/failover-report/``)."""
    report = ChaosReport(tmp_path_factory.getbasetemp() / "failover-report")
    request.config.stash[_REPORT_KEY] = report
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(_LINES_KEY, None)
    if lines:
        terminalreporter.write_sep("-", "primary failover")
        for line in lines:
            terminalreporter.write_line(line)
    report = config.stash.get(_REPORT_KEY, None)
    if report is not None and report.results:
        as_json, as_md = report.write()
        terminalreporter.write_line(f"details: {as_md} {as_json}")
