"""The ``tokenpool`` command (Typer + Rich). Each command parses input, calls the core, prints."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tokenpool import bootstrap
from tokenpool.db import migrate, retention
from tokenpool.db.database import Database
from tokenpool.db.embedded import EmbeddedPostgresMissing, stop_embedded
from tokenpool.entrypoints import cli_audit, cli_deploy, cli_keys, cli_refill, cli_service, tome_emulator_cli
from tokenpool.pool import PoolStats
from tokenpool.pool.synthetic import synthetic_pairs
from tokenpool.settings import Settings, get_settings

app = typer.Typer(help="tokenpool: prefetched TOME token pairs served from PostgreSQL.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema and the embedded server.", no_args_is_help=True)
pool_app = typer.Typer(help="Inspect and load token pools.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(pool_app, name="pool")
tome_emulator_cli.register(app)
cli_service.register(app)
cli_refill.register(app)
cli_keys.register(app)
cli_audit.register(app)
cli_deploy.register(app)

console = Console()
err_console = Console(stderr=True)

PoolOption = Annotated[str | None, typer.Option("--pool", help="Pool (card program); default from settings.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]

SEED_CHUNK = 100_000


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations and the app role's grants (idempotent; as the owner role)."""
    applied = bootstrap.upgrade_database(get_settings())
    if not applied:
        console.print("schema is up to date")
    for migration in applied:
        console.print(f"applied {migration.version:04d}_{migration.name}")


@db_app.command("status")
def db_status() -> None:
    """List migrations and whether each is applied."""
    rows = migrate.status(bootstrap.admin_database_url(get_settings()))
    table = Table("version", "name", "applied at", "checksum")
    for row in rows:
        table.add_row(
            f"{row.version:04d}",
            row.name,
            str(row.applied_at) if row.applied else "[yellow]pending[/]",
            "ok" if row.checksum_matches else "[red]changed since applied[/]",
        )
    console.print(table)
    if any(not row.applied for row in rows):
        raise typer.Exit(1)


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL server under TOKENPOOL_HOME."""
    settings = get_settings()
    stopped = stop_embedded(settings.home)
    console.print("embedded PostgreSQL stopped" if stopped else "no embedded PostgreSQL was running")


@db_app.command("prune")
def db_prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete rows past their retention, in short chunks (never token_pool, never an unfinished refill batch).

    Exit: 0 done, 1 a table could not be pruned (the others were; the reason is printed)."""
    settings = get_settings()
    report = asyncio.run(_prune(settings, dry_run))
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    else:
        _print_prune(report)
    if not report.ok:
        raise typer.Exit(1)


@pool_app.command("stats")
def pool_stats(pool: PoolOption = None, as_json: JsonOption = False) -> None:
    """Counts of pairs by status (cheap at any size: read from trigger-kept counters)."""
    settings = get_settings()
    stats = asyncio.run(_stats(settings, pool or settings.default_pool))
    if as_json:
        typer.echo(json.dumps(stats.as_dict()))
    else:
        _print_stats(stats)


@pool_app.command("seed")
def pool_seed(
    count: Annotated[int, typer.Option("--count", min=1, help="How many pairs to add.")],
    synthetic: Annotated[bool, typer.Option("--synthetic", help="Required: these pairs are fake.")] = False,
    pool: PoolOption = None,
) -> None:
    """Load SYNTHETIC pairs (development and benchmarks only; real pairs come from `tokenpool refill`)."""
    if not synthetic:
        err_console.print(
            "[red]refusing:[/] seeded pairs are fake tokens that TOME never issued. "
            "Pass --synthetic to confirm this pool is for development or benchmarks."
        )
        raise typer.Exit(2)
    settings = get_settings()
    added = asyncio.run(_seed(settings, pool or settings.default_pool, count))
    console.print(f"added {added:,} synthetic pairs to pool {pool or settings.default_pool!r}")


@app.command("run")
def run(
    host: Annotated[str, typer.Option(help="Address the API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API.")] = 8000,
) -> None:
    """Run the whole system: PostgreSQL, migrations, TOME emulator, refill, worker and the API."""
    from tokenpool.entrypoints.run import run_system

    raise typer.Exit(run_system(get_settings(), host=host, port=port, console=console))


async def _stats(settings: Settings, pool: str) -> PoolStats:
    async with bootstrap.open_database(settings, max_size=2) as db:
        return await db.store.stats(pool)


async def _seed(settings: Settings, pool: str, count: int) -> int:
    added = 0
    async with bootstrap.open_database(settings, max_size=2) as db:
        for offset in range(0, count, SEED_CHUNK):
            pairs = synthetic_pairs(min(SEED_CHUNK, count - offset))
            added += await db.store.add_pairs(pool, pairs, uuid.uuid4())
    return added


async def _prune(settings: Settings, dry_run: bool) -> retention.PruneReport:
    db = await Database.open(bootstrap.admin_database_url(settings), settings, wait=True, min_size=1, max_size=2)
    try:
        return await retention.prune(db, settings, dry_run=dry_run)
    finally:
        await db.close()


def _print_prune(report: retention.PruneReport) -> None:
    rows = "would delete" if report.dry_run else "deleted"
    table = Table("table", "kept (days)", "cutoff", rows, "error", title="dry run" if report.dry_run else None)
    for part in report.tables:
        table.add_row(part.table, f"{part.keep.total_seconds() / 86_400:g}", f"{part.cutoff:%Y-%m-%d %H:%M}",
                      f"{part.rows:,}", Text(part.error or "", style="red"))
    console.print(table)


def _print_stats(stats: PoolStats) -> None:
    table = Table("status", "pairs", title=f"pool {stats.pool!r}")
    for key, value in stats.as_dict().items():
        if key != "pool":
            table.add_row(key, f"{value:,}")
    console.print(table)


def main() -> None:
    from tokenpool.observability.logging import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    try:
        app()
    except EmbeddedPostgresMissing as error:  # no database configured and none to start: one line, no traceback
        err_console.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise SystemExit(2) from None
