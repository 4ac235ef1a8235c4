"""Publishes alerts to an SNS topic (boto3), with timeouts on every call."""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
from botocore.config import Config


class SnsPublisher:
    def __init__(self, topic_arn: str, *, endpoint_url: str | None = None, region: str | None = None,
                 timeout_s: float = 5.0) -> None:
        self.topic_arn = topic_arn
        # The region defaults to the topic's own (arn:aws:sns:<region>:...), so no AWS_REGION is needed.
        parts = topic_arn.split(":")
        region = region or (parts[3] if len(parts) > 3 and parts[3] else None)
        config = Config(
            connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 2, "mode": "standard"}
        )
        self._client: Any = boto3.client("sns", endpoint_url=endpoint_url, region_name=region, config=config)

    def publish_sync(self, subject: str, message: str, attributes: dict[str, str] | None = None) -> str:
        kwargs: dict[str, Any] = {"TopicArn": self.topic_arn, "Subject": subject[:100], "Message": message}
        if attributes:
            kwargs["MessageAttributes"] = {k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()}
        response = self._client.publish(**kwargs)
        return str(response["MessageId"])

    async def publish(self, subject: str, message: str, attributes: dict[str, str] | None = None) -> str:
        # boto3 is synchronous; a worker thread keeps the event loop (and the refill) running meanwhile.
        return await asyncio.to_thread(self.publish_sync, subject, message, attributes)
