"""The Lambda's EMF documents use the Prometheus metric names and one dimension set each."""

from __future__ import annotations

import json
import uuid

from prometheus_client import REGISTRY

from tokenpool.aws.emf import emit, serialize
from tokenpool.refill.model import Outcome, RefillPlan, RefillResult
from tokenpool.refill.reporting import emf_documents


def _result() -> RefillResult:
    return RefillResult(run_id=uuid.uuid4(), pool="p1", outcome=Outcome.SUCCEEDED, added=2_500, tome_requests=2,
                        duration_s=1.5)


def test_every_emf_metric_name_is_a_prometheus_metric_family():
    import tokenpool.observability.metrics  # noqa: F401  (registers the families)

    families = {metric.name for metric in REGISTRY.collect()}
    documents = emf_documents(_result(), {"available": 10_000, "reserved": 3})
    names = {metric.name for document in documents for metric in document.metrics}
    assert names == {"tokenpool_refill_pairs_added", "tokenpool_refill_tome_requests",
                     "tokenpool_refill_duration_seconds", "tokenpool_refill_runs", "tokenpool_pool_pairs"}
    assert names <= families


def test_a_planned_run_also_reports_what_was_left_when_it_started():
    result = _result()
    result.plan = RefillPlan(available=40, configured_target=100, forecast=0, consumption_per_hour=None, count=60,
                             target=100)
    (drained,) = [d for d in emf_documents(result, None)
                  if any(m.name == "tokenpool_pool_available_before_refill" for m in d.metrics)]
    assert (drained.dimensions, drained.metrics[0].value) == ({"pool": "p1"}, 40)


def test_each_document_carries_its_dimensions_as_root_members():
    document = emf_documents(_result(), None)[1]
    line = json.loads(serialize("tokenpool", document)[0])
    assert line["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["pool", "outcome"]]
    assert (line["pool"], line["outcome"], line["tokenpool_refill_runs"]) == ("p1", "succeeded", 1)


def test_emit_writes_one_json_line_per_document(capsys):
    assert emit("tokenpool", emf_documents(_result(), {"available": 1})) == 3
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)["_aws"] for line in lines)


def test_alert_deliveries_are_counted_per_pool_channel_and_outcome():
    from tokenpool.monitoring.alerts import Alert, Delivery
    from tokenpool.monitoring.health import HealthStatus, PoolHealth
    from tokenpool.refill.reporting import alert_documents

    health = PoolHealth(pool="p1", status=HealthStatus.CRITICAL, target=100, counts={"available": 3},
                        consumption_per_hour=None, hours_left=None)
    deliveries = [Delivery(Alert("p1", HealthStatus.CRITICAL, HealthStatus.LOW, health), ("log", "sns"), ()),
                  Delivery(Alert("p1", HealthStatus.CRITICAL, None, health), (), ("webhook",))]
    documents = alert_documents(deliveries)
    assert [(d.dimensions, [(m.name, m.value) for m in d.metrics]) for d in documents] == [
        ({"pool": "p1", "channel": "log", "outcome": "sent"}, [("tokenpool_pool_alerts", 1)]),
        ({"pool": "p1", "channel": "sns", "outcome": "sent"}, [("tokenpool_pool_alerts", 1)]),
        ({"pool": "p1", "channel": "webhook", "outcome": "failed"}, [("tokenpool_pool_alerts", 1)]),
    ]
    assert alert_documents([]) == []
    line = json.loads(serialize("tokenpool", documents[2])[0])
    assert line["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["pool", "channel", "outcome"]]
