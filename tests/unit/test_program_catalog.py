"""The service's cache of registered programs: cheap on the hot path, a new program works at once, and a flood
of unknown names costs a bounded number of reads."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from tokenpool.programs import InvalidProgram, Program, ProgramCatalog, ProgramChange, UnknownProgram
from tokenpool.settings import Settings

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def program(name: str, **fields: object) -> Program:
    return Program(name, fields.get("refill_target"), fields.get("ns1"), fields.get("ns2"), NOW, NOW,  # type: ignore[arg-type]
                   fields.get("removed_at"))  # type: ignore[arg-type]


class Table:
    """The programs table as the loader sees it, with a count of reads and an optional delay or failure."""

    def __init__(self, *names: str) -> None:
        self.programs = {name: program(name) for name in names}
        self.reads = 0
        self.delay_s = 0.0
        self.fail: Exception | None = None

    async def load(self) -> list[Program]:
        self.reads += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        return list(self.programs.values())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def catalog(table: Table, clock: Clock, **overrides: float) -> ProgramCatalog:
    options = {"ttl_s": 5.0, "unknown_ttl_s": 1.0, "miss_reloads_per_s": 2.0} | overrides
    return ProgramCatalog(table.load, clock=clock, **options)  # type: ignore[arg-type]


async def test_known_programs_cost_one_read_per_ttl():
    table, clock = Table("default", "gold"), Clock()
    programs = catalog(table, clock)
    for _ in range(100):
        assert (await programs.require("gold")).name == "gold"
    assert table.reads == 1
    clock.now += 5.1
    await programs.require("gold")  # stale: answered from the snapshot, reread in the background
    await asyncio.sleep(0.01)
    assert table.reads == 2


async def test_a_program_added_a_moment_ago_works_on_its_first_request():
    table, clock = Table("default"), Clock()
    programs = catalog(table, clock)
    await programs.require("default")
    table.programs["new"] = program("new")
    assert (await programs.require("new")).name == "new"
    assert table.reads == 2


async def test_an_unknown_name_is_refused_and_remembered_for_a_while():
    table, clock = Table("default"), Clock()
    programs = catalog(table, clock)
    with pytest.raises(UnknownProgram) as refused:
        await programs.require("typo")
    assert refused.value.code == "UNKNOWN_PROGRAM"
    reads = table.reads
    for _ in range(50):
        assert await programs.get("typo") is None
    assert table.reads == reads, "a name found unknown is not reread within unknown_ttl_s"
    clock.now += 1.1
    table.programs["typo"] = program("typo")  # registered meanwhile
    assert await programs.get("typo") is not None


async def test_a_flood_of_distinct_unknown_names_costs_a_bounded_number_of_reads():
    table, clock = Table("default"), Clock()
    programs = catalog(table, clock, miss_reloads_per_s=2.0)
    await programs.require("default")
    for second in range(10):
        for i in range(1000):
            assert await programs.get(f"fuzz-{second}-{i}") is None
        clock.now += 1.0
    # The first read, a burst of 5, then 2 per second (the snapshot's own refreshes every 5 s on top).
    assert table.reads <= 1 + 5 + 2 * 10 + 2
    assert len(programs._unknown) <= 10_000


async def test_the_unknown_names_remembered_are_bounded():
    table, clock = Table(), Clock()
    programs = catalog(table, clock, miss_reloads_per_s=1e9)
    programs._max_unknown = 10
    for i in range(50):
        clock.now += 0.001  # the bucket refills
        await programs.get(f"n{i}")
    assert len(programs._unknown) == 10
    assert list(programs._unknown)[-1] == "n49"


async def test_concurrent_misses_share_one_read():
    table, clock = Table("default"), Clock()
    programs = catalog(table, clock)
    await programs.require("default")
    table.delay_s = 0.05
    table.programs["new"] = program("new")
    found = await asyncio.gather(*(programs.get("new") for _ in range(20)))
    assert all(p is not None for p in found)
    assert table.reads == 2


async def test_removed_programs_are_not_registered():
    table, clock = Table("default"), Clock()
    table.programs["old"] = program("old", removed_at=NOW)
    programs = catalog(table, clock)
    assert [p.name for p in await programs.registered()] == ["default"]
    assert await programs.get("old") is None


async def test_a_failed_first_read_reaches_the_request_and_a_failed_refresh_keeps_the_snapshot():
    table, clock = Table("default"), Clock()
    programs = catalog(table, clock)
    table.fail = ConnectionError("database down")
    with pytest.raises(ConnectionError):
        await programs.require("default")
    table.fail = None
    clock.now += 5.1
    await programs.require("default")
    table.fail = ConnectionError("database down")
    clock.now += 5.1
    assert (await programs.require("default")).name == "default"  # the last snapshot
    await asyncio.sleep(0.01)
    assert (await programs.require("default")).name == "default"  # the failed refresh is retried a TTL later


async def test_a_snapshot_older_than_twice_the_ttl_is_reread_before_it_answers():
    table, clock = Table("default", "old"), Clock()
    programs = catalog(table, clock)
    await programs.require("old")
    del table.programs["old"]  # removed
    clock.now += 10.1
    assert await programs.get("old") is None
    assert table.reads == 2


def test_a_program_follows_the_settings_where_it_has_no_value_of_its_own():
    settings = Settings(refill_target=123, tome_ns1="A1", tome_ns2="A2")
    plain, own = program("p"), program("q", refill_target=0, ns1="B1", ns2="B2")
    assert (plain.target_in(settings), plain.ns1_in(settings), plain.ns2_in(settings)) == (123, "A1", "A2")
    assert (own.target_in(settings), own.ns1_in(settings), own.ns2_in(settings)) == (0, "B1", "B2")


def test_a_change_is_checked_before_it_reaches_the_database():
    with pytest.raises(InvalidProgram):
        ProgramChange(ns1="bad namespace")
    with pytest.raises(InvalidProgram):
        ProgramChange(refill_target=5, reset_target=True)
    with pytest.raises(InvalidProgram):
        ProgramChange(refill_target=-1)
    assert ProgramChange().empty
    assert not ProgramChange(reset_namespaces=True).empty
