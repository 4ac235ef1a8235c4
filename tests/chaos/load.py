"""The load a chaos scenario runs while a fault is injected: async httpx, bounded in every dimension.

Concurrency is a fixed number of workers, the rate a leaky bucket (aiolimiter), the duration a
deadline and the count a budget; every call carries an httpx timeout and, as a hard stop, an
``asyncio.timeout`` slightly above it, so no call can hang the test. Each card order carries its own
``Idempotency-Key``; when a process dies under a call (connection refused/reset) the same order is
sent to the next API process, so an order is served at most once whoever answers.

Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiolimiter import AsyncLimiter

PROBLEM_JSON = "application/problem+json"
# Raised when the process at the other end is gone (or going): another process may serve the call.
TARGET_DOWN_S = 1.0
FAILOVER_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


@dataclass
class Call:
    """One logical request (failover attempts included)."""

    kind: str  # "card" | "detok_known" | "detok_unknown"
    started: float  # monotonic
    elapsed: float
    status: int | None  # None: no HTTP answer at all (transport error or timeout on every target)
    code: str | None = None  # problem "code" of a non-2xx answer
    clean_problem: bool = True  # non-2xx answers only: problem+json with a code
    error: str | None = None  # "timeout" or the transport error's class name
    attempts: int = 1
    body: dict[str, Any] | None = None
    order_key: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def ended(self) -> float:
        return self.started + self.elapsed


@dataclass
class LoadPlan:
    duration_s: float
    rate_per_s: float
    concurrency: int = 8
    max_requests: int = 10_000
    request_timeout_s: float = 8.0
    # Shares of the mix; detokenize needs cards created earlier in the run (or known_refs).
    card_share: float = 1.0
    detok_known_share: float = 0.0
    detok_unknown_share: float = 0.0
    program: str = "default"
    idempotency_keys: bool = True


@dataclass
class LoadRun:
    plan: LoadPlan
    targets: list[str]
    key: str
    known_refs: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    failovers: int = 0
    started_at: float = 0.0
    on_call: Callable[[Call], None] | None = None
    # A target that refused a connection is skipped (tried last) for a moment, as a load balancer would.
    down_until: dict[int, float] = field(default_factory=dict)

    @property
    def cards(self) -> list[dict[str, Any]]:
        return [c.body for c in self.calls if c.kind == "card" and c.ok and c.body is not None]

    async def run(self) -> LoadRun:
        self.started_at = time.monotonic()
        deadline = self.started_at + self.plan.duration_s
        limiter = AsyncLimiter(self.plan.rate_per_s, time_period=1.0)
        budget = itertools.count()
        rng = random.Random(20261129)
        targets = itertools.cycle(range(len(self.targets)))
        limits = httpx.Limits(max_connections=self.plan.concurrency * 2,
                              max_keepalive_connections=self.plan.concurrency)
        timeout = httpx.Timeout(self.plan.request_timeout_s, connect=min(2.0, self.plan.request_timeout_s))
        async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:

            async def worker() -> None:
                while time.monotonic() < deadline and next(budget) < self.plan.max_requests:
                    async with limiter:
                        if time.monotonic() >= deadline:
                            return
                        call = await self._one(client, rng, next(targets))
                    self.calls.append(call)
                    if self.on_call is not None:
                        self.on_call(call)

            await asyncio.gather(*(worker() for _ in range(self.plan.concurrency)))
        return self

    def _choose(self, rng: random.Random) -> str:
        plan = self.plan
        known = self.known_refs or [c["external_ref"] for c in self.cards[-200:]]
        roll = rng.random() * (plan.card_share + plan.detok_known_share + plan.detok_unknown_share)
        if roll < plan.card_share or (roll < plan.card_share + plan.detok_known_share and not known):
            return "card"
        return "detok_known" if roll < plan.card_share + plan.detok_known_share else "detok_unknown"

    async def _one(self, client: httpx.AsyncClient, rng: random.Random, first_target: int) -> Call:
        kind = self._choose(rng)
        headers = {"Authorization": f"Bearer {self.key}"}
        order_key = None
        if kind == "card":
            path = "/v1/cards"
            order_key = uuid.uuid4().hex
            if self.plan.idempotency_keys:
                headers["Idempotency-Key"] = order_key
            payload: dict[str, Any] = {"program": self.plan.program, "customer_ref": f"chaos-{order_key[:12]}"}
        else:
            path = "/v1/detokenize"
            if kind == "detok_known":
                known = self.known_refs or [c["external_ref"] for c in self.cards[-200:]]
                refs = rng.sample(known, k=min(3, len(known)))
            else:
                # Never issued by anybody: the database cannot know it, so detokenize must ask TOME NS2.
                refs = [f"unknown-{uuid.uuid4().hex}"]
            payload = {"external_refs": refs}
        started = time.monotonic()
        attempts = 0
        error: str | None = None
        order = [(first_target + i) % len(self.targets) for i in range(len(self.targets))]
        order.sort(key=lambda index: self.down_until.get(index, 0.0) > started)
        for index in order:
            attempts += 1
            try:
                async with asyncio.timeout(self.plan.request_timeout_s + 2.0):
                    response = await client.post(self.targets[index] + path, json=payload, headers=headers)
            except (httpx.TimeoutException, TimeoutError):
                # A timeout is not failed over: the call may still be running there, and counting it is the point.
                error = "timeout"
                break
            except FAILOVER_ERRORS as exc:
                error = type(exc).__name__
                self.down_until[index] = time.monotonic() + TARGET_DOWN_S
                self.failovers += 1
                continue
            return _answered(kind, started, response, attempts, order_key)
        return Call(kind, started, time.monotonic() - started, None, error=error, attempts=attempts,
                    order_key=order_key)


def _answered(kind: str, started: float, response: httpx.Response, attempts: int, order_key: str | None) -> Call:
    elapsed = time.monotonic() - started
    body: dict[str, Any] | None
    try:
        body = response.json()
    except ValueError:
        body = None
    call = Call(kind, started, elapsed, response.status_code, attempts=attempts, body=body, order_key=order_key)
    if not call.ok:
        content_type = response.headers.get("content-type", "")
        code = body.get("code") if isinstance(body, dict) else None
        call.code = str(code) if code else f"HTTP_{response.status_code}"
        call.clean_problem = response.status_code == 503 and content_type.startswith(PROBLEM_JSON) and bool(code)
    return call


@dataclass
class LoadSummary:
    requests: int
    succeeded: int
    errors_by_code: dict[str, int]
    timeouts: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    unclean_failures: list[str]


def summarize(calls: Sequence[Call]) -> LoadSummary:
    errors: Counter[str] = Counter()
    unclean: list[str] = []
    for call in calls:
        if call.ok:
            continue
        if call.status is None:
            errors[call.error or "no_answer"] += 1
            unclean.append(f"{call.kind}: no answer ({call.error}) after {call.attempts} attempt(s)")
        else:
            errors[f"{call.status} {call.code}"] += 1
            if not call.clean_problem:
                unclean.append(f"{call.kind}: {call.status} {call.code}")
    latencies = sorted(c.elapsed * 1000 for c in calls)
    p50 = statistics.median(latencies) if latencies else None
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None
    return LoadSummary(
        requests=len(calls), succeeded=sum(c.ok for c in calls), errors_by_code=dict(errors),
        timeouts=sum(c.error == "timeout" for c in calls), p50_ms=p50, p99_ms=p99,
        max_ms=latencies[-1] if latencies else None, unclean_failures=unclean,
    )
