"""``tokenpool worker``: the refill worker as a process (signals, Prometheus port, graceful stop)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from prometheus_client import start_http_server

from tokenpool import bootstrap
from tokenpool.db.retention import retention_policy
from tokenpool.monitoring.alerts import Alerter, alert_channels
from tokenpool.observability.logging import get_logger
from tokenpool.observability.metrics import initialise_metrics
from tokenpool.refill.worker import RefillWorker
from tokenpool.settings import Settings

log = get_logger(__name__)


def run_worker(settings: Settings, pools: list[str], metrics_port: int) -> int:
    # Before the first scrape, and before the start-up refill counts anything.
    initialise_metrics(pools=pools, refills=True, alert_channels=alert_channels(settings),
                       pruned_tables=retention_policy(settings))
    if metrics_port:
        # A daemon thread serving the default registry; the refill metrics, TOME client metrics and pool
        # gauges all live there.
        start_http_server(metrics_port)
        log.info("worker.metrics", port=metrics_port)
    asyncio.run(_serve(settings, pools))
    return 0


async def _serve(settings: Settings, pools: list[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop, sig)
    alerter = Alerter(settings)
    try:
        async with bootstrap.open_refill(settings) as deps:
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
    finally:
        await alerter.aclose()


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("worker.stopping", signal=sig.name)
    stop.set()
