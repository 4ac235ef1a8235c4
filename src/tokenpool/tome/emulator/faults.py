"""Fault injection for the TOME emulator: what ``PUT /_admin/faults`` sets, and the rate limiter."""

from __future__ import annotations

import math
import threading
import time

from pydantic import BaseModel, ConfigDict, Field

from tokenpool.tome.contract import DEFAULT_MAX_BATCH


class Faults(BaseModel):
    """The emulator's fault controls and limits; every field is changeable at run time."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency_ms: float = Field(default=0, ge=0, description="Added to every call.")
    jitter_ms: float = Field(default=0, ge=0, description="Uniform random extra latency, 0..jitter_ms.")
    rate_limit_rps: float = Field(default=0, ge=0, description="Token bucket rate; 0 = unlimited. Over: 429.")
    error_rate: float = Field(default=0, ge=0, le=1, description="Share of calls answered 500 or 503.")
    outage: bool = Field(default=False, description="Every call answered 503.")
    slow_ms: float = Field(default=0, ge=0, description="Extra wait before answering (beyond a client timeout).")
    corrupt_rate: float = Field(default=0, ge=0, le=1, description="Share of 200s missing their last item.")
    max_batch: int = Field(default=DEFAULT_MAX_BATCH, ge=1, description="Most items in one request; over: 413.")


class FaultsPatch(BaseModel):
    """A partial update: fields left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float | None = Field(default=None, ge=0)
    jitter_ms: float | None = Field(default=None, ge=0)
    rate_limit_rps: float | None = Field(default=None, ge=0)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    outage: bool | None = None
    slow_ms: float | None = Field(default=None, ge=0)
    corrupt_rate: float | None = Field(default=None, ge=0, le=1)
    max_batch: int | None = Field(default=None, ge=1)

    def apply(self, faults: Faults) -> Faults:
        changes = {k: v for k, v in self.model_dump(exclude_unset=True).items() if v is not None}
        return faults.model_copy(update=changes)


class TokenBucket:
    """``rate`` requests/s with a burst of ``max(1, rate)``; ``take()`` answers the wait when empty."""

    def __init__(self, rate: float) -> None:
        self._lock = threading.Lock()
        self.rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._at = time.monotonic()

    def take(self) -> float:
        """0.0 if admitted, else the seconds until a token is available."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate


def retry_after_header(wait_s: float) -> str:
    """HTTP's ``Retry-After`` is whole seconds: round up, at least 1."""
    return str(max(1, math.ceil(wait_s)))
