"""The audit of token reads on PostgreSQL: one INSERT per audited request, and the chain read back.

The trigger of migration ``0009_audit_chain.sql`` numbers and seals each row; this store never computes
a hash. Refs arrive as digests (HMAC-SHA-256 hex, computed by the caller with the vault's digest key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal
from uuid import UUID

from psycopg.rows import args_row, class_row

from tokenpool.audit.chain import AuditRecord, ChainLink
from tokenpool.db.queries import sql
from tokenpool.db.types import Conn

_RECORD_FIELDS = [field.name for field in fields(AuditRecord)]

AuditEvent = Literal["detokenize", "card_read"]
AuditOutcome = Literal["success", "partial", "failure", "refused"]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One token read, or one refused attempt at one (DSS 10.2.2: who, what, when, outcome, origin, resource)."""

    event: AuditEvent
    outcome: AuditOutcome
    correlation_id: str
    client_addr: str | None
    api_key_name: str | None
    reason: str | None = None  # the problem code of a refused or failed attempt
    card_id: UUID | None = None
    ref_digests: Sequence[str] = ()
    from_db: int = 0
    from_tome: int = 0
    unresolved: int = 0


@dataclass(frozen=True, slots=True)
class _HeadRow:
    seq: int
    hash: bytes
    pruned_seq: int
    pruned_hash: bytes


@dataclass(frozen=True, slots=True)
class ChainEnds:
    """The head (newest row) and the prune watermark (last pruned row) of the chain."""

    head: ChainLink
    start: ChainLink


class AuditStore:
    async def record(self, conn: Conn, entry: AuditEntry) -> None:
        """One row on the caller's connection: in its transaction, if it has one (then commit soon:
        the chain's head stays locked until it does)."""
        await conn.execute(sql("detokenize_audit_insert"), {
            "event": entry.event, "outcome": entry.outcome, "reason": entry.reason,
            "api_key_name": entry.api_key_name, "correlation_id": entry.correlation_id,
            "client_addr": entry.client_addr, "card_id": entry.card_id, "ref_count": len(entry.ref_digests),
            "from_db": entry.from_db, "from_tome": entry.from_tome, "unresolved": entry.unresolved,
            "ref_digests": list(entry.ref_digests),
        })


class AuditChainReader:
    """Reads the chain back for ``tokenpool audit verify`` (a role that may SELECT both audit tables)."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def chain_ends(self) -> ChainEnds:
        cursor = self._conn.cursor(row_factory=class_row(_HeadRow))
        await cursor.execute(sql("audit_chain_ends"))
        row = await cursor.fetchone()
        if row is None:
            raise RuntimeError("detokenize_audit_head has no row: is migration 0009 applied?")
        return ChainEnds(ChainLink(row.seq, bytes(row.hash)), ChainLink(row.pruned_seq, bytes(row.pruned_hash)))

    async def chain_page(self, after_seq: int, up_to_seq: int, limit: int) -> list[AuditRecord]:
        """Rows ``after_seq < seq <= up_to_seq`` in seq order, at most ``limit``: one short statement."""
        # Positional (the statement lists AuditRecord's fields in order) and binary: ~4x faster than
        # class_row in text mode, which matters when a year of audit is walked.
        # The column names are checked against the fields once per page, so a reordered SELECT fails loudly
        # instead of misassigning.
        async with self._conn.cursor(row_factory=args_row(AuditRecord), binary=True) as cursor:
            await cursor.execute(sql("audit_chain_page"), {"after": after_seq, "up_to": up_to_seq, "limit": limit})
            names = [column.name for column in cursor.description or []]
            if names != _RECORD_FIELDS:
                raise RuntimeError(f"audit_chain_page returns {names}, AuditRecord expects {_RECORD_FIELDS}")
            return await cursor.fetchall()
