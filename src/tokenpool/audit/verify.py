"""Walks the stored audit chain page by page and checks it with :class:`ChainVerifier`.

Pages are read by seq (keyset), each in its own short statement, so memory and snapshots stay small
whatever the table's size. Rows written after the walk began are left to the next run. A prune running
at the same time can delete the rows the walk is about to read: a gap at the walk's position is then
checked against the prune watermark, re-read, and the walk resumes from it if the rows were pruned.
"""

from __future__ import annotations

from typing import Protocol

from tokenpool.audit.chain import AuditRecord, ChainLink, ChainReport, ChainVerifier

PAGE_SIZE = 5_000
_MAX_RESUMES = 100  # one per prune chunk that overtakes the walk; more means something else is wrong


class ChainEndsLike(Protocol):
    @property
    def head(self) -> ChainLink: ...
    @property
    def start(self) -> ChainLink: ...


class ChainReader(Protocol):
    async def chain_ends(self) -> ChainEndsLike: ...
    async def chain_page(self, after_seq: int, up_to_seq: int, limit: int) -> list[AuditRecord]: ...


async def verify_chain(reader: ChainReader, *, anchor: ChainLink | None = None,
                       page_size: int = PAGE_SIZE) -> ChainReport:
    ends = await reader.chain_ends()
    head = ends.head
    verifier = ChainVerifier(ends.start, head, anchor)
    rows_before_resume = 0
    resumes = 0
    while True:
        page = await reader.chain_page(verifier.last.seq, head.seq, page_size)
        broken = None
        for record in page:
            broken = verifier.check(record)
            if broken is not None:
                break
        if broken is not None and broken.kind in ("deleted", "relinked") and resumes < _MAX_RESUMES:
            start = (await reader.chain_ends()).start
            if start.seq >= broken.seq:  # pruned since the walk began, not tampered with
                resumes += 1
                head = head if head.seq >= start.seq else start
                rows_before_resume += verifier.rows
                found = verifier.anchor_found
                verifier = ChainVerifier(start, head, None if found else anchor)
                continue
        if broken is not None or len(page) < page_size:
            break
    verifier.finish()
    return ChainReport(verifier.start, head, rows_before_resume + verifier.rows, verifier.broken, anchor)
