"""Claim benchmark: the library's ``reserve`` against pgbench running the very same statement.

    python -m bench.claim [--pairs 1000000] [--clients 1,4,16,64] [--seconds 10] [--ageing 1000000]

Prints, in one run on one server: claims/s of pgbench and of the library at each concurrency and
their ratio; then the ageing curve: the rate of each successive 100,000 claims of a long run.
Uses TOKENPOOL_DATABASE_URL's server if set, else the embedded one (a scratch database either way).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import re
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from unittest.mock import patch

from bench.common import fresh_database, pgbench_path, server_url, server_version
from tokenpool import bootstrap
from tokenpool.db.pool_store import CLAIM_KEY_RANGE, PostgresTokenPool
from tokenpool.db.queries import sql
from tokenpool.pool.claim_batcher import ClaimBatcher
from tokenpool.pool.errors import PoolExhausted
from tokenpool.pool.model import Reservation, TokenPair
from tokenpool.settings import Settings

POOL = "bench"
LEASE_SECONDS = 600.0
LOAD_CHUNK = 100_000


def pgbench_script() -> str:
    """The library's reserve statement with psycopg parameters turned into pgbench variables; one unowned
    order and no cap, as ``store.reserve(pool, lease)`` sends it."""
    unowned = sql("reserve").replace("%(owners)b", "'{NULL}'").replace("%(max_open)s", "NULL")
    statement = re.sub(r"%\((\w+)\)s", r":\1", unowned)
    return (
        f"\\set start random(0, {CLAIM_KEY_RANGE - 1})\n"
        "\\set n 1\n"
        f"\\set lease_seconds {int(LEASE_SECONDS)}\n"
        + " ".join(statement.split())
        + ";\n"
    )


def run_pgbench(url: str, clients: int, seconds: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".pgb", delete=False) as script:
        script.write(pgbench_script())
    out = subprocess.run(
        [str(pgbench_path()), "-n", "-M", "prepared", "-f", script.name, "-c", str(clients),
         "-j", str(min(clients, 2)), "-T", str(seconds), "-D", f"pool={POOL}", url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )
    Path(script.name).unlink()
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
    if not match:
        raise RuntimeError(f"pgbench printed no rate:\n{out.stdout}\n{out.stderr}")
    return float(match.group(1))


async def _claim_for(url: str, clients: int, seconds: float, batched: bool) -> int:
    async with bootstrap.open_backend(url, Settings(), min_size=clients, max_size=clients) as backend:
        return await _claim_with(backend.store, clients, seconds, batched)


async def _claim_with(store: PostgresTokenPool, clients: int, seconds: float, batched: bool) -> int:
    reserve = ClaimBatcher(store).reserve if batched else store.reserve
    deadline = time.perf_counter() + seconds
    count = 0

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            try:
                await reserve(POOL, LEASE_SECONDS)
            except PoolExhausted:
                return  # main() tops the pool up between points; a dry pool ends this one early
            count += 1

    await asyncio.gather(*(worker() for _ in range(clients)))
    return count


def _process_main(
    url: str, clients: int, seconds: float, batched: bool, queue: multiprocessing.Queue[int]
) -> None:
    queue.put(asyncio.run(_claim_for(url, clients, seconds, batched)))


def run_library(url: str, clients: int, seconds: int, processes: int, batched: bool) -> float:
    """reserve() from ``processes`` OS processes (like pgbench's -j threads), clients split between them.

    ``batched``: through ClaimBatcher, which merges concurrent calls of a process into one statement.
    """
    processes = min(processes, clients)
    queue: multiprocessing.Queue[int] = multiprocessing.Queue()
    split = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    workers = [multiprocessing.Process(target=_process_main, args=(url, n, seconds, batched, queue)) for n in split]
    for w in workers:
        w.start()
    total = sum(queue.get(timeout=seconds + 120) for _ in workers)
    for w in workers:
        w.join()
    return total / seconds


async def load(url: str, count: int) -> float:
    async with bootstrap.open_backend(url, Settings(), min_size=1, max_size=2) as backend:
        prefix = uuid.uuid4().hex[:8]
        started = time.perf_counter()
        for offset in range(0, count, LOAD_CHUNK):
            n = min(LOAD_CHUNK, count - offset)
            pairs = [TokenPair(f"{prefix}{offset + i:012d}", f"ext_{prefix}{offset + i:022d}") for i in range(n)]
            await backend.store.add_pairs(POOL, pairs, uuid.uuid4())
        return count / (time.perf_counter() - started)


async def top_up(url: str, pairs: int) -> None:
    """Keeps at least half of ``pairs`` available, so no measured point runs the pool dry."""
    async with bootstrap.open_backend(url, Settings(), min_size=1, max_size=1) as backend:
        available = (await backend.store.stats(POOL)).available
    if available < pairs // 2:
        await load(url, pairs)


async def ageing(url: str, claims: int, step: int, clients: int, head_first: bool = False) -> list[float]:
    """``claims`` reservations in a row at ``clients``-way concurrency; the rate of each ``step``.

    ``head_first``: the control. The same statement with its start pinned to 0, i.e. the classic
    claim that always reads the claim index from its head.
    """
    async with bootstrap.open_backend(url, Settings(), min_size=clients, max_size=clients) as backend:
        store = _HeadFirst(backend.db, backend.vault) if head_first else backend.store
        return await _ageing_with(store, claims, step, clients)


async def _ageing_with(store: PostgresTokenPool, claims: int, step: int, clients: int) -> list[float]:
    rates: list[float] = []
    for _ in range(claims // step):
        remaining = step
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                try:
                    await store.reserve(POOL, LEASE_SECONDS)
                except PoolExhausted:
                    return

        await asyncio.gather(*(worker() for _ in range(clients)))
        rates.append(step / (time.perf_counter() - started))
        print(f"  claims {len(rates) * step:>9,}: {rates[-1]:8,.0f}/s", flush=True)
    return rates


class _HeadFirst(PostgresTokenPool):
    """The control: the claim with its start pinned to 0 (``random_claim_start`` replaced)."""

    async def reserve(self, pool: str, lease_seconds: float, *, owner: object = None,
                      conn: object = None) -> Reservation:
        with patch("tokenpool.db.pool_store.random_claim_start", return_value=0):
            return await super().reserve(pool, lease_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2, help="library processes (pgbench uses -j 2)")
    parser.add_argument("--ageing", type=int, default=1_000_000, help="claims in the ageing run (0: skip)")
    parser.add_argument("--ageing-step", type=int, default=100_000)
    parser.add_argument("--ageing-clients", type=int, default=16)
    parser.add_argument("--control", type=int, default=300_000,
                        help="claims in the head-first control run (0: skip)")
    args = parser.parse_args()

    url = fresh_database(server_url(), "tokenpool_bench_claim")
    print(f"server: PostgreSQL {server_version(url)}; pgbench: {pgbench_path()}")
    rate = asyncio.run(load(url, args.pairs))
    print(f"loaded {args.pairs:,} pairs with COPY at {rate:,.0f} pairs/s\n")
    print("library = one statement per reserve(); batched = reserve() through ClaimBatcher")
    print(f"{'clients':>7} {'pgbench/s':>10} {'library/s':>10} {'ratio':>6} {'batched/s':>10} {'ratio':>6}")
    for clients in [int(c) for c in args.clients.split(",")]:
        asyncio.run(top_up(url, args.pairs))
        reference = run_pgbench(url, clients, args.seconds)
        library = run_library(url, clients, args.seconds, args.processes, batched=False)
        batched = run_library(url, clients, args.seconds, args.processes, batched=True)
        print(
            f"{clients:>7} {reference:>10,.0f} {library:>10,.0f} {library / reference:>6.0%}"
            f" {batched:>10,.0f} {batched / reference:>6.0%}",
            flush=True,
        )

    if args.ageing:
        # A pool of its own, 20% larger than the run, so the curve shows ageing, not the last pairs.
        url = fresh_database(server_url(), "tokenpool_bench_claim")
        asyncio.run(load(url, int(args.ageing * 1.2)))
        print(f"\nageing: {args.ageing:,} claims in a row through reserve() (one statement each),"
              f" {args.ageing_clients}-way, rate per {args.ageing_step:,}")
        rates = asyncio.run(ageing(url, args.ageing, args.ageing_step, args.ageing_clients))
        print(f"last/first: {rates[-1] / rates[0]:.0%}")

    if args.control:
        url = fresh_database(server_url(), "tokenpool_bench_claim")
        asyncio.run(load(url, int(args.control * 1.2)))
        print(f"\ncontrol: {args.control:,} claims of the same statement from the head of the index (start = 0)")
        rates = asyncio.run(ageing(url, args.control, args.ageing_step, args.ageing_clients, head_first=True))
        print(f"last/first: {rates[-1] / rates[0]:.0%}")


if __name__ == "__main__":
    main()
