"""Pool health (LOW / CRITICAL / EMPTY) and its alerts: log, SNS on moto's server, a local webhook."""

from __future__ import annotations

import asyncio
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
from tests.fixtures.database import with_database
from tests.fixtures.moto import running_moto_server
from tokenpool.db import migrate
from tokenpool.monitoring.alerts import Alerter, Delivery
from tokenpool.monitoring.health import HealthStatus, check_pool_health

POOL = "default"
DELIVERIES_MIGRATION = 11  # 0011_alert_deliveries.sql


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

    assert [(d.alert.status, d.delivered, d.failed) for d in first] == [
        (HealthStatus.LOW, ("log", "sns", "webhook"), ())]
    assert again == []
    assert [(d.alert.previous, d.delivered) for d in recovered] == [(HealthStatus.LOW, ("log", "sns", "webhook"))]
    assert steady == []
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
    assert sent == []
    assert hook_received == []


async def test_a_failing_webhook_is_logged_and_counted_without_failing_the_check(settings, backend, store):
    from tokenpool.observability.metrics import POOL_ALERTS

    config = settings.model_copy(update={"refill_target": 100, "alert_webhook_url": "http://127.0.0.1:9/nothing",
                                         "alert_timeout_s": 0.5})
    before = POOL_ALERTS.labels(POOL, "webhook", "failed")._value.get()
    alerter = Alerter(config)
    try:
        sent = await alerter.on_health(backend.samples, await check_pool_health(store, backend.samples, config, POOL))
    finally:
        await alerter.aclose()
    assert [(d.alert.status, d.delivered, d.failed) for d in sent] == [(HealthStatus.EMPTY, ("log",), ("webhook",))]
    assert POOL_ALERTS.labels(POOL, "webhook", "failed")._value.get() == before + 1


async def _check(alerter: Alerter, backend, store, config) -> list[Delivery]:
    return await alerter.on_health(backend.samples, await check_pool_health(store, backend.samples, config, POOL))


def _delivered_states(database_url: str) -> dict[str, tuple[str | None, str | None]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT channel, status, sending FROM pool_alert_deliveries WHERE pool = %s",
                            (POOL,)).fetchall()
    return {channel: (status, sending) for channel, status, sending in rows}


async def test_a_webhook_that_failed_is_told_at_the_next_check_and_the_other_channels_only_once(
    settings, database_url, backend, store, sns_topic, failing_webhook, moto_server
):
    topic_arn, sqs, queue_url = sns_topic
    config = settings.model_copy(update={
        "refill_target": 100, "alert_sns_topic_arn": topic_arn, "alert_sns_endpoint_url": moto_server,
        "alert_webhook_url": failing_webhook.url, "alert_timeout_s": 2.0,
    })
    failing_webhook.fail_next = 1
    failed_before = REGISTRY.get_sample_value(
        "tokenpool_pool_alerts_total", {"pool": POOL, "channel": "webhook", "outcome": "failed"}) or 0.0
    alerter = Alerter(config)
    try:
        await _fill(store, 10)  # LOW
        first = await _check(alerter, backend, store, config)
        assert _delivered_states(database_url)["webhook"] == (None, None), "not delivered, not claimed any more"
        second = await _check(alerter, backend, store, config)
        third = await _check(alerter, backend, store, config)
    finally:
        await alerter.aclose()

    assert [(d.delivered, d.failed) for d in first] == [(("log", "sns"), ("webhook",))]
    assert [(d.alert.status, d.alert.previous, d.delivered, d.failed) for d in second] == [
        (HealthStatus.LOW, None, ("webhook",), ())]
    assert third == []
    assert failing_webhook.refused == 1
    assert [(m["status"], m["previous_status"]) for m in failing_webhook.received] == [("LOW", None)]
    assert [m["status"] for m in _received(sqs, queue_url)] == ["LOW"], "SNS delivered the first time: once"
    assert REGISTRY.get_sample_value(
        "tokenpool_pool_alerts_total", {"pool": POOL, "channel": "webhook", "outcome": "failed"}) == failed_before + 1
    assert _delivered_states(database_url) == {"log": ("LOW", None), "sns": ("LOW", None), "webhook": ("LOW", None)}


async def test_a_first_sns_alert_without_credentials_is_sent_by_the_next_check(
    settings, backend, store, sns_topic, moto_server, monkeypatch
):
    topic_arn, sqs, queue_url = sns_topic
    config = settings.model_copy(update={
        "refill_target": 100, "alert_sns_topic_arn": topic_arn, "alert_sns_endpoint_url": moto_server,
        "alert_timeout_s": 2.0,
    })
    await _fill(store, 10)  # LOW
    with monkeypatch.context() as no_credentials:  # as on a host whose role or keys are missing
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            no_credentials.delenv(name, raising=False)
        no_credentials.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
        no_credentials.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
        no_credentials.setenv("AWS_EC2_METADATA_DISABLED", "true")
        no_credentials.setattr(boto3, "DEFAULT_SESSION", None)  # its credentials were resolved already
        alerter = Alerter(config)
        try:
            first = await _check(alerter, backend, store, config)
        finally:
            await alerter.aclose()
    alerter = Alerter(config)  # the next `tokenpool health` run, credentials fixed
    try:
        second = await _check(alerter, backend, store, config)
    finally:
        await alerter.aclose()

    assert [(d.delivered, d.failed) for d in first] == [(("log",), ("sns",))]
    assert [(d.alert.status, d.alert.previous, d.delivered) for d in second] == [(HealthStatus.LOW, None, ("sns",))]
    assert [(m["status"], m["previous_status"]) for m in _received(sqs, queue_url)] == [("LOW", None)]


async def test_concurrent_checkers_tell_each_change_once(settings, backend, store, webhook):
    hook_url, hook_received = webhook
    config = settings.model_copy(update={"refill_target": 100, "alert_webhook_url": hook_url})
    await _fill(store, 4)  # CRITICAL
    health = await check_pool_health(store, backend.samples, config, POOL)
    alerters = [Alerter(config) for _ in range(4)]
    try:
        results = await asyncio.gather(*(alerter.on_health(backend.samples, health) for alerter in alerters))
    finally:
        for alerter in alerters:
            await alerter.aclose()
    assert sorted(channel for result in results for d in result for channel in d.delivered) == ["log", "webhook"]
    assert [m["status"] for m in hook_received] == ["CRITICAL"]


async def test_a_claim_left_by_a_checker_that_died_mid_send_is_taken_over_once_it_lapses(
    settings, database_url, backend, store, webhook
):
    hook_url, hook_received = webhook
    config = settings.model_copy(update={"refill_target": 100, "alert_webhook_url": hook_url})
    await _fill(store, 10)  # LOW
    with psycopg.connect(database_url) as conn:  # a checker claimed the webhook and was killed
        conn.execute("INSERT INTO pool_alert_deliveries (pool, channel, sending, sending_until)"
                     " VALUES (%s, 'webhook', 'LOW', now() + interval '1 hour')", (POOL,))
    alerter = Alerter(config)
    try:
        while_held = await _check(alerter, backend, store, config)
        with psycopg.connect(database_url) as conn:
            conn.execute("UPDATE pool_alert_deliveries SET sending_until = now() - interval '1 second'"
                         " WHERE pool = %s AND channel = 'webhook'", (POOL,))
        lapsed = await _check(alerter, backend, store, config)
    finally:
        await alerter.aclose()
    assert [d.delivered for d in while_held] == [("log",)]
    assert [d.delivered for d in lapsed] == [("webhook",)]
    assert [m["status"] for m in hook_received] == ["LOW"]


async def test_a_recovery_before_a_failed_alert_got_through_sends_the_recovery_not_the_stale_alert(
    settings, backend, store, failing_webhook
):
    config = settings.model_copy(update={"refill_target": 100, "alert_webhook_url": failing_webhook.url})
    alerter = Alerter(config)
    try:
        await _fill(store, 50)
        await _check(alerter, backend, store, config)  # OK: recorded, nothing told
        failing_webhook.fail_next = 1
        await _consume(store, 46)  # 4 of a target of 100 left: CRITICAL, while the webhook is down
        low = await _check(alerter, backend, store, config)
        await _fill(store, 100)  # OK again before the webhook is back
        recovered = await _check(alerter, backend, store, config)
    finally:
        await alerter.aclose()
    assert [(d.alert.status, d.failed) for d in low] == [(HealthStatus.CRITICAL, ("webhook",))]
    assert [(d.alert.status, d.delivered) for d in recovered] == [(HealthStatus.OK, ("log",))]
    assert failing_webhook.received == [], "the webhook last delivered OK: nothing to tell it"


@pytest.fixture
def unmigrated_url(pg_server_url: str) -> Iterator[str]:
    name = f"tokenpool_alerts_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_upgrade_counts_what_was_alerted_before_as_delivered_on_every_channel(unmigrated_url):
    migrate.upgrade(unmigrated_url, target=DELIVERIES_MIGRATION - 1)
    with psycopg.connect(unmigrated_url, autocommit=True) as conn:
        conn.execute("INSERT INTO pool_alert_state (pool, status) VALUES ('p1', 'LOW'), ('p2', 'OK')")
    assert next(m.version for m in migrate.upgrade(unmigrated_url)) == DELIVERIES_MIGRATION
    with psycopg.connect(unmigrated_url) as conn:
        rows = conn.execute("SELECT pool, channel, status, sending FROM pool_alert_deliveries"
                            " ORDER BY pool, channel").fetchall()
    assert rows == [(pool, channel, status, None) for pool, status in (("p1", "LOW"), ("p2", "OK"))
                    for channel in ("log", "sns", "webhook")]
