"""`tokenpool run` as a user runs it (real processes): nothing reachable from the network by default, the
emulator behind a token, ports chosen or checked before anything starts, one run per home, two runs side
by side, and the demo key revoked when it stops.

The runs use a database of their own on the test server (TOKENPOOL_DATABASE_URL): an embedded PostgreSQL
per run would cost far more and is not what these tests are about; the tests that must show no server was
started leave TOKENPOOL_DATABASE_URL unset and look for its data folder.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.fixtures.database import SessionRoles
from tests.fixtures.network import accepts_connections, non_loopback_ipv4

UP_TIMEOUT_S = 120.0  # a loaded CI box; typically 10-15 s
STOP_TIMEOUT_S = 60.0
BANNER_END = "Ctrl-C stops everything."


def base_env(home: Path) -> dict[str, str]:
    """This machine's environment without any TOKENPOOL_ setting but the vault's key file, and ``home``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOKENPOOL_")}
    env.update(TOKENPOOL_HOME=str(home), TOKENPOOL_VAULT_LOCAL_KEY_FILE=os.environ["TOKENPOOL_VAULT_LOCAL_KEY_FILE"],
               PYTHONUNBUFFERED="1", COLUMNS="200")
    return env


@dataclass
class Database:
    """A database of its own on the test server (a copy of the migrated template), for one run."""

    roles: SessionRoles
    name: str

    @property
    def app_url(self) -> str:
        return self.roles.url(self.roles.app, self.name)

    @property
    def owner_url(self) -> str:
        return self.roles.url(self.roles.owner, self.name)

    def env(self, home: Path) -> dict[str, str]:
        return {**base_env(home), "TOKENPOOL_DATABASE_URL": self.app_url,
                "TOKENPOOL_DATABASE_ADMIN_URL": self.owner_url, "TOKENPOOL_DATABASE_APP_ROLE": self.roles.app,
                "TOKENPOOL_REFILL_TARGET": "50"}

    def demo_keys(self) -> list[tuple[str, bool]]:
        """(name, revoked) of every demo key."""
        with psycopg.connect(self.owner_url) as conn:
            rows = conn.execute("SELECT name, revoked_at IS NOT NULL FROM api_keys WHERE name LIKE 'demo-%' "
                                "ORDER BY created_at").fetchall()
        return [(name, revoked) for name, revoked in rows]


@pytest.fixture(scope="module")
def databases(session_roles: SessionRoles) -> Iterator[list[Database]]:
    """The databases this module made (``new_database``), dropped at its end."""
    made: list[Database] = []
    yield made
    for database in made:
        session_roles.drop_database(database.name)


def new_database(databases: list[Database], session_roles: SessionRoles, template_database: str) -> Database:
    name = f"tokenpool_run_{uuid.uuid4().hex[:12]}"
    session_roles.create_database(name, template=template_database)
    databases.append(Database(session_roles, name))
    return databases[-1]


@dataclass
class RunningSystem:
    """A `tokenpool run` process and what it printed."""

    process: subprocess.Popen[str]
    home: Path
    lines: list[str] = field(default_factory=list)
    up: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, env: dict[str, str], *args: str) -> RunningSystem:
        process = subprocess.Popen([sys.executable, "-m", "tokenpool", "run", *args], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        system = cls(process, Path(env["TOKENPOOL_HOME"]))
        threading.Thread(target=system._read, daemon=True).start()
        return system

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.strip() == BANNER_END:
                self.up.set()
        self.up.set()  # it ended: whoever waits must not wait longer

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_up(self) -> RunningSystem:
        if not self.up.wait(UP_TIMEOUT_S) or self.process.poll() is not None:
            self.stop()
            raise AssertionError(f"`tokenpool run` did not come up:\n{self.output}")
        return self

    def printed(self, pattern: str) -> str:
        """The first group of ``pattern`` in the output."""
        match = re.search(pattern, self.output, re.MULTILINE)
        assert match is not None, f"{pattern!r} not in:\n{self.output}"
        return match.group(1)

    @property
    def api(self) -> str:
        return self.printed(r"^  API +(http://\S+)")

    @property
    def key(self) -> str:
        return self.printed(r"^  demo API key +(\S+)")

    @property
    def worker_metrics(self) -> str:
        return self.printed(r"^  worker +(http://\S+)")

    @property
    def emulator(self) -> str:
        return self.printed(r"^TOME emulator: (http://[0-9.:]+)")

    def stop(self) -> int:
        """SIGINT (Ctrl-C) to `run` alone (its children are its business); its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


@pytest.fixture(scope="module")
def first_run(
    tmp_path_factory: pytest.TempPathFactory, databases: list[Database], session_roles: SessionRoles,
    template_database: str,
) -> Iterator[tuple[RunningSystem, Database]]:
    database = new_database(databases, session_roles, template_database)
    system = RunningSystem.start(database.env(tmp_path_factory.mktemp("run-home-1"))).wait_up()
    try:
        yield system, database
    finally:
        system.stop()


def port_of(url: str) -> int:
    port = httpx.URL(url).port
    assert port is not None
    return port


def test_everything_run_starts_listens_on_loopback_only(first_run: tuple[RunningSystem, Database]) -> None:
    system, _ = first_run
    listeners = {"API": system.api, "worker metrics": system.worker_metrics, "TOME emulator": system.emulator}
    for name, url in listeners.items():
        assert httpx.URL(url).host == "127.0.0.1", name
        assert accepts_connections("127.0.0.1", port_of(url)), name
    elsewhere = non_loopback_ipv4()
    if elsewhere is None:
        pytest.skip("this machine has no non-loopback IPv4 address to show the ports are not reachable on it")
    for name, url in listeners.items():
        assert not accepts_connections(elsewhere, port_of(url)), f"{name} answers on {elsewhere}"


def test_the_demo_key_works_and_the_worker_metrics_need_none(first_run: tuple[RunningSystem, Database]) -> None:
    system, _ = first_run
    pools = httpx.get(f"{system.api}/v1/pools/default", headers={"Authorization": f"Bearer {system.key}"}, timeout=10)
    assert pools.status_code == 200, pools.text
    assert "tokenpool_refill_runs_total" in httpx.get(system.worker_metrics, timeout=10).text


def test_the_emulator_run_starts_wants_the_token_run_wrote_owner_only(
    first_run: tuple[RunningSystem, Database],
) -> None:
    system, _ = first_run
    token_file = system.home / "secrets" / "tome-emulator.token"
    assert str(token_file) in system.output
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((system.home / "tome-vault.sqlite3").stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    for path in ("/_admin/health", "/_admin/stats"):
        assert httpx.get(f"{system.emulator}{path}", timeout=5).status_code == 401
        assert httpx.get(f"{system.emulator}{path}", headers={"Authorization": f"Bearer {token}"},
                         timeout=5).status_code == 200
    detokenize = httpx.post(f"{system.emulator}/v1/namespaces/NS2/detokenize", json={"tokens": ["x"]}, timeout=5)
    assert detokenize.status_code == 401
    # ... and every part run started got it: the initial refill filled the pool through the emulator.
    issued = httpx.get(f"{system.emulator}/_admin/stats", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert issued.json()["items"]["NS1"]["issue"] >= 50


def test_a_second_run_on_the_same_home_says_why_in_one_line_and_starts_nothing(
    first_run: tuple[RunningSystem, Database],
) -> None:
    system, database = first_run
    before = sorted(path.name for path in (system.home / "logs").iterdir())
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "tokenpool", "run"], env=database.env(system.home),
                            capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 3
    assert second.stdout == ""
    message = second.stderr.strip().splitlines()
    assert len(message) == 1, second.stderr
    assert f"(pid {system.process.pid})" in message[0]
    assert str(system.home) in message[0]
    assert "TOKENPOOL_HOME" in message[0]
    assert time.monotonic() - started < 30
    assert sorted(path.name for path in (system.home / "logs").iterdir()) == before
    assert (system.home / "run.lock").read_text().strip() == str(system.process.pid), "the first run keeps its lock"
    assert system.process.poll() is None


def test_a_second_run_with_its_own_home_comes_up_beside_the_first_and_revokes_its_demo_key_when_it_stops(
    first_run: tuple[RunningSystem, Database], tmp_path: Path, databases: list[Database],
    session_roles: SessionRoles, template_database: str,
) -> None:
    first, _ = first_run
    database = new_database(databases, session_roles, template_database)
    second = RunningSystem.start(database.env(tmp_path / "home-2")).wait_up()
    try:
        ports = {port_of(url) for url in (first.api, first.worker_metrics, first.emulator, second.api,
                                           second.worker_metrics, second.emulator)}
        assert len(ports) == 6, "each run has ports of its own"
        for system in (first, second):
            assert httpx.get(f"{system.api}/healthz", timeout=10).status_code == 200
            headers = {"Authorization": f"Bearer {system.key}"}
            assert httpx.get(f"{system.api}/v1/pools/default", headers=headers, timeout=10).status_code == 200
        [(name, revoked)] = database.demo_keys()
        assert not revoked
    finally:
        code = second.stop()
    assert code == 0, second.output
    assert f"demo API key {name!r} revoked" in second.output
    assert database.demo_keys() == [(name, True)]
    assert httpx.get(f"{first.api}/healthz", timeout=10).status_code == 200, "the first run is untouched"


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def _refused_before_anything_starts(home: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tokenpool", "run", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(path.name for path in home.iterdir()) == ["run.lock"], "no database, no logs, no emulator"
    return lines[0]


def test_a_taken_port_given_with_dash_dash_port_is_refused_in_one_line_before_anything_starts(
    tmp_path: Path, taken_port: int
) -> None:
    home = tmp_path / "home"
    line = _refused_before_anything_starts(home, base_env(home), "--port", str(taken_port))  # embedded PostgreSQL
    assert f"port {taken_port}" in line
    assert "--port" in line


def test_a_taken_worker_metrics_port_set_in_the_environment_is_refused_in_one_line_before_anything_starts(
    tmp_path: Path, taken_port: int
) -> None:
    home = tmp_path / "home"
    env = {**base_env(home), "TOKENPOOL_WORKER_METRICS_PORT": str(taken_port)}
    line = _refused_before_anything_starts(home, env)
    assert f"port {taken_port}" in line
    assert "TOKENPOOL_WORKER_METRICS_PORT" in line
