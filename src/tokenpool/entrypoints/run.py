"""``tokenpool run``: the whole system on one machine, as real separate processes.

PostgreSQL (embedded unless ``TOKENPOOL_DATABASE_URL`` is set) and migrations in this process; then,
each as its own OS process: the TOME emulator (unless ``TOKENPOOL_TOME_URL`` is set), an initial
refill with its progress bar, the worker (schedule + low-watermark refills + lease janitor) and the
HTTP API. Ctrl-C (or SIGTERM) stops them all, newest first, each given a few seconds to finish, then
revokes the demo API key it printed.

Nothing listens beyond this machine unless asked (``--host``, ``TOKENPOOL_WORKER_METRICS_HOST``), and
the emulator wants a bearer token that only this OS user can read. Before anything starts, ``run`` takes
a lock on its home (a second ``run`` on the same home exits 3) and checks the ports the user chose (taken:
exit 2); the others it picks free.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console

from tokenpool import bootstrap
from tokenpool.db.embedded import EmbeddedPostgresMissing, stop_embedded
from tokenpool.service.auth import SCOPES
from tokenpool.settings import Settings

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0


EXIT_PORT_TAKEN = 2
EXIT_HOME_IN_USE = 3
DEFAULT_API_PORT = 8000
LOCK_FILE = "run.lock"
TOME_TOKEN_FILE = Path("secrets") / "tome-emulator.token"


class CannotStart(Exception):
    """``run`` cannot start; nothing was started. ``exit_code`` is what the command exits with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at ``host`` now (the kernel's choice)."""
    port = _bind_probe(host, 0)
    if port is None:  # every ephemeral port taken
        raise CannotStart(f"no free port on {host}", EXIT_PORT_TAKEN)
    return port


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now."""
    return _bind_probe(host, port) is not None


def _bind_probe(host: str, port: int) -> int | None:
    """Binds a socket to ``host:port`` and lets it go: the port it got, None when the address is taken.
    SO_REUSEADDR as uvicorn and prometheus_client bind, so a port only in TIME_WAIT counts as free."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CannotStart(f"cannot resolve host {host!r}: {exc.strerror}", EXIT_PORT_TAKEN) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return None
            # Not this machine's address, a privileged port, ...: no other port would do better.
            raise CannotStart(f"cannot listen on {host} port {port}: {exc.strerror}", EXIT_PORT_TAKEN) from None
        bound: int = probe.getsockname()[1]
        return bound


def tokenpool_command(*args: str) -> list[str]:
    """The CLI of this very installation, whatever the PATH says."""
    return [sys.executable, "-m", "tokenpool", *args]


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes], timeout_s: float = READY_TIMEOUT_S,
    headers: Mapping[str, str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            command = " ".join(str(arg) for arg in process.args[2:4])  # type: ignore[index]
            raise RuntimeError(f"{command} exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1.0, headers=headers).is_success:
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

    def revoke_api_key(self, name: str) -> bool:
        """Revokes the key ``name`` through the CLI (``tokenpool apikey revoke``); says so either way."""
        try:
            done = subprocess.run(  # noqa: S603
                tokenpool_command("apikey", "revoke", "--name", name),
                env=self.env, capture_output=True, check=False, timeout=60,
            )
            failure = None if done.returncode == 0 else (
                done.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {done.returncode}"]
            )[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            failure = str(exc)
        if failure is None:
            self.console.print(f"demo API key {name!r} revoked")
            return True
        self.console.print(f"[yellow]could not revoke the demo API key {name!r} ({failure}); revoke it with: "
                           f"tokenpool apikey revoke --name {name}[/]", soft_wrap=True, highlight=False)
        return False

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


@contextlib.contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``home`` for as long as the block runs; CannotStart when another
    ``tokenpool run`` holds it. The kernel releases it when this process dies, however it dies."""
    if not home.exists():
        home.mkdir(mode=0o700, parents=True)
    fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise CannotStart(
                f"another tokenpool run (pid {holder}) is using TOKENPOOL_HOME {home}: stop it, or give this one "
                "another TOKENPOOL_HOME", EXIT_HOME_IN_USE,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Ports:
    api: int
    metrics: int
    """The worker's Prometheus port; 0: none."""
    notes: tuple[str, ...] = ()


def choose_ports(settings: Settings, host: str, port: int | None, explicit: Iterable[str] = ()) -> Ports:
    """The API's and the worker's ports: what the user chose (``--port``; TOKENPOOL_WORKER_METRICS_PORT,
    named in ``explicit`` when it was set), each checked free now, else CannotStart; otherwise free ones,
    the API's being 8000 when that is free (a stable address to bookmark and paste)."""
    notes: list[str] = []
    if port is not None:
        if not port_is_free(host, port):
            raise CannotStart(
                f"port {port} on {host} (--port) is already in use: choose another, or leave --port out to get a "
                "free one", EXIT_PORT_TAKEN,
            )
        api = port
    elif port_is_free(host, DEFAULT_API_PORT):
        api = DEFAULT_API_PORT
    else:
        api = free_port(host)
        notes.append(f"port {DEFAULT_API_PORT} is in use: the API takes {api} (--port chooses)")
    metrics_host = settings.worker_metrics_host
    if "worker_metrics_port" in explicit:
        metrics = settings.worker_metrics_port
        if metrics and (metrics == api or not port_is_free(metrics_host, metrics)):
            raise CannotStart(
                f"port {metrics} on {metrics_host} (TOKENPOOL_WORKER_METRICS_PORT) is already in use"
                f"{' by the API' if metrics == api else ''}: choose another, or unset it to get a free one",
                EXIT_PORT_TAKEN,
            )
    else:
        metrics = free_port(metrics_host)
        while metrics == api:
            metrics = free_port(metrics_host)
    return Ports(api, metrics, tuple(notes))


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path``, owner-only (0600) from its first byte, in a folder that is 0700 when made here."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    temporary = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(temporary, path)


def run_system(settings: Settings, *, host: str, port: int | None, console: Console,
               explicit: Iterable[str] = ()) -> int:
    """Runs the system until Ctrl-C / SIGTERM (0) or a child's death (1); ``explicit``: the settings the
    user set (``Settings.model_fields_set``), whose ports are checked rather than chosen."""
    home = settings.home.resolve()
    errors = Console(stderr=True, soft_wrap=True)
    try:
        with home_lock(home):
            ports = choose_ports(settings, host, port, explicit)
            return _run_locked(settings, home, host, ports, console)
    except CannotStart as exc:
        errors.print(f"[red]error:[/] {exc}", highlight=False)
        return exc.exit_code


def _run_locked(settings: Settings, home: Path, host: str, ports: Ports, console: Console) -> int:
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    embedded = not bootstrap.uses_external_database(settings)
    for note in ports.notes:
        console.print(note)

    env = {**os.environ, "TOKENPOOL_HOME": str(home)}
    env.pop("TOKENPOOL_DATABASE_URL_SECRET_ARN", None)  # the children get the URL read from it
    supervisor = Supervisor(env, console)
    demo_key: str | None = None

    def on_sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Started from a script or under nohup, SIGINT arrives ignored and Python keeps it so: Ctrl-C and
    # `kill -INT` must stop the system whatever started it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        env["TOKENPOOL_DATABASE_URL"] = bootstrap.database_url(settings)
        for migration in bootstrap.upgrade_database(settings):
            console.print(f"applied migration {migration.version:04d}_{migration.name}")
        tome_url = settings.tome_url
        if tome_url is None:
            tome_url = _start_emulator(supervisor, home, logs, console)
        env["TOKENPOOL_TOME_URL"] = tome_url

        console.print("initial refill:")
        if supervisor.run_to_end(tokenpool_command("refill"), logs / "refill.log") != 0:
            console.print("[yellow]initial refill did not complete; the worker will retry[/]")

        supervisor.start("worker", tokenpool_command("worker", "--metrics-port", str(ports.metrics)),
                         logs / "worker.log")
        api = supervisor.start(
            "API", tokenpool_command("serve", "--host", host, "--port", str(ports.api)), logs / "api.log"
        )
        base = f"http://{_url_host(host)}:{ports.api}"
        wait_until_ready(f"{base}/healthz", api)

        name = f"demo-{int(time.time())}-{os.getpid()}"
        key = supervisor.create_api_key(name)
        demo_key = name
        metrics = f"http://{_url_host(settings.worker_metrics_host)}:{ports.metrics}/metrics" if ports.metrics else None
        _print_banner(console, base, key, logs, metrics)
        child, code = supervisor.wait_any()
        console.print(f"[red]{child} exited with code {code}; stopping everything[/]")
        return 1
    except KeyboardInterrupt:
        console.print("\nstopping ...")
        return 0
    except EmbeddedPostgresMissing:
        raise  # the CLI's one line (tokenpool.entrypoints.cli.main), exit 2
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]could not start: {exc}[/] (logs: {logs})", soft_wrap=True)
        return 1
    finally:
        supervisor.stop_all()
        if demo_key is not None:
            supervisor.revoke_api_key(demo_key)
        if embedded:
            stop_embedded(home)
        console.print("stopped")


def _start_emulator(supervisor: Supervisor, home: Path, logs: Path, console: Console) -> str:
    """The TOME emulator on a free loopback port, requiring a fresh random bearer token that every child
    is given (TOKENPOOL_TOME_BEARER_TOKEN_FILE); returns its URL."""
    token_file = home / TOME_TOKEN_FILE
    token = secrets.token_urlsafe(32)
    write_private(token_file, token + "\n")
    supervisor.env["TOKENPOOL_TOME_BEARER_TOKEN_FILE"] = str(token_file)
    tome_port = free_port()
    tome_url = f"http://127.0.0.1:{tome_port}"
    emulator = supervisor.start(
        "TOME emulator",
        tokenpool_command(
            "tome-emulator", "--host", "127.0.0.1", "--port", str(tome_port),
            "--db", str(home / "tome-vault.sqlite3"), "--latency-ms", "40", "--jitter-ms", "20",
            "--bearer-token-file", str(token_file),
        ),
        logs / "tome-emulator.log",
    )
    wait_until_ready(f"{tome_url}/_admin/health", emulator, headers={"Authorization": f"Bearer {token}"})
    console.print(f"TOME emulator: {tome_url} (40 ms +- 20 ms per call; bearer token in {token_file}; "
                  f"log: {logs / 'tome-emulator.log'})", soft_wrap=True)
    return tome_url


def _url_host(host: str) -> str:
    """``host`` as it goes in a URL a person can paste: a wildcard becomes loopback, IPv6 gets brackets."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _print_banner(console: Console, base: str, key: str, logs: Path, metrics: str | None) -> None:
    worker = f"\n  worker       {metrics}   (Prometheus; needs no key)" if metrics else ""
    console.print(f"""
[bold green]tokenpool is running[/]
  API          {base}
  OpenAPI docs {base}/docs   (spec: {base}/openapi.json)
  metrics      {base}/metrics   (with the key below: scope metrics:read){worker}
  logs         {logs}
  demo API key {key}   (shown once; all scopes; revoked when this stops)

Create a card:
  curl -s -X POST {base}/v1/cards -H 'Authorization: Bearer {key}' \\
       -H 'Content-Type: application/json' -d '{{"program": "default", "customer_ref": "cust-1"}}'

Ctrl-C stops everything.""", soft_wrap=True)
