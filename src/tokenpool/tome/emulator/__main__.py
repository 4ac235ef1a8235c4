"""``python -m tokenpool.tome.emulator --host H --port P --db PATH [fault flags] [TLS and token flags]``.

The same flags as ``tokenpool tome-emulator``; kept free of the CLI package so tests and tools can
start an emulator without it (adapters do not import entry points).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tokenpool.credentials import read_bearer_token
from tokenpool.tome.emulator.faults import Faults
from tokenpool.tome.emulator.server import BEARER_TOKEN_FILE_ENV, ServerTls, serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tokenpool.tome.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: this machine only).")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--db", type=Path, required=True, help="SQLite vault file (created if missing).")
    for name, info in Faults.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if info.annotation is bool:
            parser.add_argument(flag, action="store_true", help=info.description)
        else:
            parser.add_argument(flag, type=info.annotation, default=info.default, help=info.description)  # type: ignore[arg-type]
    parser.add_argument("--ssl-certfile", type=Path, help="Serve HTTPS with this certificate (PEM).")
    parser.add_argument("--ssl-keyfile", type=Path, help="Key of --ssl-certfile (PEM).")
    parser.add_argument("--ssl-client-ca", type=Path, help="Require client certificates signed by this CA.")
    parser.add_argument(
        "--bearer-token-file", type=Path, default=os.environ.get(BEARER_TOKEN_FILE_ENV) or None,
        help="Require Authorization: Bearer <the token in this file> on every path "
        f"(default: ${BEARER_TOKEN_FILE_ENV}).",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    token: str | None = None
    try:
        tls = ServerTls.from_flags(args.ssl_certfile, args.ssl_keyfile, args.ssl_client_ca)
        if args.bearer_token_file is not None:
            token = read_bearer_token(args.bearer_token_file)
    except ValueError as exc:
        parser.error(str(exc))
    faults = Faults(**{name: getattr(args, name) for name in Faults.model_fields})
    serve(args.host, args.port, args.db, faults, log_level=args.log_level, tls=tls, bearer_token=token)


if __name__ == "__main__":
    main()
