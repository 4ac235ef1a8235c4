"""The system under chaos: real ``python -m tokenpool`` processes on one database and one TOME emulator.

Processes are started with ``tokenpool.entrypoints.run.Supervisor`` (the same one ``tokenpool run``
uses) and configured only through the environment (``TOKENPOOL_DATABASE_URL``, ``TOKENPOOL_TOME_URL``,
``TOKENPOOL_HOME`` and the ``Settings`` a scenario overrides). The database and the emulator
belong to the chaos fixtures; each scenario has a database and TOME namespaces of its own, so the
emulator's ledger of NS1 holds exactly the scenario's tokens.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from rich.console import Console

from tests.fixtures.tome import TomeEmulator
from tests.integration.refill_support import env_for
from tokenpool.entrypoints.run import Supervisor, free_port, tokenpool_command, wait_until_ready
from tokenpool.settings import Settings

CLI_TIMEOUT_S = 60.0


@dataclass
class ApiProcess:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    settings: Settings
    database_url: str
    tome: TomeEmulator
    home: Path
    supervisor: Supervisor = field(init=False)
    apis: list[ApiProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        env = env_for(self.settings, TOKENPOOL_HOME=str(self.home), TOKENPOOL_WORKER_METRICS_PORT="0")
        self.supervisor = Supervisor(env, Console(stderr=True, quiet=True))

    @property
    def env(self) -> dict[str, str]:
        return self.supervisor.env

    @property
    def ns1(self) -> str:
        return self.settings.tome_ns1

    def log(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    def events(self, name: str) -> list[str]:
        """The ``event`` of every JSON log line process ``name`` has written so far."""
        events = []
        for line in self.log(name).read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line).get("event", ""))
            except ValueError:
                continue
        return events

    # --- Processes ---------------------------------------------------------------------------------------

    def cli(self, *args: str, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[bytes]:
        """A foreground ``tokenpool`` command; its output is kept, not printed."""
        return subprocess.run(tokenpool_command(*args), env=self.env, capture_output=True, timeout=timeout_s,
                              check=False)

    def refill(self, *args: str) -> int:
        result = self.cli("refill", "--json", *args)
        with self.log("refill-foreground").open("ab") as log:
            log.write(result.stdout + result.stderr)
        return result.returncode

    def api_key(self) -> str:
        return self.supervisor.create_api_key(f"chaos-{time.monotonic_ns()}")

    def start_api(self, port: int | None = None) -> ApiProcess:
        port = port or free_port()
        log = self.log(f"api-{port}")
        process = self.supervisor.start(f"api:{port}", tokenpool_command("serve", "--port", str(port)), log)
        api = ApiProcess(port, process, log)
        wait_until_ready(f"{api.url}/healthz", process)
        self.apis = [a for a in self.apis if a.port != port] + [api]
        return api

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self.supervisor.start(name, tokenpool_command(*args), self.log(name))

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        """kill -9: no cleanup of any kind runs in the victim."""
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        self.supervisor.stop_all()

    # --- Observation --------------------------------------------------------------------------------------

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(query, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def available(self, pool: str = "default") -> int:
        rows = self.sql("SELECT count(*) FROM token_pool WHERE pool = %s AND status = 'AVAILABLE'", pool)
        return int(rows[0][0])

    def readyz(self, api: ApiProcess) -> dict[str, Any]:
        response = httpx.get(f"{api.url}/readyz", timeout=5.0)
        body: dict[str, Any] = response.json()
        body["http_status"] = response.status_code
        return body


@contextmanager
def running_stack(settings: Settings, database_url: str, tome: TomeEmulator, home: Path) -> Iterator[Stack]:
    stack = Stack(settings, database_url, tome, home)
    try:
        yield stack
    finally:
        stack.stop()


def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.1, what: str = "condition") -> float:
    """Polls ``predicate`` until true; returns the seconds it took. Raises after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval_s)
    raise AssertionError(f"{what} not reached within {timeout_s:.0f} s")
