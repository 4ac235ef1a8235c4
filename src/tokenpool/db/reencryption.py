"""Re-encryption of sealed tokens under the primary data key (``tokenpool keys reencrypt``), online.

Page by page through each table's rows of an older key version (keyset on the primary key, so a run can
stop anywhere and the next one resumes), each page read without locks and written back in ONE statement
with compare-and-set on the old ciphertext: card creation, the refill and detokenize go on meanwhile, and
no row is held locked longer than one short UPDATE. A row that changed between read and write keeps its
value and is counted as skipped; run again until ``keys status`` shows no older version (a process that
has not reloaded its keys yet may still write the old version for up to ``vault_refresh_s``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from uuid import UUID

from psycopg.rows import class_row

from tokenpool.db.database import Database
from tokenpool.db.queries import sql
from tokenpool.db.vault_store import Vault, VersionCount, learned_token_aad, pending_token_aad, pool_token_aad
from tokenpool.vault import Keyring


@dataclass(frozen=True, slots=True)
class _PoolRow:
    id: int
    pool: str
    external_ref: str
    token_ct: bytes


@dataclass(frozen=True, slots=True)
class _LearnedRow:
    external_ref: str
    token_ct: bytes


@dataclass(frozen=True, slots=True)
class _PendingRow:
    batch_id: UUID
    position: int
    token_ct: bytes


@dataclass(slots=True)
class ReencryptReport:
    primary_version: int
    reencrypted: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # changed between read and write: rerun
    stopped: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"primary_version": self.primary_version, "reencrypted": self.reencrypted, "skipped": self.skipped,
                "stopped": self.stopped}


async def reencrypt(db: Database, vault: Vault, counts: Sequence[VersionCount], *, batch: int = 1_000,
                    stop: asyncio.Event | None = None) -> ReencryptReport:
    """Moves every sealed token under an older version than the primary to the primary."""
    await vault.reload()  # the newest primary, whatever this process loaded before
    keyring = vault.keyring
    report = ReencryptReport(keyring.primary_version)
    for count in counts:
        if count.key_version >= keyring.primary_version or (stop is not None and stop.is_set()):
            continue
        done, skipped = await _TABLES[count.table_name](db, keyring, count.key_version, batch, stop)
        report.reencrypted[count.table_name] = report.reencrypted.get(count.table_name, 0) + done
        report.skipped[count.table_name] = report.skipped.get(count.table_name, 0) + skipped
    report.stopped = stop is not None and stop.is_set()
    return report


async def _token_pool(db: Database, keyring: Keyring, version: int, batch: int,
                      stop: asyncio.Event | None) -> tuple[int, int]:
    done = skipped = 0
    after = 0
    while stop is None or not stop.is_set():
        async with db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(_PoolRow))
            await cursor.execute(sql("reencrypt_token_pool_page"),
                                 {"key_version": version, "after_id": after, "limit": batch})
            rows = await cursor.fetchall()
            if not rows:
                break
            new = [keyring.reencrypt(bytes(row.token_ct), pool_token_aad(row.pool, row.external_ref)) for row in rows]
            written = (await conn.execute(sql("reencrypt_token_pool_write"), {
                "key_version": keyring.primary_version, "ids": [row.id for row in rows],
                "old_cts": [row.token_ct for row in rows], "new_cts": new,
            })).rowcount
        done, skipped, after = done + written, skipped + len(rows) - written, rows[-1].id
    return done, skipped


async def _learned_pairs(db: Database, keyring: Keyring, version: int, batch: int,
                         stop: asyncio.Event | None) -> tuple[int, int]:
    done = skipped = 0
    after = ""
    while stop is None or not stop.is_set():
        async with db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(_LearnedRow))
            await cursor.execute(sql("reencrypt_learned_pairs_page"),
                                 {"key_version": version, "after_ref": after, "limit": batch})
            rows = await cursor.fetchall()
            if not rows:
                break
            new = [keyring.reencrypt(bytes(row.token_ct), learned_token_aad(row.external_ref)) for row in rows]
            written = (await conn.execute(sql("reencrypt_learned_pairs_write"), {
                "key_version": keyring.primary_version, "refs": [row.external_ref for row in rows],
                "old_cts": [row.token_ct for row in rows], "new_cts": new,
            })).rowcount
        done, skipped, after = done + written, skipped + len(rows) - written, rows[-1].external_ref
    return done, skipped


async def _pending_tokens(db: Database, keyring: Keyring, version: int, batch: int,
                          stop: asyncio.Event | None) -> tuple[int, int]:
    # A few batches at most, and rows only ever disappear (a batch done): one page, no keyset needed.
    async with db.connection() as conn:
        cursor = conn.cursor(row_factory=class_row(_PendingRow))
        await cursor.execute(sql("reencrypt_pending_tokens_page"), {"key_version": version, "limit": batch})
        rows = await cursor.fetchall()
        if not rows:
            return 0, 0
        new = [keyring.reencrypt(bytes(row.token_ct), pending_token_aad(row.batch_id, row.position)) for row in rows]
        written = (await conn.execute(sql("reencrypt_pending_tokens_write"), {
            "key_version": keyring.primary_version, "batch_ids": [row.batch_id for row in rows],
            "positions": [row.position for row in rows], "old_cts": [row.token_ct for row in rows], "new_cts": new,
        })).rowcount
    return written, len(rows) - written


_TABLES = {"token_pool": _token_pool, "learned_pairs": _learned_pairs, "refill_pending_tokens": _pending_tokens}
