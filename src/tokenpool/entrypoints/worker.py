"""``tokenpool worker``: the refill worker as a process (signals, Prometheus port, graceful stop)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from prometheus_client import start_http_server

from tokenpool import bootstrap
from tokenpool.aws.emf_reporter import WORKER_FIGURES, emf_reporting
from tokenpool.db.restore_fence import RestoreFenceRequired
from tokenpool.db.retention import retention_policy
from tokenpool.monitoring.alerts import Alerter, alert_channels
from tokenpool.observability.logging import get_logger
from tokenpool.observability.metrics import initialise_metrics
from tokenpool.refill.worker import RefillWorker
from tokenpool.settings import Settings

log = get_logger(__name__)


EXIT_METRICS_PORT_UNAVAILABLE = 2
EXIT_UNKNOWN_PROGRAM = 2
EXIT_RESTORE_FENCE_REQUIRED = 5


def run_worker(settings: Settings, pools: list[str] | None, metrics_port: int) -> int:
    """``pools``: the programs to keep; None: every registered program. Returns the exit code."""
    # Before the first scrape, and before the start-up refill counts anything (the registered programs
    # are added as the worker finds them: RefillWorker initialises each program it starts keeping).
    initialise_metrics(pools=pools or [], refills=True, alert_channels=alert_channels(settings),
                       pruned_tables=retention_policy(settings))
    if metrics_port:
        host = settings.worker_metrics_host
        try:
            start_metrics_server(host, metrics_port)
        except OSError as exc:
            log.error("worker.metrics_unavailable", host=host, port=metrics_port, error=exc.strerror or str(exc))
            return EXIT_METRICS_PORT_UNAVAILABLE
        log.info("worker.metrics", host=host, port=metrics_port)
    return asyncio.run(_serve(settings, pools))


def start_metrics_server(host: str, port: int) -> None:
    """Prometheus on ``host:port`` (the worker's metrics need no key: loopback unless the operator says
    otherwise, TOKENPOOL_WORKER_METRICS_HOST). A daemon thread serving the default registry, where the
    refill metrics, TOME client metrics and pool gauges all live. OSError when the address is taken."""
    start_http_server(port, addr=host)


async def _serve(settings: Settings, pools: list[str] | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop, sig)
    alerter = Alerter(settings)
    fence_required: list[str] = []
    try:
        async with (emf_reporting(settings, WORKER_FIGURES, process="worker"),
                    bootstrap.open_refill(settings) as deps):
            watch = asyncio.create_task(_watch_restore_epoch(settings, stop, fence_required), name="restore-epoch")
            registered = {program.name for program in await deps.programs.registered()}
            if unknown := [name for name in pools or [] if name not in registered]:
                message = (f"not registered: {', '.join(repr(name) for name in unknown)} "
                           "(tokenpool program add, or drop it from --pool / TOKENPOOL_WORKER_POOLS)")
                log.error("worker.unknown_programs", programs=unknown)
                print(f"refused: {message}", file=sys.stderr)  # the one line an operator reads
                return EXIT_UNKNOWN_PROGRAM
            worker = RefillWorker(deps, pools, alerter=alerter, stop=stop)
            running = asyncio.create_task(worker.run(), name="refill-worker")
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            # On stop, the batches in flight may finish within the grace period; past it they are
            # cancelled, which is safe: each is journaled and the next run completes it.
            done, _ = await asyncio.wait({running}, timeout=settings.worker_stop_grace_s)
            if not done:
                log.warning("worker.grace_expired", grace_s=settings.worker_stop_grace_s)
                running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            stopping.cancel()
            watch.cancel()
    except RestoreFenceRequired as refused:  # at start (bootstrap.open_refill)
        fence_required.append(str(refused))
    finally:
        await alerter.aclose()
    if fence_required:
        log.error("worker.restore_fence_required", reason=fence_required[0])
        print(f"refused: {fence_required[0]}", file=sys.stderr)  # the one line an operator reads
        return EXIT_RESTORE_FENCE_REQUIRED
    return 0


async def _watch_restore_epoch(settings: Settings, stop: asyncio.Event, fence_required: list[str]) -> None:
    """Advances the restore epoch every TOKENPOOL_RESTORE_EPOCH_INTERVAL_S (when detection is on); a database
    restored under the running worker stops it (it would finish journaled batches of the restored point)."""
    if settings.restore_epoch_file is None:
        return
    while not stop.is_set():
        await asyncio.sleep(settings.restore_epoch_interval_s)
        try:
            await asyncio.to_thread(bootstrap.advance_restore_epoch, settings)
        except RestoreFenceRequired as refused:
            fence_required.append(str(refused))
            stop.set()
            return
        except Exception as error:  # database unreachable: checked again next time
            log.warning("worker.restore_epoch_unchecked", error_type=type(error).__name__)


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("worker.stopping", signal=sig.name)
    stop.set()
