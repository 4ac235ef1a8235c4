"""``python -m tokenpool.tome.emulator --host H --port P --db PATH [fault flags]``.

The same flags as ``tokenpool tome-emulator``; kept free of the CLI package so tests and tools can
start an emulator without it (adapters do not import entry points).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenpool.tome.emulator.faults import Faults
from tokenpool.tome.emulator.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tokenpool.tome.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--db", type=Path, required=True, help="SQLite vault file (created if missing).")
    for name, info in Faults.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if info.annotation is bool:
            parser.add_argument(flag, action="store_true", help=info.description)
        else:
            parser.add_argument(flag, type=info.annotation, default=info.default, help=info.description)  # type: ignore[arg-type]
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    faults = Faults(**{name: getattr(args, name) for name in Faults.model_fields})
    serve(args.host, args.port, args.db, faults, log_level=args.log_level)


if __name__ == "__main__":
    main()
