"""The Lambda handler, invoked as Lambda would: an EventBridge scheduled event and a context object.

Its EMF lines are validated against the Embedded Metric Format specification (tests/emf.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import jsonschema
import psycopg
import pytest
import structlog
from prometheus_client import REGISTRY

from tests.emf import emf_lines, validate_emf
from tests.fixtures.database import OWNER_URLS, register_program
from tests.fixtures.tome import FAST_TOME_SETTINGS
from tests.integration.refill_support import pool_tokens, refill_settings
from tokenpool import bootstrap
from tokenpool.db.queries import sql
from tokenpool.entrypoints import lambda_refill
from tokenpool.programs import UnknownProgram
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


def test_a_scheduled_event_refills_and_returns_a_json_summary_with_emf_metrics_on_stdout(
    lambda_env, database_url, tome, capsys
):
    result = lambda_refill.handler(SCHEDULED_EVENT, LambdaContext())
    out = capsys.readouterr().out

    assert json.loads(json.dumps(result)) == result  # JSON-serialisable as Lambda returns it
    assert (result["outcome"], result["added"], result["skipped"]) == ("succeeded", 30, [])
    assert [(run["pool"], run["outcome"], run["added"], run["health"]) for run in result["programs"]] == [
        ("default", "succeeded", 30, "OK")]
    assert sorted(pool_tokens(database_url, "default")) == sorted(tome.issued(lambda_env.tome_ns1))
    documents = emf_lines(out)
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
    second = lambda_refill.handler({**SCHEDULED_EVENT, "detail": {"pool": "default", "count": 5}}, LambdaContext())
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
    assert (result["outcome"], result["added"], result["skipped"]) == ("stopped", 0, ["default"])
    assert pool_tokens(database_url, "default") == []
    named = lambda_refill.handler({**SCHEDULED_EVENT, "pool": "default"}, context)
    capsys.readouterr()
    assert (named["pool"], named["outcome"], named["added"]) == ("default", "stopped", 0)


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
    assert (first["outcome"], first["programs"][0]["health"]) == ("succeeded", "OK")
    with psycopg.connect(database_url, autocommit=True) as conn:
        claim = {"pool": "default", "start": 0, "max_open": None}  # unowned claims, as a library caller's
        conn.execute(sql("reserve"), {**claim, "n": 2, "owners": [None] * 2, "lease_seconds": 0.01})  # lapse at once
        conn.execute(sql("reserve"), {**claim, "n": 28, "owners": [None] * 28, "lease_seconds": 600})  # pool empty
    time.sleep(0.05)
    tome.set_faults(outage=True)
    expired_before = REGISTRY.get_sample_value("tokenpool_pool_leases_expired_total") or 0.0

    second = lambda_refill.handler(SCHEDULED_EVENT, LambdaContext())
    capsys.readouterr()

    assert (second["outcome"], second["programs"][0]["health"]) == ("failed", "EMPTY")
    assert [alert["status"] for alert in received] == ["EMPTY"]
    with psycopg.connect(database_url) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM token_pool GROUP BY status").fetchall())
    assert statuses == {"EXPIRED": 2, "RESERVED": 28}
    assert REGISTRY.get_sample_value("tokenpool_pool_leases_expired_total") == expired_before + 2


def test_a_cold_start_reads_the_database_url_from_secrets_manager(lambda_env, database_url, moto_server,
                                                                  monkeypatch, capsys):
    # As the template deploys it: the function's environment names the secret, never the URL.
    secrets = boto3.client("secretsmanager", endpoint_url=moto_server, region_name="us-east-1")
    arn = secrets.create_secret(Name=f"tokenpool/{uuid.uuid4().hex}", SecretString=database_url)["ARN"]
    monkeypatch.delenv("TOKENPOOL_DATABASE_URL")
    monkeypatch.setenv("TOKENPOOL_DATABASE_URL_SECRET_ARN", arn)
    monkeypatch.setenv("TOKENPOOL_SECRETS_ENDPOINT_URL", moto_server)
    get_settings.cache_clear()
    bootstrap._secret_database_url.cache_clear()
    try:
        result = lambda_refill.handler(SCHEDULED_EVENT, LambdaContext())
    finally:
        bootstrap._secret_database_url.cache_clear()
    capsys.readouterr()
    assert (result["outcome"], result["added"]) == ("succeeded", 30)
    assert len(pool_tokens(database_url, "default")) == 30


def test_an_event_without_a_pool_refills_every_registered_program_to_its_own_target(
    lambda_env, database_url, tome, capsys
):
    register_program(database_url, "gold", refill_target=6, ns1=f"{lambda_env.tome_ns1}-gold",
                     ns2=f"{lambda_env.tome_ns2}-gold")
    register_program(database_url, "silver", refill_target=4)
    register_program(database_url, "gone")
    with psycopg.connect(OWNER_URLS[database_url], autocommit=True) as conn:
        conn.execute("UPDATE programs SET removed_at = now() WHERE name = 'gone'")

    result = lambda_refill.handler(SCHEDULED_EVENT, LambdaContext())
    documents = emf_lines(capsys.readouterr().out)

    assert (result["outcome"], result["added"], result["skipped"]) == ("succeeded", 40, [])
    assert {run["pool"]: (run["added"], run["target"], run["health"]) for run in result["programs"]} == {
        "default": (30, 30, "OK"), "gold": (6, 6, "OK"), "silver": (4, 4, "OK")}
    assert sorted(pool_tokens(database_url, "gold")) == sorted(tome.issued(f"{lambda_env.tome_ns1}-gold"))
    assert pool_tokens(database_url, "gone") == []
    assert {doc["pool"] for doc in documents} == {"default", "gold", "silver"}


def test_an_event_naming_an_unregistered_program_fails_the_invocation_and_asks_tome_nothing(
    lambda_env, database_url, tome, capsys
):
    before = tome.stats()["requests"]
    with pytest.raises(UnknownProgram):
        lambda_refill.handler({**SCHEDULED_EVENT, "detail": {"pool": "no-such-program"}}, LambdaContext())
    with pytest.raises(ValueError, match="pool"):
        lambda_refill.handler({**SCHEDULED_EVENT, "detail": {"count": 5}}, LambdaContext())
    capsys.readouterr()
    assert tome.stats()["requests"] == before
    assert pool_tokens(database_url, "no-such-program") == []


def _alert_counts(documents: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    return {(doc["channel"], doc["outcome"]): doc["tokenpool_pool_alerts"]
            for doc in documents if "tokenpool_pool_alerts" in doc}


def test_an_alert_the_invocation_could_not_deliver_is_counted_in_emf_and_sent_by_the_next_one(
    lambda_env, failing_webhook, monkeypatch, capsys
):
    monkeypatch.setenv("TOKENPOOL_ALERT_WEBHOOK_URL", failing_webhook.url)
    monkeypatch.setenv("TOKENPOOL_REFILL_TARGET", "100")
    get_settings.cache_clear()
    failing_webhook.fail_next = 1
    few = {**SCHEDULED_EVENT, "detail": {"pool": "default", "count": 1}}  # 1, 2, 3 of a target of 100: CRITICAL

    first = lambda_refill.handler(few, LambdaContext())
    first_documents = emf_lines(capsys.readouterr().out)
    second = lambda_refill.handler(few, LambdaContext())
    second_documents = emf_lines(capsys.readouterr().out)
    third = lambda_refill.handler(few, LambdaContext())
    third_documents = emf_lines(capsys.readouterr().out)

    assert [r["health"] for r in (first, second, third)] == ["CRITICAL"] * 3
    for document in first_documents + second_documents:
        validate_emf(document)
    assert _alert_counts(first_documents) == {("log", "sent"): 1, ("webhook", "failed"): 1}
    assert _alert_counts(second_documents) == {("webhook", "sent"): 1}
    assert _alert_counts(third_documents) == {}, "delivered: nothing more to tell"
    assert {doc["pool"] for doc in first_documents if "tokenpool_pool_alerts" in doc} == {"default"}
    assert [(alert["status"], alert["previous_status"]) for alert in failing_webhook.received] == [("CRITICAL", None)]
