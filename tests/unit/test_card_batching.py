"""The card batcher: concurrent orders share statements, each keeps its own outcome (no I/O)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tokenpool.cards.batching import CardBatcher


class Bad(Exception):
    """A value one order carries that the database refuses."""


class Outage(Exception):
    pass


class FakeStatements:
    def __init__(self, *, fail_with: type[Exception] | None = None) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail_with = fail_with

    async def create_many(self, program: str, orders: Sequence[str]) -> list[str]:
        self.batches.append(list(orders))
        await self.release.wait()
        if self.fail_with is Outage:
            raise Outage
        if any(order.startswith("bad") for order in orders):
            raise Bad
        return [f"{program}:{order}" for order in orders]


def _batcher(statements: FakeStatements, **kwargs: int) -> CardBatcher[str, str]:
    return CardBatcher(statements.create_many, isolate=lambda error: isinstance(error, Bad), **kwargs)


async def test_orders_arriving_while_a_statement_runs_share_the_next_one():
    statements = FakeStatements()
    batcher = _batcher(statements, max_in_flight=1)
    first = asyncio.create_task(batcher.create("p", "a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.create("p", order)) for order in "bcde"]
    await asyncio.sleep(0)
    statements.release.set()
    assert await first == "p:a"
    assert [await task for task in rest] == ["p:b", "p:c", "p:d", "p:e"]
    assert statements.batches == [["a"], ["b", "c", "d", "e"]]


async def test_a_batch_is_at_most_max_batch_orders():
    statements = FakeStatements()
    statements.release.set()
    batcher = _batcher(statements, max_in_flight=1, max_batch=2)
    assert await asyncio.gather(*(batcher.create("p", str(i)) for i in range(5))) == [f"p:{i}" for i in range(5)]
    assert all(len(batch) <= 2 for batch in statements.batches)


async def test_an_order_the_database_refuses_fails_alone():
    statements = FakeStatements()
    statements.release.set()
    batcher = _batcher(statements, max_in_flight=1)
    tasks = [asyncio.create_task(batcher.create("p", order)) for order in ("a", "bad", "c")]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == "p:a"
    assert isinstance(results[1], Bad)
    assert results[2] == "p:c"


async def test_an_outage_fails_every_order_of_the_batch_at_once():
    statements = FakeStatements(fail_with=Outage)
    statements.release.set()
    batcher = _batcher(statements, max_in_flight=1)
    results = await asyncio.gather(*(batcher.create("p", o) for o in "abc"), return_exceptions=True)
    assert all(isinstance(result, Outage) for result in results)
    assert sum(len(batch) for batch in statements.batches) == 3  # no order-by-order retry


async def test_programs_are_batched_apart():
    statements = FakeStatements()
    statements.release.set()
    batcher = _batcher(statements)
    assert await asyncio.gather(batcher.create("p", "a"), batcher.create("q", "b")) == ["p:a", "q:b"]
    assert sorted(statements.batches) == [["a"], ["b"]]


async def test_a_cancelled_flush_leaves_no_order_hanging():
    statements = FakeStatements()
    batcher = _batcher(statements, max_in_flight=1)
    waiting = [asyncio.create_task(batcher.create("p", order)) for order in "abc"]
    await asyncio.sleep(0.01)  # the flush is running its first statement
    for task in list(batcher._tasks):
        task.cancel()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(result, RuntimeError) for result in results)
    with pytest.raises(RuntimeError, match="stopped"):
        raise results[0]  # type: ignore[misc]
