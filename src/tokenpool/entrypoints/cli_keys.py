"""``tokenpool keys status|rotate|reencrypt|rotate-kek``: the vault's keys, rotated online (docs/security.md).

Rotation: ``rotate`` adds a data-key version that new writes use (each process picks it up within
``vault_refresh_s``); ``reencrypt`` moves older rows to it in short batches while the system runs; ``status``
shows rows per version. ``rotate-kek`` rotates the key-encryption key and re-wraps the stored keys only:
no token is decrypted or rewritten.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tokenpool import bootstrap
from tokenpool.settings import Settings, get_settings

keys_app = typer.Typer(help="The token vault's keys: status, rotation, re-encryption.", no_args_is_help=True)
console = Console()

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


@keys_app.command("status")
def keys_status(as_json: JsonOption = False) -> None:
    """Data-key versions (the primary is the newest) and sealed rows per table and version.

    Exit: 0 every row under the primary, 1 rows left under an older version (run `keys reencrypt`)."""
    status = asyncio.run(_status(get_settings()))
    if as_json:
        typer.echo(json.dumps(status))
    else:
        table = Table("table", "key version", "rows", title=f"primary data-key version {status['primary_version']}")
        for row in status["rows"]:
            table.add_row(row["table"], str(row["key_version"]), f"{row['rows']:,}")
        console.print(table)
        console.print(f"key-encryption key: {status['kek_id']}; rows under older versions: {status['older_rows']:,}")
    if status["older_rows"]:
        raise typer.Exit(1)


@keys_app.command("rotate")
def keys_rotate() -> None:
    """A new data-key version; new writes use it once each process reloads its keys (vault_refresh_s)."""
    version = asyncio.run(_rotate(get_settings()))
    console.print(f"data-key version {version} is the primary now; run `tokenpool keys reencrypt` to move older rows")


@keys_app.command("reencrypt")
def keys_reencrypt(
    batch: Annotated[int, typer.Option("--batch", min=1, max=50_000, help="Rows per statement.")] = 1_000,
    as_json: JsonOption = False,
) -> None:
    """Re-encrypt rows under older data-key versions with the primary, in short batches, online and resumable.

    Exit: 0 none left, 1 rows changed meanwhile or written by a process on the old key (run it again)."""
    report, older = asyncio.run(_reencrypt(get_settings(), batch))
    if as_json:
        typer.echo(json.dumps({**report, "older_rows_left": older}))
    else:
        console.print(f"re-encrypted {report['reencrypted']} under version {report['primary_version']}; "
                      f"skipped (changed meanwhile) {report['skipped']}; rows under older versions left: {older:,}")
    if older:
        raise typer.Exit(1)


@keys_app.command("rotate-kek")
def keys_rotate_kek() -> None:
    """Rotate the key-encryption key (local key file: a new version; KMS: see docs) and re-wrap the stored keys."""
    kek_id, rewrapped = asyncio.run(_rotate_kek(get_settings()))
    console.print(f"key-encryption key {kek_id}; re-wrapped {rewrapped} stored keys"
                  + (" (KMS keeps the key id when it rotates its material: nothing to re-wrap)" if not rewrapped
                     and not kek_id.startswith("local:") else ""))


async def _status(settings: Settings) -> dict[str, Any]:
    from tokenpool.db.vault_store import versions_below

    async with bootstrap.open_admin_database(settings) as backend:
        counts = await backend.vault_store.version_counts()
        primary = backend.vault.keyring.primary_version
        return {
            "primary_version": primary,
            "versions": list(backend.vault.keyring.versions),
            "kek_id": backend.vault_store.kek_id,
            "rows": [{"table": c.table_name, "key_version": c.key_version, "rows": c.rows} for c in counts],
            "older_rows": versions_below(counts, primary),
        }


async def _rotate(settings: Settings) -> int:
    async with bootstrap.open_admin_database(settings) as backend:
        return await backend.vault_store.rotate()


async def _reencrypt(settings: Settings, batch: int) -> tuple[dict[str, Any], int]:
    from tokenpool.db.reencryption import reencrypt
    from tokenpool.db.vault_store import versions_below

    async with bootstrap.open_admin_database(settings) as backend:
        report = await reencrypt(backend.db, backend.vault, await backend.vault_store.version_counts(), batch=batch)
        left = versions_below(await backend.vault_store.version_counts(), report.primary_version)
        return report.as_dict(), left


async def _rotate_kek(settings: Settings) -> tuple[str, int]:
    # The stored keys are not unwrapped here: after a switch to another KMS key the configured key cannot
    # unwrap them yet (KMS re-encrypts them from the old key inside KMS, see docs/security.md).
    from tokenpool.db.database import Database
    from tokenpool.db.vault_store import VaultStore
    from tokenpool.vault import key_provider_from_settings

    db = await Database.open(bootstrap.admin_database_url(settings), settings, wait=True, min_size=1, max_size=1)
    try:
        store = VaultStore(db, key_provider_from_settings(settings))
        kek_id = store.rotate_kek()
        return kek_id, await store.rewrap()
    finally:
        await db.close()
