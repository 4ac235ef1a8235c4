"""The detokenize audit trail: one row per token read (refs as keyed digests, never in clear)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tokenpool.db.queries import sql
from tokenpool.db.types import Conn


@dataclass(frozen=True, slots=True)
class DetokenizeAudit:
    api_key_name: str
    correlation_id: str
    client_addr: str | None
    outcome: str  # success | partial | failure
    ref_count: int
    from_db: int
    from_tome: int
    unresolved: int
    ref_hashes: list[str]


class AuditStore:
    async def record(self, conn: Conn, entry: DetokenizeAudit) -> None:
        await conn.execute(sql("detokenize_audit_insert"), asdict(entry))
