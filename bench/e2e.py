"""End-to-end benchmark: the whole stack under a day in miniature, bursts and a capacity search.

    python -m bench.e2e --scenario day|burst|capacity|all [--mode direct|pool|both] [--cards 50000]
                        [--hour-seconds 60] [--out loadtest/results/<stamp>/] [--publish docs/benchmarks]

Each mode gets its own stack (``bench.stack``: embedded PostgreSQL under ``<out>/stack-<mode>``, the
TOME emulator at 20..60 ms per call with a rate limit, initial refill, worker with the refill schedule
compressed like the clock, API). Direct mode is the seed's baseline: cards at a canary share of 0 %
(every card an NS1 issue and an NS2 tokenize) and every detokenize sent by the harness to TOME NS2 (one
call per request), since the baseline keeps no copy of the pairs. The day runs in the requested modes;
bursts and the capacity search run on the pool-mode stack after its day. ``<out>/report.md`` (and
``results.json``, ``e2e-*.png``) is written at the end; ``--publish DIR`` copies the report (as
``e2e-report.md``) and the charts there.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from rich.console import Console

from bench import e2e_report
from bench.load_driver import (
    Outcome,
    Recent,
    Sample,
    TomeDetokenize,
    api_client,
    burst,
    read_tome_requests,
    run_schedule,
    sample_until,
    tome_client,
)
from bench.loadshape import arrival_offsets, hourly_cards, peak_rate, percentile, windowed_percentiles
from bench.stack import Stack, StackConfig, running_stack, top_up

console = Console()

# The realistic mix: per 4 card creations, one detokenize of the 5 newest refs and one card read.
MIX_EVERY = 4
CAPACITY_RATES = {
    "healthz": [100, 200, 400, 600, 800, 1_000, 1_300, 1_600, 2_000],
    "card": [25, 50, 75, 100, 150, 200, 250, 300, 400, 500],
    "detokenize": [50, 100, 150, 200, 300, 400, 500, 650, 800],
}
CAPACITY_CONNECTIONS = 256
CAPACITY_TOP_UP = 20_000  # pairs added before the card capacity search, so it measures the pool path


@dataclass
class ModeResult:
    mode: str
    day: dict[str, Any] | None = None
    bursts: list[dict[str, Any]] = field(default_factory=list)
    capacity: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)


def day_events(cards: int, hour_seconds: float) -> list[tuple[float, str]]:
    """Card creations on the diurnal schedule, with the mix's detokenize and read beside them."""
    events: list[tuple[float, str]] = []
    for i, offset in enumerate(arrival_offsets(cards, hour_seconds)):
        events.append((offset, "card"))
        if i % MIX_EVERY == 1:
            events.append((offset, "detokenize"))
        elif i % MIX_EVERY == 3:
            events.append((offset, "read"))
    return events


def latency_summary(outcomes: list[Outcome], kind: str) -> dict[str, Any]:
    mine = [o for o in outcomes if o.kind == kind]
    ok = [o.latency_ms for o in mine if 200 <= o.status < 300]
    errors = Counter(f"{o.status} {o.code or ''}".strip() for o in mine if not 200 <= o.status < 300)
    return {
        "requests": len(mine), "ok": len(ok), "errors": dict(errors),
        "p50_ms": percentile(ok, 50), "p95_ms": percentile(ok, 95), "p99_ms": percentile(ok, 99),
        "max_ms": max(ok, default=float("nan")),
    }


def tome_series(samples: list[Sample]) -> list[tuple[float, float]]:
    """TOME requests per second between consecutive samples (samples whose read failed are skipped)."""
    good = [s for s in samples if s.tome_requests]
    return [
        (b.t, (sum(b.tome_requests.values()) - sum(a.tome_requests.values())) / (b.t - a.t))
        for a, b in itertools.pairwise(good)
        if b.t > a.t
    ]


async def run_day(stack: Stack, mode: str, cards: int, hour_seconds: float, max_in_flight: int) -> dict[str, Any]:
    events = day_events(cards, hour_seconds)
    console.print(f"[bold]{mode}[/]: day of {cards:,} cards over {24 * hour_seconds:.0f} s ({len(events):,} requests)")
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as plain:
        before = await read_tome_requests(plain, stack)
    stop = asyncio.Event()
    start = time.monotonic()
    sampler = asyncio.create_task(sample_until(stack, stop, start))
    try:
        async with api_client(stack, max_in_flight) as client, tome_client(stack, max_in_flight) as tome_http:
            # Direct mode is the seed's baseline: it has no database copy of the pairs, so its every
            # detokenize is an NS2 call. The service at canary 0 % would still answer from its database.
            baseline = TomeDetokenize(tome_http, stack.tome_ns2) if mode == "direct" else None
            outcomes = await run_schedule(client, events, max_in_flight=max_in_flight, tome=baseline)
        await asyncio.sleep(2 * 1.0)  # two more samples after the last answer
    finally:
        stop.set()
        samples = await sampler
    elapsed = time.monotonic() - start
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as plain:
        after = await read_tome_requests(plain, stack)
    tome = {op: after.get(op, 0) - before.get(op, 0) for op in sorted(set(after) | set(before))}
    tome_total = sum(tome.values())
    card = latency_summary(outcomes, "card")
    sources = Counter(str(o.card.get("token_source")) for o in outcomes if o.card)
    rps = tome_series(samples)
    levels = [(s.t, s.available) for s in samples if s.available is not None]
    window = max(hour_seconds / 4, 2.0)
    card_samples = [(o.offset_s, o.latency_ms) for o in outcomes if o.kind == "card" and 200 <= o.status < 300]
    return {
        "mode": mode, "cards_scheduled": cards, "hour_seconds": hour_seconds, "elapsed_s": elapsed,
        "card": card, "detokenize": latency_summary(outcomes, "detokenize"), "read": latency_summary(outcomes, "read"),
        "detokenize_via": "tome" if mode == "direct" else "service",
        "token_source": dict(sources),
        "tome_requests": tome, "tome_total": tome_total,
        "tome_per_card": tome_total / card["ok"] if card["ok"] else float("nan"),
        "tome_peak_rps": peak_rate([r for _t, r in rps]),
        "pool_min": min((lvl for _t, lvl in levels), default=None),
        "pool_max": max((lvl for _t, lvl in levels), default=None),
        "load1_mean": sum(s.load1 for s in samples) / len(samples) if samples else float("nan"),
        "load1_max": max((s.load1 for s in samples), default=float("nan")),
        "series": {
            "tome_rps": rps,
            "pool_level": levels,
            "latency_windows": [asdict(w) for w in windowed_percentiles(card_samples, window)],
            "cards_per_s": _per_second([o.offset_s for o in outcomes if o.kind == "card"]),
        },
    }


def _per_second(offsets: list[float]) -> list[tuple[float, int]]:
    counts = Counter(int(t) for t in offsets)
    return [(float(t), counts[t]) for t in range(max(counts, default=-1) + 1)]


async def run_burst(stack: Stack, n: int) -> dict[str, Any]:
    console.print(f"burst of {n:,} simultaneous card creations")
    outcomes, wall = await burst(stack, n)
    created = [o.card for o in outcomes if o.card]
    tokens = [str(c["internal_token"]) for c in created]
    refs = [str(c["external_ref"]) for c in created]
    return {
        "n": n, "wall_s": wall, "created": len(created), "latency": latency_summary(outcomes, "card"),
        "duplicate_internal_tokens": len(tokens) - len(set(tokens)),
        "duplicate_external_refs": len(refs) - len(set(refs)),
        "token_source": dict(Counter(str(c.get("token_source")) for c in created)),
        "load1": os.getloadavg()[0],
    }


def database_duplicates(stack: Stack) -> dict[str, int]:
    """Over every card in the database: pairs on two cards, cards whose pair disagrees, USED pairs vs cards."""
    with psycopg.connect(stack.database_url, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) - count(DISTINCT token_digest), count(*) - count(DISTINCT external_ref)"
            " FROM cards"
        ).fetchone()
        mismatched = conn.execute(
            "SELECT count(*) FROM cards c JOIN token_pool p USING (token_digest)"
            " WHERE p.external_ref <> c.external_ref OR p.status <> 'USED'"
        ).fetchone()
        used = conn.execute("SELECT count(*) FROM token_pool WHERE status = 'USED'").fetchone()
    if row is None or mismatched is None or used is None:
        raise RuntimeError("count query returned no row")
    return {
        "cards": int(row[0]), "duplicate_internal_tokens": int(row[1]), "duplicate_external_refs": int(row[2]),
        "cards_whose_pair_disagrees": int(mismatched[0]), "used_pairs": int(used[0]),
    }


async def capacity_search(
    stack: Stack, kind: str, rates: list[int], step_s: float, bound_ms: float, recent: Recent
) -> dict[str, Any]:
    """Stepped open-loop search: each rate for ``step_s``; a step passes with no error, p99 under the bound
    and at least 95 % of the offered rate answered; the search stops at the first failing step."""
    # One client for the whole search: its kept-alive connections carry over from step to step, so a
    # step measures requests, not a storm of new TCP connections opened by the client at its start.
    async with api_client(stack, CAPACITY_CONNECTIONS) as client:
        return await _steps(client, kind, rates, step_s, bound_ms, recent)


async def _steps(
    client: httpx.AsyncClient, kind: str, rates: list[int], step_s: float, bound_ms: float, recent: Recent
) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    sustained = 0
    for rate in rates:
        events = [(i / rate, kind) for i in range(int(rate * step_s))]
        started = time.monotonic()
        outcomes = await run_schedule(client, events, max_in_flight=CAPACITY_CONNECTIONS, recent=recent)
        wall = time.monotonic() - started
        summary = latency_summary(outcomes, kind)
        achieved = summary["ok"] / max(wall, step_s)
        passed = not summary["errors"] and summary["p99_ms"] <= bound_ms and achieved >= 0.95 * rate
        steps.append({"rate": rate, "achieved_rps": achieved, "passed": passed, "load1": os.getloadavg()[0],
                      **summary})
        console.print(f"  {kind} {rate}/s: achieved {achieved:.0f}/s p99 {summary['p99_ms']:.0f} ms "
                      f"errors {summary['errors'] or 0} -> {'pass' if passed else 'FAIL'}")
        if not passed:
            break
        sustained = rate
    return {"kind": kind, "sustained_rps": sustained, "steps": steps}


async def run_capacity(stack: Stack, step_s: float, bound_ms: float) -> dict[str, Any]:
    console.print(f"capacity search (p99 <= {bound_ms:.0f} ms, {step_s:.0f} s per step)")
    try:
        top_up(stack, CAPACITY_TOP_UP)
    except RuntimeError as error:  # the worker's watermark refills still run; the search goes on
        console.print(f"[yellow]top-up failed, searching without it: {error}[/]")
    recent = Recent()
    results = {}
    for kind in ("healthz", "card", "detokenize"):
        results[kind] = await capacity_search(stack, kind, CAPACITY_RATES[kind], step_s, bound_ms, recent)
    return {"bound_ms": bound_ms, "step_s": step_s, "searches": results}


async def scenario_on_stack(stack: Stack, mode: str, args: argparse.Namespace) -> ModeResult:
    """Runs the scenarios in turn; one that fails is recorded in ``errors`` and the next one still runs."""
    result = ModeResult(mode)
    scenarios = {args.scenario} if args.scenario != "all" else {"day", "burst", "capacity"}
    if "day" in scenarios:
        try:
            result.day = await run_day(stack, mode, args.cards, args.hour_seconds, args.max_in_flight)
        except Exception as error:  # a broken scenario must not lose the others' figures
            result.errors.append(f"day: {type(error).__name__}: {error}")
    if mode == "pool" and "burst" in scenarios:
        for n in args.bursts:
            try:
                result.bursts.append(await run_burst(stack, n))
            except Exception as error:
                result.errors.append(f"burst {n}: {type(error).__name__}: {error}")
    if mode == "pool" and "capacity" in scenarios:
        try:
            result.capacity = await run_capacity(stack, args.step_seconds, args.p99_bound_ms)
        except Exception as error:
            result.errors.append(f"capacity: {type(error).__name__}: {error}")
    for failure in result.errors:
        console.print(f"[red]{mode}: {failure}[/]")
    return result


def modes_for(args: argparse.Namespace) -> list[str]:
    if args.scenario in ("burst", "capacity"):
        return ["pool"]
    if args.mode == "both":
        return ["direct", "pool"]
    return [args.mode]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    results: list[ModeResult] = []
    db_checks: dict[str, Any] = {}
    for mode in modes_for(args):
        if results:  # what is measured so far is on disk before the next stack starts
            _write_outputs(out, _run_record(args, argv, started, results, db_checks))
        config = StackConfig(
            home=out / f"stack-{mode}", pool_percent=0 if mode == "direct" else 100, hour_seconds=args.hour_seconds,
            refill_target=args.refill_target or max(1_000, args.cards // 5),
            tome_rate_limit_rps=args.tome_rate_limit,
        )
        console.print(f"starting the {mode}-mode stack under {config.home}")
        with running_stack(config, console) as stack:
            results.append(asyncio.run(scenario_on_stack(stack, mode, args)))
            db_checks[mode] = database_duplicates(stack)
    _write_outputs(out, _run_record(args, argv, started, results, db_checks))
    console.print(f"report: {out / 'report.md'}")
    if args.publish:
        publish(out, args.publish)
    return 1 if any(r.errors for r in results) else 0


def _run_record(
    args: argparse.Namespace, argv: list[str] | None, started: datetime, results: list[ModeResult],
    db_checks: dict[str, Any],
) -> dict[str, Any]:
    return {
        "started": started.isoformat(timespec="seconds"), "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.e2e " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "curve_hourly_cards": hourly_cards(args.cards),
        "modes": [asdict(r) for r in results], "database_checks": db_checks,
    }


def _write_outputs(out: Path, run: dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps(run, indent=1, default=str))
    e2e_report.write(run, out)


def publish(out: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "report.md", target / "e2e-report.md")
    for chart in out.glob("e2e-*.png"):
        shutil.copyfile(chart, target / chart.name)
    console.print(f"published to {target}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["day", "burst", "capacity", "all"], default="all")
    parser.add_argument("--mode", choices=["direct", "pool", "both"], default="both", help="for the day")
    parser.add_argument("--cards", type=int, default=50_000, help="cards in the simulated day")
    parser.add_argument("--hour-seconds", type=float, default=60.0, help="real seconds per simulated hour")
    parser.add_argument("--refill-target", type=int, default=0, help="pool target; 0: cards / 5 (>= 1,000)")
    parser.add_argument("--tome-rate-limit", type=float, default=500.0, help="emulator requests/s before 429")
    parser.add_argument("--bursts", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1_000])
    parser.add_argument("--p99-bound-ms", type=float, default=250.0)
    parser.add_argument("--step-seconds", type=float, default=5.0, help="duration of one capacity step")
    parser.add_argument("--max-in-flight", type=int, default=256, help="client-side cap during the day")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results") / stamp)
    parser.add_argument("--publish", type=Path, default=None, help="copy report + charts here (docs/benchmarks)")
    args = parser.parse_args(argv)
    if args.cards < 1 or args.hour_seconds <= 0:
        parser.error("--cards and --hour-seconds must be positive")
    return args


if __name__ == "__main__":
    raise SystemExit(main())
