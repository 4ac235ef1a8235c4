"""Audit rows for the chain tests: one pinned sample (its hash is the encoding's golden value) and chains."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from tokenpool.audit.chain import GENESIS_HASH, AuditRecord, ChainLink, row_hash

SAMPLE = AuditRecord(
    seq=7, id=42, at=datetime(2026, 11, 30, 5, 33, 56, 123456, tzinfo=UTC), event="card_read", outcome="refused",
    reason="INSUFFICIENT_SCOPE", api_key_name="cardsvc-ü", correlation_id="corr-1", client_addr="2001:db8::1",
    card_id=UUID("3f2b8c1e-9d4a-4c6b-8e2f-1a2b3c4d5e6f"), ref_count=2, from_db=1, from_tome=0, unresolved=1,
    ref_hashes=None, ref_digests=["ab", ""], prev_hash=bytes(range(32)), row_hash=b"",
)
SAMPLE_ROW_HASH = "d3f145bdbd4e296a62b37f6001076faaab77e99d00756079c2dc4d8b0f0c1f51"


def sealed(record: AuditRecord, prev_hash: bytes) -> AuditRecord:
    unsealed = replace(record, prev_hash=prev_hash)
    return replace(unsealed, row_hash=row_hash(prev_hash, unsealed))


GENESIS = ChainLink(0, GENESIS_HASH)


def chain(n: int, start: ChainLink = GENESIS, **overrides: Any) -> list[AuditRecord]:
    """``n`` rows sealed in order after ``start``."""
    rows, prev = [], start.hash
    for i in range(1, n + 1):
        seq = start.seq + i
        row = sealed(replace(SAMPLE, seq=seq, id=seq, at=SAMPLE.at + timedelta(seconds=seq), **overrides), prev)
        rows.append(row)
        prev = row.row_hash
    return rows
