"""The end-to-end harness's pure parts: the request mix and the TOME rate series."""

from __future__ import annotations

from collections import Counter

import pytest
from bench.e2e import day_events, tome_series
from bench.load_driver import Sample, tome_by_operation


def test_the_day_mixes_one_detokenize_and_one_read_per_four_cards() -> None:
    kinds = Counter(kind for _offset, kind in day_events(4_000, 1.0))
    assert kinds == {"card": 4_000, "detokenize": 1_000, "read": 1_000}


def test_the_tome_ledger_is_summed_per_operation_over_namespaces() -> None:
    stats = {"requests": {"NS1": {"issue": 3}, "NS2": {"tokenize": 3, "detokenize": 2}}}
    assert tome_by_operation(stats) == {"issue": 3, "tokenize": 3, "detokenize": 2}


def test_the_tome_rate_skips_samples_whose_ledger_read_failed() -> None:
    samples = [
        Sample(0.0, {"issue": 10}, 100, 1.0),
        Sample(1.0, {}, 100, 1.0),  # the ledger did not answer
        Sample(2.0, {"issue": 20, "tokenize": 10}, 90, 1.0),
    ]
    ((t, rate),) = tome_series(samples)
    assert t == 2.0
    assert rate == pytest.approx(10.0)
