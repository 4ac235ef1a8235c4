"""The audit hash chain: an unambiguous encoding, and a verifier that names the first broken row."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.audit_samples import SAMPLE, SAMPLE_ROW_HASH, chain, sealed
from tokenpool.audit.chain import (
    GENESIS_HASH,
    AuditRecord,
    ChainLink,
    ChainVerifier,
    encode_record,
    microseconds_since_epoch,
    row_hash,
)
from tokenpool.audit.verify import verify_chain

GENESIS = ChainLink(0, GENESIS_HASH)


def _verify(rows: list[AuditRecord], head: ChainLink, start: ChainLink = GENESIS,
            anchor: ChainLink | None = None) -> ChainVerifier:
    verifier = ChainVerifier(start, head, anchor)
    for row in rows:
        if verifier.check(row):
            break
    verifier.finish()
    return verifier


def _head(rows: list[AuditRecord]) -> ChainLink:
    return ChainLink(rows[-1].seq, rows[-1].row_hash)


def test_the_sample_row_hashes_to_its_pinned_value():
    # The same value the trigger computes (tests/integration/test_audit_chain.py): change both or neither.
    assert row_hash(SAMPLE.prev_hash, SAMPLE).hex() == SAMPLE_ROW_HASH


@pytest.mark.parametrize(("left", "right"), [
    ({"api_key_name": "ab", "correlation_id": "c"}, {"api_key_name": "a", "correlation_id": "bc"}),
    ({"reason": None}, {"reason": "NONE"}),
    ({"client_addr": None}, {"client_addr": ""}),
    ({"ref_digests": ["ab", "c"]}, {"ref_digests": ["a", "bc"]}),
    ({"ref_digests": []}, {"ref_digests": [""]}),
    ({"ref_digests": None, "ref_hashes": ["x"]}, {"ref_digests": ["x"], "ref_hashes": None}),
])
def test_different_rows_never_encode_alike(left, right):
    assert encode_record(replace(SAMPLE, **left)) != encode_record(replace(SAMPLE, **right))


def test_time_is_encoded_to_the_microsecond_whatever_the_time_zone():
    later = replace(SAMPLE, at=SAMPLE.at.replace(microsecond=SAMPLE.at.microsecond + 1))
    elsewhere = replace(SAMPLE, at=SAMPLE.at.astimezone(timezone(timedelta(hours=-5))))
    assert encode_record(later) != encode_record(SAMPLE)
    assert encode_record(elsewhere) == encode_record(SAMPLE)
    assert microseconds_since_epoch(datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)) == 1


def test_an_intact_chain_verifies_up_to_its_head():
    rows = chain(5)
    verifier = _verify(rows, _head(rows))
    assert (verifier.broken, verifier.rows) == (None, 5)


def test_a_deleted_row_is_named():
    rows = chain(5)
    broken = _verify(rows[:2] + rows[3:], _head(rows)).broken
    assert broken is not None
    assert (broken.kind, broken.seq) == ("deleted", 3)


def test_deleted_rows_at_the_end_are_named_from_the_head():
    rows = chain(5)
    broken = _verify(rows[:3], _head(rows)).broken
    assert broken is not None
    assert (broken.kind, broken.seq) == ("deleted", 4)


def test_a_changed_row_is_named():
    rows = chain(5)
    rows[2] = replace(rows[2], outcome="success")
    broken = _verify(rows, _head(rows)).broken
    assert broken is not None
    assert (broken.kind, broken.seq) == ("changed", 3)


def test_a_row_resealed_after_a_change_breaks_the_next_link():
    rows = chain(5)
    rows[2] = sealed(replace(rows[2], outcome="success"), rows[2].prev_hash)
    broken = _verify(rows, _head(rows)).broken
    assert broken is not None
    assert (broken.kind, broken.seq) == ("relinked", 4)


def test_a_deleted_row_with_the_rest_renumbered_and_resealed_breaks_only_at_the_head():
    rows = chain(5)
    rewritten = [rows[0], *chain(3, start=ChainLink(1, rows[0].row_hash))]
    broken = _verify(rewritten, _head(rows)).broken
    assert broken is not None
    assert broken.kind == "deleted"  # the head still says 5 rows


def test_a_pruned_chain_verifies_from_its_watermark():
    rows = chain(6)
    watermark = ChainLink(rows[2].seq, rows[2].row_hash)
    assert _verify(rows[3:], _head(rows), start=watermark).broken is None
    assert _verify(rows[4:], _head(rows), start=watermark).broken.kind == "deleted"


def test_an_anchor_recorded_earlier_must_still_be_in_the_chain():
    rows = chain(6)
    anchor = _head(rows[:4])
    assert _verify(rows, _head(rows), anchor=anchor).broken is None
    rewritten = chain(6, correlation_id="rewritten")  # a whole, consistent rewrite
    broken = _verify(rewritten, _head(rewritten), anchor=anchor).broken
    assert broken is not None
    assert (broken.kind, broken.seq) == ("anchor", 4)
    assert _verify(rows[:3], _head(rows[:3]), anchor=anchor).broken.kind == "anchor"  # beyond the head


def test_an_anchor_older_than_the_watermark_cannot_vouch_for_anything():
    rows = chain(6)
    watermark = ChainLink(rows[2].seq, rows[2].row_hash)
    broken = _verify(rows[3:], _head(rows), start=watermark, anchor=_head(rows[:2])).broken
    assert broken is not None
    assert "pruned" in broken.detail
    assert _verify(rows[3:], _head(rows), start=watermark, anchor=watermark).broken is None


def test_an_anchor_is_parsed_from_what_verify_prints():
    link = ChainLink(12, bytes(range(32)))
    assert ChainLink.parse(str(link)) == link
    with pytest.raises(ValueError, match="SEQ:HASH"):
        ChainLink.parse("12:abc")


class _Table:
    """The chain as a reader sees it, with a prune that can run between two pages."""

    def __init__(self, rows: list[AuditRecord]) -> None:
        self.rows = rows
        self.start = GENESIS
        self.head = _head(rows)
        self.pages = 0
        self.prune_after_page: tuple[int, int] | None = None  # (page number, rows to prune)

    async def chain_ends(self):
        return self

    async def chain_page(self, after_seq: int, up_to_seq: int, limit: int) -> list[AuditRecord]:
        self.pages += 1
        page = [r for r in self.rows if after_seq < r.seq <= up_to_seq][:limit]
        if self.prune_after_page and self.pages == self.prune_after_page[0]:
            n = self.prune_after_page[1]
            self.start = ChainLink(self.rows[n - 1].seq, self.rows[n - 1].row_hash)
            self.rows = self.rows[n:]
        return page


async def test_the_walk_reads_pages_and_counts_every_row():
    table = _Table(chain(23))
    report = await verify_chain(table, page_size=5)
    assert (report.ok, report.rows, table.pages) == (True, 23, 5)
    assert report.head == table.head


async def test_rows_pruned_while_the_walk_runs_are_not_reported_as_deleted():
    table = _Table(chain(30))
    table.prune_after_page = (1, 15)  # after the first page (rows 1-5), a prune takes rows 1-15
    report = await verify_chain(table, page_size=5)
    assert report.ok, report.broken
    assert report.start.seq == 15


async def test_a_gap_the_watermark_does_not_explain_is_reported():
    rows = chain(30)
    table = _Table(rows[:9] + rows[10:])
    report = await verify_chain(table, page_size=5)
    assert not report.ok
    assert (report.broken.kind, report.broken.seq) == ("deleted", 10)
