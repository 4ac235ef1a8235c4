from tokenpool.pool.luhn import luhn_check_digit, luhn_valid
from tokenpool.pool.model import ALLOWED_TRANSITIONS, PairStatus, PoolStats, is_allowed
from tokenpool.pool.synthetic import synthetic_pairs


def test_used_and_expired_are_final():
    for final in (PairStatus.USED, PairStatus.EXPIRED):
        assert not [new for new in PairStatus if new != final and is_allowed(final, new)]


def test_available_leaves_only_by_a_reservation_or_straight_to_a_card():
    assert [new for new in PairStatus if new != PairStatus.AVAILABLE and is_allowed(PairStatus.AVAILABLE, new)] == [
        PairStatus.RESERVED, PairStatus.USED
    ]


def test_the_migration_guard_lists_exactly_the_allowed_transitions():
    from importlib.resources import files

    migration = files("tokenpool.db").joinpath("migrations/0008_vault_contract.py").read_text()
    for old, new in ALLOWED_TRANSITIONS:
        assert f"('{old}', '{new}')" in migration


def test_stats_print_lowercase_status_names_and_a_total():
    stats = PoolStats("p", {PairStatus.AVAILABLE: 3, PairStatus.USED: 2})
    assert stats.as_dict() == {"pool": "p", "available": 3, "reserved": 0, "used": 2, "expired": 0, "total": 5}


def test_luhn_check_digit_of_a_known_number():
    assert luhn_check_digit("7992739871") == "3"
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398714")


def test_synthetic_pairs_are_distinct_luhn_valid_and_marked():
    pairs = synthetic_pairs(500)
    assert len({p.internal_token for p in pairs}) == 500
    assert all(luhn_valid(p.internal_token) and len(p.internal_token) == 16 for p in pairs)
    assert all(p.internal_token.startswith("99") and p.external_ref.startswith("syn_") for p in pairs)
