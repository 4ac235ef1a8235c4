"""Refill benchmark: pairs/s end to end against the TOME emulator, and COPY against multi-row INSERT.

    python -m bench.refill [--pairs 25000] [--load-pairs 100000] [--latencies 0,50] [--rps 1000] [--in-flight 4]

Prints, in one run on one server:
* end to end: pairs/s of ``refill_pool`` (issue on NS1, journal, tokenize on NS2, COPY load) with the
  emulator (a real process) adding 0 ms and 50 ms to every call, and the TOME requests it took;
* the database side alone: the same pairs loaded with the refill's COPY path and with multi-row
  INSERT statements (1,000 rows each), each into a fresh database.
Uses TOKENPOOL_DATABASE_URL's server if set, else the embedded one (scratch databases either way).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg

from bench.common import fresh_database, server_url, server_version
from tokenpool import bootstrap
from tokenpool.pool.synthetic import synthetic_pairs
from tokenpool.refill.job import refill_pool
from tokenpool.settings import Settings

POOL = "bench"
INSERT_ROWS = 1_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_emulator(folder: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenpool.tome.emulator", "--port", str(port), "--db", str(folder / "vault.db"),
         "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/_admin/health", timeout=0.5).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("emulator did not start")


async def end_to_end(url: str, tome_url: str, pairs: int, rps: float, in_flight: int) -> tuple[float, int]:
    settings = Settings(
        database_url=url,  # type: ignore[arg-type]
        tome_url=tome_url, refill_tome_max_rps=rps, refill_tome_max_in_flight=in_flight,
        tome_max_connections=max(4, in_flight), log_level="WARNING",
    )
    async with bootstrap.open_refill(settings) as deps:
        await deps.programs.add(POOL)  # a fresh database: only `default` is registered
        started = time.perf_counter()
        result = await refill_pool(deps, POOL, count=pairs)
        elapsed = time.perf_counter() - started
    if result.added != pairs:
        raise RuntimeError(f"refill added {result.added} of {pairs}: {result.error}")
    return pairs / elapsed, result.tome_requests


async def copy_rate(url: str, n: int) -> float:
    """The refill's load path as it runs: seal each token (digest + AES-GCM), COPY, insert from staging."""
    pairs = synthetic_pairs(n)
    async with bootstrap.open_backend(url, Settings(), min_size=1, max_size=1) as backend:
        started = time.perf_counter()
        for offset in range(0, n, 2_500):  # the refill's unit: one batch per transaction
            async with backend.db.transaction() as conn:
                await backend.store.copy_pairs(conn, POOL, pairs[offset : offset + 2_500], uuid.uuid4())
        return n / (time.perf_counter() - started)


async def insert_rate(url: str, n: int) -> float:
    """The baseline: the same sealed rows as multi-row INSERT statements instead of COPY."""
    pairs = synthetic_pairs(n)
    async with bootstrap.open_backend(url, Settings(), min_size=1, max_size=1) as backend:
        store = backend.store
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        for offset in range(0, n, 2_500):
            batch_id = uuid.uuid4()
            async with conn.transaction():
                for start in range(offset, min(n, offset + 2_500), INSERT_ROWS):
                    chunk = pairs[start : start + INSERT_ROWS]
                    # Benchmark-only statement, built here because its VALUES list has one row per pair.
                    values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(chunk))
                    params: list[object] = []
                    for pair in chunk:
                        sealed = store.seal(POOL, pair)
                        params += [POOL, sealed.digest, sealed.ciphertext, sealed.key_version, pair.external_ref,
                                   batch_id]
                    await conn.execute(
                        "INSERT INTO token_pool (pool, token_digest, token_ct, key_version, external_ref, batch_id)"
                        f" VALUES {values} ON CONFLICT DO NOTHING",
                        params,
                    )
        return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=25_000, help="pairs per end-to-end run")
    parser.add_argument("--load-pairs", type=int, default=100_000, help="pairs for COPY vs INSERT")
    parser.add_argument("--latencies", default="0,50", help="emulator latency per call, ms")
    parser.add_argument("--rps", type=float, default=1_000.0, help="refill TOME budget, requests/s")
    parser.add_argument("--in-flight", type=int, default=4, help="refill TOME budget, requests in flight")
    args = parser.parse_args()

    from tokenpool.observability.logging import configure_logging

    configure_logging("WARNING")
    server = server_url()
    print(f"PostgreSQL {server_version(server)}; budget {args.rps:g} req/s, {args.in_flight} in flight;"
          f" batches of 2,500")
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        emulator = start_emulator(Path(folder), port)
        tome_url = f"http://127.0.0.1:{port}"
        try:
            for latency in (float(x) for x in args.latencies.split(",")):
                httpx.put(f"{tome_url}/_admin/faults", json={"latency_ms": latency}, timeout=5).raise_for_status()
                url = fresh_database(server, f"bench_refill_e2e_{int(latency)}")
                rate, requests = asyncio.run(end_to_end(url, tome_url, args.pairs, args.rps, args.in_flight))
                print(f"end to end, TOME +{latency:g} ms/call: {rate:>10,.0f} pairs/s"
                      f"  ({args.pairs:,} pairs, {requests} TOME requests)")
        finally:
            emulator.kill()
            emulator.wait()

    copy = asyncio.run(copy_rate(fresh_database(server, "bench_refill_copy"), args.load_pairs))
    insert = asyncio.run(insert_rate(fresh_database(server, "bench_refill_insert"), args.load_pairs))
    print(f"DB load, COPY (refill path):          {copy:>10,.0f} pairs/s  ({args.load_pairs:,} pairs)")
    print(f"DB load, multi-row INSERT ({INSERT_ROWS:,}/stmt): {insert:>10,.0f} pairs/s  (COPY is {copy / insert:.1f}x)")


if __name__ == "__main__":
    main()
