"""The client address of audit rows: the peer, or X-Forwarded-For only as far as trusted proxies vouch for it."""

from __future__ import annotations

import pytest

from tokenpool.service.client_address import ClientAddresses, parse_trusted_proxies

PROXY = "10.0.0.5"
TRUSTING = ClientAddresses(parse_trusted_proxies("10.0.0.0/24, 192.0.2.7"))


@pytest.mark.parametrize("forwarded", [["1.2.3.4"], ["not-an-ip<script>"], []])
def test_an_untrusted_peer_is_recorded_whatever_it_forwards(forwarded):
    assert TRUSTING.resolve("203.0.113.9", forwarded) == "203.0.113.9"
    assert ClientAddresses().resolve(PROXY, forwarded) == PROXY  # no trusted proxies at all


def test_behind_a_trusted_proxy_the_forwarded_client_is_recorded():
    assert TRUSTING.resolve(PROXY, ["198.51.100.20"]) == "198.51.100.20"
    assert TRUSTING.resolve(PROXY, ["2001:DB8::1"]) == "2001:db8::1"  # normalised


def test_the_right_most_untrusted_hop_wins_over_what_the_client_wrote_to_its_left():
    forged_then_real = ["6.6.6.6, 198.51.100.20", "192.0.2.7"]  # client forged 6.6.6.6; two proxies appended
    assert TRUSTING.resolve(PROXY, forged_then_real) == "198.51.100.20"


@pytest.mark.parametrize("entry", ["not-an-ip<script>", "", "198.51.100.20:443", "unknown"])
def test_an_entry_that_is_not_an_address_records_the_peer(entry):
    assert TRUSTING.resolve(PROXY, [f"6.6.6.6, {entry}"]) == PROXY


def test_only_trusted_hops_or_no_header_records_the_peer():
    assert TRUSTING.resolve(PROXY, ["10.0.0.9"]) == PROXY
    assert TRUSTING.resolve(PROXY, []) == PROXY
    assert TRUSTING.resolve(None, ["1.2.3.4"]) is None


def test_a_bad_trusted_proxy_setting_is_refused_at_start():
    with pytest.raises(ValueError, match="not-a-network"):
        parse_trusted_proxies("10.0.0.0/8,not-a-network")
    assert parse_trusted_proxies(" ") == ()
