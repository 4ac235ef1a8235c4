"""A run's figures, and the health alerts sent after it, as CloudWatch EMF documents, under the same names
and dimensions as the Prometheus metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenpool.aws.emf import Metric, MetricDocument
from tokenpool.monitoring.alerts import Delivery
from tokenpool.refill.model import RefillResult


def emf_documents(result: RefillResult, pool_counts: dict[str, int] | None) -> list[MetricDocument]:
    """One document per dimension set: EMF applies a document's dimensions to all of its metrics."""
    props = {"run_id": str(result.run_id), "outcome": result.outcome.value}
    documents = [
        MetricDocument(
            {"pool": result.pool},
            [
                Metric("tokenpool_refill_pairs_added", result.added),
                Metric("tokenpool_refill_tome_requests", result.tome_requests),
                Metric("tokenpool_refill_duration_seconds", round(result.duration_s, 3), "Seconds"),
            ],
            props,
        ),
        MetricDocument({"pool": result.pool, "outcome": result.outcome.value},
                       [Metric("tokenpool_refill_runs", 1)], props),
    ]
    if result.plan is not None:
        # The low point of the pool between two scheduled runs: the counts below are taken after the
        # refill, and so are at the target unless it failed. An hourly Lambda sees no other low point.
        documents.append(MetricDocument({"pool": result.pool},
                                        [Metric("tokenpool_pool_available_before_refill", result.plan.available)]))
    for status, count in (pool_counts or {}).items():
        documents.append(
            MetricDocument({"pool": result.pool, "status": status}, [Metric("tokenpool_pool_pairs", count)])
        )
    return documents


def alert_documents(deliveries: Iterable[Delivery]) -> list[MetricDocument]:
    """``tokenpool_pool_alerts`` per pool, channel and outcome (sent, failed): the Lambda has no scrape
    endpoint, so its alert deliveries are counted here. Nothing when there was nothing to tell."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for delivery in deliveries:
        for outcome, channels in (("sent", delivery.delivered), ("failed", delivery.failed)):
            for channel in channels:
                counts[delivery.alert.pool, channel, outcome] += 1
    return [MetricDocument({"pool": pool, "channel": channel, "outcome": outcome},
                           [Metric("tokenpool_pool_alerts", count)])
            for (pool, channel, outcome), count in sorted(counts.items())]
