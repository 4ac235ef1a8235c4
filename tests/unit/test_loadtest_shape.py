"""The day in miniature's curve and schedule, and the statistics the end-to-end report quotes."""

from __future__ import annotations

import math

import pytest
from bench.loadshape import (
    arrival_offsets,
    hourly_cards,
    peak_rate,
    peak_to_average,
    percentile,
    reduction,
    windowed_percentiles,
)


def test_the_day_holds_exactly_the_requested_cards() -> None:
    assert sum(hourly_cards(50_000)) == pytest.approx(50_000)


def test_the_peak_hour_carries_about_three_times_the_average_hour() -> None:
    assert 2.9 <= peak_to_average(50_000) <= 3.1


def test_the_peak_hour_is_mid_morning_and_nights_are_quiet() -> None:
    hours = hourly_cards(24_000)
    assert max(range(24), key=lambda h: hours[h]) == 10
    assert hours[3] < 0.2 * (24_000 / 24)


def test_the_schedule_sends_every_card_in_order_within_the_compressed_day() -> None:
    offsets = arrival_offsets(5_000, 2.0)
    assert len(offsets) == 5_000
    assert offsets == sorted(offsets)
    assert offsets[0] >= 0
    assert offsets[-1] < 24 * 2.0


def test_the_schedule_follows_the_curve_hour_by_hour() -> None:
    offsets = arrival_offsets(10_000, 1.0)
    per_hour = [sum(1 for t in offsets if h <= t < h + 1) for h in range(24)]
    for sent, expected in zip(per_hour, hourly_cards(10_000), strict=True):
        assert abs(sent - expected) <= 1.5


def test_the_schedule_is_the_same_every_time() -> None:
    assert arrival_offsets(1_000, 3.0) == arrival_offsets(1_000, 3.0)


def test_percentiles_interpolate_between_ranks_like_numpy() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_latencies_are_grouped_by_send_time_window() -> None:
    samples = [(0.1, 10.0), (0.9, 30.0), (1.5, 100.0)]
    first, second = windowed_percentiles(samples, 1.0)
    assert (first.start_s, first.count, first.p50_ms) == (0.0, 2, 20.0)
    assert (second.start_s, second.count, second.p99_ms) == (1.0, 1, 100.0)


def test_reductions_and_peaks() -> None:
    assert reduction(2.0, 0.5) == pytest.approx(0.75)
    assert math.isnan(reduction(0.0, 1.0))
    assert peak_rate([1.0, 7.5, 3.0]) == 7.5
    assert peak_rate([]) == 0.0
