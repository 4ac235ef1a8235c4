"""The whole system for a benchmark: embedded PostgreSQL, the TOME emulator, refill, worker and API.

Same pieces as ``tokenpool run`` (and its ``Supervisor``), with what a benchmark needs on top: its own
``TOKENPOOL_HOME`` under the results folder, the emulator's latency and rate limit as parameters, the
refill schedule compressed like the benchmark's clock, the canary share fixed per mode, and a key
with every scope. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from tokenpool import bootstrap
from tokenpool.db.embedded import stop_embedded
from tokenpool.entrypoints.run import Supervisor, free_port, tokenpool_command, wait_until_ready
from tokenpool.settings import Settings

HOST = "127.0.0.1"
PROGRAM = "default"
COMMAND_TIMEOUT_S = 120


@dataclass(frozen=True)
class StackConfig:
    home: Path
    pool_percent: int  # 0: every card straight to TOME (direct mode); 100: pool mode
    hour_seconds: float  # one simulated hour, in real seconds; the refill schedule is compressed alike
    refill_target: int
    tome_latency_ms: float = 20.0
    tome_jitter_ms: float = 40.0  # latency + uniform(0, jitter): 20..60 ms, 40 ms on average
    tome_rate_limit_rps: float = 500.0
    refill_tome_max_rps: float = 5.0

    def environment(self) -> dict[str, str]:
        """Settings for every child; durations measured in hours are scaled to the compressed clock."""
        hour = self.hour_seconds
        return {
            "TOKENPOOL_HOME": str(self.home),
            "TOKENPOOL_DEFAULT_POOL": PROGRAM,
            "TOKENPOOL_POOL_TRAFFIC_PERCENT": str(self.pool_percent),
            "TOKENPOOL_REFILL_TARGET": str(self.refill_target),
            "TOKENPOOL_REFILL_INTERVAL_S": f"{hour:g}",  # scheduled refill: once per simulated hour
            "TOKENPOOL_REFILL_FORECAST_WINDOW_S": f"{3 * hour:g}",  # 3 simulated hours, as the default
            "TOKENPOOL_REFILL_SAMPLE_MIN_INTERVAL_S": f"{hour / 60:g}",  # one simulated minute
            "TOKENPOOL_REFILL_TOME_MAX_RPS": f"{self.refill_tome_max_rps:g}",
            # 15 s per real hour would be a poll every 0.125 s at hour = 30 s; 0.5 s keeps the poll cheap
            "TOKENPOOL_WORKER_POLL_S": f"{max(0.5, 15 * hour / 3600):g}",
            "TOKENPOOL_WORKER_JANITOR_INTERVAL_S": f"{max(0.5, 15 * hour / 3600):g}",
            "TOKENPOOL_WORKER_METRICS_PORT": "0",
            # One key drives the whole day: per-key limits far above its peak (still checked).
            "TOKENPOOL_RATE_LIMIT_CARDS": "1000000/second",
            "TOKENPOOL_RATE_LIMIT_DETOKENIZE_REFS": "1000000000/minute",
            "TOKENPOOL_MAX_OPEN_RESERVATIONS": "1000000",
        }


@dataclass
class Stack:
    api_url: str
    tome_url: str
    database_url: str
    api_key: str
    logs: Path
    supervisor: Supervisor
    tome_ns2: str  # the namespace of the external refs, as the children read it


@contextmanager
def running_stack(config: StackConfig, console: Console) -> Iterator[Stack]:
    """Starts everything, yields when the API answers, stops everything (and the database) on exit."""
    home = config.home.resolve()
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if k not in ("TOKENPOOL_DATABASE_URL", "TOKENPOOL_TOME_URL")}
    base_env.update(config.environment())
    base_env["TOKENPOOL_HOME"] = str(home)
    settings = Settings(home=home, database_url=None)  # never a server named in the environment
    url = bootstrap.database_url(settings)  # embedded, under this run's own home
    bootstrap.upgrade_database(settings)
    env = {**base_env, "TOKENPOOL_DATABASE_URL": url}
    supervisor = Supervisor(env, console)
    try:
        tome_port = free_port()
        tome_url = f"http://{HOST}:{tome_port}"
        emulator = supervisor.start(
            "TOME emulator",
            tokenpool_command(
                "tome-emulator", "--host", HOST, "--port", str(tome_port), "--db", str(home / "tome-vault.sqlite3"),
                "--latency-ms", f"{config.tome_latency_ms:g}", "--jitter-ms", f"{config.tome_jitter_ms:g}",
                "--rate-limit-rps", f"{config.tome_rate_limit_rps:g}", "--log-level", "WARNING",
            ),
            logs / "tome-emulator.log",
        )
        wait_until_ready(f"{tome_url}/_admin/health", emulator)
        env["TOKENPOOL_TOME_URL"] = tome_url
        _run(supervisor, logs / "initial-refill.log", "refill")
        supervisor.start("worker", tokenpool_command("worker"), logs / "worker.log")
        api_port = free_port()
        api = supervisor.start(
            "API", tokenpool_command("serve", "--host", HOST, "--port", str(api_port)), logs / "api.log"
        )
        api_url = f"http://{HOST}:{api_port}"
        wait_until_ready(f"{api_url}/healthz", api)
        key = supervisor.create_api_key("loadtest")
        yield Stack(api_url, tome_url, url, key, logs, supervisor, settings.tome_ns2)
    finally:
        supervisor.stop_all()
        stop_embedded(home)


def top_up(stack: Stack, count: int) -> None:
    """Adds exactly ``count`` pairs (one refill run, within the refill's TOME budget)."""
    _run(stack.supervisor, stack.logs / "top-up.log", "refill", "--pool", PROGRAM, "--count", str(count))


def _run(supervisor: Supervisor, log: Path, *args: str) -> None:
    with log.open("ab") as out:
        done = subprocess.run(
            tokenpool_command(*args), env=supervisor.env, stdout=out, stderr=out, timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"tokenpool {' '.join(args)} exited with {done.returncode}; see {log}")
