"""``tokenpool rollout``: one program's canary, step by step, with gates (tokenpool.rollout).

Wiring only: the program's share is written where ``tokenpool config set pool-traffic-percent N --program P``
writes it, the pool's health read as ``tokenpool health`` reads it, the traffic figures scraped from the
API's ``/metrics`` (each instance's, or a Prometheus server's ``/federate``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tokenpool import bootstrap
from tokenpool.credentials import read_bearer_token
from tokenpool.db.database import Database
from tokenpool.durations import parse_duration
from tokenpool.monitoring.health import check_pool_health
from tokenpool.observability.scrape import ScrapeFailed, scrape
from tokenpool.programs import Program, UnknownProgram
from tokenpool.rollout import (
    GateLimits,
    MetricsUnavailable,
    Outcome,
    RolloutPlan,
    TrafficFigures,
    parse_steps,
    rollout,
    traffic_figures,
)
from tokenpool.service.runtime_config import traffic_key, write
from tokenpool.settings import Settings, get_settings

console = Console()
err_console = Console(stderr=True)

EXIT_COMPLETED = 0
EXIT_ROLLED_BACK = 1
EXIT_USAGE = 2


def register(app: typer.Typer) -> None:
    app.command("rollout")(rollout_command)


class _Ports:
    """What the rollout reads and writes, on this deployment."""

    def __init__(self, backend: bootstrap.Backend, settings: Settings, program: Program, urls: list[str],
                 token: str | None) -> None:
        self._backend = backend
        self._settings = settings
        self._program = program
        self._urls = urls
        self._token = token

    async def figures(self) -> TrafficFigures:
        try:
            samples = await scrape(self._urls, bearer_token=self._token)
        except ScrapeFailed as error:
            raise MetricsUnavailable(str(error)) from error
        return traffic_figures(samples, self._program.name)

    async def pool_status(self) -> str:
        health = await check_pool_health(self._backend.store, self._backend.samples, self._settings,
                                         self._program.name, publish=False,
                                         target=self._program.target_in(self._settings))
        return health.status.value

    async def set_percent(self, percent: int) -> None:
        db: Database = self._backend.db
        await write(db, traffic_key(self._program.name), percent)


def rollout_command(
    program: Annotated[str, typer.Option("--program", help="The registered program to roll out.")],
    metrics_url: Annotated[list[str], typer.Option(
        "--metrics-url", help="The API's /metrics (repeat for each instance), or a Prometheus server's "
        "/federate?match[]={__name__=~\"tokenpool_.*\"}: every instance must be counted.")],
    steps: Annotated[str, typer.Option(help="Pool traffic shares, rising, in percent.")] = "10,50,100",
    hold: Annotated[str, typer.Option(help="How long each step must hold its gates (e.g. 2h, 30m).")] = "2h",
    baseline: Annotated[str, typer.Option(help="Window measured before the first step, the gates' reference.")]
    = "10m",
    check_every: Annotated[str, typer.Option(help="How often the gates are checked during a hold.")] = "30s",
    metrics_key_file: Annotated[Path | None, typer.Option(
        help="File (mode 0600) with an API key holding metrics:read, sent as a bearer token.")] = None,
    max_error_rise: Annotated[float, typer.Option(
        help="Rise of the 5xx share over the baseline that breaks a step (0.001 = 0.1 point).")] = 0.001,
    max_fallback_rise: Annotated[float, typer.Option(
        help="Rise of the share of pool-routed cards that fell back to TOME that breaks a step.")] = 0.01,
) -> None:
    """Raise a program's pool traffic step by step; roll back to 0 % when a gate breaks.

    Each step sets the program's share (`config set pool-traffic-percent N --program P`) and holds it for
    --hold while, every --check-every, the gates hold: no rise in 5xx, no rise in cards routed to the pool
    that fell back to TOME (both against the --baseline window before the first step), and the pool not
    LOW, CRITICAL or EMPTY. A broken gate sets the share to 0 at once. Every step is logged.

    Exit: 0 completed (the share is the last step), 1 rolled back (the share is 0), 2 usage error (an
    unregistered program, bad steps or durations, unreadable metrics before the first step: nothing changed).
    """
    settings = get_settings()
    try:
        plan = RolloutPlan(program, parse_steps(steps), parse_duration(hold), parse_duration(baseline),
                           parse_duration(check_every), GateLimits(max_error_rise, max_fallback_rise))
        token = read_bearer_token(metrics_key_file) if metrics_key_file else None
    except (ValueError, OSError) as error:
        err_console.print(f"[red]error:[/] {error}")
        raise typer.Exit(EXIT_USAGE) from None
    raise typer.Exit(asyncio.run(_rollout(settings, plan, metrics_url, token)))


async def _rollout(settings: Settings, plan: RolloutPlan, urls: list[str], token: str | None) -> int:
    async with bootstrap.open_database(settings, max_size=2) as backend:
        try:
            program = await backend.programs.require(plan.program)
        except UnknownProgram as unknown:
            err_console.print(f"[red]error:[/] {unknown.detail}")
            return EXIT_USAGE
        ports = _Ports(backend, settings, program, urls, token)
        try:
            await ports.figures()  # readable before anything changes
        except MetricsUnavailable as error:
            err_console.print(f"[red]error:[/] cannot read the metrics, nothing changed: {error}")
            return EXIT_USAGE
        result = await rollout(plan, ports, report=lambda line: console.print(f"{plan.program}: {line}"))
    return EXIT_COMPLETED if result.outcome is Outcome.COMPLETED else EXIT_ROLLED_BACK

