from collections import Counter

import pytest

from tokenpool.cards import TokenSource
from tokenpool.cards.routing import TrafficSplitter


@pytest.mark.parametrize("percent", [0, 1, 10, 33, 50, 90, 99, 100])
def test_every_hundred_decisions_send_exactly_the_share_to_the_pool(percent):
    splitter = TrafficSplitter()
    for _ in range(3):
        counts = Counter(splitter.choose(percent) for _ in range(100))
        assert counts[TokenSource.POOL] == percent


def test_at_ten_percent_every_tenth_card_goes_to_the_pool():
    splitter = TrafficSplitter()
    decisions = [splitter.choose(10) for _ in range(30)]
    assert [i for i, d in enumerate(decisions) if d is TokenSource.POOL] == [9, 19, 29]


def test_a_change_of_share_takes_effect_at_once():
    splitter = TrafficSplitter()
    assert {splitter.choose(100) for _ in range(5)} == {TokenSource.POOL}
    assert {splitter.choose(0) for _ in range(5)} == {TokenSource.TOME}


def test_a_share_outside_0_to_100_is_refused():
    with pytest.raises(ValueError, match=r"0\.\.100"):
        TrafficSplitter().choose(101)
