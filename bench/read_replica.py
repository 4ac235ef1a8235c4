"""Detokenize throughput with and without a streaming standby behind ``TOKENPOOL_DATABASE_READ_URL``.

    python -m bench.read_replica [--seconds 10] [--connections 16] [--rounds 2] [--refs 100] [--pairs 50000]

Starts a throwaway primary and ``pg_basebackup -R`` standby (bench/standby.py) from the PostgreSQL server
binaries, migrates the primary through the CLI (``tokenpool db upgrade``, an owner and an app role), seeds
synthetic pairs, starts the TOME emulator, then alternates ``tokenpool serve`` (one worker) without and with
the read URL, ``--rounds`` times each in the same run, each under ``wrk -t2`` sending detokenize requests of
``--refs`` refs the database holds. Prints requests/s, p50/p99 and refs/s per run, the mean per
configuration, and how many transactions each server committed during the runs (proof of where the
reads went). Everything is stopped and removed at the end.

On a single small machine the standby competes with the primary, the API and wrk for the same cores:
this measures that the path works and what it costs, not the capacity a standby on its own host adds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.http import PROGRAM, WRK_INSTALL, Stack, load_average, run_wrk
from bench.standby import StandbyPair, missing_reason, standby_pair
from tokenpool.db import roles

DATABASE = "tokenpool"
APP_ROLE = "tokenpool_bench_app"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of one wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk before each measured run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="runs per configuration (alternating)")
    parser.add_argument("--refs", type=int, default=100, help="refs per detokenize request")
    parser.add_argument("--pairs", type=int, default=50_000, help="synthetic pairs seeded")
    return parser.parse_args(argv)


def _url(base: str, **changes: str) -> str:
    params = conninfo_to_dict(base)
    params.update(changes)
    return make_conninfo(**params)  # type: ignore[arg-type]


def _commits(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (DATABASE,)).fetchone()
    return int(row[0]) if row else 0


def _prepare(pair: StandbyPair) -> tuple[str, str]:
    """The database and its app role on the primary; (owner URL, app URL)."""
    with psycopg.connect(pair.primary_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
        roles.create_login_role(conn, APP_ROLE, "bench")
    return _url(pair.primary_url, dbname=DATABASE), _url(pair.primary_url, dbname=DATABASE, user=APP_ROLE,
                                                         password="bench")


def _request_file(folder: Path, refs: list[str], per_request: int) -> Path:
    path = folder / "detokenize.txt"
    lines = []
    for start in range(0, len(refs) - per_request + 1, per_request):
        body = json.dumps({"external_refs": refs[start:start + per_request]}, separators=(",", ":"))
        lines.append(f"POST /v1/detokenize {body}")
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = missing_reason()
    if reason:
        sys.exit(f"cannot start a primary and a standby: {reason}")
    if shutil.which("wrk") is None:
        sys.exit(f"wrk is not installed; install it with:\n  {WRK_INSTALL}")
    folder = Path(tempfile.mkdtemp(prefix="tokenpool-bench-read-replica-"))
    try:
        with standby_pair() as pair:
            owner_url, app_url = _prepare(pair)
            read_url = pair.on_standby(app_url)
            stack = Stack(folder / "home", [f"TOKENPOOL_DATABASE_URL={app_url}",
                                            f"TOKENPOOL_DATABASE_ADMIN_URL={owner_url}",
                                            f"TOKENPOOL_DATABASE_APP_ROLE={APP_ROLE}"])
            try:
                run(args, pair, stack, folder, read_url, owner_url)
            finally:
                stack.stop_server()
                if stack.emulator is not None:
                    stack.emulator.terminate()
                    stack.emulator.wait(timeout=20)
                    stack.emulator = None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def run(args: argparse.Namespace, pair: StandbyPair, stack: Stack, folder: Path, read_url: str,
        owner_url: str) -> None:
    stack.cli("db", "upgrade")
    stack.cli("pool", "seed", "--synthetic", "--count", str(args.pairs), "--pool", PROGRAM)
    key = stack.cli_json("apikey", "create", "--name", "bench", "--scopes", "tokens:detokenize", "--json")["key"]
    stack.start_emulator()
    with psycopg.connect(owner_url) as conn:
        refs = [row[0] for row in conn.execute("SELECT external_ref FROM token_pool ORDER BY random() LIMIT 20000")]
    request_file = _request_file(folder, refs, args.refs)
    pair.wait_replayed(timeout_s=120)
    standby_app_url = read_url
    print(f"primary :{pair.primary_port}, standby :{pair.standby_port} (streaming, hot standby); {args.pairs:,} pairs;"
          f" wrk -t2 -c{args.connections}, {args.seconds} s per run after {args.warmup} s of warm-up;"
          f" {args.refs} refs per request; tokenpool serve --workers 1; {os.cpu_count()} CPUs")
    figures: dict[str, list[float]] = {"primary only": [], "with standby": []}
    print("\n| run | configuration | requests/s | refs/s | p50 ms | p99 ms | errors | commits primary |"
          " commits standby |")
    print("|---|---|---|---|---|---|---|---|---|")
    for index in range(args.rounds * 2):
        name = "primary only" if index % 2 == 0 else "with standby"
        if name == "with standby":
            stack.env["TOKENPOOL_DATABASE_READ_URL"] = standby_app_url
        else:
            stack.env.pop("TOKENPOOL_DATABASE_READ_URL", None)
        url = stack.start_server(1, "WARNING")
        try:
            if args.warmup:
                run_wrk(url, key, request_file, args.connections, args.warmup)
            before = _commits(pair.primary_url), _commits(pair.standby_url)
            result = run_wrk(url, key, request_file, args.connections, args.seconds)
            after = _commits(pair.primary_url), _commits(pair.standby_url)
        finally:
            stack.stop_server()
        figures[name].append(result.requests_per_s)
        print(f"| {index + 1} | {name} | {result.requests_per_s:,.0f} | {result.requests_per_s * args.refs:,.0f} |"
              f" {result.p50_ms:.1f} | {result.p99_ms:.1f} | {result.errors} | {after[0] - before[0]:,} |"
              f" {after[1] - before[1]:,} |")
    print()
    base = statistics.mean(figures["primary only"])
    for name, values in figures.items():
        mean = statistics.mean(values)
        print(f"{name}: mean {mean:,.0f} requests/s ({mean * args.refs:,.0f} refs/s), {mean / base:.2f}x primary only")
    print(f"load average after the runs: {load_average()}")


if __name__ == "__main__":
    raise SystemExit(main())
