"""CLI commands of the HTTP service: ``serve``, ``apikey create|revoke|list``, ``config set|unset|show``.

Wire them into the main CLI with ``tokenpool.entrypoints.cli_service.register(app)``.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tokenpool import bootstrap
from tokenpool.service.auth import ApiKeyError, ApiKeys, parse_scopes
from tokenpool.service.runtime_config import KNOWN_KEYS, parse_percent, read_all, write
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
    """Run the card and detokenize HTTP API (FastAPI on uvicorn); HTTPS with --ssl-certfile and --ssl-keyfile."""
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
    scopes: Annotated[str, typer.Option("--scopes", help="Comma-separated, e.g. cards:write,cards:read")],
    as_json: Annotated[bool, typer.Option("--json", help='Print {"name", "key", "scopes"}.')] = False,
) -> None:
    """Create a key and print it ONCE (only its SHA-256 is stored)."""
    try:
        scope_list = parse_scopes(scopes)
        principal, key = asyncio.run(_create_key(get_settings(), name, scope_list))
    except ApiKeyError as error:
        err_console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({"name": principal.name, "key": key, "scopes": sorted(principal.scopes)}))
    else:
        console.print(f"key for {principal.name!r} (scopes {', '.join(sorted(principal.scopes))}):")
        typer.echo(key)
        console.print("[yellow]store it now: it is not shown again.[/]")


@apikey_app.command("revoke")
def apikey_revoke(name: Annotated[str, typer.Option("--name", help="The key's name.")]) -> None:
    """Revoke a key (running services stop accepting it within the key cache TTL)."""
    if not asyncio.run(_with_keys(get_settings(), lambda keys: keys.revoke(name))):
        err_console.print(f"[red]error:[/] no live key named {name!r}")
        raise typer.Exit(1)
    console.print(f"revoked {name!r}")


@apikey_app.command("list")
def apikey_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every key's name, scopes and dates (never the key)."""
    rows: list[dict[str, Any]] = asyncio.run(_with_keys(get_settings(), lambda keys: keys.list()))
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("name", "scopes", "created", "revoked")
    for row in rows:
        table.add_row(row["name"], ",".join(row["scopes"]), row["created_at"], row["revoked_at"] or "")
    console.print(table)


@config_app.command("set")
def config_set(
    key: Annotated[str, typer.Argument(help="pool-traffic-percent")],
    value: Annotated[str, typer.Argument(help="0..100")],
) -> None:
    """Set a runtime setting, e.g. `tokenpool config set pool-traffic-percent 10`."""
    stored_key = _known_key(key)
    percent = parse_percent(value)
    if percent is None:
        err_console.print("[red]error:[/] pool-traffic-percent must be an integer 0..100")
        raise typer.Exit(2)
    asyncio.run(_write(get_settings(), stored_key, percent))
    console.print(f"{key} = {percent} (services pick it up within their cache TTL)")


@config_app.command("unset")
def config_unset(key: Annotated[str, typer.Argument(help="pool-traffic-percent")]) -> None:
    """Remove a runtime setting: services fall back to their environment default."""
    asyncio.run(_write(get_settings(), _known_key(key), None))
    console.print(f"{key} unset")


@config_app.command("show")
def config_show() -> None:
    """Runtime settings as JSON (stored values, and the environment default of each)."""
    settings = get_settings()
    stored = asyncio.run(_read(settings))
    typer.echo(json.dumps({
        "pool-traffic-percent": {
            "stored": stored.get(KNOWN_KEYS["pool-traffic-percent"]),
            "default": settings.pool_traffic_percent,
        }
    }))


def _known_key(key: str) -> str:
    if key not in KNOWN_KEYS:
        err_console.print(f"[red]error:[/] unknown setting {key!r}; known: {', '.join(KNOWN_KEYS)}")
        raise typer.Exit(2)
    return KNOWN_KEYS[key]


async def _create_key(settings: Settings, name: str, scopes: list[str]) -> Any:
    return await _with_keys(settings, lambda keys: keys.create(name, scopes))


async def _with_keys(settings: Settings, action: Any) -> Any:
    async with bootstrap.open_database(settings, max_size=2) as db:
        return await action(ApiKeys(db.db))


async def _write(settings: Settings, key: str, value: Any) -> None:
    async with bootstrap.open_database(settings, max_size=2) as db:
        await write(db.db, key, value)


async def _read(settings: Settings) -> dict[str, Any]:
    async with bootstrap.open_database(settings, max_size=2) as db:
        return await read_all(db.db)
