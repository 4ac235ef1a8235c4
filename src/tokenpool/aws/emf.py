"""CloudWatch Embedded Metric Format: metric documents printed to stdout, one JSON line each.

In Lambda, stdout goes to CloudWatch Logs, which extracts the metrics: no API call, no agent, no
latency added to the invocation. Serialisation is aws-embedded-metrics' own (LogSerializer); we only
choose the sink (stdout, whatever environment detection would say) so tests and local runs print
exactly what the Lambda prints.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from aws_embedded_metrics.logger.metrics_context import MetricsContext
from aws_embedded_metrics.serializers.log_serializer import LogSerializer


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    value: float
    unit: str = "Count"


@dataclass(frozen=True, slots=True)
class MetricDocument:
    """Metrics that share one dimension set (EMF applies a document's dimensions to all its metrics)."""

    dimensions: dict[str, str]
    metrics: list[Metric]
    properties: dict[str, Any] = field(default_factory=dict)


def serialize(namespace: str, document: MetricDocument) -> list[str]:
    context = MetricsContext.empty()
    context.namespace = namespace
    context.set_dimensions([dict(document.dimensions)], use_default=False)
    for metric in document.metrics:
        context.put_metric(metric.name, metric.value, metric.unit)
    for key, value in document.properties.items():
        context.set_property(key, value)
    return LogSerializer.serialize(context)


def emit(namespace: str, documents: Iterable[MetricDocument], out: TextIO | None = None) -> int:
    """Prints the documents as EMF lines; returns how many lines."""
    stream = out or sys.stdout
    lines = 0
    for document in documents:
        for line in serialize(namespace, document):
            stream.write(line + "\n")
            lines += 1
    stream.flush()
    return lines
