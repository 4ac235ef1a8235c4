"""SIGKILL the refill process at random moments, run again, reconcile against TOME's ledger.

Each trial: a real ``python -m tokenpool.entrypoints.cli_refill refill`` process on a pool and TOME
namespaces of its own; it is killed right after a randomly chosen step (run start, plan, batch
journaled, tokens recorded, batch loaded; a random occurrence) plus a random few milliseconds. Then a
second run (in this process) must finish whatever was left, and every token NS1 issued must be in the
pool exactly once: none missing, none twice, nothing left in the journal.
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter

import pytest

from tests.fixtures.database import register_program
from tests.integration.refill_support import (
    cli,
    env_for,
    journal_leftovers,
    pool_tokens,
    refill_deps,
    refill_settings,
)
from tokenpool.refill.job import refill_pool
from tokenpool.refill.model import Outcome

# Step logged by the refill -> how many times it happens in one run of TARGET pairs in batches of 10.
KILL_AFTER = {"refill.run_started": 1, "refill.plan": 1, "refill.batch_intent": 4, "refill.batch_issued": 4,
              "refill.batch_loaded": 4}
TARGET = 40
TRIAL_TIMEOUT_S = 30.0


def _lines(stream: object, into: queue.Queue[str | None]) -> None:
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        into.put(raw.decode(errors="replace"))
    into.put(None)


def _run_and_kill(command: list[str], env: dict[str, str], event: str, rng: random.Random) -> str:
    """Starts the refill; SIGKILLs it after a random occurrence of ``event`` plus a random few
    milliseconds; returns where (or 'completed' if it finished first)."""
    occurrence, delay_s = rng.randint(1, KILL_AFTER[event]), rng.uniform(0, 0.03)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(process.stderr, lines), daemon=True).start()
    seen = 0
    deadline = time.monotonic() + TRIAL_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                return "completed"
            try:
                name = json.loads(line).get("event")
            except ValueError:
                continue
            if name == event:
                seen += 1
                if seen == occurrence:
                    time.sleep(delay_s)
                    process.send_signal(signal.SIGKILL)
                    return f"{event}#{occurrence}+{delay_s * 1000:.0f}ms"
        raise AssertionError(f"refill process neither finished nor reached {event} in {TRIAL_TIMEOUT_S}s")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def _trials(n: int, settings, database_url, tome, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    tome.set_faults(latency_ms=5, jitter_ms=10)
    kills: Counter[str] = Counter()
    for trial in range(n):
        pool = f"crash-{trial}-{uuid.uuid4().hex[:6]}"
        config = refill_settings(settings, tome, refill_target=TARGET, refill_lease_ttl_s=0.8,
                                 default_pool=pool, log_level="INFO")
        register_program(database_url, pool)
        event = list(KILL_AFTER)[trial % len(KILL_AFTER)]  # every step gets its share of kills
        where = await asyncio.to_thread(_run_and_kill, cli("refill", "--pool", pool), env_for(config), event, rng)
        kills[where.split("#")[0].split("+")[0]] += 1
        await asyncio.sleep(config.refill_lease_ttl_s)  # the killed runner's lease lapses
        async with refill_deps(config) as deps:
            result = await refill_pool(deps, pool)
        assert result.outcome is Outcome.SUCCEEDED, f"trial {trial} (killed at {where}): {result.error}"
        in_pool = pool_tokens(database_url, pool)
        issued = tome.issued(config.tome_ns1)
        assert len(in_pool) == len(set(in_pool)) == TARGET, f"trial {trial} (killed at {where})"
        assert sorted(in_pool) == sorted(issued), f"trial {trial} (killed at {where}): pool != TOME ledger"
        assert journal_leftovers(database_url, pool) == (0, 0)
    return kills


async def test_every_token_tome_issued_is_in_the_pool_exactly_once_after_random_sigkills(
    settings, database_url, tome
):
    kills = await _trials(10, settings, database_url, tome, seed=20261129)
    print(f"kill points: {dict(kills)}")
    assert sum(kills.values()) == 10
    assert len(set(kills) - {"completed"}) >= 4, f"kills should land at several different steps: {kills}"


@pytest.mark.chaos
async def test_many_random_sigkills_lose_no_token(settings, database_url, tome, request):
    if "chaos" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("chaos mode only: pytest -m chaos")
    kills = await _trials(60, settings, database_url, tome, seed=random.randrange(1 << 30))
    assert sum(kills.values()) == 60
