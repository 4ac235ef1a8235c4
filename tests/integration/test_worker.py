"""The refill worker: watermark refills, the lease janitor, Prometheus metrics, a clean SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import signal
import socket
import subprocess
import threading
import time
import uuid

import httpx
import psycopg
from prometheus_client import REGISTRY

from tests.emf import emf_lines, metric_values, validate_emf
from tests.factories import make_pairs
from tests.fixtures.database import register_program
from tests.fixtures.network import accepts_connections, require_non_loopback_ipv4
from tests.fixtures.tome import free_port
from tests.integration.refill_support import cli, env_for, journal_leftovers, refill_deps, refill_settings
from tokenpool.pool.model import PairStatus
from tokenpool.refill.model import Outcome, Trigger
from tokenpool.refill.worker import RefillWorker

POOL = "default"


async def _until(predicate, timeout_s: float = 15.0, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(every_s)


async def test_the_worker_refills_at_start_and_again_when_the_pool_drops_below_its_watermark(settings, tome):
    # Factor 1: 25 claims in about a second forecast ~100,000 pairs/h; this test is about the watermark.
    config = refill_settings(settings, tome, refill_target=40, refill_low_watermark_ratio=0.5, worker_poll_s=0.1,
                             worker_janitor_interval_s=0.1, refill_forecast_max_factor=1)
    async with refill_deps(config) as deps:
        worker = RefillWorker(deps, [POOL])
        running = asyncio.create_task(worker.run())
        try:
            async def full() -> bool:
                return (await deps.store.stats(POOL)).available == 40

            await _until(full)
            # 15 left < watermark 20, in one statement: claimed one by one, the worker could refill at 18
            # and the last claims leave it at 37, above the watermark and short of full for good.
            for i, reservation in enumerate(await deps.store.reserve_many(POOL, 25, 30)):
                await deps.store.commit(reservation.reservation_id, f"card-{i}")

            async def refilled_by_watermark() -> bool:
                return any(trigger is Trigger.WATERMARK for _, trigger, _ in worker.runs)

            await _until(refilled_by_watermark)
            await _until(full)
        finally:
            worker.stop.set()
            await asyncio.wait_for(running, timeout=10)
    assert worker.runs[0] == (POOL, Trigger.SCHEDULE, Outcome.SUCCEEDED)
    assert (POOL, Trigger.WATERMARK, Outcome.SUCCEEDED) in worker.runs
    assert len([run for run in worker.runs if run[1] is Trigger.SCHEDULE]) == 1  # hourly: once so far


async def test_a_worker_that_finds_the_lease_held_retries_its_scheduled_run_once_the_lease_could_lapse(
    settings, database_url, tome
):
    # A runner that crashed a moment ago left its lease; the pool is above the watermark, so only the
    # scheduled run would fill it. Retrying at the next schedule would leave it (and the dead run's
    # journal) for an hour.
    config = refill_settings(settings, tome, refill_target=40, refill_low_watermark_ratio=0.5, worker_poll_s=0.1,
                             refill_lease_ttl_s=1.0, refill_interval_s=3_600, refill_forecast_max_factor=1)
    async with refill_deps(config) as deps:
        await deps.store.add_pairs(POOL, make_pairs(30), uuid.uuid4())
        with psycopg.connect(database_url, autocommit=True) as conn:  # just before the worker starts
            conn.execute("INSERT INTO refill_leases (pool, holder, expires_at) "
                         "VALUES (%s, 'dead-host:1:x', now() + interval '2 seconds')", (POOL,))
        worker = RefillWorker(deps, [POOL])
        running = asyncio.create_task(worker.run())
        try:
            async def full() -> bool:
                return (await deps.store.stats(POOL)).available == 40

            await _until(full, timeout_s=10)
        finally:
            worker.stop.set()
            await asyncio.wait_for(running, timeout=10)
    outcomes = [outcome for _, trigger, outcome in worker.runs if trigger is Trigger.SCHEDULE]
    assert outcomes[0] is Outcome.SKIPPED_LEASE_HELD
    assert outcomes[-1] is Outcome.SUCCEEDED
    assert len(outcomes) <= 3, "a held lease is retried once per lease TTL, not once per poll"


async def test_the_worker_janitor_expires_lapsed_reservations(settings, tome):
    config = refill_settings(settings, tome, refill_target=10, worker_poll_s=0.1, worker_janitor_interval_s=0.1)
    async with refill_deps(config) as deps:
        worker = RefillWorker(deps, [POOL])
        running = asyncio.create_task(worker.run())
        try:
            async def has_pairs() -> bool:
                return (await deps.store.stats(POOL)).available == 10

            await _until(has_pairs)
            await deps.store.reserve_many(POOL, 3, 0.1)

            async def expired() -> bool:
                return (await deps.store.stats(POOL)).count(PairStatus.EXPIRED) == 3

            await _until(expired)
            stats = await deps.store.exact_stats(POOL)
        finally:
            worker.stop.set()
            await asyncio.wait_for(running, timeout=10)
    assert (stats.count(PairStatus.EXPIRED), stats.count(PairStatus.RESERVED)) == (3, 0)


async def test_a_worker_given_no_program_keeps_every_registered_one_and_picks_up_changes_while_it_runs(
    settings, database_url, admin_database_url, tome
):
    config = refill_settings(settings, tome, refill_target=10, worker_poll_s=0.1, worker_janitor_interval_s=0.1)
    async with refill_deps(config) as deps:
        worker = RefillWorker(deps)  # no programs given: every registered one, reread at each poll
        running = asyncio.create_task(worker.run())
        try:
            async def default_full() -> bool:
                return (await deps.store.stats(POOL)).available == 10

            await _until(default_full)
            register_program(database_url, "late", refill_target=4)

            async def late_full() -> bool:
                return (await deps.store.stats("late")).available == 4

            await _until(late_full)
            with psycopg.connect(admin_database_url, autocommit=True) as conn:
                conn.execute("UPDATE programs SET removed_at = now() WHERE name = 'late'")

            async def late_dropped() -> bool:
                return worker.kept == [POOL]

            await _until(late_dropped)
        finally:
            worker.stop.set()
            await asyncio.wait_for(running, timeout=10)
    assert (POOL, Trigger.SCHEDULE, Outcome.SUCCEEDED) in worker.runs
    assert ("late", Trigger.SCHEDULE, Outcome.SUCCEEDED) in worker.runs


def test_a_worker_given_an_unregistered_program_exits_2_in_one_line(settings, tome):
    config = refill_settings(settings, tome, worker_metrics_port=0)
    result = subprocess.run(cli("worker", "--pool", POOL, "--pool", "nope"), env=env_for(config),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if not line.startswith("{")] == [
        "refused: not registered: 'nope' (tokenpool program add, or drop it from --pool / TOKENPOOL_WORKER_POOLS)"]


def _read(stream, into: queue.Queue) -> None:
    for raw in iter(stream.readline, b""):
        into.put(raw.decode(errors="replace"))


def test_the_worker_process_serves_metrics_and_stops_cleanly_on_sigterm_mid_refill(settings, database_url, tome):
    tome.set_faults(latency_ms=150)
    port = free_port()
    config = refill_settings(settings, tome, refill_target=200, refill_tome_max_in_flight=2, worker_poll_s=0.2,
                             worker_metrics_port=port, worker_stop_grace_s=10.0, refill_lease_ttl_s=10.0,
                             emf_interval_s=0.3)
    process = subprocess.Popen(cli("worker"), env=env_for(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[str] = queue.Queue()
    stdout: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read, args=(process.stderr, lines), daemon=True).start()
    stdout_reader = threading.Thread(target=_read, args=(process.stdout, stdout), daemon=True)
    stdout_reader.start()
    try:
        deadline = time.monotonic() + 30
        while True:  # wait until the first refill has loaded a batch: it is mid-run now
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if '"refill.batch_loaded"' in line:
                break
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=config.worker_stop_grace_s + 5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    events = []
    while not lines.empty():
        with contextlib.suppress(ValueError):
            events.append(json.loads(lines.get_nowait()).get("event"))
    assert code == 0
    assert "tokenpool_tome_requests_total" in metrics
    assert "tokenpool_pool_pairs" in metrics
    # Scraped before the first run ended: every series an alert counts on is already there, at 0.
    for series in ('tokenpool_refill_runs_total{outcome="failed",pool="default"} 0.0',
                   'tokenpool_refill_runs_total{outcome="lease_lost",pool="default"} 0.0',
                   'tokenpool_pool_alerts_total{channel="log",outcome="failed",pool="default"} 0.0',
                   f'tokenpool_tome_breaker_transitions_total{{target="{tome.url}",to_state="open"}} 0.0',
                   'tokenpool_tome_retries_total{operation="issue",reason="timeout"} 0.0'):
        assert series in metrics, series
    assert "worker.stopped" in events
    with psycopg.connect(database_url) as conn:
        runs = conn.execute("SELECT outcome, added, finished_at IS NOT NULL FROM refill_runs").fetchall()
        leases = conn.execute("SELECT count(*) FROM refill_leases").fetchone()
    assert [(outcome, finished) for outcome, _, finished in runs] == [("stopped", True)]
    assert 0 < runs[0][1] < 200
    assert leases == (0,)  # handed back, not left to lapse
    assert journal_leftovers(database_url, POOL) == (0, 0)  # the batches in flight were finished
    # TOKENPOOL_EMF_INTERVAL_S: the pool's level and the run, also as EMF lines (the last printed after the stop).
    stdout_reader.join(timeout=5)  # it ends at the exited process's end of file: every line is read
    documents = emf_lines("".join(stdout.get_nowait() for _ in range(stdout.qsize())))
    for document in documents:
        validate_emf(document)
    assert metric_values(documents, "tokenpool_pool_pairs", pool=POOL, status="available")
    assert sum(metric_values(documents, "tokenpool_refill_runs", pool=POOL, outcome="stopped")) == 1
    assert sum(metric_values(documents, "tokenpool_refill_pairs_added", pool=POOL)) == runs[0][1]


def _serve_metrics(config, host: str, port: int) -> subprocess.Popen[bytes]:
    """A worker process whose metrics answer on ``host:port`` (waited for)."""
    process = subprocess.Popen(cli("worker"), env=env_for(config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not accepts_connections(host, port, timeout_s=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"worker metrics not up: {process.communicate(timeout=10)[1].decode()[-2000:]}")
        time.sleep(0.1)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_worker_metrics_listen_on_loopback_only_unless_the_host_setting_says_otherwise(settings, tome):
    elsewhere = require_non_loopback_ipv4()
    port = free_port()
    default = refill_settings(settings, tome, worker_metrics_port=port, worker_poll_s=0.5)
    assert default.worker_metrics_host == "127.0.0.1"
    process = _serve_metrics(default, "127.0.0.1", port)
    try:
        assert "tokenpool_tome_requests_total" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert not accepts_connections(elsewhere, port), f"the metrics answer on {elsewhere}"
    finally:
        _stop(process)

    port = free_port()
    told = refill_settings(settings, tome, worker_metrics_port=port, worker_poll_s=0.5, worker_metrics_host=elsewhere)
    process = _serve_metrics(told, elsewhere, port)
    try:
        assert httpx.get(f"http://{elsewhere}:{port}/metrics", timeout=5).status_code == 200
        assert not accepts_connections("127.0.0.1", port), "bound to the address it was given, not to every one"
    finally:
        _stop(process)


def test_a_worker_whose_metrics_port_is_taken_says_so_and_exits_2(settings, tome):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = refill_settings(settings, tome, worker_metrics_port=port)
        done = subprocess.run(cli("worker"), env=env_for(config), capture_output=True, timeout=60, check=False)
    assert done.returncode == 2
    events = [json.loads(line) for line in done.stderr.decode().splitlines() if line.startswith("{")]
    assert next(e for e in events if e.get("event") == "worker.metrics_unavailable")["port"] == port
    assert b"Traceback" not in done.stderr


def _last_success() -> float | None:
    return REGISTRY.get_sample_value("tokenpool_refill_last_success_timestamp_seconds", {"pool": POOL})


async def test_a_restarted_worker_publishes_the_last_successful_refill_before_its_first_run(
    settings, database_url, tome
):
    # The refill runs of a worker before its restart (or of the CLI, or a Lambda), as refill_runs holds them.
    with psycopg.connect(database_url, autocommit=True) as conn:
        for minutes_ago, outcome in ((90, "succeeded"), (30, "succeeded"), (10, "failed")):
            conn.execute("INSERT INTO refill_runs (run_id, pool, trigger, holder, outcome, started_at, finished_at)"
                         " VALUES (%s, %s, 'cli', 'h', %s, now() - make_interval(mins => %s),"
                         " now() - make_interval(mins => %s) + interval '5 seconds')",
                         (uuid.uuid4(), POOL, outcome, minutes_ago, minutes_ago))
    tome.set_faults(outage=True)  # the new worker's own runs fail
    config = refill_settings(settings, tome, refill_target=10, worker_poll_s=0.1, tome_max_attempts=1)
    async with refill_deps(config) as deps:
        worker = RefillWorker(deps, [POOL])
        running = asyncio.create_task(worker.run())
        try:
            async def failed_once() -> bool:
                return bool(worker.runs)

            await _until(failed_once)
        finally:
            worker.stop.set()
            await asyncio.wait_for(running, timeout=10)
    assert worker.runs[0][2] is Outcome.FAILED
    published = _last_success()
    assert published is not None
    assert abs(time.time() - 30 * 60 + 5 - published) < 60, "the run that succeeded 30 minutes ago"


async def test_a_pool_whose_refills_never_succeeded_shows_when_they_began(settings, tome):
    tome.set_faults(outage=True)
    config = refill_settings(settings, tome, refill_target=10, worker_poll_s=0.1, tome_max_attempts=1)
    started = time.time()
    async with refill_deps(config) as deps:
        worker = RefillWorker(deps, [POOL])
        running = asyncio.create_task(worker.run())
        try:
            async def published_after_a_run() -> bool:
                value = _last_success()
                return bool(worker.runs) and value is not None and value >= started - 5

            await _until(published_after_a_run)
        finally:
            worker.stop.set()
            await asyncio.wait_for(running, timeout=10)
    assert all(outcome is Outcome.FAILED for _, _, outcome in worker.runs)
    assert abs((_last_success() or 0.0) - started) < 5, "the first run's start"
