"""Coalesces concurrent card creations of one program into one statement (``card_create_from_pool``).

Why: a card costs one statement, and at hundreds of cards a second the fixed cost of a statement (a
pooled connection, the driver's round trip, a plan execution, the triggers) on both sides, not the rows,
sets the ceiling (docs/benchmarks.md, HTTP path). Orders that arrive while statements are in flight wait
in a queue; whichever statement finishes first takes up to ``max_batch`` of them in the next one. No timer:
a lone order goes out at once as a batch of one, so batching adds no latency when idle.

Each order keeps its own outcome: a card, no pair (pool empty for it), or its Idempotency-Key taken. If a
batch fails for a reason one order could cause (a value PostgreSQL refuses), its orders are retried one by
one so that only that order fails; an outage fails them all at once (retrying would only wait longer).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tokenpool.observability.logging import get_logger

log = get_logger(__name__)

Order = TypeVar("Order")
Outcome = TypeVar("Outcome")

CreateMany = Callable[[str, Sequence[Order]], Awaitable[list[Outcome]]]


@dataclass(slots=True)
class _Pending(Generic[Order, Outcome]):
    order: Order
    future: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class CardBatcher(Generic[Order, Outcome]):
    def __init__(self, create_many: CreateMany[Order, Outcome], *, isolate: Callable[[Exception], bool],
                 max_batch: int = 32, max_in_flight: int = 4) -> None:
        """``isolate(error)``: whether a batch that failed with ``error`` is retried order by order."""
        self._create_many = create_many
        self._isolate = isolate
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._waiting: dict[str, deque[_Pending[Order, Outcome]]] = defaultdict(deque)
        self._in_flight: dict[str, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()

    async def create(self, program: str, order: Order) -> Outcome:
        pending: _Pending[Order, Outcome] = _Pending(order)
        self._waiting[program].append(pending)
        if self._in_flight[program] < self._max_in_flight:
            self._in_flight[program] += 1
            task = asyncio.create_task(self._flush(program))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await pending.future

    async def _flush(self, program: str) -> None:
        queue = self._waiting[program]
        batch: list[_Pending[Order, Outcome]] = []
        try:
            while queue:
                # An order whose caller gave up while it waited is not sent: nobody would get its card.
                batch = [p for p in (queue.popleft() for _ in range(min(len(queue), self._max_batch)))
                         if not p.future.done()]
                if batch:
                    await self._run(program, batch)
                batch = []
        except BaseException as error:
            # Cancelled (shutdown): no caller may be left hanging, neither this batch nor, when no other
            # flush is running to serve them, those still queued.
            stopped = RuntimeError(f"card creation for {program!r} stopped: {type(error).__name__}")
            _fail(batch, stopped)
            if self._in_flight[program] == 1:
                _fail(list(queue), stopped)
                queue.clear()
            raise
        finally:
            self._in_flight[program] -= 1

    async def _run(self, program: str, batch: list[_Pending[Order, Outcome]]) -> None:
        try:
            outcomes = await self._create_many(program, [pending.order for pending in batch])
        except Exception as error:
            if len(batch) == 1 or not self._isolate(error):
                _fail(batch, error)
                return
            for pending in batch:  # only the order that caused it fails
                await self._run(program, [pending])
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():  # its caller gave up while the statement ran: the outcome stands
                card_id = str(getattr(pending.order, "card_id", "?"))
                log.warning("card.order_abandoned", program=program, card_id=card_id)
            else:
                pending.future.set_result(outcome)


def _fail(batch: list[_Pending[Order, Outcome]], error: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)
