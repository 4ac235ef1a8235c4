import uuid

from tokenpool.service.correlation import choose_correlation_id


def test_a_safe_client_id_is_kept():
    assert choose_correlation_id("req-1:abc.DEF_2") == "req-1:abc.DEF_2"


def test_missing_unsafe_or_card_number_like_ids_are_replaced_by_a_uuid():
    for supplied in (None, "", "has space", "x" * 129, "4000123412341234", "ref\n{}", "id-123456789012345"):
        chosen = choose_correlation_id(supplied)
        assert chosen != supplied
        uuid.UUID(chosen)
