"""How many pairs a refill adds: consumption rate, forecast, target, batches."""

from __future__ import annotations

import pytest

from tokenpool.monitoring.forecast import capped_target, consumption_per_hour, forecast
from tokenpool.pool.model import SampleSpan
from tokenpool.refill.plan import batch_sizes, pairs_to_add


def test_the_consumption_rate_is_the_difference_between_samples_per_hour():
    assert consumption_per_hour(SampleSpan(100, 400, 1800.0)) == 600.0


def test_a_release_that_lowers_the_consumed_counter_reads_as_no_consumption_not_negative():
    assert consumption_per_hour(SampleSpan(400, 390, 3600.0)) == 0.0


@pytest.mark.parametrize("span", [None, SampleSpan(0, 10, 0.0)])
def test_without_two_samples_apart_the_rate_is_unknown(span):
    assert consumption_per_hour(span) is None


def test_the_forecast_is_rate_times_interval_times_safety_factor_rounded_up():
    assert forecast(1000.0, 3600.0, 1.5) == 1500
    assert forecast(10.0, 1800.0, 1.01) == 6  # 5.05 -> 6
    assert forecast(None, 3600.0, 1.5) == 0


def test_the_forecast_raises_the_target_only_up_to_its_cap():
    assert capped_target(10_000, 4_000, 5.0) == 10_000  # a quiet forecast never lowers the target
    assert capped_target(10_000, 30_000, 5.0) == 30_000
    assert capped_target(10_000, 130_949, 5.0) == 50_000  # a burst's wild forecast is capped
    assert capped_target(40, 130_949, 1.0) == 40  # factor 1: the forecast never raises it
    assert capped_target(0, 500, 5.0) == 0


def test_pairs_to_add_fills_up_to_the_target_and_never_removes():
    assert pairs_to_add(available=7_500, target=10_000) == 2_500
    assert pairs_to_add(available=12_000, target=10_000) == 0


def test_batches_are_full_but_the_last():
    assert batch_sizes(6_000, 2_500) == [2_500, 2_500, 1_000]
    assert batch_sizes(5_000, 2_500) == [2_500, 2_500]
    assert batch_sizes(0, 2_500) == []
    with pytest.raises(ValueError, match="batch_size"):
        batch_sizes(10, 0)
