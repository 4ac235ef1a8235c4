"""``tokenpool refill``, ``tokenpool health`` and ``tokenpool worker``.

Wire into the main CLI with ``from tokenpool.entrypoints.cli_refill import register; register(app)``.
Also runnable alone: ``python -m tokenpool.entrypoints.cli_refill refill --pool P``.

Exit codes (docs/refill.md):

* ``refill``: 0 succeeded · 1 failed (reason printed and in refill_runs.error) · 2 usage error (an
  unregistered program, --count without --pool) · 3 another run holds the pool's lease (its holder is
  printed) · 4 interrupted (stopped or lease lost; nothing half-done, the next run finishes the journaled
  batches). Without --pool every registered program is refilled, one after the other (one line, or one
  JSON object per line, each), and the exit code is the worst of theirs: 1, then 4, then 3;
* ``health``: 0 OK · 1 LOW · 2 CRITICAL or EMPTY · 3 the health could not be checked (or the program is
  not registered);
* ``worker``: 0 after a clean stop (SIGTERM or Ctrl-C) · 2 its metrics port is taken, or a program it was
  given is not registered (nothing started).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from tokenpool.programs import UnknownProgram
from tokenpool.refill.model import Outcome, RefillResult, worst_outcome
from tokenpool.settings import Settings, get_settings

if TYPE_CHECKING:  # imported when used: keeps `tokenpool --help` fast
    from tokenpool.monitoring.health import PoolHealth
    from tokenpool.refill.job import RefillDeps

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LEASE_HELD = 3
EXIT_INTERRUPTED = 4
EXIT_RESTORE_FENCE_REQUIRED = 5
EXIT_HEALTH_UNKNOWN = 3

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # a refusal is one line, however long

PoolOption = Annotated[str | None, typer.Option("--pool", help="Program (its pool); default from settings.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def register(app: typer.Typer) -> None:
    """Add ``refill``, ``health`` and ``worker`` to ``app``."""
    app.command("refill")(refill)
    app.command("health")(health)
    app.command("worker")(worker)


def refill(
    pool: Annotated[
        str | None, typer.Option("--pool", help="The program to refill; default: every registered program.")
    ] = None,
    count: Annotated[
        int | None,
        typer.Option("--count", min=1, help="Add exactly N pairs instead of filling up to the target (needs --pool)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """One refill run per program: finish journaled batches, then fill the pool up to the program's target (or
    add --count N). Without --pool: every registered program, one after the other.

    Exit: 0 ok, 1 failed, 2 unknown program, 3 lease held by another run, 4 interrupted (safe to run again),
    5 the database was restored from a backup and is not fenced (`tokenpool db after-restore`)."""
    settings = get_settings()
    if count is not None and pool is None:
        err_console.print("[red]refused:[/] --count adds exactly N pairs to one program: name it with --pool",
                          highlight=False)
        raise typer.Exit(EXIT_USAGE)
    show_progress = sys.stdout.isatty() and not as_json
    from tokenpool.db.restore_fence import RestoreFenceRequired

    try:
        results = asyncio.run(_refill(settings, pool, count, show_progress))
    except UnknownProgram as error:
        err_console.print(f"[red]refused:[/] {error.detail}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except RestoreFenceRequired as refused:
        err_console.print(f"[red]refused:[/] {refused}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_RESTORE_FENCE_REQUIRED) from None
    if not results:
        err_console.print("no registered program: nothing to refill (tokenpool program add)", highlight=False)
    for result in results:
        if as_json:
            typer.echo(json.dumps(result.as_dict(), default=str))
            continue
        line = (f"pool {result.pool!r}: {result.outcome.value}, added {result.added:,} pairs"
                f" (recovered {result.recovered:,}) in {result.duration_s:.1f} s;"
                f" target {result.target if result.target is not None else '-'}, {result.tome_requests} TOME requests")
        if result.error:
            line += f"; {result.error}"
        (console if result.outcome is Outcome.SUCCEEDED else err_console).print(line, highlight=False)
    raise typer.Exit(_worst_exit_code([result.outcome for result in results]))


def _refill_exit_code(outcome: Outcome) -> int:
    codes = {
        Outcome.SUCCEEDED: EXIT_OK,
        Outcome.SKIPPED_LEASE_HELD: EXIT_LEASE_HELD,
        Outcome.STOPPED: EXIT_INTERRUPTED,
        Outcome.LEASE_LOST: EXIT_INTERRUPTED,
    }
    return codes.get(outcome, EXIT_FAILED)


def _worst_exit_code(outcomes: list[Outcome]) -> int:
    """Of several runs: a failure first, then an interruption, then a held lease."""
    return _refill_exit_code(worst_outcome(outcomes))


async def _refill(settings: Settings, pool: str | None, count: int | None, show_progress: bool) -> list[RefillResult]:
    from tokenpool import bootstrap

    async with bootstrap.open_refill(settings) as deps:
        if pool is not None:
            return [await _refill_one(deps, pool, count, show_progress)]
        names = [program.name for program in await deps.programs.registered()]
        results = []
        for name in names:
            try:
                results.append(await _refill_one(deps, name, None, show_progress))
            except UnknownProgram:  # removed since the list was read
                continue
        return results


async def _refill_one(deps: RefillDeps, pool: str, count: int | None, show_progress: bool) -> RefillResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tokenpool.refill.job import refill_pool
    from tokenpool.refill.model import Trigger

    if not show_progress:
        return await refill_pool(deps, pool, count=count, trigger=Trigger.CLI)
    with Progress(TextColumn(f"refill {pool}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("pairs", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return await refill_pool(deps, pool, count=count, trigger=Trigger.CLI, progress=progress)


def health(
    pool: PoolOption = None,
    as_json: JsonOption = False,
    alert: Annotated[bool, typer.Option("--alert/--no-alert", help="Send an alert if the state changed.")] = True,
) -> None:
    """Pool health from the cheap counters: status, counts, consumption rate, hours left.

    Exit: 0 OK, 1 LOW, 2 CRITICAL or EMPTY, 3 could not check."""
    settings = get_settings()
    name = pool or settings.default_pool
    try:
        report = asyncio.run(_health(settings, name, alert))
    except UnknownProgram as error:
        err_console.print(f"[red]refused:[/] {error.detail}", highlight=False)
        raise typer.Exit(EXIT_HEALTH_UNKNOWN) from None
    except Exception as exc:
        err_console.print(f"[red]health of pool {name!r} could not be checked:[/] {type(exc).__name__}: {exc}")
        raise typer.Exit(EXIT_HEALTH_UNKNOWN) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    else:
        left = "unbounded" if report.hours_left is None else f"{report.hours_left:.1f} h"
        rate = "-" if report.consumption_per_hour is None else f"{report.consumption_per_hour:,.0f}/h"
        console.print(f"pool {name!r}: {report.status.value} - {report.available:,} available of target"
                      f" {report.target:,}; consumption {rate}; {left} left", highlight=False)
    raise typer.Exit(report.status.exit_code)


async def _health(settings: Settings, pool: str, alert: bool) -> PoolHealth:
    from tokenpool import bootstrap
    from tokenpool.monitoring.alerts import Alerter
    from tokenpool.monitoring.health import check_pool_health

    async with bootstrap.open_database(settings, max_size=2) as backend:
        program = await backend.programs.require(pool)
        report = await check_pool_health(backend.store, backend.samples, settings, pool,
                                          target=program.target_in(settings))
        if alert:
            alerter = Alerter(settings)
            try:
                deliveries = await alerter.on_health(backend.samples, report)
            finally:
                await alerter.aclose()
            for delivery in deliveries:
                if delivery.failed:  # the exit code is the pool's health; say it on stderr
                    err_console.print(f"alert {delivery.alert.status.value} of pool {pool!r} not delivered to"
                                      f" {', '.join(delivery.failed)}; the next check sends it again",
                                      highlight=False, soft_wrap=True)
        return report


def worker(
    pool: Annotated[
        list[str] | None,
        typer.Option("--pool", help="Program to keep filled (repeatable); default: TOKENPOOL_WORKER_POOLS, else "
                     "every registered program (reread at each poll)."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Prometheus port (0: none); default: TOKENPOOL_WORKER_METRICS_PORT (9108). It listens on "
            "TOKENPOOL_WORKER_METRICS_HOST (127.0.0.1: this machine only; the metrics need no key).",
        ),
    ] = None,
) -> None:
    """Long-running: scheduled and low-watermark refills, health alerts, the lease janitor, Prometheus
    metrics. Stops cleanly on SIGTERM / Ctrl-C.

    Exit: 0 after a clean stop, 2 the metrics port is taken (nothing started), 5 the database was restored
    from a backup and is not fenced (`tokenpool db after-restore`)."""
    from tokenpool.entrypoints.worker import run_worker

    settings = get_settings()
    pools = pool or settings.worker_pools or None
    port = settings.worker_metrics_port if metrics_port is None else metrics_port
    raise typer.Exit(run_worker(settings, pools, port))


def main() -> None:
    from tokenpool.observability.logging import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    app = typer.Typer(help="tokenpool refill job", no_args_is_help=True)
    register(app)
    app()


if __name__ == "__main__":
    main()
