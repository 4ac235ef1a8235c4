"""Pool health (LOW / CRITICAL / EMPTY) and its alerts: log, SNS on moto's server, a local webhook."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest
from prometheus_client import REGISTRY

from tests.factories import make_pairs
from tests.fixtures.moto import running_moto_server
from tokenpool.monitoring.alerts import Alerter
from tokenpool.monitoring.health import HealthStatus, check_pool_health

POOL = "default"


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's standalone server, a real process (tests.fixtures.moto)."""
    with running_moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture
def sns_topic(moto_server: str) -> Iterator[tuple[str, Any, str]]:
    """A topic on the moto server with an SQS queue subscribed, to read published alerts back."""
    sns = boto3.client("sns", endpoint_url=moto_server, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    name = f"tokenpool-alerts-{uuid.uuid4().hex[:8]}"
    topic_arn = sns.create_topic(Name=name)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn,
                  Attributes={"RawMessageDelivery": "true"})
    return topic_arn, sqs, queue_url


def _received(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    return [json.loads(message["Body"]) for message in messages]


async def _fill(store, n: int) -> None:
    if n:
        await store.add_pairs(POOL, make_pairs(n), uuid.uuid4())


async def _consume(store, n: int) -> None:
    for i in range(n):
        reservation = await store.reserve(POOL, 30)
        await store.commit(reservation.reservation_id, f"card-{i}-{uuid.uuid4().hex[:6]}")


@pytest.mark.parametrize(
    ("available", "expected"),
    [(100, HealthStatus.OK), (19, HealthStatus.LOW), (4, HealthStatus.CRITICAL), (0, HealthStatus.EMPTY)],
)
async def test_health_reads_ok_low_critical_and_empty_from_the_share_of_the_target(
    settings, backend, store, available, expected
):
    config = settings.model_copy(update={"refill_target": 100})
    await _fill(store, available)
    health = await check_pool_health(store, backend.samples, config, POOL)
    assert health.status is expected
    assert health.available == available
    assert health.hours_left is None  # no consumption measured yet
    assert REGISTRY.get_sample_value("tokenpool_pool_hours_left", {"pool": POOL}) == math.inf  # never stale


async def test_few_hours_left_at_the_current_rate_reads_low_even_with_a_large_share(
    settings, database_url, backend, store
):
    # 80 of a target of 100 available, but 20 consumed in the last hour: 4 hours left < 6.
    config = settings.model_copy(update={"refill_target": 100, "refill_sample_min_interval_s": 0})
    await _fill(store, 100)
    await _consume(store, 20)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO pool_level_samples (pool, sampled_at, consumed, available) "
                     "VALUES (%s, now() - interval '1 hour', 0, 100)", (POOL,))
    health = await check_pool_health(store, backend.samples, config, POOL)
    assert health.status is HealthStatus.LOW
    assert round(health.consumption_per_hour or 0) == 20
    assert health.hours_left is not None
    assert round(health.hours_left) == 4
    assert health.as_dict()["used"] == 20


async def test_an_alert_reaches_sns_on_the_moto_server_and_the_webhook_once_per_change(
    settings, backend, store, sns_topic, webhook, moto_server
):
    topic_arn, sqs, queue_url = sns_topic
    hook_url, hook_received = webhook
    config = settings.model_copy(update={
        "refill_target": 100, "alert_sns_topic_arn": topic_arn, "alert_sns_endpoint_url": moto_server,
        "alert_webhook_url": hook_url, "alert_timeout_s": 2.0,
    })
    alerter = Alerter(config)
    journal = backend.samples

    async def check() -> object:
        return await alerter.on_health(backend.samples, await check_pool_health(store, journal, config, POOL))

    try:
        await _fill(store, 10)  # LOW
        first = await check()
        again = await check()  # still LOW: no second alert
        await _fill(store, 100)  # OK again: a recovery notice
        recovered = await check()
        steady = await check()
    finally:
        await alerter.aclose()

    assert first is not None
    assert again is None
    assert recovered is not None
    assert steady is None
    sns_messages = _received(sqs, queue_url)
    assert [(m["status"], m["previous_status"]) for m in sns_messages] == [("LOW", None), ("OK", "LOW")]
    assert sns_messages[0]["health"]["available"] == 10
    assert [(m["status"], m["previous_status"]) for m in hook_received] == [("LOW", None), ("OK", "LOW")]
    assert "is LOW" in hook_received[0]["text"]


async def test_a_healthy_pool_checked_for_the_first_time_sends_nothing(settings, backend, store, webhook):
    hook_url, hook_received = webhook
    config = settings.model_copy(update={"refill_target": 10, "alert_webhook_url": hook_url})
    await _fill(store, 10)
    alerter = Alerter(config)
    try:
        sent = await alerter.on_health(backend.samples, await check_pool_health(store, backend.samples, config, POOL))
    finally:
        await alerter.aclose()
    assert sent is None
    assert hook_received == []


async def test_a_failing_webhook_is_logged_and_counted_without_failing_the_check(settings, backend, store):
    from tokenpool.observability.metrics import POOL_ALERTS

    config = settings.model_copy(update={"refill_target": 100, "alert_webhook_url": "http://127.0.0.1:9/nothing",
                                         "alert_timeout_s": 0.5})
    before = POOL_ALERTS.labels("webhook", "failed")._value.get()
    alerter = Alerter(config)
    try:
        sent = await alerter.on_health(backend.samples, await check_pool_health(store, backend.samples, config, POOL))
    finally:
        await alerter.aclose()
    assert sent is not None
    assert sent.status is HealthStatus.EMPTY
    assert POOL_ALERTS.labels("webhook", "failed")._value.get() == before + 1
