"""``tokenpool program add|list|set|remove``: the registered card programs (docs/pool.md, "Programs").

A card, a reservation, a pool request or a refill names a program; only registered ones are served. Each
has a refill target and TOME namespaces (NS1 issues its internal tokens, NS2 its external refs); left unset,
they follow ``TOKENPOOL_REFILL_TARGET`` and ``TOKENPOOL_TOME_NS1`` / ``_NS2`` of the process that uses them.

``add``, ``set`` and ``remove`` run as the owner role (``TOKENPOOL_DATABASE_ADMIN_URL``): the app role only
reads programs. ``list`` reads as the app role. Running services see a change within
``TOKENPOOL_SERVICE_PROGRAMS_TTL_S`` (a program just added works at once); the refill and the worker read
programs at each run and poll.

Exit codes: 0 done; 1 refused (a duplicate, an unknown name, a removal while the pool holds pairs); 2 usage
(an invalid name, namespace or target). A refusal is one line on stderr.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from tokenpool import bootstrap
from tokenpool.programs import InvalidProgram, Program, ProgramChange, ProgramError
from tokenpool.programs.model import validate_name, validate_namespace
from tokenpool.settings import Settings, get_settings

programs_app = typer.Typer(
    help="Card programs: register, list, change, remove (each has its pool, refill target and TOME namespaces).",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # a refusal is one line, however long

EXIT_REFUSED = 1
EXIT_USAGE = 2

T = TypeVar("T")

Name = Annotated[str, typer.Argument(help="The program's name: 1-64 of A-Z a-z 0-9 _ . -", show_default=False)]
Target = Annotated[int | None, typer.Option("--target", min=0, help="Available pairs its refill fills up to.")]
Ns1 = Annotated[str | None, typer.Option("--ns1", help="TOME namespace that issues its internal tokens.")]
Ns2 = Annotated[str | None, typer.Option("--ns2", help="TOME namespace of its external refs.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def register(app: typer.Typer) -> None:
    app.add_typer(programs_app, name="program")


@programs_app.command("add")
def program_add(name: Name, target: Target = None, ns1: Ns1 = None, ns2: Ns2 = None) -> None:
    """Register a program (or register a removed one again). Unset target and namespaces follow the settings."""
    settings = get_settings()
    registration = _run(_add(settings, name, target, ns1, ns2))
    again = " again" if registration.reregistered else ""
    console.print(f"program {name!r} registered{again}: {_describe(registration.program, settings)}",
                  highlight=False, soft_wrap=True)


@programs_app.command("list")
def program_list(
    as_json: JsonOption = False,
    everything: Annotated[bool, typer.Option("--all", help="Removed programs too.")] = False,
) -> None:
    """The programs with their target, namespaces, pairs by status and health (OK / LOW / CRITICAL / EMPTY)."""
    settings = get_settings()
    rows = _run(_list(settings, everything))
    if as_json:
        typer.echo(json.dumps({"programs": rows}, default=str))
        return
    table = Table("program", "target", "ns1", "ns2", "available", "reserved", "used", "expired", "health",
                  title="programs" + (" (removed ones included)" if everything else ""))
    for row in rows:
        name = row["name"] + (" [dim](removed)[/]" if row["removed_at"] else "")
        table.add_row(name, _setting(row["target"], row["target_from_settings"]),
                      _setting(row["ns1"], row["ns1_from_settings"]), _setting(row["ns2"], row["ns2_from_settings"]),
                      f"{row['available']:,}", f"{row['reserved']:,}", f"{row['used']:,}", f"{row['expired']:,}",
                      row["health"] or "-")
    console.print(table)
    console.print("[dim]* from the settings (TOKENPOOL_REFILL_TARGET, TOKENPOOL_TOME_NS1 / _NS2)[/]")


@programs_app.command("set")
def program_set(
    name: Name,
    target: Target = None,
    ns1: Ns1 = None,
    ns2: Ns2 = None,
    target_from_settings: Annotated[
        bool, typer.Option("--target-from-settings", help="Follow TOKENPOOL_REFILL_TARGET again.")] = False,
    namespaces_from_settings: Annotated[
        bool, typer.Option("--namespaces-from-settings", help="Follow TOKENPOOL_TOME_NS1 / _NS2 again.")] = False,
) -> None:
    """Change a program's refill target or TOME namespaces (batches journaled before keep theirs)."""
    try:
        change = ProgramChange(target, ns1, ns2, reset_target=target_from_settings,
                               reset_namespaces=namespaces_from_settings)
    except InvalidProgram as error:
        _fail(error.detail, EXIT_USAGE)
    if change.empty:
        _fail("nothing to change: give --target, --ns1, --ns2, --target-from-settings or --namespaces-from-settings",
              EXIT_USAGE)
    settings = get_settings()
    program = _run(_set(settings, name, change))
    console.print(f"program {name!r}: {_describe(program, settings)}", highlight=False, soft_wrap=True)


@programs_app.command("remove")
def program_remove(
    name: Name,
    force: Annotated[bool, typer.Option("--force", help="Remove it even while its pool holds available or "
                                        "reserved pairs (they stay in the table, unused until it is added again).")]
    = False,
) -> None:
    """Remove a program: from now on (services: within their cache TTL) its cards, reservations and refills are
    refused. Its cards keep their program and its pairs stay, answering detokenize; `add` registers it again.

    Refused while its pool holds AVAILABLE or RESERVED pairs or unfinished refill batches, unless --force."""
    live = _run(_remove(get_settings(), name, force))
    left = f"; left in its pool: {live.available:,} available, {live.reserved:,} reserved" if live.any else ""
    console.print(f"program {name!r} removed{left}", highlight=False, soft_wrap=True)


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Runs a command's work; a refusal is one line on stderr and exit 1, a bad value exit 2."""
    try:
        return asyncio.run(work)
    except InvalidProgram as error:
        _fail(error.detail, EXIT_USAGE)
    except ProgramError as error:
        _fail(error.detail, EXIT_REFUSED)


def _fail(message: str, code: int) -> NoReturn:
    err_console.print(f"[red]refused:[/] {message}", highlight=False)
    raise typer.Exit(code)


async def _add(settings: Settings, name: str, target: int | None, ns1: str | None, ns2: str | None) -> Any:
    validate_name(name)
    for namespace in (ns1, ns2):
        if namespace is not None:
            validate_namespace(namespace)
    async with bootstrap.open_admin_database(settings) as backend:
        return await backend.programs.add(name, refill_target=target, ns1=ns1, ns2=ns2)


async def _set(settings: Settings, name: str, change: ProgramChange) -> Program:
    validate_name(name)
    async with bootstrap.open_admin_database(settings) as backend:
        return await backend.programs.change(name, change)


async def _remove(settings: Settings, name: str, force: bool) -> Any:
    validate_name(name)
    async with bootstrap.open_admin_database(settings) as backend:
        return await backend.programs.remove(name, force=force)


async def _list(settings: Settings, everything: bool) -> list[dict[str, Any]]:
    from tokenpool.monitoring.forecast import consumption_per_hour
    from tokenpool.monitoring.health import assess
    from tokenpool.pool.model import PairStatus, PoolStats

    async with bootstrap.open_database(settings, max_size=2) as backend:
        programs = await (backend.programs.everything() if everything else backend.programs.registered())
        counts = await backend.programs.pair_counts()
        rows = []
        for program in programs:
            stats = counts.get(program.name, PoolStats(program.name))
            health = None
            if program.registered:
                # Read only: the span of the samples the refill and the worker record (no sample added here).
                span = await backend.samples.sample_span(program.name, settings.refill_forecast_window_s)
                health = assess(stats, consumption_per_hour(span), settings, program.target_in(settings)).status.value
            rows.append({
                "name": program.name,
                "target": program.target_in(settings),
                "target_from_settings": program.refill_target is None,
                "ns1": program.ns1_in(settings),
                "ns1_from_settings": program.ns1 is None,
                "ns2": program.ns2_in(settings),
                "ns2_from_settings": program.ns2 is None,
                **{status.value.lower(): stats.count(status) for status in PairStatus},
                "health": health,
                "created_at": program.created_at.isoformat(),
                "updated_at": program.updated_at.isoformat(),
                "removed_at": program.removed_at.isoformat() if program.removed_at else None,
            })
        return rows


def _setting(value: object, from_settings: bool) -> str:
    text = f"{value:,}" if isinstance(value, int) else str(value)
    return text + ("*" if from_settings else "")


def _describe(program: Program, settings: Settings) -> str:
    def origin(unset: bool) -> str:
        return " (from the settings)" if unset else ""

    return (f"target {program.target_in(settings):,}{origin(program.refill_target is None)}, "
            f"ns1 {program.ns1_in(settings)}{origin(program.ns1 is None)}, "
            f"ns2 {program.ns2_in(settings)}{origin(program.ns2 is None)}")

