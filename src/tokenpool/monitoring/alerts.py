"""Health alerts, sent once per change of state (not once per check), retried until delivered.

Channels: the log (always), SNS (``alert_sns_topic_arn``) and a webhook (``alert_webhook_url``). Each channel
remembers the state it last delivered per pool (``pool_alert_deliveries``). A check claims the channels whose
last delivered state differs from the pool's (``pool_alert_claim``: of concurrent checkers exactly one gets
each), sends, and records the state as delivered only on the channels that accepted it. A failed delivery
(SNS without credentials, a webhook answering 500) is therefore logged, counted
(``tokenpool_pool_alerts_total{outcome="failed"}``) and tried again at the next check, on that channel
only; the channels that delivered do not repeat themselves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
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

LOG, SNS, WEBHOOK = "log", "sns", "webhook"


def alert_channels(settings: Settings) -> tuple[str, ...]:
    """The channels ``settings`` configure, the log first (it is always there)."""
    return (LOG, *((SNS,) if settings.alert_sns_topic_arn else ()), *((WEBHOOK,) if settings.alert_webhook_url else ()))


@dataclass(frozen=True, slots=True)
class Alert:
    pool: str
    status: HealthStatus
    previous: HealthStatus | None  # what the channels it goes to last delivered (None: nothing yet)
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


@dataclass(frozen=True, slots=True)
class Delivery:
    """One alert and how each channel it went to took it."""

    alert: Alert
    delivered: tuple[str, ...]
    failed: tuple[str, ...]


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
        self.channels = (LOG, *((SNS,) if self.sns is not None else ()), *((WEBHOOK,) if self.webhook_url else ()))
        self._http = http
        # A delivery is bounded by 3 x alert_timeout_s (_deliver); past that and a margin, a claim whose
        # checker died mid-send lapses and the next check sends again.
        self._claim_s = settings.alert_timeout_s * 3 + 10.0

    async def on_health(self, store: MonitoringStore, health: PoolHealth) -> list[Delivery]:
        """Tells every channel whose last delivered state is not ``health.status`` (a change to LOW or worse,
        back to OK, or a delivery that failed before); empty when there was nothing to tell."""
        status = health.status.value
        claims = await store.claim_alerts(health.pool, status, self.channels, self._claim_s)
        claimed = [claim for claim in claims if claim.claimed]
        if not claimed:
            return []
        by_previous: dict[str | None, list[str]] = {}
        delivered: list[str] = []
        for claim in claimed:
            if claim.previous_status is None and health.status is HealthStatus.OK:
                delivered.append(claim.channel)  # a pool never alerted is healthy: nothing to tell
            else:
                by_previous.setdefault(claim.previous_status, []).append(claim.channel)
        deliveries = []
        for previous, channels in by_previous.items():
            alert = Alert(health.pool, health.status, None if previous is None else HealthStatus(previous), health)
            outcomes = await self.send(alert, channels)
            ok = tuple(channel for channel in channels if outcomes[channel])
            delivered.extend(ok)
            deliveries.append(Delivery(alert, ok, tuple(channel for channel in channels if not outcomes[channel])))
        try:
            await store.finish_alerts(health.pool, status, [claim.channel for claim in claimed], delivered)
        except Exception as exc:  # the claims lapse by themselves; those channels are told again then
            log.warning("pool.health_alert_unrecorded", pool=health.pool, status=status,
                        error=f"{type(exc).__name__}: {exc}")
        return deliveries

    async def send(self, alert: Alert, channels: Sequence[str] | None = None) -> dict[str, bool]:
        """Sends ``alert`` to ``channels`` (default: all configured); whether each accepted it."""
        outcomes: dict[str, bool] = {}
        targets = self.channels if channels is None else channels
        if LOG in targets:
            level = log.info if alert.status is HealthStatus.OK else log.warning
            level("pool.health_alert", **alert.as_dict())
            POOL_ALERTS.labels(alert.pool, LOG, "sent").inc()
            outcomes[LOG] = True
        sends: dict[str, Any] = {}
        if SNS in targets and self.sns is not None:
            sends[SNS] = self._to_sns(alert)
        if WEBHOOK in targets and self.webhook_url:
            sends[WEBHOOK] = self._to_webhook(alert)
        results = await asyncio.gather(*(self._deliver(alert.pool, channel, sending)
                                         for channel, sending in sends.items()))
        outcomes.update(zip(sends, results, strict=True))
        for channel in targets:
            outcomes.setdefault(channel, False)  # asked for a channel that is not configured
        return outcomes

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _deliver(self, pool: str, channel: str, sending: Any) -> bool:
        try:
            await asyncio.wait_for(sending, timeout=self.settings.alert_timeout_s * 3)
        except Exception as exc:
            POOL_ALERTS.labels(pool, channel, "failed").inc()
            log.error("pool.health_alert_failed", pool=pool, channel=channel, retried="at the next check",
                      error=f"{type(exc).__name__}: {exc}")
            return False
        POOL_ALERTS.labels(pool, channel, "sent").inc()
        return True

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
