"""CLI commands of the HTTP service: ``serve``, ``apikey create|revoke|list``, ``config set|unset|show``.

Wire them into the main CLI with ``tokenpool.entrypoints.cli_service.register(app)``.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from tokenpool import bootstrap
from tokenpool.db.program_store import ProgramStore
from tokenpool.programs import UnknownProgram
from tokenpool.service.auth import SCOPES, ApiKeyError, ApiKeys, parse_duration, parse_scopes
from tokenpool.service.runtime_config import KNOWN_KEYS, parse_percent, read_all, traffic_key, write
from tokenpool.settings import Settings, get_settings

console = Console()
err_console = Console(stderr=True)

apikey_app = typer.Typer(help="API keys of the HTTP service (stored hashed; shown once).", no_args_is_help=True)
config_app = typer.Typer(help="Runtime settings, picked up by running services within seconds.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(apikey_app, name="apikey")
    app.add_typer(config_app, name="config")


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on [default: TOKENPOOL_SERVE_HOST, "
                                             "else 127.0.0.1].", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="TCP port [default: TOKENPOOL_SERVE_PORT, else 8000].",
                                             show_default=False)] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    ssl_certfile: Annotated[
        Path | None,
        typer.Option("--ssl-certfile", exists=True, dir_okay=False, help="Serve HTTPS with this certificate (PEM)."),
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option("--ssl-keyfile", exists=True, dir_okay=False, help="Key of --ssl-certfile (PEM).")
    ] = None,
) -> None:
    """Run the card and detokenize HTTP API (FastAPI on uvicorn); HTTPS with --ssl-certfile and --ssl-keyfile.

    Starts the API alone (no worker, no refill, no emulator: `tokenpool run`
    starts everything). It needs:
      database  TOKENPOOL_DATABASE_URL (the app role), migrated with
                `tokenpool db upgrade`; unset: the embedded PostgreSQL under
                TOKENPOOL_HOME (started if it is not running)
      TOME      TOKENPOOL_TOME_URL (required: the fallback when a pool is
                empty); TLS and token: TOKENPOOL_TOME_CA_BUNDLE,
                TOKENPOOL_TOME_CLIENT_CERT/_KEY, TOKENPOOL_TOME_BEARER_TOKEN_FILE
      keys      the vault's key (TOKENPOOL_VAULT_KEY_PROVIDER: the local key
                file TOKENPOOL_VAULT_LOCAL_KEY_FILE, or AWS KMS); clients
                need API keys: `tokenpool apikey create`
    Listens on 127.0.0.1:8000 (this machine only) unless --host/--port.
    /healthz and /readyz need no key; OpenAPI at /openapi.json.
    """
    import uvicorn

    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise typer.BadParameter("--ssl-certfile and --ssl-keyfile go together: give both or neither")
    settings = get_settings()
    host = host or settings.serve_host
    port = port if port is not None else settings.serve_port
    config = uvicorn.Config(
        "tokenpool.entrypoints.api:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        access_log=False,  # the service logs every request itself, as JSON with its correlation id
        proxy_headers=False,  # the audit's client address: service/client_address.py reads X-Forwarded-For
        timeout_graceful_shutdown=10,
        # uvicorn's default (5 s) is shorter than any balancer's or client pool's idle timeout: a request
        # sent on a connection the server is just closing is lost, and the client sees a dropped connection.
        timeout_keep_alive=max(1, math.ceil(settings.service_keep_alive_s)),
    )
    server = uvicorn.Server(config)
    if workers == 1:
        server.run()
        return
    from uvicorn.supervisors import Multiprocess

    # The workers share one listening socket made here rather than by uvicorn: uvicorn's has protocol 0, so
    # asyncio does not set TCP_NODELAY on the connections it accepts, and every response then waits for the
    # client's delayed ACK (~40 ms a request). Accepted sockets inherit both the protocol and the option.
    Multiprocess(config, sockets=[_listening_socket(host, port)]).run()


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


@apikey_app.command("create")
def apikey_create(
    name: Annotated[str, typer.Option("--name", help="Unique name; audit rows carry it.")],
    scopes: Annotated[str, typer.Option(
        "--scopes", help=f"Comma-separated, from: {', '.join(sorted(SCOPES))} (e.g. cards:write,cards:read).")],
    expires_in: Annotated[str | None, typer.Option(
        "--expires-in", metavar="DURATION",
        help="Lifetime, e.g. 30d, 12h, 90m, 2w or 1d12h (units s, m, h, d, w; at most 3650d); "
        "the key is refused after it. Default: it never expires.")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help='Print {"name", "key", "scopes", "expires_at"}.')] = False,
) -> None:
    """Create a key and print it ONCE (only its SHA-256 is stored)."""
    try:
        scope_list = parse_scopes(scopes)
        expires_in_s = parse_duration(expires_in) if expires_in is not None else None
        principal, key = asyncio.run(_create_key(get_settings(), name, scope_list, expires_in_s))
    except ApiKeyError as error:
        err_console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    expires_at = principal.expires_at.isoformat() if principal.expires_at else None
    if as_json:
        typer.echo(json.dumps({"name": principal.name, "key": key, "scopes": sorted(principal.scopes),
                               "expires_at": expires_at}))
    else:
        console.print(f"key for {principal.name!r} (scopes {', '.join(sorted(principal.scopes))}; "
                      + (f"expires {expires_at}):" if expires_at else "never expires):"))
        typer.echo(key)
        console.print("[yellow]store it now: it is not shown again.[/]")


@apikey_app.command("revoke")
def apikey_revoke(
    name: Annotated[str | None, typer.Argument(help="The key's name.", show_default=False)] = None,
    name_option: Annotated[str | None, typer.Option("--name", help="The key's name (same as NAME).")] = None,
) -> None:
    """Revoke a key: every running service refuses it within a second (docs/security.md, API keys).

    Exit: 0 revoked, 1 no live key of that name, 2 no name (or two different ones)."""
    if name is not None and name_option is not None and name != name_option:
        err_console.print("[red]error:[/] give the name once: NAME or --name")
        raise typer.Exit(2)
    chosen = name if name is not None else name_option
    if not chosen:
        err_console.print("[red]error:[/] which key? tokenpool apikey revoke NAME")
        raise typer.Exit(2)
    if not asyncio.run(_with_keys(get_settings(), lambda keys: keys.revoke(chosen))):
        err_console.print(f"[red]error:[/] no live key named {chosen!r}")
        raise typer.Exit(1)
    console.print(f"revoked {chosen!r}")


@apikey_app.command("list")
def apikey_list(as_json: Annotated[bool, typer.Option(
    "--json", help='Print a JSON array of {"name", "scopes", "status", "created_at", "last_used_at", '
    '"expires_at", "revoked_at"}.')] = False) -> None:
    """Every key's name, scopes, status (live, expired, revoked) and dates (never the key).

    Last use is recorded at most once a minute per key and service process, so it may lag by a minute."""
    rows: list[dict[str, Any]] = asyncio.run(_with_keys(get_settings(), lambda keys: keys.list()))
    if as_json:
        typer.echo(json.dumps(rows))
        return
    # Fold, never truncate: a narrow terminal wraps a date rather than hiding its end behind an ellipsis.
    table = Table(*(Column(header, overflow="fold") for header in
                    ("name", "scopes", "status", "created", "last used", "expires", "revoked")))
    for row in rows:
        table.add_row(row["name"], ",".join(row["scopes"]), row["status"], _when(row["created_at"]),
                      _when(row["last_used_at"]) or "never", _when(row["expires_at"]) or "never",
                      _when(row["revoked_at"]))
    console.print(table)


def _when(iso: str | None) -> str:
    """An ISO timestamp to the minute (last use is recorded once a minute), in UTC, for the table."""
    if iso is None:
        return ""
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


ProgramOption = Annotated[
    str | None,
    typer.Option("--program", help="One registered program (its own value wins over the shared one); "
                                   "unset: the value shared by every program."),
]


@config_app.command("set")
def config_set(
    key: Annotated[str, typer.Argument(help="pool-traffic-percent")],
    value: Annotated[str, typer.Argument(help="0..100")],
    program: ProgramOption = None,
) -> None:
    """Set a runtime setting, e.g. `tokenpool config set pool-traffic-percent 10 --program gold`.

    Exit: 0 set, 2 an unknown setting, a value out of range or an unregistered program."""
    _known_key(key)
    percent = parse_percent(value)
    if percent is None:
        err_console.print("[red]error:[/] pool-traffic-percent must be an integer 0..100")
        raise typer.Exit(2)
    asyncio.run(_write(get_settings(), program, percent))
    where = f" for program {program!r}" if program else " for every program without its own value"
    console.print(f"{key} = {percent}{where} (services pick it up within their cache TTL)")


@config_app.command("unset")
def config_unset(key: Annotated[str, typer.Argument(help="pool-traffic-percent")],
                 program: ProgramOption = None) -> None:
    """Remove a runtime setting: a program falls back to the shared value, the shared value to the
    environment default."""
    _known_key(key)
    asyncio.run(_write(get_settings(), program, None))
    console.print(f"{key} unset" + (f" for program {program!r}" if program else ""))


@config_app.command("show")
def config_show() -> None:
    """Runtime settings as JSON (stored values, per program too, and the environment default)."""
    settings = get_settings()
    stored = asyncio.run(_read(settings))
    prefix = traffic_key("")
    typer.echo(json.dumps({
        "pool-traffic-percent": {
            "stored": stored.get(traffic_key(None)),
            "programs": {key[len(prefix):]: value for key, value in sorted(stored.items()) if key.startswith(prefix)},
            "default": settings.pool_traffic_percent,
        }
    }))


def _known_key(key: str) -> str:
    if key not in KNOWN_KEYS:
        err_console.print(f"[red]error:[/] unknown setting {key!r}; known: {', '.join(KNOWN_KEYS)}")
        raise typer.Exit(2)
    return KNOWN_KEYS[key]


async def _create_key(settings: Settings, name: str, scopes: list[str], expires_in_s: int | None) -> Any:
    return await _with_keys(settings, lambda keys: keys.create(name, scopes, expires_in_s=expires_in_s))


async def _with_keys(settings: Settings, action: Any) -> Any:
    async with bootstrap.open_database(settings, max_size=2) as db:
        return await action(ApiKeys(db.db))


async def _write(settings: Settings, program: str | None, value: Any) -> None:
    async with bootstrap.open_database(settings, max_size=2) as db:
        if program is not None:
            try:
                await ProgramStore(db.db).require(program)
            except UnknownProgram as unknown:
                err_console.print(f"[red]error:[/] {unknown.detail}")
                raise typer.Exit(2) from None
        await write(db.db, traffic_key(program), value)


async def _read(settings: Settings) -> dict[str, Any]:
    async with bootstrap.open_database(settings, max_size=2) as db:
        return await read_all(db.db)
