"""The ``tokenpool tome-emulator`` command: parse flags, hand over to the emulator server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# As tokenpool.tome.emulator.server.BEARER_TOKEN_FILE_ENV; not imported from there: that loads the whole
# emulator (FastAPI, uvicorn) for every `tokenpool --help`.
BEARER_TOKEN_FILE_ENV = "TOKENPOOL_TOME_EMULATOR_BEARER_TOKEN_FILE"  # noqa: S105 - a variable name


def register(app: typer.Typer) -> None:
    """Add ``tome-emulator`` to ``app``."""
    app.command("tome-emulator")(tome_emulator)


def tome_emulator(
    db: Annotated[Path, typer.Option("--db", help="SQLite vault file (created if missing, kept across runs).")],
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on: this machine only unless you give another.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8099,
    latency_ms: Annotated[float, typer.Option("--latency-ms", min=0, help="Added to every call.")] = 0,
    jitter_ms: Annotated[float, typer.Option("--jitter-ms", min=0, help="Random extra latency 0..N ms.")] = 0,
    rate_limit_rps: Annotated[
        float, typer.Option("--rate-limit-rps", min=0, help="Requests/s before 429 + Retry-After; 0 = unlimited.")
    ] = 0,
    error_rate: Annotated[
        float, typer.Option("--error-rate", min=0, max=1, help="Share of calls failing 500/503.")
    ] = 0,
    outage: Annotated[bool, typer.Option("--outage", help="Start in a full outage (every call 503).")] = False,
    slow_ms: Annotated[float, typer.Option("--slow-ms", min=0, help="Extra wait before every answer.")] = 0,
    corrupt_rate: Annotated[
        float, typer.Option("--corrupt-rate", min=0, max=1, help="Share of answers missing their last item.")
    ] = 0,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Most items per request; over: 413.")] = 2_500,
    ssl_certfile: Annotated[
        Path | None, typer.Option("--ssl-certfile", help="Serve HTTPS with this certificate (PEM).")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option("--ssl-keyfile", help="Key of --ssl-certfile (PEM).")] = None,
    ssl_client_ca: Annotated[
        Path | None, typer.Option("--ssl-client-ca", help="Require client certificates signed by this CA.")
    ] = None,
    bearer_token_file: Annotated[
        Path | None,
        typer.Option(
            "--bearer-token-file",
            envvar=BEARER_TOKEN_FILE_ENV,
            help="Require Authorization: Bearer <the token in this file> on every path, /_admin/* included "
            "(the file must be 0600).",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Run the TOME emulator: the contract of docs/tome-api.md, fault injection, a ledger. Faults can be
    changed at run time with PUT /_admin/faults.

    Listens on 127.0.0.1 unless --host says otherwise; the vault file is created owner-only (0600). With
    --bearer-token-file (or TOKENPOOL_TOME_EMULATOR_BEARER_TOKEN_FILE) every call needs the token, else
    401; `tokenpool run` starts it so."""
    # deferred: keeps `tokenpool --help` fast
    from tokenpool.credentials import read_bearer_token
    from tokenpool.tome.emulator import Faults, ServerTls, serve

    try:
        tls = ServerTls.from_flags(ssl_certfile, ssl_keyfile, ssl_client_ca)
        token = read_bearer_token(bearer_token_file) if bearer_token_file is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    faults = Faults(
        latency_ms=latency_ms,
        jitter_ms=jitter_ms,
        rate_limit_rps=rate_limit_rps,
        error_rate=error_rate,
        outage=outage,
        slow_ms=slow_ms,
        corrupt_rate=corrupt_rate,
        max_batch=max_batch,
    )
    serve(host, port, db, faults, log_level=log_level, tls=tls, bearer_token=token)
