"""CLI commands that build deployables: ``lambda-package`` (the refill handler's AWS Lambda zip).

Wire them into the main CLI with ``tokenpool.entrypoints.cli_deploy.register(app)``. The work is in
``tokenpool.aws.lambda_package``; this only parses, calls and prints.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from tokenpool.aws.lambda_package import (
    DEFAULT_PYTHON,
    DIRECT_UPLOAD_LIMIT,
    HANDLER,
    UNZIPPED_LIMIT,
    PackageError,
    Target,
    build_package,
)

console = Console(stderr=True)  # progress and the summary; --json prints the report alone on stdout

_MB = 1024 * 1024


class Arch(enum.StrEnum):
    x86_64 = "x86_64"
    arm64 = "arm64"


def register(app: typer.Typer) -> None:
    app.command("lambda-package")(lambda_package)


def lambda_package(
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="Where to write the zip (replaced).")],
    arch: Annotated[Arch, typer.Option("--arch", help="The function's architecture.")] = Arch.x86_64,
    python_version: Annotated[str, typer.Option("--python-version", help="The function's Python runtime, "
                                                "e.g. 3.12.")] = DEFAULT_PYTHON,
    source: Annotated[Path | None, typer.Option("--source", exists=True, help="The project folder or a "
                                                "tokenpool wheel (default: this checkout).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Build the AWS Lambda zip of the refill handler from binary wheels for the target (needs PyPI).

    Without embedded PostgreSQL; deterministic (sorted files, fixed timestamps). Exit 1: the build
    failed, or the package exceeds Lambda's 250 MB unzipped limit."""
    try:
        target = Target(arch.value, python_version)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    def progress(line: str) -> None:
        console.print(line, style="dim", soft_wrap=True, markup=False)

    try:
        report = build_package(out, target, source=source, progress=progress)
    except PackageError as error:
        console.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    console.print(
        f"{report.path}: {report.zipped_bytes / _MB:.1f} MB zipped, {report.unzipped_bytes / _MB:.1f} MB unzipped, "
        f"{report.files:,} files, {len(report.distributions)} distributions\n"
        f"runtime python{target.python_version}, architecture {target.arch}, handler {HANDLER}",
        soft_wrap=True, markup=False,
    )
    if not report.within_direct_upload_limit:
        console.print(f"[yellow]over the {DIRECT_UPLOAD_LIMIT // _MB} MB direct upload limit: upload it "
                      "through S3[/]")
    if not report.within_unzipped_limit:
        console.print(f"[red]over Lambda's {UNZIPPED_LIMIT // _MB} MB unzipped limit: it cannot be deployed[/]")
        raise typer.Exit(1)
