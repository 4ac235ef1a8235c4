"""The ``tokenpool`` command (Typer + Rich). Each command parses input, calls the core, prints."""

from __future__ import annotations

import asyncio
import json
import uuid
from importlib.metadata import PackageNotFoundError, version
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
from tokenpool.db.errors import DatabaseUnavailable
from tokenpool.entrypoints import (
    cli_audit,
    cli_deploy,
    cli_help,
    cli_keys,
    cli_programs,
    cli_refill,
    cli_rollout,
    cli_service,
    tome_emulator_cli,
)
from tokenpool.pool import PoolStats
from tokenpool.pool.synthetic import synthetic_pairs
from tokenpool.programs import UnknownProgram
from tokenpool.settings import Settings, get_settings

cli_help.hide_flag_types()
app = typer.Typer(help="tokenpool: prefetched TOME token pairs served from PostgreSQL.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema and the embedded server.", no_args_is_help=True)
pool_app = typer.Typer(help="Inspect and load token pools.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(pool_app, name="pool")
tome_emulator_cli.register(app)
cli_service.register(app)
cli_refill.register(app)
cli_keys.register(app)
cli_programs.register(app)
cli_rollout.register(app)
cli_audit.register(app)
cli_deploy.register(app)

console = Console()
err_console = Console(stderr=True)

PoolOption = Annotated[str | None, typer.Option("--pool", help="Program (its pool); default from settings.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]

SEED_CHUNK = 100_000

EXIT_MIGRATIONS_PENDING = 1
EXIT_MIGRATION_CHANGED = 3
EXIT_DATABASE_UNREACHABLE = 4


def _package_version() -> str:
    try:
        return version("tokenpool")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tokenpool {_package_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """tokenpool: prefetched TOME token pairs served from PostgreSQL."""


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
    """List migrations and whether each is applied (as the owner role): a deploy gate.

    Exit: 0 up to date; 1 a migration is pending (run `tokenpool db upgrade`);
    3 an applied migration's file changed since it was applied (checksum
    mismatch: `db upgrade` does not fix it; wins over 1); 4 the database
    could not be reached.
    """
    try:
        rows = migrate.status(bootstrap.admin_database_url(get_settings()))
    except DatabaseUnavailable as exc:
        err_console.print(f"[red]error:[/] the database could not be reached: {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_DATABASE_UNREACHABLE) from None
    table = Table("version", "name", "applied at", "checksum")
    for row in rows:
        table.add_row(
            f"{row.version:04d}",
            row.name,
            str(row.applied_at) if row.applied else "[yellow]pending[/]",
            "ok" if row.checksum_matches else "[red]changed since applied[/]",
        )
    console.print(table)
    if any(row.applied and not row.checksum_matches for row in rows):
        raise typer.Exit(EXIT_MIGRATION_CHANGED)
    if any(not row.applied for row in rows):
        raise typer.Exit(EXIT_MIGRATIONS_PENDING)


@db_app.command("after-restore")
def db_after_restore(
    force: Annotated[bool, typer.Option("--force", help="Fence again even if this server run was fenced already.")]
    = False,
    as_json: JsonOption = False,
) -> None:
    """After restoring a backup, BEFORE starting the service, worker, refill or Lambda (as the owner role):
    quarantine every AVAILABLE and RESERVED pair (cards may have taken them after the backup point: they
    become EXPIRED, never handed out again), close the refill's unfinished batches, record the fence
    (restore_fences) and set the restore epoch past TOKENPOOL_RESTORE_EPOCH_FILE's. Then `tokenpool refill`.

    Run again on the same server run: reports the fence, changes nothing (--force fences again, quarantining
    the pairs loaded since). Exit: 0 fenced or already fenced; 4 the database could not be reached."""
    from tokenpool.db.restore_fence import fence

    settings = get_settings()
    try:
        result = fence(bootstrap.admin_database_url(settings), settings.restore_epoch_file, force=force)
    except DatabaseUnavailable as exc:
        err_console.print(f"[red]error:[/] the database could not be reached: {exc}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(EXIT_DATABASE_UNREACHABLE) from None
    if as_json:
        typer.echo(json.dumps({"fence_id": result.fence_id, "fenced_at": result.fenced_at.isoformat(),
                               "already_done": result.already_done, "quarantined": result.quarantined,
                               "available": result.available, "reserved": result.reserved,
                               "refill_batches": result.refill_batches, "epoch": result.epoch,
                               "system_identifier": result.system_identifier, "timeline_id": result.timeline_id}))
        return
    if result.already_done:
        console.print(f"restore fence already done: fence {result.fence_id} at {result.fenced_at:%Y-%m-%d %H:%M:%S%z}"
                      f" quarantined {result.quarantined:,} pairs on this server run; nothing changed "
                      "(--force to fence again)", highlight=False)
        return
    console.print(f"restore fence {result.fence_id}: quarantined {result.quarantined:,} pairs "
                  f"({result.available:,} available, {result.reserved:,} reserved), closed {result.refill_batches:,} "
                  "unfinished refill batches; now run `tokenpool refill`", highlight=False)


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
    try:
        added = asyncio.run(_seed(settings, pool or settings.default_pool, count))
    except UnknownProgram as error:
        err_console.print(f"[red]refused:[/] {error.detail}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"added {added:,} synthetic pairs to pool {pool or settings.default_pool!r}")


@app.command("run")
def run(
    host: Annotated[
        str, typer.Option(help="Address the API listens on (127.0.0.1: this machine only; 0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(help="Port of the API; taken: exit 2 before anything starts. Default: 8000, or a free port "
                     "when 8000 is taken.", show_default=False),
    ] = None,
) -> None:
    """Run the whole system on this machine until Ctrl-C, each part its own process.

    Needs nothing configured. Starts, in order:
      PostgreSQL  embedded, data in TOKENPOOL_HOME/pgdata, Unix socket only;
                  or the one of TOKENPOOL_DATABASE_URL (app role) and
                  TOKENPOOL_DATABASE_ADMIN_URL (owner role)
      migrations  `tokenpool db upgrade`, as the owner role
      TOME        the emulator on a free 127.0.0.1 port, requiring a random
                  bearer token (0600 file in TOKENPOOL_HOME/secrets);
                  or the TOME of TOKENPOOL_TOME_URL
      refill      one run, up to TOKENPOOL_REFILL_TARGET pairs
      worker      metrics on TOKENPOOL_WORKER_METRICS_HOST (127.0.0.1), port
                  TOKENPOOL_WORKER_METRICS_PORT if set, else a free one
      API         `tokenpool serve` on --host / --port
    Keys: the vault's key file TOKENPOOL_VAULT_LOCAL_KEY_FILE (default
    TOKENPOOL_HOME/vault/kek.json, made on first use); prints a demo API key
    with every scope, revoked when run stops. Logs: TOKENPOOL_HOME/logs.

    Ctrl-C or SIGTERM stops the parts, newest first, then the embedded
    PostgreSQL. One run per TOKENPOOL_HOME (a lock); give each its own.

    Exit: 0 stopped by Ctrl-C or SIGTERM; 1 a part failed or died;
    2 a port you chose is taken; 3 another run holds TOKENPOOL_HOME
    (2 and 3: nothing was started).
    """
    from tokenpool.entrypoints.run import run_system

    settings = get_settings()
    raise typer.Exit(run_system(settings, host=host, port=port, console=console, explicit=settings.model_fields_set))


async def _stats(settings: Settings, pool: str) -> PoolStats:
    async with bootstrap.open_database(settings, max_size=2) as db:
        return await db.store.stats(pool)


async def _seed(settings: Settings, pool: str, count: int) -> int:
    added = 0
    async with bootstrap.open_database(settings, max_size=2) as db:
        await db.programs.require(pool)  # pairs only for a program the service would serve
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
