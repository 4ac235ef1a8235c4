"""Health thresholds: EMPTY, CRITICAL, LOW, OK by share of the target and by hours left."""

from __future__ import annotations

import pytest

from tokenpool.monitoring.health import HealthStatus, Thresholds, classify, hours_left

THRESHOLDS = Thresholds(low_ratio=0.2, critical_ratio=0.05, low_hours=6.0, critical_hours=1.0)


@pytest.mark.parametrize(
    ("available", "rate", "expected"),
    [
        (0, None, HealthStatus.EMPTY),
        (499, None, HealthStatus.CRITICAL),  # < 5% of 10,000
        (500, None, HealthStatus.LOW),
        (1_999, None, HealthStatus.LOW),  # < 20%
        (2_000, None, HealthStatus.OK),
        (9_000, 10_000.0, HealthStatus.CRITICAL),  # 0.9 h left
        (9_000, 2_000.0, HealthStatus.LOW),  # 4.5 h left
        (9_000, 1_000.0, HealthStatus.OK),  # 9 h left
    ],
)
def test_the_status_follows_the_share_of_the_target_and_the_hours_left(available, rate, expected):
    assert classify(available, 10_000, rate, THRESHOLDS) is expected


def test_hours_left_is_unbounded_without_consumption():
    assert hours_left(1_000, None) is None
    assert hours_left(1_000, 0.0) is None
    assert hours_left(1_000, 500.0) == 2.0


def test_exit_codes_are_0_ok_1_low_2_critical_or_empty():
    assert [s.exit_code for s in HealthStatus] == [0, 1, 2, 2]
