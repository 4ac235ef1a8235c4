"""The API's and the worker's key figures as CloudWatch EMF lines, every ``TOKENPOOL_EMF_INTERVAL_S``.

The figures are read from the process's Prometheus registry, so Prometheus and CloudWatch show the same
numbers under the same names (a counter by its family name, without ``_total``; the label names are
the dimension names; the Lambda's own documents, refill/reporting.py, follow the same rule):

* a counter becomes its increase since the previous report (a ``Count`` datapoint: CloudWatch's Sum
  over any period is then the number of events in it, summed over every task that reports it);
* a gauge is reported as it stands (NaN and infinities are skipped: EMF takes finite numbers only);
* a histogram becomes ``<name>_count`` and ``<name>_sum`` (increases: their ratio is the exact mean over
  all tasks) and, where asked, ``<name>_p50`` / ``<name>_p99`` estimated from this process's bucket
  increases as Prometheus' ``histogram_quantile`` does. A percentile cannot be added up across tasks:
  read the highest task's p99 (statistic Maximum) as an upper bound, the mean from sum/count.

On ECS the lines go to stdout, the awslogs driver sends them to CloudWatch Logs, and CloudWatch Logs
extracts the metrics (no agent). The last partial interval is reported when the process stops, so a
task that is replaced loses no counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric as PrometheusFamily

from tokenpool.aws.emf import Metric, MetricDocument, emit
from tokenpool.observability.logging import get_logger
from tokenpool.settings import Settings

log = get_logger(__name__)

# EMF: at most 100 metrics in one directive.
MAX_METRICS_PER_DOCUMENT = 100

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Figure:
    """One Prometheus family to report; ``keep`` filters its label sets (e.g. the routes worth a metric)."""

    family: str
    unit: str = "Count"
    quantiles: tuple[float, ...] = ()
    keep: Callable[[dict[str, str]], bool] | None = None


def _card_api_routes(labels: dict[str, str]) -> bool:
    # The API's own routes; probes (/readyz every few seconds from the load balancer) and unmatched paths
    # would add metrics that nobody reads (each dimension combination is a billed custom metric).
    return labels.get("route", "").startswith("/v1/")


# What `tokenpool serve` reports: card rate by program and token source (pool or TOME), request latency,
# problems by stable code, TOME calls made and avoided, detokenize sources, the breaker. Pool levels are
# not here: the API process only refreshes them when scraped; the worker (or the Lambda) reports them.
SERVICE_FIGURES: tuple[Figure, ...] = (
    Figure("tokenpool_cards_created"),
    Figure("tokenpool_card_idempotent_replays"),
    Figure("tokenpool_pool_reservations"),
    Figure("tokenpool_http_request_duration_seconds", "Seconds", quantiles=(0.5, 0.99), keep=_card_api_routes),
    Figure("tokenpool_http_problems"),
    Figure("tokenpool_tome_calls_avoided"),
    Figure("tokenpool_tome_requests"),
    Figure("tokenpool_detokenized_refs"),
    Figure("tokenpool_tome_breaker_state", "None"),
)

# What `tokenpool worker` reports: pool levels and health by program (polled every TOKENPOOL_WORKER_POLL_S),
# its refill runs under the Lambda's names and dimensions (so one alarm watches either runtime), TOME
# calls, the janitor, alert deliveries and the database housekeeping.
WORKER_FIGURES: tuple[Figure, ...] = (
    Figure("tokenpool_pool_pairs"),
    Figure("tokenpool_pool_health", "None"),
    Figure("tokenpool_pool_hours_left", "None"),
    Figure("tokenpool_refill_runs"),
    Figure("tokenpool_refill_pairs_added"),
    Figure("tokenpool_refill_tome_requests"),
    Figure("tokenpool_refill_duration_seconds", "Seconds"),
    Figure("tokenpool_pool_leases_expired"),
    Figure("tokenpool_pool_alerts"),
    Figure("tokenpool_tome_requests"),
    Figure("tokenpool_tome_breaker_state", "None"),
    Figure("tokenpool_rows_pruned"),
    Figure("tokenpool_db_oldest_transaction_seconds", "Seconds"),
)


def quantile_name(family: str, quantile: float) -> str:
    """``tokenpool_x_seconds`` and 0.99 -> ``tokenpool_x_seconds_p99`` (0.999 -> ``_p99_9``)."""
    return f"{family}_p{format(quantile * 100, 'g').replace('.', '_')}"


def bucket_quantile(quantile: float, buckets: list[tuple[float, float]]) -> float | None:
    """The quantile of observations counted in cumulative ``(upper bound, count)`` buckets, the last
    +Inf, interpolated linearly inside its bucket (Prometheus' ``histogram_quantile``)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = quantile * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in buckets:
        if count >= rank:
            if math.isinf(upper_bound):  # beyond the highest finite bound: that bound is all we know
                return lower_bound
            if count == lower_count:
                return upper_bound
            return lower_bound + (upper_bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = upper_bound, count
    return lower_bound


class RegistryFigures:
    """Turns the registry's current values into EMF documents, counters as increases since the last call."""

    def __init__(self, figures: Iterable[Figure], registry: CollectorRegistry = REGISTRY) -> None:
        self._figures = {figure.family: figure for figure in figures}
        self._registry = registry
        self._previous: dict[tuple[str, Labels], float] = {}

    @property
    def families(self) -> set[str]:
        return set(self._figures)

    def documents(self, properties: dict[str, Any] | None = None) -> list[MetricDocument]:
        grouped: dict[Labels, list[Metric]] = {}
        for family in self._registry.collect():
            figure = self._figures.get(family.name)
            if figure is None:
                continue
            if family.type == "counter":
                self._counter(family, figure, grouped)
            elif family.type == "gauge":
                self._gauge(family, figure, grouped)
            elif family.type == "histogram":
                self._histogram(family, figure, grouped)
        documents = []
        for labels, metrics in grouped.items():
            for start in range(0, len(metrics), MAX_METRICS_PER_DOCUMENT):
                chunk = metrics[start:start + MAX_METRICS_PER_DOCUMENT]
                documents.append(MetricDocument(dict(labels), chunk, dict(properties or {})))
        return documents

    def _counter(self, family: PrometheusFamily, figure: Figure, grouped: dict[Labels, list[Metric]]) -> None:
        for sample in family.samples:
            if sample.name == f"{family.name}_total" and _kept(figure, sample.labels):
                labels = _labels(sample.labels)
                value = self._increase(sample.name, labels, sample.value)
                grouped.setdefault(labels, []).append(Metric(family.name, _number(value), figure.unit))

    def _gauge(self, family: PrometheusFamily, figure: Figure, grouped: dict[Labels, list[Metric]]) -> None:
        for sample in family.samples:
            if sample.name == family.name and math.isfinite(sample.value) and _kept(figure, sample.labels):
                grouped.setdefault(_labels(sample.labels), []).append(
                    Metric(family.name, _number(sample.value), figure.unit))

    def _histogram(self, family: PrometheusFamily, figure: Figure, grouped: dict[Labels, list[Metric]]) -> None:
        buckets: dict[Labels, list[tuple[float, float]]] = {}
        totals: dict[Labels, dict[str, float]] = {}
        for sample in family.samples:
            if not _kept(figure, sample.labels):
                continue
            if sample.name == f"{family.name}_bucket":
                le = sample.labels["le"]
                labels = _labels({k: v for k, v in sample.labels.items() if k != "le"})
                increase = self._increase(f"{sample.name}:{le}", labels, sample.value)
                buckets.setdefault(labels, []).append((float(le), increase))
            elif sample.name in (f"{family.name}_count", f"{family.name}_sum"):
                labels = _labels(sample.labels)
                totals.setdefault(labels, {})[sample.name] = self._increase(sample.name, labels, sample.value)
        for labels, total in totals.items():
            count = total.get(f"{family.name}_count", 0.0)
            metrics = grouped.setdefault(labels, [])
            metrics.append(Metric(f"{family.name}_count", _number(count), "Count"))
            metrics.append(Metric(f"{family.name}_sum", _number(total.get(f"{family.name}_sum", 0.0)), figure.unit))
            if count <= 0:
                continue  # no observation in the interval: no percentile to report
            ordered = sorted(buckets.get(labels, []))
            for quantile in figure.quantiles:
                value = bucket_quantile(quantile, ordered)
                if value is not None:
                    metrics.append(Metric(quantile_name(family.name, quantile), _number(value), figure.unit))

    def _increase(self, name: str, labels: Labels, value: float) -> float:
        key = (name, labels)
        previous = self._previous.get(key, 0.0)
        self._previous[key] = value
        # A counter only falls when its process restarted, and then this object is new as well.
        return value - previous if value >= previous else value


def _kept(figure: Figure, labels: dict[str, str]) -> bool:
    return figure.keep is None or figure.keep(labels)


def _labels(labels: dict[str, str]) -> Labels:
    # CloudWatch refuses an empty dimension value.
    return tuple(sorted((name, value or "-") for name, value in labels.items()))


def _number(value: float) -> float:
    return int(value) if float(value).is_integer() else round(value, 6)


class EmfReporter:
    """Prints one batch of EMF lines per interval (and a last one on stop)."""

    def __init__(self, namespace: str, interval_s: float, figures: Iterable[Figure], *, process: str,
                 registry: CollectorRegistry = REGISTRY, out: TextIO | None = None) -> None:
        self.namespace = namespace
        self.interval_s = interval_s
        self.process = process
        self._figures = RegistryFigures(figures, registry)
        self._out = out

    def flush(self) -> int:
        """Prints the documents now; returns how many lines (0 if stdout failed: never raises)."""
        try:
            documents = self._figures.documents({"process": self.process})
            return emit(self.namespace, documents, self._out)
        except Exception as exc:  # a metrics report must never stop the API or the worker
            log.warning("emf.report_failed", process=self.process, error=f"{type(exc).__name__}: {exc}")
            return 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.flush()


@asynccontextmanager
async def emf_reporting(settings: Settings, figures: Iterable[Figure], *, process: str,
                        out: TextIO | None = None) -> AsyncIterator[EmfReporter | None]:
    """Reports every ``settings.emf_interval_s`` while the block runs (nothing when it is 0)."""
    if settings.emf_interval_s <= 0:
        yield None
        return
    reporter = EmfReporter(settings.emf_namespace, settings.emf_interval_s, figures, process=process, out=out)
    task = asyncio.create_task(reporter.run(), name=f"emf-report-{process}")
    log.info("emf.reporting", process=process, interval_s=settings.emf_interval_s, namespace=settings.emf_namespace)
    try:
        yield reporter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        reporter.flush()
