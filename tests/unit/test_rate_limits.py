"""Per-key limits counted in this process's memory (the Redis path: tests/integration/test_api_limits.py)."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from tokenpool.service.auth import Principal
from tokenpool.service.problems import ProblemError
from tokenpool.service.rate_limits import RateLimits, shared_storage_uri
from tokenpool.settings import Settings


def _key() -> Principal:
    return Principal(uuid.uuid4(), "k", frozenset())


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
async def test_each_key_gets_its_own_allowance_and_then_a_429_with_retry_after(strategy):
    limits = RateLimits(cards="3/minute", detokenize_refs="10/minute", strategy=strategy)
    mine, other = _key(), _key()
    for _ in range(3):
        await limits.card(mine)
    with pytest.raises(ProblemError) as refused:
        await limits.card(mine)
    assert (refused.value.status, refused.value.code) == (429, "RATE_LIMITED")
    assert 1 <= int(refused.value.headers["Retry-After"]) <= 60
    await limits.card(other)


async def test_refs_cost_their_number_and_a_batch_that_does_not_fit_spends_nothing():
    limits = RateLimits(cards="3/minute", detokenize_refs="10/minute")
    key = _key()
    await limits.detokenize_refs(key, 6)
    with pytest.raises(ProblemError):
        await limits.detokenize_refs(key, 5)
    await limits.detokenize_refs(key, 4)  # what was left: 4
    with pytest.raises(ProblemError):
        await limits.detokenize_refs(key, 1)


async def test_a_batch_larger_than_the_whole_limit_is_told_to_shrink():
    limits = RateLimits(cards="3/minute", detokenize_refs="10/minute")
    with pytest.raises(ProblemError, match="smaller requests") as refused:
        await limits.detokenize_refs(_key(), 11)
    assert refused.value.headers["Retry-After"] == "60"


def test_limits_are_checked_when_the_settings_are_read():
    assert Settings(rate_limit_cards="5 per second").rate_limit_cards == "5 per second"
    for bad in ("lots", "0/second", "5/second;1/minute", ""):
        with pytest.raises(ValidationError):
            Settings(rate_limit_cards=bad)


def test_a_redis_url_is_spelled_as_the_asyncio_storage_wants_it():
    assert shared_storage_uri("redis://h:6379/0") == "async+redis://h:6379/0"
    assert shared_storage_uri("async+redis://h:6379/0") == "async+redis://h:6379/0"
