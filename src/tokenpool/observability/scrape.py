"""Reading Prometheus exposition over HTTP: each API instance's ``/metrics``, or a Prometheus server's
``/federate?match[]=...`` (which answers in the same format with every instance's series), parsed by
prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, dict[str, str], float]


class ScrapeFailed(Exception):
    pass


async def scrape(urls: Sequence[str], *, bearer_token: str | None = None, timeout_s: float = 5.0) -> list[Sample]:
    """Every sample of every URL (one list: the caller sums what it needs); ScrapeFailed if any URL fails,
    since a sum over the instances that happened to answer would understate the errors."""
    headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else {}
    samples: list[Sample] = []
    async with httpx.AsyncClient(timeout=timeout_s, headers=headers) as client:
        for url in urls:
            try:
                response = await client.get(url)
            except httpx.HTTPError as error:
                raise ScrapeFailed(f"{url}: {type(error).__name__}") from error
            if response.status_code != 200:
                raise ScrapeFailed(f"{url}: HTTP {response.status_code}")
            try:
                families = list(text_string_to_metric_families(response.text))
            except ValueError as error:
                raise ScrapeFailed(f"{url}: not Prometheus exposition ({error})") from error
            samples.extend((s.name, dict(s.labels), float(s.value)) for family in families for s in family.samples)
    return samples
