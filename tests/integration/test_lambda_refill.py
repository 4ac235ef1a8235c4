"""The Lambda handler, invoked as Lambda would: an EventBridge scheduled event and a context object.

Its EMF lines are validated against a JSON Schema of the Embedded Metric Format specification
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html)
plus the two rules a schema cannot state: every dimension and every metric named in the directive is
a member of the root object (dimensions strings, metrics numbers).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import psycopg
import pytest
import structlog
from prometheus_client import REGISTRY

from tests.fixtures.tome import FAST_TOME_SETTINGS
from tests.integration.refill_support import pool_tokens, refill_settings
from tokenpool.db.queries import sql
from tokenpool.entrypoints import lambda_refill
from tokenpool.settings import get_settings

# The AWS documentation's sample of a scheduled event (EventBridge "Scheduled Event" detail-type).
SCHEDULED_EVENT: dict[str, Any] = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2015-10-08T16:53:06Z",
    "region": "us-east-1",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/my-scheduled-rule"],
    "detail": {},
}

CLOUDWATCH_UNITS = [
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
    "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
    "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
    "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
]

# The "_aws" envelope of the EMF specification.
EMF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "type": "object",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "properties": {
                "Timestamp": {"type": "integer", "minimum": 0},
                "CloudWatchMetrics": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["Namespace", "Dimensions", "Metrics"],
                        "properties": {
                            "Namespace": {"type": "string", "minLength": 1, "maxLength": 1024},
                            "Dimensions": {
                                "type": "array",
                                "items": {
                                    "type": "array",
                                    "items": {"type": "string", "minLength": 1, "maxLength": 250},
                                    "maxItems": 30,
                                },
                            },
                            "Metrics": {
                                "type": "array",
                                "maxItems": 100,
                                "items": {
                                    "type": "object",
                                    "required": ["Name"],
                                    "properties": {
                                        "Name": {"type": "string", "minLength": 1, "maxLength": 1024},
                                        "Unit": {"enum": CLOUDWATCH_UNITS},
                                        "StorageResolution": {"enum": [1, 60]},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


def validate_emf(document: dict[str, Any]) -> None:
    jsonschema.validate(document, EMF_SCHEMA)
    for directive in document["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for name in dimension_set:
                assert isinstance(document.get(name), str), f"dimension {name} is not a string member"
        for metric in directive["Metrics"]:
            value = document.get(metric["Name"])
            values = value if isinstance(value, list) else [value]
            assert values, f"metric {metric['Name']} is not a root member"
            assert all(isinstance(v, int | float) for v in values), f"metric {metric['Name']} is not a number"


@dataclass
class LambdaContext:
    """What the Python runtime passes as ``context`` (the attributes the docs list)."""

    function_name: str = "tokenpool-refill"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:tokenpool-refill"
    memory_limit_in_mb: int = 256
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/tokenpool-refill"
    log_stream_name: str = "2026/11/29/[$LATEST]abcdef"
    remaining_ms: int = 300_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def lambda_env(settings, tome, monkeypatch) -> Iterator[Any]:
    config = refill_settings(settings, tome, refill_target=30)
    monkeypatch.setenv("TOKENPOOL_DATABASE_URL", config.database_url.get_secret_value())
    for name in ("tome_url", "tome_ns1", "tome_ns2", "refill_target", "refill_batch_size", "refill_tome_max_rps"):
        monkeypatch.setenv(f"TOKENPOOL_{name.upper()}", str(getattr(config, name)))
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "tokenpool-refill")
    # The handler configures logging once per container; each test is a fresh "container" here, and the
    # configuration (bound to this test's captured stderr) must not outlive it.
    monkeypatch.setattr(lambda_refill, "_logging_configured", False)
    saved_logging = structlog.get_config()
    get_settings.cache_clear()
    yield config
    structlog.configure(**saved_logging)
    loop = lambda_refill._event_loop()
    loop.run_until_complete(lambda_refill.close_resources())
    loop.close()
    get_settings.cache_clear()


def _emf_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{") and '"_aws"' in line]


def test_a_scheduled_event_refills_and_returns_a_json_summary_with_emf_metrics_on_stdout(
    lambda_env, database_url, tome, capsys
):
    result = lambda_refill.handler(SCHEDULED_EVENT, LambdaContext())
    out = capsys.readouterr().out

    assert json.loads(json.dumps(result)) == result  # JSON-serialisable as Lambda returns it
    assert (result["outcome"], result["added"], result["pool"]) == ("succeeded", 30, "default")
    assert sorted(pool_tokens(database_url, "default")) == sorted(tome.issued(lambda_env.tome_ns1))
    documents = _emf_lines(out)
    assert documents, "no EMF line on stdout"
    for document in documents:
        validate_emf(document)
    metrics = {m["Name"]: doc[m["Name"]] for doc in documents for d in doc["_aws"]["CloudWatchMetrics"]
               for m in d["Metrics"]}
    assert metrics["tokenpool_refill_pairs_added"] == 30
    assert metrics["tokenpool_refill_runs"] == 1
    assert metrics["tokenpool_refill_tome_requests"] == result["tome_requests"] > 0
    assert {doc.get("status") for doc in documents if "status" in doc} == {"available", "reserved", "used", "expired"}
    assert all(doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "tokenpool" for doc in documents)


def test_a_warm_invocation_reuses_the_database_connection_and_tome_client(lambda_env, capsys):
    lambda_refill.handler(SCHEDULED_EVENT, LambdaContext())
    resources = lambda_refill._resources
    assert resources is not None
    opened_at_cold_start = resources[0].db.connections.get_stats()["connections_num"]
    second = lambda_refill.handler({**SCHEDULED_EVENT, "detail": {"count": 5}}, LambdaContext())
    assert lambda_refill._resources is resources
    assert resources[0].db.connections.get_stats()["connections_num"] == opened_at_cold_start  # none opened since
    assert (second["outcome"], second["added"]) == ("succeeded", 5)
    capsys.readouterr()


def test_emf_validation_rejects_a_metric_missing_from_the_root_object():
    bad = {"_aws": {"Timestamp": 1, "CloudWatchMetrics": [
        {"Namespace": "tokenpool", "Dimensions": [["pool"]], "Metrics": [{"Name": "x", "Unit": "Count"}]}]},
        "pool": "default"}
    with pytest.raises(AssertionError):
        validate_emf(bad)
    with pytest.raises(jsonschema.ValidationError):
        validate_emf({"_aws": {"Timestamp": "now", "CloudWatchMetrics": []}})


def test_an_invocation_near_its_deadline_starts_no_batch_and_reports_stopped(lambda_env, database_url, capsys):
    context = LambdaContext(remaining_ms=int(lambda_refill.DEADLINE_MARGIN_S * 1000))
    result = lambda_refill.handler(SCHEDULED_EVENT, context)
    capsys.readouterr()
    assert (result["outcome"], result["added"]) == ("stopped", 0)
    assert pool_tokens(database_url, "default") == []


def test_an_invocation_also_quarantines_lapsed_reservations_and_alerts_when_it_cannot_fill(
    lambda_env, database_url, tome, webhook, monkeypatch, capsys
):
    # A Lambda-only deployment has no worker: the invocation does its janitor and health duties too.
    url, received = webhook
    monkeypatch.setenv("TOKENPOOL_ALERT_WEBHOOK_URL", url)
    for name, value in FAST_TOME_SETTINGS.items():
        monkeypatch.setenv(f"TOKENPOOL_{name.upper()}", str(value))
    get_settings.cache_clear()
    first = lambda_refill.handler(SCHEDULED_EVENT, LambdaContext())
    assert (first["outcome"], first["health"]) == ("succeeded", "OK")
    with psycopg.connect(database_url, autocommit=True) as conn:
        claim = {"pool": "default", "start": 0, "max_open": None}  # unowned claims, as a library caller's
        conn.execute(sql("reserve"), {**claim, "n": 2, "owners": [None] * 2, "lease_seconds": 0.01})  # lapse at once
        conn.execute(sql("reserve"), {**claim, "n": 28, "owners": [None] * 28, "lease_seconds": 600})  # pool empty
    time.sleep(0.05)
    tome.set_faults(outage=True)
    expired_before = REGISTRY.get_sample_value("tokenpool_pool_leases_expired_total") or 0.0

    second = lambda_refill.handler(SCHEDULED_EVENT, LambdaContext())
    capsys.readouterr()

    assert (second["outcome"], second["health"]) == ("failed", "EMPTY")
    assert [alert["status"] for alert in received] == ["EMPTY"]
    with psycopg.connect(database_url) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM token_pool GROUP BY status").fetchall())
    assert statuses == {"EXPIRED": 2, "RESERVED": 28}
    assert REGISTRY.get_sample_value("tokenpool_pool_leases_expired_total") == expired_before + 2
