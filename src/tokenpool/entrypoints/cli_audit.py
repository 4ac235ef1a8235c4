"""``tokenpool audit verify``: checks the hash chain of the token-read audit (``detokenize_audit``)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console

from tokenpool import bootstrap
from tokenpool.audit.chain import ChainLink, ChainReport
from tokenpool.audit.verify import verify_chain
from tokenpool.db.audit_store import AuditChainReader
from tokenpool.db.database import Database
from tokenpool.settings import Settings, get_settings

console = Console()

audit_app = typer.Typer(help="The audit trail of token reads.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")


def _anchor(text: str | None) -> ChainLink | None:
    if text is None:
        return None
    try:
        return ChainLink.parse(text)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


@audit_app.command("verify")
def audit_verify(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    anchor: Annotated[str | None, typer.Option(
        "--anchor", metavar="SEQ:HEXHASH",
        help="A head printed by an earlier run and kept outside the database: the chain must still hold "
        "that row with that hash. Without an anchor, a chain rewritten whole by someone with the owner's "
        "rights still verifies.",
    )] = None,
) -> None:
    """Recompute the audit's hash chain from the prune watermark to the head.

    Exit: 0 intact (prints the row count and the head, SEQ:HASH: record it outside the database);
    1 a row deleted, changed or re-linked, or the anchor not in the chain (prints the first such row)."""
    report = asyncio.run(_verify(get_settings(), _anchor(anchor)))
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    else:
        _print(report)
    if not report.ok:
        raise typer.Exit(1)


async def _verify(settings: Settings, anchor: ChainLink | None) -> ChainReport:
    db = await Database.open(bootstrap.admin_database_url(settings), settings, wait=True, min_size=1, max_size=1)
    try:
        async with db.connection() as conn:
            return await verify_chain(AuditChainReader(conn), anchor=anchor)
    finally:
        await db.close()


def _print(report: ChainReport) -> None:
    if report.broken is None:
        checked = f" (anchor {report.anchor.seq} found)" if report.anchor else ""
        console.print(f"audit chain intact: {report.rows:,} rows after seq {report.start.seq}{checked}")
        console.print(f"head {report.head}", highlight=False)
        return
    console.print(f"[red]audit chain BROKEN[/] at seq {report.broken.seq} ({report.broken.kind}): "
                  f"{report.broken.detail}", highlight=False)
