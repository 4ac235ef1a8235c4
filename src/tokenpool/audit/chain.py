"""The hash chain of ``detokenize_audit``: the canonical row encoding and the verification.

Each row carries ``prev_hash`` (the previous row's ``row_hash``) and
``row_hash = SHA-256(prev_hash || encode_record(row))``, computed by a trigger in the database
(migration ``0009_audit_chain.sql``, which must encode byte for byte as :func:`encode_record` does).
A field is framed as ``0x00`` when NULL, else ``0x01`` + its length (4 bytes, big-endian) + its bytes,
so no two rows encode alike. Values are hashed as stored: text in UTF-8, integers in decimal, ``at``
as microseconds since 1970-01-01 UTC, a uuid in lowercase text, an array as (length, bytes) per element.

Verification walks the rows in ``seq`` order from the prune watermark (the last pruned row, or the
genesis: seq 0 and 32 zero bytes) to the head, and stops at the first deleted, changed or re-linked
row. A chain rewritten whole by someone who may write the database still verifies: only a head
recorded elsewhere earlier (an anchor) shows that.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

ENCODING_TAG = "tokenpool.detokenize_audit.v1"
GENESIS_HASH = bytes(32)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_ANCHOR = re.compile(r"^(\d{1,19}):([0-9a-fA-F]{64})$")

BreakKind = Literal["deleted", "changed", "relinked", "head", "anchor"]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored ``detokenize_audit`` row, every value the chain covers."""

    seq: int
    id: int
    at: datetime
    event: str
    outcome: str
    reason: str | None
    api_key_name: str | None
    correlation_id: str
    client_addr: str | None
    card_id: UUID | None
    ref_count: int
    from_db: int
    from_tome: int
    unresolved: int
    ref_hashes: Sequence[str] | None  # plain SHA-256: rows written before the chain existed
    ref_digests: Sequence[str] | None  # HMAC-SHA-256 with the digest key
    prev_hash: bytes
    row_hash: bytes


@dataclass(frozen=True, slots=True)
class ChainLink:
    """A row of the chain named by its seq and row_hash: the head, the prune watermark, an anchor."""

    seq: int
    hash: bytes

    @classmethod
    def parse(cls, text: str) -> ChainLink:
        """``SEQ:HEXHASH``, as ``tokenpool audit verify`` prints the head."""
        match = _ANCHOR.match(text.strip())
        if match is None:
            raise ValueError("expected SEQ:HASH, the hash as 64 hex digits")
        return cls(int(match.group(1)), bytes.fromhex(match.group(2)))

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash.hex()}"


@dataclass(frozen=True, slots=True)
class ChainBreak:
    kind: BreakKind
    seq: int
    detail: str


def frame(value: bytes | None) -> bytes:
    if value is None:
        return b"\x00"
    return b"\x01" + len(value).to_bytes(4, "big") + value


def _text(value: object | None) -> bytes:
    return frame(None if value is None else str(value).encode())


def _array(values: Sequence[str] | None) -> bytes:
    if values is None:
        return frame(None)
    encoded = [value.encode() for value in values]
    return frame(b"".join(len(value).to_bytes(4, "big") + value for value in encoded))


def microseconds_since_epoch(at: datetime) -> int:
    return (at - _EPOCH) // _MICROSECOND


def encode_record(record: AuditRecord) -> bytes:
    """Every stored value but the two hashes, in the trigger's order."""
    return b"".join((
        _text(ENCODING_TAG),
        _text(record.seq),
        _text(record.id),
        _text(microseconds_since_epoch(record.at)),
        _text(record.event),
        _text(record.outcome),
        _text(record.reason),
        _text(record.api_key_name),
        _text(record.correlation_id),
        _text(record.client_addr),
        _text(record.card_id),
        _text(record.ref_count),
        _text(record.from_db),
        _text(record.from_tome),
        _text(record.unresolved),
        _array(record.ref_hashes),
        _array(record.ref_digests),
    ))


def row_hash(prev_hash: bytes, record: AuditRecord) -> bytes:
    return hashlib.sha256(prev_hash + encode_record(record)).digest()


class ChainVerifier:
    """Checks rows fed in ``seq`` order, from ``start`` (the prune watermark) to ``head``.

    :meth:`check` returns the first break it finds (and every later call returns it again);
    :meth:`finish` also reports rows missing at the end and an ``anchor`` the chain does not hold.
    """

    def __init__(self, start: ChainLink, head: ChainLink, anchor: ChainLink | None = None) -> None:
        self.start = start
        self.head = head
        self.anchor = anchor
        self.rows = 0
        self.anchor_found = False
        self._expected = ChainLink(start.seq + 1, start.hash)  # seq of the next row, and its prev_hash
        self.broken: ChainBreak | None = self._check_anchor_bounds()

    @property
    def last(self) -> ChainLink:
        """The last row checked (the watermark before any)."""
        return ChainLink(self._expected.seq - 1, self._expected.hash)

    def check(self, record: AuditRecord) -> ChainBreak | None:
        if self.broken is not None:
            return self.broken
        expected = self._expected
        if record.seq > expected.seq:
            missing = f"{expected.seq}" if record.seq == expected.seq + 1 else f"{expected.seq}-{record.seq - 1}"
            self.broken = ChainBreak("deleted", expected.seq, f"row(s) {missing} missing: deleted")
        elif record.seq < expected.seq:
            self.broken = ChainBreak("relinked", record.seq, f"row {record.seq} out of order after {expected.seq - 1}")
        elif record.prev_hash != expected.hash:
            self.broken = ChainBreak(
                "relinked", record.seq, f"row {record.seq} does not link to row {record.seq - 1}: re-linked")
        elif row_hash(record.prev_hash, record) != record.row_hash:
            self.broken = ChainBreak(
                "changed", record.seq, f"row {record.seq} does not match its row_hash: changed")
        elif self.anchor is not None and record.seq == self.anchor.seq and record.row_hash != self.anchor.hash:
            self.broken = ChainBreak(
                "anchor", record.seq, f"row {record.seq} differs from the anchor: the chain was rewritten")
        else:
            self.rows += 1
            self.anchor_found = self.anchor_found or (self.anchor is not None and record.seq == self.anchor.seq)
            self._expected = ChainLink(record.seq + 1, record.row_hash)
        return self.broken

    def finish(self) -> ChainBreak | None:
        if self.broken is not None:
            return self.broken
        last = self.last
        if last.seq < self.head.seq:
            self.broken = ChainBreak(
                "deleted", last.seq + 1, f"rows {last.seq + 1}-{self.head.seq} missing: deleted (head {self.head.seq})")
        elif last.hash != self.head.hash:
            self.broken = ChainBreak("head", last.seq, f"the head's hash is not row {last.seq}'s")
        elif self.anchor is not None and not self.anchor_found and self.anchor.seq > self.start.seq:
            self.broken = ChainBreak("anchor", self.anchor.seq, f"the chain holds no row {self.anchor.seq}")
        return self.broken

    def _check_anchor_bounds(self) -> ChainBreak | None:
        anchor = self.anchor
        if anchor is None:
            return None
        if anchor.seq > self.head.seq:
            return ChainBreak("anchor", anchor.seq,
                              f"the anchor ({anchor.seq}) is beyond the head ({self.head.seq}): rows were removed")
        if anchor.seq < self.start.seq:
            return ChainBreak("anchor", anchor.seq,
                              f"the anchor ({anchor.seq}) was pruned (the chain starts after {self.start.seq}): "
                              "check against a newer anchor")
        if anchor.seq == self.start.seq and anchor.hash != self.start.hash:
            return ChainBreak("anchor", anchor.seq,
                              "the prune watermark differs from the anchor: the chain was rewritten")
        return None


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What ``tokenpool audit verify`` found."""

    start: ChainLink
    head: ChainLink
    rows: int
    broken: ChainBreak | None
    anchor: ChainLink | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "start": {"seq": self.start.seq, "hash": self.start.hash.hex()},
            "head": {"seq": self.head.seq, "hash": self.head.hash.hex()},
            "anchor": str(self.anchor) if self.anchor else None,
            "broken": None if self.broken is None else
            {"kind": self.broken.kind, "seq": self.broken.seq, "detail": self.broken.detail},
        }
