"""Open-loop HTTP load against the service, and the samplers that watch the stack meanwhile.

Why httpx from the harness rather than Locust: the day in miniature and the capacity steps need an
exact, reproducible arrival schedule (request ``i`` leaves at offset ``t_i`` whatever the answers do).
An open-loop scheduler over asyncio gives that in a few lines; Locust's users are closed loops (a user
waits for its answer before the next request), so under slowness its rate drops and the latency it
reports hides the queue (coordinated omission). Latency here is measured **from the scheduled send
time**, so a client-side queue (in-flight cap reached) counts against the service, not for it.
Locust keeps the realistic mix for any deployment (``loadtest/locustfile.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.stack import PROGRAM, Stack

REQUEST_TIMEOUT_S = 10.0
REQUEST_TIMEOUT = httpx.Timeout(REQUEST_TIMEOUT_S, connect=5.0)
SAMPLE_INTERVAL_S = 1.0
DRAIN_GRACE_S = 30.0  # bound on waiting for answers after the last scheduled send (timeouts are 10 s)
DETOKENIZE_BATCH = 5


@dataclass
class Outcome:
    kind: str  # card | detokenize | read | healthz
    offset_s: float  # scheduled send time, seconds after the schedule's start
    latency_ms: float  # scheduled send time -> answer read (or failure)
    status: int  # HTTP status; 0 for a timeout or transport error
    code: str | None = None  # problem code of an error answer
    card: dict[str, Any] | None = None  # body of a created card


@dataclass
class Recent:
    """Cards created lately, for the detokenize and read parts of the mix."""

    cards: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=500))  # (card_id, external_ref)

    def refs(self, n: int) -> list[str]:
        return [ref for _card, ref in list(self.cards)[-n:]]

    def last_card(self) -> str | None:
        return self.cards[-1][0] if self.cards else None


def api_client(stack: Stack, max_connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=stack.api_url,
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=REQUEST_TIMEOUT,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        trust_env=False,  # no proxy from the environment: the traffic stays on 127.0.0.1
    )


@dataclass(frozen=True)
class TomeDetokenize:
    """The seed's baseline detokenize: no database copy of the pairs, so one NS2 detokenize call per request."""

    client: httpx.AsyncClient  # on the TOME emulator
    namespace: str

    async def send(self, refs: list[str]) -> httpx.Response:
        return await self.client.post(f"/v1/namespaces/{self.namespace}/detokenize", json={"tokens": refs})


def tome_client(stack: Stack, max_connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=stack.tome_url,
        timeout=REQUEST_TIMEOUT,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        trust_env=False,
    )


async def _send(
    client: httpx.AsyncClient, kind: str, serial: int, recent: Recent, tome: TomeDetokenize | None
) -> httpx.Response | None:
    if kind == "card":
        return await client.post("/v1/cards", json={"program": PROGRAM, "customer_ref": f"cust-{serial}"})
    if kind == "detokenize":
        refs = recent.refs(DETOKENIZE_BATCH)
        if not refs:
            return None
        if tome is not None:
            return await tome.send(refs)
        return await client.post("/v1/detokenize", json={"external_refs": refs})
    if kind == "read":
        card_id = recent.last_card()
        return await client.get(f"/v1/cards/{card_id}") if card_id else None
    if kind == "healthz":
        return await client.get("/healthz")
    raise ValueError(kind)


async def run_schedule(
    client: httpx.AsyncClient,
    events: Sequence[tuple[float, str]],
    *,
    max_in_flight: int,
    recent: Recent | None = None,
    tome: TomeDetokenize | None = None,
) -> list[Outcome]:
    """Sends each ``(offset_s, kind)`` at its offset; at most ``max_in_flight`` requests open at once.

    With ``tome``, each detokenize goes to TOME instead of the service (the baseline's detokenize path).
    """
    recent = recent or Recent()
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(max_in_flight)
    outcomes: list[Outcome] = []
    start = loop.time()

    async def one(serial: int, offset: float, kind: str) -> None:
        async with gate:
            try:
                response = await _send(client, kind, serial, recent, tome)
            except httpx.HTTPError:
                outcomes.append(Outcome(kind, offset, (loop.time() - start - offset) * 1000, 0, "TRANSPORT"))
                return
        if response is None:
            return  # nothing to read or detokenize yet
        latency = (loop.time() - start - offset) * 1000
        body: Any = response.json() if response.content else None
        if response.status_code >= 400:
            code = body.get("code") if isinstance(body, dict) else None
            outcomes.append(Outcome(kind, offset, latency, response.status_code, code))
            return
        card = body if kind == "card" and isinstance(body, dict) else None
        if card is not None:
            recent.cards.append((str(card["card_id"]), str(card["external_ref"])))
        outcomes.append(Outcome(kind, offset, latency, response.status_code, card=card))

    tasks: dict[asyncio.Task[None], tuple[float, str]] = {}
    for serial, (offset, kind) in enumerate(events):  # bounded: ends at the last offset
        delay = start + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks[asyncio.create_task(one(serial, offset, kind))] = (offset, kind)
    if tasks:
        _done, pending = await asyncio.wait(tasks, timeout=DRAIN_GRACE_S)
        for task in pending:  # still queued behind the in-flight cap: the client gave up on them
            task.cancel()
            offset, kind = tasks[task]
            outcomes.append(Outcome(kind, offset, (loop.time() - start - offset) * 1000, 0, "CLIENT_GAVE_UP"))
        await asyncio.gather(*pending, return_exceptions=True)
    return outcomes


BURST_CLIENT_CONNECTIONS = 25


async def burst(stack: Stack, n: int) -> tuple[list[Outcome], float]:
    """``n`` card creations released at the same instant on ``n`` connections; returns them and the wall time.

    The connections are spread over small clients: one httpx client holding 1,000 connections spends
    seconds of CPU in its pool's bookkeeping (measured: 8.8 s of client CPU for a 1,000 burst, every
    answer then arriving at ~9.5 s), which measured the driver, not the service.
    """
    clients = [api_client(stack, BURST_CLIENT_CONNECTIONS) for _ in range(-(-n // BURST_CLIENT_CONNECTIONS))]
    async with contextlib.AsyncExitStack() as open_clients:
        for each in clients:
            await open_clients.enter_async_context(each)
        release = asyncio.Event()
        loop = asyncio.get_running_loop()
        outcomes: list[Outcome] = []
        started = 0.0

        async def one(serial: int) -> None:
            await release.wait()
            client = clients[serial // BURST_CLIENT_CONNECTIONS]
            try:
                response = await client.post(
                    "/v1/cards", json={"program": PROGRAM, "customer_ref": f"burst-{n}-{serial}"}
                )
            except httpx.HTTPError:
                outcomes.append(Outcome("card", 0.0, (loop.time() - started) * 1000, 0, "TRANSPORT"))
                return
            body: Any = response.json() if response.content else None
            latency = (loop.time() - started) * 1000
            ok = response.status_code == 201 and isinstance(body, dict)
            code = None if ok or not isinstance(body, dict) else body.get("code")
            outcomes.append(Outcome("card", 0.0, latency, response.status_code, code, body if ok else None))

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        await asyncio.sleep(0.2)  # every task is parked on the event
        started = loop.time()
        release.set()
        async with asyncio.timeout(REQUEST_TIMEOUT_S * 6):
            await asyncio.gather(*tasks)
        return outcomes, loop.time() - started


@dataclass(frozen=True)
class Sample:
    t: float  # seconds after the scenario start
    tome_requests: dict[str, int]  # cumulative, by operation (issue / tokenize / detokenize), all namespaces
    available: int | None  # pool level; None when the read failed
    load1: float


def tome_by_operation(stats: dict[str, Any]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for by_op in stats.get("requests", {}).values():
        for op, n in by_op.items():
            totals[op] = totals.get(op, 0) + int(n)
    return totals


async def read_tome_requests(client: httpx.AsyncClient, stack: Stack) -> dict[str, int]:
    response = await client.get(f"{stack.tome_url}/_admin/stats")
    response.raise_for_status()
    return tome_by_operation(response.json())


async def sample_until(stack: Stack, stop: asyncio.Event, start: float) -> list[Sample]:
    """Every second: the TOME ledger and the pool level (both cheap), plus the load average."""
    samples: list[Sample] = []
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(2.0), headers={"Authorization": f"Bearer {stack.api_key}"}, trust_env=False
    ) as client:
        while not stop.is_set():
            now = time.monotonic() - start
            try:
                tome = await read_tome_requests(client, stack)
            except httpx.HTTPError:
                tome = {}
            available: int | None = None
            try:
                pool = await client.get(f"{stack.api_url}/v1/pools/{PROGRAM}")
                if pool.status_code == 200:
                    available = int(pool.json()["available"])
            except httpx.HTTPError:
                pass
            samples.append(Sample(now, tome, available, os.getloadavg()[0]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_INTERVAL_S)
    return samples
