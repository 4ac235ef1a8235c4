"""Health alerts, sent once per change of state (not once per check).

The new state is recorded first (``pool_alert_transition`` answers only the one checker that changed
it), then the alert goes to the log (always), to SNS (``alert_sns_topic_arn``) and to a webhook
(``alert_webhook_url``). Recording first means a failed delivery is not retried: at most one alert
per change, and the failure is logged and counted (``tokenpool_pool_alerts{outcome="failed"}``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx

from tokenpool.aws.sns import SnsPublisher
from tokenpool.db.monitoring_store import MonitoringStore
from tokenpool.monitoring.health import HealthStatus, PoolHealth
from tokenpool.observability.logging import get_logger
from tokenpool.observability.metrics import POOL_ALERTS
from tokenpool.settings import Settings

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Alert:
    pool: str
    status: HealthStatus
    previous: HealthStatus | None
    health: PoolHealth

    @property
    def subject(self) -> str:
        if self.status is HealthStatus.OK:
            return f"tokenpool: pool {self.pool} recovered (OK)"
        return f"tokenpool: pool {self.pool} is {self.status.value}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": "pool_health_changed",
            "pool": self.pool,
            "status": self.status.value,
            "previous_status": None if self.previous is None else self.previous.value,
            "health": self.health.as_dict(),
        }


class Alerter:
    """Sends alerts; one instance per process (it keeps its SNS client and HTTP client)."""

    def __init__(self, settings: Settings, *, sns: SnsPublisher | None = None,
                 http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.sns = sns
        if self.sns is None and settings.alert_sns_topic_arn:
            self.sns = SnsPublisher(settings.alert_sns_topic_arn, endpoint_url=settings.alert_sns_endpoint_url,
                                    region=settings.alert_aws_region, timeout_s=settings.alert_timeout_s)
        self.webhook_url = settings.alert_webhook_url
        self._http = http

    async def on_health(self, store: MonitoringStore, health: PoolHealth) -> Alert | None:
        """Records ``health.status``; sends an alert if it changed (to LOW or worse, or back to OK)."""
        transition = await store.record_health(health.pool, health.status.value)
        if transition is None:
            return None  # same state as last time: already alerted
        previous = None if transition.previous_status is None else HealthStatus(transition.previous_status)
        if previous is None and health.status is HealthStatus.OK:
            return None  # first check of a healthy pool: nothing to tell
        alert = Alert(health.pool, health.status, previous, health)
        await self.send(alert)
        return alert

    async def send(self, alert: Alert) -> None:
        level = log.info if alert.status is HealthStatus.OK else log.warning
        level("pool.health_alert", **alert.as_dict())
        POOL_ALERTS.labels("log", "sent").inc()
        sends = []
        if self.sns is not None:
            sends.append(self._deliver("sns", self._to_sns(alert)))
        if self.webhook_url:
            sends.append(self._deliver("webhook", self._to_webhook(alert)))
        await asyncio.gather(*sends)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _deliver(self, channel: str, sending: Any) -> None:
        try:
            await asyncio.wait_for(sending, timeout=self.settings.alert_timeout_s * 3)
            POOL_ALERTS.labels(channel, "sent").inc()
        except Exception as exc:
            POOL_ALERTS.labels(channel, "failed").inc()
            log.error("pool.health_alert_failed", channel=channel, error=f"{type(exc).__name__}: {exc}")

    async def _to_sns(self, alert: Alert) -> None:
        assert self.sns is not None
        await self.sns.publish(alert.subject, json.dumps(alert.as_dict()),
                               {"pool": alert.pool, "status": alert.status.value})

    async def _to_webhook(self, alert: Alert) -> None:
        assert self.webhook_url is not None
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(self.settings.alert_timeout_s))
        response = await self._http.post(self.webhook_url, json={"text": alert.subject, **alert.as_dict()})
        response.raise_for_status()
