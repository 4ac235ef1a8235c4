"""The API's and the worker's figures as EMF lines: valid documents, counters as increases, nothing lost."""

from __future__ import annotations

import asyncio
import io
import json
import math

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from tests.emf import emf_lines, metric_values, validate_emf
from tokenpool.aws.emf import emit
from tokenpool.aws.emf_reporter import (
    SERVICE_FIGURES,
    WORKER_FIGURES,
    EmfReporter,
    RegistryFigures,
    bucket_quantile,
    emf_reporting,
    quantile_name,
)
from tokenpool.observability import metrics as metrics_module  # noqa: F401  (registers every family)
from tokenpool.settings import Settings

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """The service's families, by the same names, in a registry of the test's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cards = Counter("tokenpool_cards_created", "", ["program", "token_source"], registry=self.registry)
        self.avoided = Counter("tokenpool_tome_calls_avoided", "", ["operation"], registry=self.registry)
        self.latency = Histogram("tokenpool_http_request_duration_seconds", "", ["route", "method"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.breaker = Gauge("tokenpool_tome_breaker_state", "", ["target"], registry=self.registry)
        self.other = Counter("tokenpool_not_a_figure", "", registry=self.registry)


def _lines(figures: RegistryFigures) -> list[dict[str, object]]:
    out = io.StringIO()
    emit("tokenpool", figures.documents({"process": "api"}), out)
    documents = emf_lines(out.getvalue())
    for document in documents:
        validate_emf(document)
    return documents


def test_every_figure_is_a_registered_family():
    families = {family.name: family.type for family in REGISTRY.collect()}
    for figure in (*SERVICE_FIGURES, *WORKER_FIGURES):
        assert figure.family in families, f"{figure.family} is not a Prometheus family"
        if figure.quantiles:
            assert families[figure.family] == "histogram", figure.family


def test_the_api_reports_cards_latency_and_tome_calls_but_no_pool_level():
    service = {figure.family for figure in SERVICE_FIGURES}
    assert {"tokenpool_cards_created", "tokenpool_http_request_duration_seconds", "tokenpool_tome_calls_avoided",
            "tokenpool_tome_requests"} <= service
    # The API refreshes pool gauges only when scraped: a stale level must not reach CloudWatch.
    assert not service & {"tokenpool_pool_pairs", "tokenpool_pool_health", "tokenpool_pool_hours_left"}
    worker = {figure.family for figure in WORKER_FIGURES}
    assert {"tokenpool_pool_pairs", "tokenpool_pool_health", "tokenpool_refill_runs"} <= worker


def test_counters_are_reported_as_their_increase_since_the_last_report():
    service = ServiceMetrics()
    figures = RegistryFigures(SERVICE_FIGURES, service.registry)
    service.cards.labels("gold", "pool").inc(3)
    service.cards.labels("gold", "tome").inc()
    first = _lines(figures)
    assert metric_values(first, "tokenpool_cards_created", program="gold", token_source="pool") == [3]
    assert metric_values(first, "tokenpool_cards_created", program="gold", token_source="tome") == [1]
    service.cards.labels("gold", "pool").inc(2)
    second = _lines(figures)
    assert metric_values(second, "tokenpool_cards_created", program="gold", token_source="pool") == [2]
    assert metric_values(second, "tokenpool_cards_created", program="gold", token_source="tome") == [0]
    assert all("tokenpool_not_a_figure" not in document for document in first + second)


def test_each_document_carries_one_dimension_set_named_after_the_labels():
    service = ServiceMetrics()
    service.cards.labels("gold", "pool").inc()
    service.avoided.labels("issue").inc(4)
    service.breaker.labels("tome").set(2)
    documents = _lines(RegistryFigures(SERVICE_FIGURES, service.registry))
    dimension_sets = sorted(sorted(d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]) for d in documents)
    assert dimension_sets == [["operation"], ["program", "token_source"], ["target"]]
    assert {document["process"] for document in documents} == {"api"}
    assert metric_values(documents, "tokenpool_tome_calls_avoided", operation="issue") == [4]
    assert metric_values(documents, "tokenpool_tome_breaker_state", target="tome") == [2]


def test_latency_is_reported_as_count_sum_and_percentiles_of_the_interval_for_api_routes_only():
    service = ServiceMetrics()
    figures = RegistryFigures(SERVICE_FIGURES, service.registry)
    for _ in range(98):
        service.latency.labels("/v1/cards", "POST").observe(0.004)
    service.latency.labels("/v1/cards", "POST").observe(0.2)
    service.latency.labels("/v1/cards", "POST").observe(0.2)
    service.latency.labels("/readyz", "GET").observe(0.001)
    documents = _lines(figures)
    where = {"route": "/v1/cards", "method": "POST"}
    assert metric_values(documents, "tokenpool_http_request_duration_seconds_count", **where) == [100]
    assert metric_values(documents, "tokenpool_http_request_duration_seconds_sum", **where) == [
        pytest.approx(98 * 0.004 + 0.4)]
    (p50,) = metric_values(documents, "tokenpool_http_request_duration_seconds_p50", **where)
    (p99,) = metric_values(documents, "tokenpool_http_request_duration_seconds_p99", **where)
    assert 0.0025 < p50 <= 0.005
    assert 0.1 < p99 <= 0.25
    assert not any(document.get("route") == "/readyz" for document in documents)
    # The next interval saw no request: counts of zero, and no percentile of nothing.
    quiet = _lines(figures)
    assert metric_values(quiet, "tokenpool_http_request_duration_seconds_count", **where) == [0]
    assert metric_values(quiet, "tokenpool_http_request_duration_seconds_p99", **where) == []


def test_gauges_that_are_not_finite_are_left_out():
    registry = CollectorRegistry()
    hours = Gauge("tokenpool_pool_hours_left", "", ["pool"], registry=registry)
    hours.labels("idle").set(math.inf)
    hours.labels("busy").set(2.5)
    oldest = Gauge("tokenpool_db_oldest_transaction_seconds", "", registry=registry)
    oldest.set(math.nan)
    documents = _lines(RegistryFigures(WORKER_FIGURES, registry))
    assert metric_values(documents, "tokenpool_pool_hours_left", pool="busy") == [2.5]
    assert metric_values(documents, "tokenpool_pool_hours_left", pool="idle") == []
    assert all("tokenpool_db_oldest_transaction_seconds" not in document for document in documents)


def test_the_worker_reports_refill_runs_under_the_lambdas_names_and_dimensions():
    registry = CollectorRegistry()
    runs = Counter("tokenpool_refill_runs", "", ["pool", "outcome"], registry=registry)
    pairs = Gauge("tokenpool_pool_pairs", "", ["pool", "status"], registry=registry)
    runs.labels("gold", "succeeded").inc()
    pairs.labels("gold", "available").set(9_000)
    documents = _lines(RegistryFigures(WORKER_FIGURES, registry))
    assert metric_values(documents, "tokenpool_refill_runs", pool="gold", outcome="succeeded") == [1]
    assert metric_values(documents, "tokenpool_pool_pairs", pool="gold", status="available") == [9_000]


@pytest.mark.parametrize(("quantile", "expected"), [(0.5, 0.5), (0.9, 0.9), (0.25, 0.25)])
def test_a_bucket_quantile_interpolates_inside_its_bucket(quantile, expected):
    # 100 observations spread evenly over (0, 1]: ten per 0.1-wide bucket.
    buckets = [(round(0.1 * i, 1), 10.0 * i) for i in range(1, 11)] + [(math.inf, 100.0)]
    assert bucket_quantile(quantile, buckets) == pytest.approx(expected)


def test_a_bucket_quantile_beyond_the_last_bound_is_that_bound_and_none_without_observations():
    assert bucket_quantile(0.99, [(0.1, 1.0), (math.inf, 10.0)]) == 0.1
    assert bucket_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert quantile_name("tokenpool_x_seconds", 0.99) == "tokenpool_x_seconds_p99"
    assert quantile_name("tokenpool_x_seconds", 0.999) == "tokenpool_x_seconds_p99_9"


async def test_reporting_is_off_at_interval_zero():
    out = io.StringIO()
    async with emf_reporting(Settings(emf_interval_s=0), SERVICE_FIGURES, process="api", out=out) as reporter:
        await asyncio.sleep(0)
    assert reporter is None
    assert out.getvalue() == ""


async def test_reporting_prints_every_interval_and_once_more_on_stop_losing_no_count():
    service = ServiceMetrics()
    out = io.StringIO()
    settings = Settings(emf_interval_s=0.05, emf_namespace="tokenpool-test")
    async with emf_reporting(settings, SERVICE_FIGURES, process="api", out=out) as reporter:
        assert reporter is not None
        reporter._figures = RegistryFigures(SERVICE_FIGURES, service.registry)  # the test's registry
        service.cards.labels("p", "pool").inc(5)
        await asyncio.sleep(0.2)
        service.cards.labels("p", "pool").inc(2)  # after the last periodic report: only the final one has it
    documents = emf_lines(out.getvalue())
    assert len(documents) >= 3
    for document in documents:
        validate_emf(document)
        assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "tokenpool-test"
    assert sum(metric_values(documents, "tokenpool_cards_created", program="p", token_source="pool")) == 7
    assert metric_values(documents, "tokenpool_cards_created", program="p", token_source="pool")[-1] == 2


def test_a_failing_stdout_never_stops_the_process():
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError("stdout closed")

    service = ServiceMetrics()
    service.cards.labels("p", "pool").inc()
    reporter = EmfReporter("tokenpool", 60, SERVICE_FIGURES, process="api", registry=service.registry, out=Broken())
    assert reporter.flush() == 0


def test_every_line_stays_well_under_the_log_drivers_16_kib_split():
    # Docker's awslogs driver splits a line above 16 KiB, and a split EMF line is no metric at all.
    service = ServiceMetrics()
    for program in range(50):
        service.cards.labels(f"program-{program:02d}", "pool").inc()
    out = io.StringIO()
    EmfReporter("tokenpool", 60, SERVICE_FIGURES, process="api", registry=service.registry, out=out).flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 50
    assert max(len(line.encode()) for line in lines) < 2_048
    assert all(json.loads(line)["_aws"] for line in lines)
