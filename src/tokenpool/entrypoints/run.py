"""``tokenpool run``: the whole system on one machine, as real separate processes.

PostgreSQL (embedded unless ``TOKENPOOL_DATABASE_URL`` is set) and migrations in this process; then,
each as its own OS process: the TOME emulator (unless ``TOKENPOOL_TOME_URL`` is set), an initial
refill with its progress bar, the worker (schedule + low-watermark refills + lease janitor) and the
HTTP API. Ctrl-C (or SIGTERM) stops them all, newest first, each given a few seconds to finish.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console

from tokenpool import bootstrap
from tokenpool.db.embedded import stop_embedded
from tokenpool.service.auth import SCOPES
from tokenpool.settings import Settings

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def tokenpool_command(*args: str) -> list[str]:
    """The CLI of this very installation, whatever the PATH says."""
    return [sys.executable, "-m", "tokenpool", *args]


def wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout_s:.0f} s")


@dataclass
class Supervisor:
    """Starts child processes and stops every one of them, whatever happens in between."""

    env: dict[str, str]
    console: Console
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, args: Sequence[str], log: Path | None = None) -> subprocess.Popen[bytes]:
        output = log.open("ab") if log else None
        process = subprocess.Popen(list(args), env=self.env, stdout=output, stderr=output)  # noqa: S603
        self.children.append((name, process))
        return process

    def run_to_end(self, args: Sequence[str], log: Path) -> int:
        """A foreground step: its stdout (a progress bar, a summary) to this terminal, its logs to ``log``."""
        with log.open("ab") as errors:
            return subprocess.run(list(args), env=self.env, stderr=errors, check=False).returncode  # noqa: S603

    def create_api_key(self, name: str, scopes: Iterable[str] = SCOPES) -> str:
        """Makes an API key through the CLI (``tokenpool apikey create``) and returns it (shown only once)."""
        done = subprocess.run(  # noqa: S603
            tokenpool_command("apikey", "create", "--name", name, "--json", "--scopes", ",".join(sorted(scopes))),
            env=self.env, capture_output=True, check=False, timeout=60,
        )
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace")[-2000:]
            raise RuntimeError(f"apikey create exited with {done.returncode}: {error}")
        key: str = json.loads(done.stdout)["key"]
        return key

    def stop_all(self) -> None:
        for _name, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for name, process in reversed(self.children):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.console.print(f"[yellow]{name} did not stop in {STOP_GRACE_S:.0f} s; killing it[/]")
                process.kill()
                process.wait()
        self.children.clear()

    def wait_any(self) -> tuple[str, int]:
        """Blocks until a child exits (which should not happen) and returns it."""
        while True:
            for name, process in self.children:
                code = process.poll()
                if code is not None:
                    return name, code
            time.sleep(0.5)


def run_system(settings: Settings, *, host: str, port: int, console: Console) -> int:
    home = settings.home.resolve()
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    embedded = not bootstrap.uses_external_database(settings)

    url = bootstrap.database_url(settings)
    for migration in bootstrap.upgrade_database(settings):
        console.print(f"applied migration {migration.version:04d}_{migration.name}")
    env = {**os.environ, "TOKENPOOL_DATABASE_URL": url, "TOKENPOOL_HOME": str(home)}
    env.pop("TOKENPOOL_DATABASE_URL_SECRET_ARN", None)  # the children get the URL read from it
    supervisor = Supervisor(env, console)

    def on_sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Started from a script or under nohup, SIGINT arrives ignored and Python keeps it so: Ctrl-C and
    # `kill -INT` must stop the system whatever started it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        tome_url = settings.tome_url
        if tome_url is None:
            tome_port = free_port()
            tome_url = f"http://127.0.0.1:{tome_port}"
            emulator = supervisor.start(
                "TOME emulator",
                tokenpool_command(
                    "tome-emulator", "--host", "127.0.0.1", "--port", str(tome_port),
                    "--db", str(home / "tome-vault.sqlite3"), "--latency-ms", "40", "--jitter-ms", "20",
                ),
                logs / "tome-emulator.log",
            )
            wait_until_ready(f"{tome_url}/_admin/faults", emulator)
            console.print(f"TOME emulator: {tome_url} (40 ms +- 20 ms per call; log: {logs / 'tome-emulator.log'})")
        env["TOKENPOOL_TOME_URL"] = tome_url

        console.print("initial refill:")
        if supervisor.run_to_end(tokenpool_command("refill"), logs / "refill.log") != 0:
            console.print("[yellow]initial refill did not complete; the worker will retry[/]")

        supervisor.start("worker", tokenpool_command("worker"), logs / "worker.log")
        api = supervisor.start(
            "API", tokenpool_command("serve", "--host", host, "--port", str(port)), logs / "api.log"
        )
        base = f"http://{host}:{port}"
        wait_until_ready(f"{base}/healthz", api)

        key = supervisor.create_api_key(f"demo-{int(time.time())}")
        _print_banner(console, base, key, logs)
        name, code = supervisor.wait_any()
        console.print(f"[red]{name} exited with code {code}; stopping everything[/]")
        return 1
    except KeyboardInterrupt:
        console.print("\nstopping ...")
        return 0
    finally:
        supervisor.stop_all()
        if embedded:
            stop_embedded(home)
        console.print("stopped")


def _print_banner(console: Console, base: str, key: str, logs: Path) -> None:
    console.print(f"""
[bold green]tokenpool is running[/]
  API          {base}
  OpenAPI docs {base}/docs   (spec: {base}/openapi.json)
  metrics      {base}/metrics   (with the key below: scope metrics:read)
  logs         {logs}
  demo API key {key}   (shown once; all scopes)

Create a card:
  curl -s -X POST {base}/v1/cards -H 'Authorization: Bearer {key}' \\
       -H 'Content-Type: application/json' -d '{{"program": "default", "customer_ref": "cust-1"}}'

Ctrl-C stops everything.""", soft_wrap=True)
